//! Llama-family models: the weights that the hyperparameters ([`crate::hparams`]) describe.

mod weights;
pub use crate::hparams::{Arch, FfnAct, HParams, RopeLayout};
pub use weights::{LayerWeights, Model};

//! Llama-family models: the weights that the hyperparameters ([`crate::hparams`]) describe.

pub mod arch;
mod weights;
pub use crate::hparams::{Arch, HParams, RopeLayout};
pub use weights::{LayerWeights, Model};

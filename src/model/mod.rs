//! Llama-family models: hyperparameters from GGUF metadata and the weights they describe.

mod hparams;
mod weights;
pub use hparams::{Arch, FfnAct, HParams, RopeLayout};
pub use weights::{LayerWeights, Model};

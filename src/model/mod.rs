//! Llama-family models: hyperparameters from GGUF metadata and the weights they describe.

mod hparams;
pub use hparams::{Arch, HParams, RopeLayout};

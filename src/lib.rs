//! # famstream
//!
//! A runtime that runs pre-trained language models over token streams of unlimited length in
//! constant memory, using TransformerFAM (Feedback Attention Memory, arXiv 2404.09173): block
//! sliding-window attention plus a small per-layer working memory fed back block after block.
//!
//! ## Bird's-eye view
//!
//! ```text
//!  model.gguf ──mmap──> GgufFile ──> HParams + Weights (ggml tensors viewing the map, immutable)
//!                                              │
//!  text ──Tokenizer──> token ids ──> Engine: ggml graph per block/token ──> logits ──> Sampler
//!                                              │
//!                                     FamState (per stream, fixed size: ring of K/V blocks,
//!                                               FAM rows, sinks, positions)
//! ```
//!
//! ## Module map
//!
//! - [`error`]: the one error enum; variants carry file/key/tensor context.
//! - [`dtype`]: ggml's type table (block size, bytes per block), checked against ggml in tests.
//! - [`gguf`]: our GGUF v2/v3 reader (memory-mapped, zero-copy, hostile-input safe) and writer
//!   (atomic: temp file + rename). Knows the format, nothing about transformers.
//! - [`ggml`]: the only module that calls into ggml (through `llama-cpp-sys-2`): contexts,
//!   tensors tied to their context's lifetime, graphs, backends with a persistent threadpool,
//!   the graph allocator, quantize/dequantize.
//! - [`model`]: hyperparameters of the `llama` and `qwen2` architectures.
//! - [`settings`]: the `fam.*` keys and memory policies (`full`, `bswa`, `sink`, `fam`).
//! - [`inspect`]: the `famstream inspect` report.
//!
//! ## Invariants
//!
//! - Weights are immutable and shared; all per-stream mutable state lives in a separate value.
//! - Parsing never panics and never allocates more than a small multiple of the input size:
//!   counts, lengths and offsets are checked (checked arithmetic) against named caps and the file
//!   size before use.
//! - `llama_*` functions (llama.cpp proper) are never called by the library or CLI; tests and
//!   benches use them as an independent oracle. Compute goes through `ggml_*` only.
//! - Every output file is written to a temporary name and renamed when complete.
//! - `unsafe` lives in [`ggml`] (FFI) and in [`gguf`] (the mmap); each block says why it is sound.

pub mod chat;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod forward;
pub mod ggml;
pub mod gguf;
pub mod inspect;
pub mod kv;
pub mod model;
pub mod npy;
pub mod passkey;
pub mod perplexity;
pub mod runtime;
pub mod sample;
pub mod settings;
pub mod snapshot;
pub mod state;
pub mod tokenizer;
pub mod util;

pub use error::{Error, Result};

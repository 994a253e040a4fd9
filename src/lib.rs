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
//! ## Data flow, file to logits
//!
//! 1. [`gguf::GgufFile::open`] maps the file and validates header and tensor table.
//! 2. [`model::Model::from_gguf`] reads [`model::HParams`], checks every weight's shape, and makes
//!    ggml tensors that point into the map where the device computes on host memory (CPU; Metal
//!    through `buffer_from_host_ptr`), or copies them to the device (Vulkan, CUDA). On the CPU,
//!    matmul weights of types ggml repacks (Q4_0, Q4_K, IQ4_NL) go to its `CPU_REPACK` buffer
//!    (a copy, as in llama.cpp; `--no-repack` keeps all zero-copy). With `--q8-copy`
//!    ([`model::Model::load_opts`]) Q4_1 matmul weights, which ggml cannot repack, become Q8_0
//!    copies (dequantized and requantized by ggml, as the converter does): faster prompts.
//!    An optional LoRA adapter ([`adapter`], `--adapter FILE`) is checked against the model file
//!    and its tensors put on the same device; the graphs add its low-rank term next to each
//!    adapted matmul (in every graph, or only in the FAM's: `fam.adapter.lora_scope`), so the
//!    base weights stay zero-copy; its attention bias at the FAM's slots goes into the mask.
//! 3. [`runtime::Runtime`] adds the [`tokenizer::Tokenizer`] (from `tokenizer.ggml.*`) and the
//!    [`chat::ChatTemplate`]; [`engine::Engine`] owns a backend, its threadpool and the graph
//!    allocator.
//! 4. [`state::FamState::feed`] splits tokens at block boundaries, builds a mask of what each row
//!    may see, and runs [`forward::build_token_graph`] (embed -> per layer the architecture's
//!    layer function from [`model::arch`]: RMSNorm, QKV (QK-norm), RoPE, then the graph's
//!    attention (write K/V to slots, flash attention over the slots, local sliding-window layers
//!    with their own mask), o_proj, (post-norm), residual, RMSNorm, SwiGLU/GeGLU, (post-norm),
//!    residual -> final norm -> LM head). After each block it runs
//!    [`forward::build_fam_graph`] (the FAM update of every layer, batched), or, with the
//!    `reread` feedback, the seed tokens through the token graph into scratch slots; with
//!    `keep` (and `fam` with `--keep-len`, both), [`forward::build_keep_graph`] moves the most
//!    salient tokens of the block that leaves the window into the kept slots.
//! 5. [`sample::Sampler`] picks the next token; [`tokenizer::StreamDecoder`] emits UTF-8.
//!
//! ## Module map
//!
//! - [`error`]: the one error enum; variants carry file/key/tensor context, and each has a
//!   kind (usage, bad file, unsupported, I/O, internal bug) with its own exit code.
//! - [`dtype`]: ggml's type table (block size, bytes per block), checked against ggml in tests.
//! - [`gguf`]: our GGUF v2/v3 reader (memory-mapped, zero-copy, hostile-input safe) and writer
//!   (atomic: temp file + rename). Knows the format, nothing about transformers.
//! - [`ggml`]: the only module that calls into ggml (through `llama-cpp-sys-2`): contexts,
//!   tensors tied to their context's lifetime, graphs (`ggml/tensor.rs`), backends with a
//!   persistent threadpool, device selection through ggml's registry (`--device`), the graph
//!   allocator (`ggml/backend.rs`), tensor sets (`ggml/tensor_set.rs`), quantize/dequantize
//!   (`ggml/quant.rs`).
//! - [`hparams`]: the hyperparameters of the `llama` (with Llama 3 RoPE factors), `qwen2`,
//!   `qwen3`, `gemma3` and `phi3` architectures, read from GGUF metadata, and the [`hparams::Arch`]
//!   names.
//! - [`model`]: the weights those hyperparameters describe (with an adapter attached), and
//!   `HParams` again for its users. [`model::arch`] is the architecture table: a row per
//!   architecture (HF classes, RoPE layout, each layer tensor with its shape, HF name and whether
//!   it is required) and one file per architecture with its row and its layer function, which
//!   the token graph and the FAM update both call (the loader, the converter's names and its
//!   shape check read the same rows); [`model::arch::ops`] has the shared pieces.
//! - [`adapter`]: LoRA adapters in llama.cpp's GGUF layout plus FAM extras (a learned initial
//!   FAM, `fam.*` stream defaults, the base model's fingerprint, LoRA on FAM rows only, a bias
//!   on tokens' attention to the FAM): validation and device upload.
//! - [`init_memory`]: the learned initial FAM (`fam.init_memory`), read from a metadata array
//!   (what famstream writes, so llama.cpp still loads the file) or an older tensor.
//! - [`forward`]: the model as ggml graphs (token graph, FAM update graph, K-shift graph,
//!   keep graph): what each layer attends to and where its K/V go.
//! - [`kv`]: per-layer K/V slot storage (f16).
//! - [`slots`]: `SlotLayout`, where each row lives in the K/V store (sinks, FAM or kept
//!   tokens, ring, scratch) and what each row may see (the masks, and a prompt's banded middle
//!   part, `PrefillBand`); pure arithmetic, unit-tested alone.
//! - [`keep`]: the salience bookkeeping of `keep` and of `fam --keep-len` (surprisal scores of
//!   the ring's and the kept tokens, which tokens stay when a block leaves the window); pure,
//!   unit-tested alone.
//! - [`kept_heads`]: which (layer, head) pairs see a FAM's kept tokens (`fam.kept_heads`, from
//!   an adapter or model file) and which mask each layer then reads (the stream's, one with the
//!   kept slots hidden, or a per-head one); a hidden key costs ggml's attention one mask test.
//! - [`fam_memory`]: `FamMemory`, a stream's FAM rows with the four initialisations (seed, BOS,
//!   tail, learned) and the two feedback rules (`within`, `reread`).
//! - [`state`]: `FamState`, the fixed-size per-stream state and the memory policies: feeding,
//!   calling the FAM at the stream's start and at each block's end, the kept tokens' moves,
//!   RoPE rebasing.
//! - [`settings`]: the `fam.*` keys and memory policies (`full`, `bswa`, `sink`, `fam`,
//!   `keep`).
//! - [`snapshot`]: the on-disk state format (versioned, checksummed), written and read one
//!   tensor at a time (saving a session never holds a second copy of its state), and
//!   `FamState::save`/`load`, its codec.
//! - [`engine`]: runs graphs for a state on a backend; keeps the last token graph and reuses it
//!   for the next batch of the same shape on the same K/V store (a decoded token builds and
//!   places nothing while no other graph ran in between).
//! - [`tokenizer`]: byte-level BPE (GPT-2 style) and SentencePiece BPE, from GGUF metadata.
//! - [`sample`], [`chat`], [`runtime`]: sampling, chat templates (the model's own Jinja
//!   template through minijinja, built-in families as the fallback), the embedding API.
//! - [`grammar`]: structured output: constrained decoding to a JSON schema with llguidance
//!   over famstream's vocabulary (`run --json-schema`, the server's `response_format`).
//! - [`perplexity`], [`passkey`], [`bench`]: evaluation and speed; [`recall`]: recall of a
//!   planted fact k windows back (the memory benchmark, cases from `tools/recall_bench.py`);
//!   [`streaming_run`]: a streaming-perplexity run with checkpoints to resume from and the
//!   full-attention KL reference (`perplexity --memory P`).
//! - [`summarize`]: long documents through the state, then a summary or an answer.
//! - [`notes`]: `summarize`'s default method: notes on each window-sized chunk, kept outside
//!   the window and merged under a token budget, so every part of the input reaches the answer
//!   (each chunk read in a band of `--prefill-band` tokens, the note written over all of it);
//!   `notes/source.rs` reads the input from its file in passes (lines, chunks as byte ranges:
//!   the text is never held whole); `notes/quotes.rs` adds the passages that match the
//!   question (BM25, bounded), verbatim; `notes/timeline.rs` writes the checkpoint and the
//!   `--notes-out` timeline.
//! - [`serve`]: the OpenAI-compatible HTTP server (one compute worker, bounded live states;
//!   `serve/request.rs` parses and checks the OpenAI fields, `serve/response.rs` writes replies).
//! - [`convert`]: HF checkpoints / GGUF -> quantized GGUF (our safetensors reader, name maps,
//!   Q/K permutation, tokenizer.json, ggml quantizers in parallel, streaming writes).
//! - [`npy`], [`util`], [`inspect`]: small helpers.
//!
//! The `famstream` binary is `src/main.rs` (parse, dispatch, exit code) and `src/cli/`: one file
//! per command (`cli/perplexity.rs`, `cli/serve.rs`, ...) holding its arguments and its
//! printing, calling the library above for the work; `cli/common.rs` has the model, memory and
//! sampling arguments every command shares.

//! ## Invariants
//!
//! - Weights are immutable and shared; all per-stream mutable state lives in a separate value.
//! - Parsing never panics and never allocates more than a small multiple of the input size:
//!   counts, lengths and offsets are checked (checked arithmetic) against named caps and the file
//!   size before use.
//! - `llama_*` functions (llama.cpp proper) are never called by the library or CLI; tests and
//!   benches use them as an independent oracle. Compute goes through `ggml_*` only.
//! - Every output file is written to a temporary name and renamed when complete (append-only
//!   logs, `perplexity --segment-log`, aside: a stopped run keeps its lines).
//! - `unsafe` lives in [`ggml`] (FFI), in [`gguf`] and [`convert`]'s safetensors reader (the
//!   mmaps), in [`model`] (a backend buffer over the mapped file), in [`util`] (`madvise` on a
//!   read-only map) and in [`engine`] (the cached token graph's handles outlive their borrow;
//!   they are used only while their key names the very K/V store and model passed in); each
//!   block says why it is sound.
//! - A `FamState`'s memory is fixed at creation: it depends on the model and (B, M, F, S) and the
//!   FAM feedback (`reread` adds F scratch slots; `keep` adds F kept slots and its scores), or
//!   n_ctx for `full`, never on the stream's
//!   length. Positions handed to ggml stay small (RoPE origin rebasing), so numerics
//!   do not degrade with stream length.
//! - Graphs only touch tensors through ggml's backend API (buffers, `tensor_set/get`), so the same
//!   code runs on any ggml device; K/V lengths seen by attention end at the last slot a batch's
//!   rows see ([`slots::SlotLayout::attn_len`]), padded to [`state::KV_PAD`] slots, as
//!   llama.cpp does (on the CPU to [`slots::KV_PAD_CPU`]: there a 512-slot length switches ggml
//!   to a key-split kernel that leaves a filling window on one thread), and each stream reserves the engine's compute
//!   buffer for its largest graphs before its first compute, so on a GPU device the buffer never
//!   grows between computes (ggml's Vulkan backend corrupted memory when it did; the CPU reserves
//!   for last-row logits and grows only if every row's logits are asked for).
//! - The engine never decides what a row may see; the state's mask does. The same graph code
//!   serves every policy, so `fam` with F = 0 and S = 0 is `bswa` and a window covering the
//!   stream is `full`, bit for bit.

pub mod adapter;
pub mod bench;
pub mod chat;
pub mod convert;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod fam_memory;
pub mod forward;
pub mod ggml;
pub mod gguf;
pub mod grammar;
pub mod hparams;
pub mod init_memory;
pub mod inspect;
pub mod keep;
pub mod kept_heads;
pub mod kv;
pub mod model;
pub mod notes;
pub mod npy;
pub mod passkey;
pub mod perplexity;
pub mod recall;
pub mod runtime;
pub mod sample;
pub mod serve;
pub mod settings;
pub mod slots;
pub mod snapshot;
pub mod state;
pub mod streaming_run;
pub mod summarize;
pub mod tokenizer;
pub mod util;

pub use error::{Error, ErrorKind, Result};

/// The git commit this build comes from (`build.rs`; "unknown" outside a git checkout).
pub const COMMIT: &str = env!("FAMSTREAM_COMMIT");

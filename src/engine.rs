//! Runs graphs: owns the compute backend (with its persistent threadpool) and the graph
//! allocator, and turns host-side batch descriptions into filled ggml inputs and read-back
//! outputs. Per-stream state is passed in; the engine holds none.

use crate::error::{Error, Result};
use crate::forward::{build_token_graph, graph_size, TokenBatchShape};
use crate::ggml::{Allocator, Backend, Context};
use crate::kv::KvStore;
use crate::model::Model;
use half::f16;
use std::sync::Arc;

/// One batch of token rows, described on the host.
pub struct TokenBatch<'x> {
    pub tokens: &'x [u32],
    /// RoPE positions, relative to the stream's origin.
    pub pos: &'x [i32],
    /// KV slot each row's K/V is written to.
    pub slots: &'x [i64],
    /// Rows attend over slots [0, n_kv).
    pub n_kv: usize,
    /// [n_tokens][n_kv] row-major: 0 = visible, -inf = hidden.
    pub mask: &'x [f16],
    /// Rows whose logits are wanted (`None`: all rows).
    pub out_rows: Option<&'x [i32]>,
    /// Also return every layer's input hidden states.
    pub capture_layer_inputs: bool,
}

/// What a token batch produced.
pub struct TokenResult {
    /// [n_out][n_vocab] row-major.
    pub logits: Vec<f32>,
    /// Per layer: [n_tokens][n_embd] row-major (empty unless captured).
    pub layer_inputs: Vec<Vec<f32>>,
}

pub struct Engine {
    pub model: Arc<Model>,
    backend: Backend,
    alloc: Allocator,
}

impl Engine {
    /// An engine for `model` computing on `backend` (the one the model was loaded for).
    pub fn new(model: Arc<Model>, backend: Backend) -> Result<Engine> {
        if backend.name() != model.device() {
            return Err(Error::Invalid(format!(
                "model loaded for device {} but the engine runs on {}",
                model.device(),
                backend.name()
            )));
        }
        let alloc = Allocator::new(&backend)?;
        Ok(Engine { model, backend, alloc })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Bytes of the compute buffer (graph intermediates), as sized by the largest graph so far.
    pub fn compute_buffer_bytes(&self) -> usize {
        self.alloc.buffer_size()
    }

    /// Run one batch of tokens through the model.
    pub fn run_tokens(&mut self, kv: &KvStore, b: &TokenBatch) -> Result<TokenResult> {
        let n = b.tokens.len();
        let hp = &self.model.hp;
        if n == 0 || b.pos.len() != n || b.slots.len() != n || b.mask.len() != n * b.n_kv {
            return Err(Error::Invalid(format!(
                "inconsistent batch: {n} tokens, {} positions, {} slots, mask {} for n_kv {}",
                b.pos.len(),
                b.slots.len(),
                b.mask.len(),
                b.n_kv
            )));
        }
        if b.n_kv > kv.n_slots() || b.slots.iter().any(|&s| s < 0 || s as usize >= kv.n_slots()) {
            return Err(Error::Invalid(format!("batch addresses slots beyond the {} of the cache", kv.n_slots())));
        }
        if let Some(&t) = b.tokens.iter().find(|&&t| t as usize >= hp.n_vocab) {
            return Err(Error::Invalid(format!("token id {t} is outside the vocabulary of {}", hp.n_vocab)));
        }
        let n_out = b.out_rows.map(|r| r.len());
        if let Some(r) = b.out_rows {
            if r.iter().any(|&i| i < 0 || i as usize >= n) {
                return Err(Error::Invalid("output row out of range".into()));
            }
        }
        let shape = TokenBatchShape { n_tokens: n, n_kv: b.n_kv, n_out, capture_layer_inputs: b.capture_layer_inputs };
        let gsize = graph_size(hp.n_layer);
        let ctx = Context::new_no_alloc(gsize + 64, gsize)?;
        let (graph, inp, out) = build_token_graph(&ctx, &self.model, kv, shape);
        self.alloc.alloc_graph(&graph)?;
        let tokens: Vec<i32> = b.tokens.iter().map(|&t| t as i32).collect();
        inp.tokens.write_i32(&tokens)?;
        inp.pos.write_i32(b.pos)?;
        inp.slots.write_bytes(0, as_bytes(b.slots))?;
        inp.mask.write_bytes(0, as_bytes(b.mask))?;
        if let (Some(t), Some(r)) = (inp.out_rows, b.out_rows) {
            t.write_i32(r)?;
        }
        self.backend.compute(&graph)?;
        let logits = out.logits.read_f32()?;
        let layer_inputs = out.layer_inputs.iter().map(|t| t.read_f32()).collect::<Result<_>>()?;
        Ok(TokenResult { logits, layer_inputs })
    }
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: only used with i64 and f16 (plain data without padding); u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

//! Per-stream state and the feeding loop.
//!
//! A [`Stream`] is everything one token stream needs besides the shared model: its K/V storage,
//! its positions, and its memory policy. It is allocated once; its size never changes.

use crate::engine::{Engine, TokenBatch};
use crate::error::{Error, Result};
use crate::ggml::Backend;
use crate::kv::KvStore;
use crate::model::Model;
use half::f16;

/// Which logits a feed returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Logits {
    /// None (pure ingestion).
    None,
    /// The last token's.
    Last,
    /// Every token's.
    All,
}

/// Plain causal attention over up to `n_ctx` tokens (the `full` policy).
pub struct Stream {
    kv: KvStore,
    n_ctx: usize,
    /// Tokens seen so far (= next position).
    n_past: usize,
    /// Tokens per graph during prefill.
    n_batch: usize,
}

impl Stream {
    pub fn new(model: &Model, backend: &Backend, n_ctx: usize) -> Result<Stream> {
        if n_ctx == 0 {
            return Err(Error::Invalid("context length 0".into()));
        }
        Ok(Stream { kv: KvStore::new(&model.hp, n_ctx, backend)?, n_ctx, n_past: 0, n_batch: 512 })
    }

    pub fn n_past(&self) -> usize {
        self.n_past
    }
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    /// Forget everything: the next token is position 0 again.
    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    /// Bytes of state held on the device.
    pub fn state_bytes(&self) -> usize {
        self.kv.bytes()
    }

    /// Feed tokens; returns the requested logits, row-major [rows][n_vocab].
    pub fn feed(&mut self, eng: &mut Engine, tokens: &[u32], want: Logits) -> Result<Vec<f32>> {
        if self.n_past + tokens.len() > self.n_ctx {
            return Err(Error::Invalid(format!(
                "context full: {} tokens already, {} more would exceed the context of {} \
                 (use a windowed memory policy for longer streams)",
                self.n_past,
                tokens.len(),
                self.n_ctx
            )));
        }
        let mut out = Vec::new();
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + self.n_batch).min(tokens.len());
            let chunk = &tokens[start..end];
            let last_chunk = end == tokens.len();
            let rows: Option<Vec<i32>> = match want {
                Logits::All => None,
                Logits::Last if last_chunk => Some(vec![chunk.len() as i32 - 1]),
                // The LM head is skipped for rows nobody reads, except one row to keep the
                // graph's output well-defined.
                _ => Some(vec![chunk.len() as i32 - 1]),
            };
            let p0 = self.n_past;
            let n = chunk.len();
            let n_kv = p0 + n;
            let pos: Vec<i32> = (p0..p0 + n).map(|p| p as i32).collect();
            let slots: Vec<i64> = (p0..p0 + n).map(|p| p as i64).collect();
            let mut mask = vec![f16::NEG_INFINITY; n * n_kv];
            for i in 0..n {
                mask[i * n_kv..i * n_kv + p0 + i + 1].fill(f16::ZERO);
            }
            let r = eng.run_tokens(
                &self.kv,
                &TokenBatch {
                    tokens: chunk,
                    pos: &pos,
                    slots: &slots,
                    n_kv,
                    mask: &mask,
                    out_rows: rows.as_deref(),
                    capture_layer_inputs: false,
                },
            )?;
            self.n_past += n;
            if want == Logits::All || (want == Logits::Last && last_chunk) {
                out.extend_from_slice(&r.logits);
            }
            start = end;
        }
        Ok(out)
    }
}

//! Perplexity of a token sequence, scored the way llama.cpp's `llama-perplexity` does it: the
//! text is cut into windows of `ctx` tokens, each evaluated from an empty state, and the second
//! half of each window is scored (every token there has at least ctx/2 tokens of context).

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::state::{FamState, Logits};
use crate::model::Model;

/// Result of a perplexity run.
#[derive(Clone, Debug, Default)]
pub struct PerplexityReport {
    pub perplexity: f64,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
    pub tokens_scored: usize,
    pub windows: usize,
    pub ctx: usize,
}

/// Negative log-likelihood of `target` under `logits` (natural log), computed in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    lse - logits[target as usize] as f64
}

/// Score `tokens` in windows of `ctx`; `bos`: the window's first token is replaced by BOS (as
/// llama.cpp does when the model adds BOS). `on_window(done, total)` reports progress.
pub fn windowed(
    model: &Model,
    eng: &mut Engine,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    mut on_window: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    if ctx < 4 {
        return Err(Error::Invalid(format!("perplexity window of {ctx} tokens (at least 4)")));
    }
    let n_windows = tokens.len() / ctx;
    if n_windows == 0 {
        return Err(Error::Invalid(format!("{} tokens are fewer than one window of {ctx}", tokens.len())));
    }
    let nv = model.hp.n_vocab;
    let first = ctx / 2;
    let mut sum = 0.0;
    let mut count = 0;
    let mut stream = FamState::full(model, eng.backend(), ctx)?;
    for w in 0..n_windows {
        let mut win = tokens[w * ctx..(w + 1) * ctx].to_vec();
        if let Some(b) = bos {
            win[0] = b;
        }
        stream.reset();
        let logits = stream.feed(eng, &win, Logits::All)?;
        for j in first..ctx - 1 {
            sum += nll(&logits[j * nv..(j + 1) * nv], win[j + 1]);
            count += 1;
        }
        on_window(w + 1, n_windows);
    }
    let mean = sum / count as f64;
    Ok(PerplexityReport { perplexity: mean.exp(), nll: mean, tokens_scored: count, windows: n_windows, ctx })
}

//! Perplexity of a token sequence, scored the way llama.cpp's `llama-perplexity` does it: the
//! text is cut into windows of `ctx` tokens, each evaluated from an empty state, and the second
//! half of each window is scored (every token there has at least ctx/2 tokens of context).

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::state::{FamState, Logits};

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
    let lse = m + logits
        .iter()
        .map(|&x| (x as f64 - m).exp())
        .sum::<f64>()
        .ln();
    lse - logits[target as usize] as f64
}

/// KL(p || q) of the next-token distributions given by logits `p` (reference) and `q`.
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    let lse = |v: &[f32]| {
        let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let la = a as f64 - lp;
            la.exp() * (la - (b as f64 - lq))
        })
        .sum()
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
        return Err(Error::Invalid(format!(
            "perplexity window of {ctx} tokens (at least 4)"
        )));
    }
    let n_windows = tokens.len() / ctx;
    if n_windows == 0 {
        return Err(Error::Invalid(format!(
            "{} tokens are fewer than one window of {ctx}",
            tokens.len()
        )));
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
    Ok(PerplexityReport {
        perplexity: mean.exp(),
        nll: mean,
        tokens_scored: count,
        windows: n_windows,
        ctx,
    })
}

/// Perplexity of a stream scored in the policy's own streaming way: every token after the first
/// is predicted from everything the state holds, and the result is reported per segment.
#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    pub perplexity: f64,
    pub nll: f64,
    pub tokens_scored: usize,
    pub segments: Vec<Segment>,
    pub seconds: f64,
}

/// One segment of a streaming run: how well, how fast, and how much memory.
#[derive(Clone, Debug, Default)]
pub struct Segment {
    /// Stream index of the first predicted token.
    pub start: usize,
    pub tokens: usize,
    pub perplexity: f64,
    /// Compute time spent on this segment's tokens.
    pub seconds: f64,
    /// Peak RSS of the process when the segment ended.
    pub peak_rss_bytes: Option<u64>,
    /// Process CPU time (all threads) spent on this segment's tokens.
    pub cpu_seconds: Option<f64>,
}

impl Segment {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Running sums of the segment being scored.
#[derive(Default)]
struct Acc {
    start: usize,
    nll: f64,
    n: usize,
    secs: f64,
    cpu: Option<f64>,
}

impl Acc {
    fn close(&self) -> Segment {
        Segment {
            start: self.start,
            tokens: self.n,
            perplexity: (self.nll / self.n as f64).exp(),
            seconds: self.secs,
            peak_rss_bytes: crate::util::peak_rss_bytes(),
            cpu_seconds: self.cpu,
        }
    }
}

/// Feed `tokens[from..]` through `state` (which has read `tokens[..from]`) in chunks of `chunk`,
/// scoring each prediction (unless `score`
/// is false: then only each chunk's last row gets logits, unread, and perplexities are NaN).
/// `on_logits`
/// sees each chunk's logits (row-major) with the stream index of its first row, and
/// `on_progress(tokens_done)` reports progress and `on_segment` sees each segment as soon as it
/// is complete (so a run of hours leaves its measurements behind even if it is stopped), and
/// `on_chunk(tokens_read, state)` may checkpoint the state after each chunk.
pub fn streaming(
    eng: &mut Engine,
    state: &mut FamState,
    tokens: &[u32],
    segment: usize,
    chunk: usize,
    score: bool,
    from: usize,
    mut on_logits: impl FnMut(usize, &[f32]),
    mut on_progress: impl FnMut(usize),
    mut on_segment: impl FnMut(&Segment),
    mut on_chunk: impl FnMut(usize, &FamState) -> Result<()>,
) -> Result<StreamReport> {
    if tokens.len() < 2 || segment == 0 || chunk == 0 || from >= tokens.len() - 1 {
        return Err(Error::Invalid(
            "streaming perplexity needs at least 2 tokens and non-zero segment/chunk sizes".into(),
        ));
    }
    let nv = eng.model.hp.n_vocab;
    let t0 = std::time::Instant::now();
    let (mut sum, mut count) = (0.0, 0usize);
    let mut seg = Acc::default();
    let mut segments = Vec::new();
    let mut i = from;
    while i < tokens.len() - 1 {
        // The last token is only a target.
        let end = (i + chunk).min(tokens.len() - 1);
        let tc = std::time::Instant::now();
        let cpu0 = crate::util::process_cpu_seconds();
        let want = if score { Logits::All } else { Logits::None };
        let logits = state.feed(eng, &tokens[i..end], want)?;
        let per_token = tc.elapsed().as_secs_f64() / (end - i) as f64;
        let cpu_per_token = cpu0
            .zip(crate::util::process_cpu_seconds())
            .map(|(a, b)| (b - a) / (end - i) as f64);
        on_logits(i, &logits);
        for (r, j) in (i..end).enumerate() {
            let target = j + 1;
            if target / segment != seg.start / segment {
                if seg.n > 0 {
                    let done = seg.close();
                    on_segment(&done);
                    segments.push(done);
                }
                seg = Acc {
                    start: target / segment * segment,
                    ..Acc::default()
                };
            }
            // Without scores every segment's perplexity (and the mean) comes out NaN.
            let l = if score {
                nll(&logits[r * nv..(r + 1) * nv], tokens[target])
            } else {
                f64::NAN
            };
            sum += l;
            count += 1;
            seg.nll += l;
            seg.n += 1;
            seg.secs += per_token;
            seg.cpu = cpu_per_token.map(|c| seg.cpu.unwrap_or(0.0) + c);
        }
        i = end;
        on_progress(i);
        on_chunk(i, state)?;
    }
    if seg.n > 0 {
        let done = seg.close();
        on_segment(&done);
        segments.push(done);
    }
    let mean = sum / count as f64;
    Ok(StreamReport {
        perplexity: mean.exp(),
        nll: mean,
        tokens_scored: count,
        segments,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

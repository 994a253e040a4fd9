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

/// log(sum(exp(logits))) in f64, shifted by the maximum so nothing overflows: the log-softmax
/// of token t is `logits[t] - log_sum_exp(logits)`.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + logits
        .iter()
        .map(|&x| (x as f64 - m).exp())
        .sum::<f64>()
        .ln()
}

/// Negative log-likelihood of `target` under `logits` (natural log), computed in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    log_sum_exp(logits) - logits[target as usize] as f64
}

/// KL(p || q) of the next-token distributions given by logits `p` (reference) and `q`.
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_sum_exp(p), log_sum_exp(q));
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
#[derive(Clone, Debug, Default, PartialEq)]
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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpenSegment {
    pub start: usize,
    pub nll: f64,
    pub n: usize,
    pub secs: f64,
    pub cpu: Option<f64>,
}

impl OpenSegment {
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

/// Where a streaming run stands after a chunk: the tokens read, the running sums, the finished
/// segments and the one in progress. Saved with a checkpoint, it lets a stopped run resume and
/// end with the report of a run that never stopped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamProgress {
    /// Tokens read: the next chunk starts here.
    pub next: usize,
    pub nll_sum: f64,
    pub count: usize,
    pub segments: Vec<Segment>,
    pub open: OpenSegment,
    /// Time spent on the chunks so far (feeding, `on_logits`, scoring).
    pub seconds: f64,
}

/// f64 as the hex of its bits in JSON: exact through a round trip, NaN included.
pub fn f64_json(x: f64) -> serde_json::Value {
    format!("{:016x}", x.to_bits()).into()
}
/// The f64 saved by [`f64_json`].
pub fn f64_from(v: &serde_json::Value) -> Option<f64> {
    u64::from_str_radix(v.as_str()?, 16)
        .ok()
        .map(f64::from_bits)
}
fn opt_f64_json(x: Option<f64>) -> serde_json::Value {
    x.map(f64_json).unwrap_or(serde_json::Value::Null)
}
fn opt_f64_from(v: &serde_json::Value) -> Option<Option<f64>> {
    if v.is_null() {
        Some(None)
    } else {
        f64_from(v).map(Some)
    }
}

impl StreamProgress {
    pub fn to_json(&self) -> serde_json::Value {
        let seg = |s: &Segment| {
            serde_json::json!([
                s.start,
                s.tokens,
                f64_json(s.perplexity),
                f64_json(s.seconds),
                s.peak_rss_bytes,
                opt_f64_json(s.cpu_seconds)
            ])
        };
        let o = &self.open;
        serde_json::json!({
            "next": self.next, "nll_sum": f64_json(self.nll_sum), "count": self.count,
            "seconds": f64_json(self.seconds),
            "segments": self.segments.iter().map(seg).collect::<Vec<_>>(),
            "open": [o.start, f64_json(o.nll), o.n, f64_json(o.secs), opt_f64_json(o.cpu)],
        })
    }

    /// The progress saved by [`StreamProgress::to_json`]; `None` if `v` is not one.
    pub fn from_json(v: &serde_json::Value) -> Option<StreamProgress> {
        let us = |v: &serde_json::Value| v.as_u64().map(|x| x as usize);
        let seg = |v: &serde_json::Value| -> Option<Segment> {
            let a = v.as_array().filter(|a| a.len() == 6)?;
            Some(Segment {
                start: us(&a[0])?,
                tokens: us(&a[1])?,
                perplexity: f64_from(&a[2])?,
                seconds: f64_from(&a[3])?,
                peak_rss_bytes: if a[4].is_null() {
                    None
                } else {
                    Some(a[4].as_u64()?)
                },
                cpu_seconds: opt_f64_from(&a[5])?,
            })
        };
        let o = v["open"].as_array().filter(|a| a.len() == 5)?;
        Some(StreamProgress {
            next: us(&v["next"])?,
            nll_sum: f64_from(&v["nll_sum"])?,
            count: us(&v["count"])?,
            seconds: f64_from(&v["seconds"])?,
            segments: v["segments"]
                .as_array()?
                .iter()
                .map(seg)
                .collect::<Option<_>>()?,
            open: OpenSegment {
                start: us(&o[0])?,
                nll: f64_from(&o[1])?,
                n: us(&o[2])?,
                secs: f64_from(&o[3])?,
                cpu: opt_f64_from(&o[4])?,
            },
        })
    }
}

/// Feed `tokens[from.next..]` through `state` (which has read `tokens[..from.next]`, the run
/// so far being `from`; `StreamProgress::default()` for a new run) in chunks of `chunk`,
/// scoring each prediction (unless `score`
/// is false: then only each chunk's last row gets logits, unread, and perplexities are NaN).
/// `on_logits`
/// sees each chunk's logits (row-major) with the stream index of its first row, and
/// `on_progress(tokens_done)` reports progress and `on_segment` sees each segment as soon as it
/// is complete (so a run of hours leaves its measurements behind even if it is stopped), and
/// `on_chunk(progress, state)` may checkpoint the run after each chunk.
#[allow(clippy::too_many_arguments)]
pub fn streaming(
    eng: &mut Engine,
    state: &mut FamState,
    tokens: &[u32],
    segment: usize,
    chunk: usize,
    score: bool,
    from: StreamProgress,
    mut on_logits: impl FnMut(usize, &[f32]),
    mut on_progress: impl FnMut(usize),
    mut on_segment: impl FnMut(&Segment),
    mut on_chunk: impl FnMut(&StreamProgress, &FamState) -> Result<()>,
) -> Result<StreamReport> {
    if tokens.len() < 2 || segment == 0 || chunk == 0 || from.next >= tokens.len() - 1 {
        return Err(Error::Invalid(
            "streaming perplexity needs at least 2 tokens and non-zero segment/chunk sizes".into(),
        ));
    }
    let nv = eng.model.hp.n_vocab;
    let mut p = from;
    while p.next < tokens.len() - 1 {
        let i = p.next;
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
            let seg = &mut p.open;
            if target / segment != seg.start / segment {
                if seg.n > 0 {
                    let done = seg.close();
                    on_segment(&done);
                    p.segments.push(done);
                }
                p.open = OpenSegment {
                    start: target / segment * segment,
                    ..OpenSegment::default()
                };
            }
            // Without scores every segment's perplexity (and the mean) comes out NaN.
            let l = if score {
                nll(&logits[r * nv..(r + 1) * nv], tokens[target])
            } else {
                f64::NAN
            };
            let seg = &mut p.open;
            p.nll_sum += l;
            p.count += 1;
            seg.nll += l;
            seg.n += 1;
            seg.secs += per_token;
            seg.cpu = cpu_per_token.map(|c| seg.cpu.unwrap_or(0.0) + c);
        }
        // The whole chunk (feed, `on_logits`, scoring), without checkpointing.
        p.seconds += tc.elapsed().as_secs_f64();
        p.next = end;
        on_progress(end);
        on_chunk(&p, state)?;
    }
    if p.open.n > 0 {
        let done = p.open.close();
        on_segment(&done);
        p.segments.push(done);
    }
    let mean = p.nll_sum / p.count as f64;
    Ok(StreamReport {
        perplexity: mean.exp(),
        nll: mean,
        tokens_scored: p.count,
        segments: p.segments,
        seconds: p.seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint's progress comes back bit for bit, with the NaN perplexities of an unscored
    /// run and the absent measurements of a platform without them.
    #[test]
    fn stream_progress_round_trips_through_json() {
        let seg = |start, ppl, cpu| Segment {
            start,
            tokens: 99,
            perplexity: ppl,
            seconds: 0.1 + 0.2,
            peak_rss_bytes: Some(123 << 20),
            cpu_seconds: cpu,
        };
        let p = StreamProgress {
            next: 256,
            nll_sum: 1.0 / 3.0,
            count: 255,
            segments: vec![seg(0, 41.123456789, Some(1e-300)), seg(100, f64::NAN, None)],
            open: OpenSegment {
                start: 200,
                nll: f64::NAN,
                n: 56,
                secs: std::f64::consts::PI,
                cpu: None,
            },
            seconds: 2.5,
        };
        let text = p.to_json().to_string();
        let back = StreamProgress::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        // NaN != NaN: compare the bits of the NaN fields, the rest with ==.
        assert!(back.segments[1].perplexity.is_nan() && back.open.nll.is_nan());
        let fix = |mut q: StreamProgress| {
            q.segments[1].perplexity = 0.0;
            q.open.nll = 0.0;
            q
        };
        assert_eq!(fix(back), fix(p));
        assert!(StreamProgress::from_json(&serde_json::json!({"next": 3})).is_none());
    }
}

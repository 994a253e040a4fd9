//! Recall of a planted fact at a distance: the benchmark of issue 18 (does a memory policy
//! carry a fact out of the window?).
//!
//! Cases are token ids, made by `tools/recall_bench.py` from `tools/fam_data.py` (a fact in an
//! early block, natural filler, a question k windows later), so the block layout the cases were
//! built for is exactly what the stream sees (text would be re-tokenized). Each case is streamed
//! into a fresh state; the answer is scored token by token under teacher forcing: a case is a hit
//! when every answer token is the argmax (greedy decoding would produce the answer), and its
//! log-likelihood is the sum of the answer tokens' log-probabilities.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::settings::{FamSettings, MemoryPolicy};
use crate::state::{FamState, Logits};
use std::path::Path;

/// One planted fact and its question.
#[derive(Clone, Debug)]
pub struct Case {
    /// Blocks between the fact's block and the question's block.
    pub k: u32,
    /// The fact's kind (code, name, ...), for the report.
    pub kind: String,
    /// Everything up to the answer: filler, fact, filler, question.
    pub prompt: Vec<u32>,
    /// The answer's tokens.
    pub answer: Vec<u32>,
}

/// The outcome of one case.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub hit: bool,
    /// Sum of the answer tokens' natural-log probabilities.
    pub logprob: f64,
    /// The argmax at each answer position.
    pub predicted: Vec<u32>,
    pub seconds: f64,
    /// The prompt tokens the `keep` policy held when the question was asked (stream order).
    pub kept: Vec<u32>,
}

/// Read a JSONL file of cases: one object a line with `k`, `kind`, `prompt` and `answer` (token
/// ids). Errors name the file and line.
pub fn read_cases(path: &Path, n_vocab: usize) -> Result<Vec<Case>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let mut cases = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |what: &str| Error::Invalid(format!("{}:{}: {what}", path.display(), i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(&format!("not JSON ({e})")))?;
        let ids = |key: &str| -> Result<Vec<u32>> {
            let arr = v[key]
                .as_array()
                .ok_or_else(|| at(&format!("`{key}` must be a list of token ids")))?;
            arr.iter()
                .map(|x| match x.as_u64() {
                    Some(t) if (t as usize) < n_vocab => Ok(t as u32),
                    _ => Err(at(&format!(
                        "`{key}` has {x}, not a token id below the vocabulary size {n_vocab}"
                    ))),
                })
                .collect()
        };
        let (prompt, answer) = (ids("prompt")?, ids("answer")?);
        if prompt.is_empty() || answer.is_empty() {
            return Err(at("`prompt` and `answer` must not be empty"));
        }
        let k = v["k"]
            .as_u64()
            .and_then(|k| u32::try_from(k).ok())
            .ok_or_else(|| at("`k` must be a non-negative integer"))?;
        let kind = v["kind"].as_str().unwrap_or("").to_string();
        cases.push(Case {
            k,
            kind,
            prompt,
            answer,
        });
    }
    if cases.is_empty() {
        return Err(Error::Invalid(format!("{}: no cases", path.display())));
    }
    Ok(cases)
}

/// Stream one case into `state` (reset first) and score its answer.
pub fn run_case(eng: &mut Engine, state: &mut FamState, case: &Case) -> Result<Outcome> {
    let t0 = std::time::Instant::now();
    state.reset();
    let mut logits = state.feed(eng, &case.prompt, Logits::Last)?;
    let kept = state
        .kept_tokens()
        .iter()
        .filter_map(|&i| case.prompt.get(i as usize).copied())
        .collect();
    let (mut logprob, mut predicted) = (0.0f64, Vec::with_capacity(case.answer.len()));
    for (i, &a) in case.answer.iter().enumerate() {
        let (best, lp) = argmax_and_logprob(&logits, a as usize);
        predicted.push(best as u32);
        logprob += lp;
        if i + 1 < case.answer.len() {
            logits = state.feed(eng, &[a], Logits::Last)?;
        }
    }
    Ok(Outcome {
        hit: predicted == case.answer,
        logprob,
        predicted,
        seconds: t0.elapsed().as_secs_f64(),
        kept,
    })
}

/// Run every case in a fresh stream (the state is reset between cases). With `full` attention,
/// a case longer than the context is not run (None): it is reported as beyond the context, not
/// as a miss. `on_case` is called after each case (progress).
pub fn run_all(
    eng: &mut Engine,
    state: &mut FamState,
    cases: &[Case],
    mut on_case: impl FnMut(usize),
) -> Result<Vec<Option<Outcome>>> {
    let full = state.settings.policy == MemoryPolicy::Full;
    let mut out = Vec::with_capacity(cases.len());
    for (i, c) in cases.iter().enumerate() {
        if full && c.prompt.len() + c.answer.len() > state.n_ctx() {
            out.push(None);
        } else {
            out.push(Some(run_case(eng, state, c)?));
        }
        on_case(i + 1);
    }
    Ok(out)
}

/// The report: per distance k, hits/trials, recall with its 95% Wilson interval and the mean
/// answer log-likelihood; then every case.
pub fn report(
    cases: &[Case],
    outcomes: &[Option<Outcome>],
    settings: &FamSettings,
) -> serde_json::Value {
    let mut ks: Vec<u32> = cases.iter().map(|c| c.k).collect();
    ks.sort_unstable();
    ks.dedup();
    let summary: Vec<serde_json::Value> = ks
        .iter()
        .map(|&k| {
            let ran: Vec<&Outcome> = cases
                .iter()
                .zip(outcomes)
                .filter(|(c, _)| c.k == k)
                .filter_map(|(_, o)| o.as_ref())
                .collect();
            let skipped = cases.iter().filter(|c| c.k == k).count() - ran.len();
            let hits = ran.iter().filter(|o| o.hit).count();
            let (lo, hi) = wilson95(hits, ran.len());
            let mean_lp = ran.iter().map(|o| o.logprob).sum::<f64>() / ran.len().max(1) as f64;
            serde_json::json!({
                "k": k, "hits": hits, "trials": ran.len(), "beyond_context": skipped,
                "recall": hits as f64 / ran.len().max(1) as f64, "ci95": [lo, hi],
                "mean_answer_logprob": mean_lp,
            })
        })
        .collect();
    let each: Vec<serde_json::Value> = cases
        .iter()
        .zip(outcomes)
        .map(|(c, o)| match o {
            Some(o) => serde_json::json!({
                "k": c.k, "kind": c.kind, "prompt_tokens": c.prompt.len(), "hit": o.hit,
                "answer_logprob": o.logprob, "predicted": o.predicted, "seconds": o.seconds,
                "kept": o.kept,
            }),
            None => serde_json::json!({"k": c.k, "kind": c.kind, "prompt_tokens": c.prompt.len(),
                                       "beyond_context": true}),
        })
        .collect();
    serde_json::json!({
        "settings": settings.to_json(),
        "summary": summary, "cases": each,
    })
}

/// (argmax, log-softmax at `target`) of one row of logits, in f64.
pub fn argmax_and_logprob(logits: &[f32], target: usize) -> (usize, f64) {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &x) in logits.iter().enumerate() {
        if x > max {
            (best, max) = (i, x);
        }
    }
    (best, -crate::perplexity::nll(logits, target as u32))
}

/// The Wilson score interval for `hits` of `n` at 95% (z = 1.96): sound at 0 and n hits, where
/// the normal approximation collapses to a point.
pub fn wilson95(hits: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n, p) = (1.96f64, n as f64, hits as f64 / n as f64);
    let c = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let h = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    ((c - h).max(0.0), (c + h).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_the_textbook_values() {
        // 0/10: [0, 0.2775]; 10/10: [0.7225, 1]; 50/100: [0.4038, 0.5962] (Wilson 1927 form)
        let (lo, hi) = wilson95(0, 10);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 1e-4, "{lo} {hi}");
        let (lo, hi) = wilson95(10, 10);
        assert!((lo - 0.7225).abs() < 1e-4 && hi == 1.0, "{lo} {hi}");
        let (lo, hi) = wilson95(50, 100);
        assert!(
            (lo - 0.4038).abs() < 1e-4 && (hi - 0.5962).abs() < 1e-4,
            "{lo} {hi}"
        );
    }

    #[test]
    fn logprob_is_a_log_softmax() {
        let (best, lp) = argmax_and_logprob(&[0.0, (3.0f32).ln(), 0.0], 1);
        assert_eq!(best, 1);
        assert!((lp - (3.0f64 / 5.0).ln()).abs() < 1e-6, "{lp}");
    }
}

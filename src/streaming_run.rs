//! A streaming-perplexity run as `famstream perplexity --memory P` makes it: the stream of
//! [`perplexity::streaming`] plus what turns it into a measurement one can leave running for
//! hours: checkpoints that a stopped run resumes from (refused on another text, model, settings
//! or run shape), and a full-attention reference on a second engine for the mean KL of the
//! first positions (`--kl-vs-full`).

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::perplexity::{self, Segment, StreamProgress, StreamReport};
use crate::runtime::Runtime;
use crate::settings::{FamSettings, MemoryPolicy};
use crate::state::{FamState, Logits};
use crate::util::Fnv64;
use serde_json::{json, Value as Json};
use std::path::PathBuf;

/// How the run is scored and checkpointed.
#[derive(Clone, Debug)]
pub struct StreamingRunOptions {
    /// Report perplexity per segment of this many tokens.
    pub segment: usize,
    /// Score every position (false: only stream, timing each segment).
    pub scored: bool,
    /// Also report the mean KL from full attention over the first N positions.
    pub kl_vs_full: usize,
    /// Save the state and the run so far here every `checkpoint_every` tokens.
    pub checkpoint: Option<PathBuf>,
    pub checkpoint_every: usize,
}

/// A run's starting point: a fresh stream, or what a checkpoint holds.
#[derive(Default)]
pub struct RunStart {
    pub progress: StreamProgress,
    /// (sum, count) of the KL divergences so far.
    pub kl: (f64, usize),
}

/// A checkpoint to resume from.
pub struct Resumed {
    pub state: FamState,
    pub start: RunStart,
    /// The checkpoint predates run records: it holds only the state, so the report covers
    /// the tokens after it.
    pub state_only: bool,
}

/// What the run measured.
pub struct StreamingRunReport {
    pub report: StreamReport,
    /// Mean KL(full || policy) over `kl_positions` positions.
    pub kl: Option<f64>,
    pub kl_positions: usize,
    pub resumed_from: usize,
    /// The run's peak RSS, including the segments read before a resume.
    pub peak_rss_bytes: Option<u64>,
}

pub struct StreamingRun<'r> {
    rt: &'r Runtime,
    tokens: Vec<u32>,
    settings: FamSettings,
    opts: StreamingRunOptions,
    /// Tokens per feed: the policy's block (512 for `full`).
    chunk: usize,
    /// Positions compared with full attention.
    kl_n: usize,
    /// What a resumed run must share with the stopped one.
    run_settings: Json,
}

impl<'r> StreamingRun<'r> {
    pub fn new(
        rt: &'r Runtime,
        tokens: Vec<u32>,
        settings: FamSettings,
        opts: StreamingRunOptions,
    ) -> StreamingRun<'r> {
        let chunk = if settings.policy == MemoryPolicy::Full {
            512
        } else {
            settings.block_size as usize
        };
        let kl_n = opts
            .kl_vs_full
            .min(tokens.len().saturating_sub(1))
            .min(rt.model.hp.n_ctx_train);
        let run_settings = json!({
            "segment": opts.segment, "chunk": chunk, "scored": opts.scored, "kl_positions": kl_n,
        });
        StreamingRun {
            rt,
            tokens,
            settings,
            opts,
            chunk,
            kl_n,
            run_settings,
        }
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// A checkpoint names the tokens it has read by their hash, so a resumed run is refused on
    /// another text (or tokenizer); the model and settings are checked by the snapshot itself.
    fn read_hash(&self, n: usize) -> String {
        let mut h = Fnv64::new();
        for t in &self.tokens[..n] {
            h.write(&t.to_le_bytes());
        }
        format!("{:016x}", h.finish())
    }

    /// The checkpoint's state and run so far, when the checkpoint file exists; refused, naming
    /// why, when it belongs to another run.
    pub fn resume(&self, eng: &Engine) -> Result<Option<Resumed>> {
        let Some(p) = self.opts.checkpoint.as_ref().filter(|p| p.exists()) else {
            return Ok(None);
        };
        let (state, extra) =
            FamState::load(p, &self.rt.model, eng.backend(), Some(&self.settings))?;
        let bad = |what: &str| Error::Invalid(format!("checkpoint {}: {what}", p.display()));
        let next = extra["next"]
            .as_u64()
            .ok_or_else(|| bad("not a perplexity checkpoint"))? as usize;
        if next >= self.tokens.len().saturating_sub(1) {
            return Err(bad(&format!(
                "it has read {next} tokens; this text has {} to score (delete it to start over)",
                self.tokens.len()
            )));
        }
        if extra["read_hash"].as_str() != Some(self.read_hash(next).as_str()) {
            return Err(bad("it was made on another text (delete it to start over)"));
        }
        if extra["run"].is_null() {
            // Made before checkpoints held the run so far: only the tokens read.
            if self.kl_n > 0 {
                return Err(bad(
                    "it holds no KL sums (made by an older famstream); delete it to start over",
                ));
            }
            let progress = StreamProgress {
                next,
                ..StreamProgress::default()
            };
            return Ok(Some(Resumed {
                state,
                start: RunStart {
                    progress,
                    kl: (0.0, 0),
                },
                state_only: true,
            }));
        }
        if extra["run"] != self.run_settings {
            return Err(bad(&format!(
                "it was made with {}, this run is {} (delete it to start over)",
                extra["run"], self.run_settings
            )));
        }
        let progress = StreamProgress::from_json(&extra["progress"])
            .filter(|p| p.next == next)
            .ok_or_else(|| bad("its record of the run so far is damaged"))?;
        let kl_sum = perplexity::f64_from(&extra["kl_sum"]);
        let kl_count = extra["kl_count"].as_u64().map(|c| c as usize);
        let kl = match (kl_sum, kl_count) {
            // Checkpoints are taken only after the KL positions.
            (Some(s), Some(c)) if c == self.kl_n && next >= self.kl_n => (s, c),
            _ => return Err(bad("its KL sums are damaged")),
        };
        Ok(Some(Resumed {
            state,
            start: RunStart { progress, kl },
            state_only: false,
        }))
    }

    /// Stream the tokens into `state` from `start`, scoring, checkpointing and comparing with
    /// full attention as asked. `on_progress(tokens_read)`; `on_segment` sees each segment as
    /// it completes.
    pub fn run(
        &self,
        eng: &mut Engine,
        state: &mut FamState,
        start: RunStart,
        mut on_progress: impl FnMut(usize),
        on_segment: impl FnMut(&Segment),
    ) -> Result<StreamingRunReport> {
        let from = start.progress.next;
        let kl_n = self.kl_n;
        // (sum, count) of the KL divergences, shared by the scoring and checkpoint closures.
        let kl_acc = std::cell::Cell::new(start.kl);
        let mut last_checkpoint = from;
        // Lockstep reference for the KL: full attention on its own engine.
        let mut reference = if kl_n > from {
            let e = self.rt.engine()?;
            let st = FamState::full(&self.rt.model, e.backend(), kl_n + 1)?;
            Some((e, st))
        } else {
            None
        };
        let nv = self.rt.model.hp.n_vocab;
        let tokens = &self.tokens;
        let report = perplexity::streaming(
            eng,
            state,
            tokens,
            self.opts.segment,
            self.chunk,
            self.opts.scored,
            start.progress,
            |first, logits| {
                let Some((e, st)) = reference.as_mut() else {
                    return;
                };
                let rows = logits.len() / nv;
                let end = (first + rows).min(kl_n);
                if first >= end {
                    return;
                }
                let Ok(full) = st.feed(e, &tokens[first..end], Logits::All) else {
                    return;
                };
                let (mut sum, mut count) = kl_acc.get();
                for r in 0..end - first {
                    sum +=
                        perplexity::kl(&full[r * nv..(r + 1) * nv], &logits[r * nv..(r + 1) * nv]);
                    count += 1;
                }
                kl_acc.set((sum, count));
            },
            &mut on_progress,
            on_segment,
            |progress, st| {
                let read = progress.next;
                // Inside the KL positions the full-attention reference would be needed too;
                // and only whole chunks, so a resumed run feeds the chunks (graph shapes) of
                // one that never stopped.
                let Some(p) = &self.opts.checkpoint else {
                    return Ok(());
                };
                if read >= kl_n
                    && read % self.chunk == 0
                    && read - last_checkpoint >= self.opts.checkpoint_every
                {
                    let (kl_sum, kl_count) = kl_acc.get();
                    let extra = json!({
                        "next": read, "read_hash": self.read_hash(read),
                        "run": self.run_settings, "kl_count": kl_count,
                        "kl_sum": perplexity::f64_json(kl_sum),
                        "progress": progress.to_json(),
                    });
                    st.save(p, &self.rt.model, extra)?;
                    last_checkpoint = read;
                }
                Ok(())
            },
        )?;
        let (kl_sum, kl_count) = kl_acc.get();
        // The run's peak: a resumed run's segments from before the checkpoint carry the peak
        // of the process that read them (with the KL reference, one that also held it), so
        // the report is that of a run that never stopped.
        let peak_rss_bytes = report
            .segments
            .iter()
            .filter_map(|g| g.peak_rss_bytes)
            .chain(crate::util::peak_rss_bytes())
            .max();
        Ok(StreamingRunReport {
            report,
            kl: (kl_count > 0).then(|| kl_sum / kl_count as f64),
            kl_positions: kl_count,
            resumed_from: from,
            peak_rss_bytes,
        })
    }
}

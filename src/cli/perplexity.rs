//! `famstream perplexity`: perplexity of a text file, scored in windows of --ctx tokens (as llama-perplexity).

use super::common::*;
use clap::Args;
use famstream::perplexity::StreamProgress;
use famstream::runtime::default_threads;
use famstream::settings::MemoryPolicy;
use famstream::state::FamState;
use famstream::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text file.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Score at most this many tokens of the file (0 = all).
    #[arg(long = "max-tokens", default_value_t = 0)]
    pub max_tokens: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Report perplexity per segment of this many tokens (streaming mode).
    #[arg(long = "segment", default_value_t = 8192)]
    pub segment: usize,
    /// Append each segment to this file as one JSON line as soon as it is complete
    /// (streaming mode), so a run of hours leaves its measurements even if it is stopped.
    #[arg(long = "segment-log")]
    pub segment_log: Option<PathBuf>,
    /// Also report the mean KL divergence from full attention over the first N positions.
    #[arg(long = "kl-vs-full", default_value_t = 0)]
    pub kl_vs_full: usize,
    /// Stream without scoring (with --memory): logits only for each chunk's last row, as
    /// `summarize` and `chat` read their input; segments report time per token and peak RSS.
    #[arg(long = "no-scores", conflicts_with = "kl_vs_full")]
    pub no_scores: bool,
    /// Save the stream's state and the run so far to FILE every --checkpoint-every tokens
    /// (never within the --kl-vs-full positions), and resume from it when FILE exists (same
    /// model, settings, text and --kl-vs-full): a run of hours survives being stopped and
    /// reports as if it never stopped. Delete FILE to start over. Needs --memory.
    #[arg(long = "checkpoint")]
    pub checkpoint: Option<PathBuf>,
    /// Tokens between checkpoints.
    #[arg(long = "checkpoint-every", default_value_t = 65536)]
    pub checkpoint_every: usize,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// Streaming perplexity with `--memory`, else llama-perplexity's windowed scoring (which has no
/// stream state, so the streaming-only flags are refused there).
pub fn run(args: PerplexityArgs) -> Result<()> {
    if args.memory.settings.memory.is_some() {
        return streaming(args);
    }
    if args.no_scores || args.checkpoint.is_some() {
        return Err(Error::Invalid(
            "--no-scores and --checkpoint stream through a memory policy: add --memory P".into(),
        ));
    }
    let m = &args.memory;
    if m.any_setting()
        || args.segment_log.is_some()
        || args.kl_vs_full > 0
        || m.load_state.is_some()
        || m.save_state.is_some()
        || m.start_position != 0
    {
        return Err(Error::Invalid(
            "memory flags, --segment-log and --kl-vs-full apply to streaming perplexity: \
             add --memory P (without it, perplexity is scored in independent --ctx windows)"
                .into(),
        ));
    }
    windowed(args)
}

fn streaming(args: PerplexityArgs) -> Result<()> {
    let PerplexityArgs {
        model,
        file,
        max_tokens,
        json,
        segment,
        segment_log,
        kl_vs_full,
        no_scores,
        checkpoint,
        checkpoint_every,
        memory,
    } = args;
    memory.refuse_unused("perplexity", true, Some("use --checkpoint"))?;
    let mut seg_log = match &segment_log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io(p, "open", e))?,
        ),
        None => None,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, "read", e))?;
    let rt = model.load()?;
    let mut tokens = rt.tokenizer.encode(&text, rt.tokenizer.add_bos(), false);
    if max_tokens > 0 && tokens.len() > max_tokens {
        tokens.truncate(max_tokens);
    }
    let settings = memory.settings(&rt)?;
    let mut eng = rt.engine()?;
    let n_ctx = model.ctx(&rt);
    // A checkpoint names the tokens it has read by their hash, so a resumed run is
    // refused on another text (or tokenizer); the model and settings are checked by the
    // snapshot itself.
    let read_hash = |n: usize| {
        let mut h = famstream::util::Fnv64::new();
        for t in &tokens[..n] {
            h.write(&t.to_le_bytes());
        }
        format!("{:016x}", h.finish())
    };
    let chunk = if settings.policy == MemoryPolicy::Full {
        512
    } else {
        settings.block_size as usize
    };
    // Lockstep reference for --kl-vs-full: full attention on its own engine, over the
    // first kl_n positions.
    let kl_n = kl_vs_full
        .min(tokens.len().saturating_sub(1))
        .min(rt.model.hp.n_ctx_train);
    // What else a resumed run must share with the stopped one.
    let run_settings = serde_json::json!({
        "segment": segment, "chunk": chunk, "scored": !no_scores, "kl_positions": kl_n,
    });
    let (mut state, progress, kl0) = match &checkpoint {
        Some(p) if p.exists() => {
            if memory.load_state.is_some() {
                return Err(Error::Invalid(
                    "--load-state and an existing --checkpoint both give a state".into(),
                ));
            }
            let (st, extra) = FamState::load(p, &rt.model, eng.backend(), Some(&settings))?;
            memory.same_start(&st, &p.display().to_string())?;
            let bad = |what: &str| Error::Invalid(format!("checkpoint {}: {what}", p.display()));
            let next = extra["next"]
                .as_u64()
                .ok_or_else(|| bad("not a perplexity checkpoint"))? as usize;
            if next >= tokens.len().saturating_sub(1) {
                return Err(bad(&format!(
                    "it has read {next} tokens; this text has {} to score (delete it to \
                     start over)",
                    tokens.len()
                )));
            }
            if extra["read_hash"].as_str() != Some(read_hash(next).as_str()) {
                return Err(bad("it was made on another text (delete it to start over)"));
            }
            let (progress, kl) = if extra["run"].is_null() {
                // Made before checkpoints held the run so far: only the tokens read.
                if kl_n > 0 {
                    return Err(bad(
                        "it holds no KL sums (made by an older famstream); delete it \
                         to start over",
                    ));
                }
                eprintln!(
                    "warning: checkpoint {} holds only the state: the report covers \
                     the tokens after {next}",
                    p.display()
                );
                let progress = StreamProgress {
                    next,
                    ..StreamProgress::default()
                };
                (progress, (0.0, 0))
            } else {
                if extra["run"] != run_settings {
                    return Err(bad(&format!(
                        "it was made with {}, this run is {run_settings} (delete it to \
                         start over)",
                        extra["run"]
                    )));
                }
                let progress = StreamProgress::from_json(&extra["progress"])
                    .filter(|p| p.next == next)
                    .ok_or_else(|| bad("its record of the run so far is damaged"))?;
                let kl_sum = famstream::perplexity::f64_from(&extra["kl_sum"]);
                let kl_count = extra["kl_count"].as_u64().map(|c| c as usize);
                match (kl_sum, kl_count) {
                    // Checkpoints are taken only after the KL positions.
                    (Some(s), Some(c)) if c == kl_n && next >= kl_n => (progress, (s, c)),
                    _ => return Err(bad("its KL sums are damaged")),
                }
            };
            eprintln!("resuming from checkpoint {} at token {next}", p.display());
            (st, progress, kl)
        }
        _ => (
            memory.state(&rt, &eng, n_ctx)?,
            StreamProgress::default(),
            (0.0, 0),
        ),
    };
    let from = progress.next;
    // (sum, count) of the KL divergences, shared by the scoring and checkpoint closures.
    let kl_acc = std::cell::Cell::new(kl0);
    let mut last_checkpoint = from;
    let mut reference = if kl_n > from {
        let e = rt.engine()?;
        let st = FamState::full(&rt.model, e.backend(), kl_n + 1)?;
        Some((e, st))
    } else {
        None
    };
    let nv = rt.model.hp.n_vocab;
    let pb = famstream::util::progress(tokens.len() as u64, "tokens");
    let r = famstream::perplexity::streaming(
        &mut eng,
        &mut state,
        &tokens,
        segment,
        chunk,
        !no_scores,
        progress,
        |start, logits| {
            let Some((e, st)) = reference.as_mut() else {
                return;
            };
            let rows = logits.len() / nv;
            let end = (start + rows).min(kl_n);
            if start >= end {
                return;
            }
            let Ok(full) = st.feed(e, &tokens[start..end], famstream::state::Logits::All) else {
                return;
            };
            let (mut sum, mut count) = kl_acc.get();
            for r in 0..end - start {
                sum += famstream::perplexity::kl(
                    &full[r * nv..(r + 1) * nv],
                    &logits[r * nv..(r + 1) * nv],
                );
                count += 1;
            }
            kl_acc.set((sum, count));
        },
        |done| pb.set_position(done as u64),
        |g| {
            if let Some(f) = seg_log.as_mut() {
                // Best effort: the log is a by-product; the result is the final report.
                let _ = writeln!(f, "{}", segment_json(g));
                let _ = f.flush();
            }
        },
        |progress, st| {
            let read = progress.next;
            // Inside the KL positions the full-attention reference would be needed
            // too; and only whole chunks, so a resumed run feeds the chunks (graph
            // shapes) of one that never stopped.
            if let (Some(p), true) = (&checkpoint, read >= kl_n && read % chunk == 0) {
                if read - last_checkpoint >= checkpoint_every {
                    let (kl_sum, kl_count) = kl_acc.get();
                    let extra = serde_json::json!({
                        "next": read, "read_hash": read_hash(read),
                        "run": run_settings, "kl_count": kl_count,
                        "kl_sum": famstream::perplexity::f64_json(kl_sum),
                        "progress": progress.to_json(),
                    });
                    st.save(p, &rt.model, extra)?;
                    last_checkpoint = read;
                }
            }
            Ok(())
        },
    )?;
    pb.finish_and_clear();
    let (kl_sum, kl_count) = kl_acc.get();
    let kl = (kl_count > 0).then(|| kl_sum / kl_count as f64);
    // The run's peak: a resumed run's segments from before the checkpoint carry the
    // peak of the process that read them (with --kl-vs-full, one that also held the
    // full-attention reference), so the report is that of a run that never stopped.
    let rss = r
        .segments
        .iter()
        .filter_map(|g| g.peak_rss_bytes)
        .chain(famstream::util::peak_rss_bytes())
        .max();
    if json {
        let segs: Vec<serde_json::Value> = r.segments.iter().map(segment_json).collect();
        let j = serde_json::json!({
            "settings": settings.to_json(), "scored": !no_scores,
            "threads": model.threads.unwrap_or_else(default_threads),
            "resumed_from": from,
            "perplexity": r.perplexity, "nll": r.nll,
            "tokens_scored": r.tokens_scored, "segments": segs, "seconds": r.seconds,
            "tokens_per_second": r.tokens_scored as f64 / r.seconds,
            "kl_vs_full": kl, "kl_positions": kl_count,
            "state_bytes": state.state_bytes(), "peak_rss_bytes": rss,
        });
        print_report(&rt, j);
    } else {
        let tps = r.tokens_scored as f64 / r.seconds;
        if no_scores {
            let n = r.tokens_scored;
            println!(
                "memory {} streamed {n} tokens ({tps:.1} tok/s)",
                settings.policy
            );
        } else {
            println!(
                "memory {} perplexity {:.4} over {} tokens ({tps:.1} tok/s)",
                settings.policy, r.perplexity, r.tokens_scored
            );
        }
        for g in &r.segments {
            let ppl = if g.perplexity.is_nan() {
                "-".to_string() // --no-scores
            } else {
                format!("{:.4}", g.perplexity)
            };
            println!(
                "  tokens {:>9}..{:<9} perplexity {ppl}  {:.1} tok/s  peak RSS {} MiB",
                g.start,
                g.start + g.tokens,
                g.tokens_per_second(),
                g.peak_rss_bytes.unwrap_or(0) >> 20
            );
        }
        if let Some(k) = kl {
            println!("mean KL from full attention over {kl_count} positions: {k:.4}");
        }
        println!(
            "state {} bytes, peak RSS {} bytes",
            state.state_bytes(),
            rss.unwrap_or(0)
        );
    }
    Ok(())
}

fn windowed(args: PerplexityArgs) -> Result<()> {
    let PerplexityArgs {
        model,
        file,
        max_tokens,
        json,
        ..
    } = args;
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, "read", e))?;
    let rt = model.load()?;
    let ctx = model.ctx.unwrap_or(512);
    let mut tokens = rt.tokenizer.encode(&text, rt.tokenizer.add_bos(), false);
    if max_tokens > 0 && tokens.len() > max_tokens {
        tokens.truncate(max_tokens);
    }
    let bos = if rt.tokenizer.add_bos() {
        rt.tokenizer.bos()
    } else {
        None
    };
    let mut eng = rt.engine()?;
    let pb = famstream::util::progress((tokens.len() / ctx.max(1)) as u64, "windows");
    let t0 = std::time::Instant::now();
    let r = famstream::perplexity::windowed(&rt.model, &mut eng, &tokens, ctx, bos, |done, _| {
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if json {
        let j = serde_json::json!({
            "perplexity": r.perplexity, "nll": r.nll, "tokens_scored": r.tokens_scored,
            "windows": r.windows, "ctx": r.ctx, "memory": "full", "seconds": secs,
            "tokens_per_second": (r.windows * r.ctx) as f64 / secs,
            "peak_rss_bytes": famstream::util::peak_rss_bytes(),
        });
        print_report(&rt, j);
    } else {
        println!(
            "perplexity {:.4} over {} tokens ({} windows of {}), {:.1} tok/s",
            r.perplexity,
            r.tokens_scored,
            r.windows,
            r.ctx,
            (r.windows * r.ctx) as f64 / secs
        );
    }
    Ok(())
}

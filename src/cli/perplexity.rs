//! `famstream perplexity`: perplexity of a text file, scored in windows of --ctx tokens (as llama-perplexity).

use super::common::*;
use clap::Args;
use famstream::runtime::default_threads;
use famstream::streaming_run::{RunStart, StreamingRun, StreamingRunOptions};
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
    let run = StreamingRun::new(
        &rt,
        tokens,
        settings,
        StreamingRunOptions {
            segment,
            scored: !no_scores,
            kl_vs_full,
            checkpoint: checkpoint.clone(),
            checkpoint_every,
        },
    );
    let (mut state, start) = match run.resume(&eng)? {
        Some(r) => {
            let p = checkpoint.as_ref().expect("resumed from a checkpoint");
            if memory.load_state.is_some() {
                return Err(Error::Invalid(
                    "--load-state and an existing --checkpoint both give a state".into(),
                ));
            }
            memory.same_start(&r.state, &p.display().to_string())?;
            if r.state_only {
                eprintln!(
                    "warning: checkpoint {} holds only the state: the report covers the tokens \
                     after {}",
                    p.display(),
                    r.start.progress.next
                );
            }
            eprintln!(
                "resuming from checkpoint {} at token {}",
                p.display(),
                r.start.progress.next
            );
            (r.state, r.start)
        }
        None => (
            memory.state(&rt, &eng, model.ctx(&rt))?,
            RunStart::default(),
        ),
    };
    let pb = famstream::util::progress(run.tokens().len() as u64, "tokens");
    let out = run.run(
        &mut eng,
        &mut state,
        start,
        |done| pb.set_position(done as u64),
        |g| {
            if let Some(f) = seg_log.as_mut() {
                // Best effort: the log is a by-product; the result is the final report.
                let _ = writeln!(f, "{}", segment_json(g));
                let _ = f.flush();
            }
        },
    )?;
    pb.finish_and_clear();
    let r = &out.report;
    let (kl, kl_count, from, rss) = (
        out.kl,
        out.kl_positions,
        out.resumed_from,
        out.peak_rss_bytes,
    );
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

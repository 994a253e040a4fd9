//! `famstream bench`: prompt-processing and generation speed (tokens/s), like llama-bench's pp/tg.

use super::common::*;
use clap::Args;
use famstream::runtime::default_threads;
use famstream::Result;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens.
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens.
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Measure at this stream position.
    #[arg(long = "at-position", default_value_t = 0)]
    pub at_position: u64,
    /// Repetitions (the best is reported).
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub repetitions: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let BenchArgs {
        model,
        n_prompt,
        n_gen,
        at_position,
        repetitions,
        json,
        memory,
        ..
    } = args;
    memory.refuse_unused("bench", false, Some("bench keeps no state"))?;
    let rt = model.load()?;
    let settings = memory.settings(&rt)?;
    let mut eng = rt.engine()?;
    let mut best: Option<famstream::bench::BenchResult> = None;
    for _ in 0..repetitions.max(1) {
        let r = famstream::bench::run(
            &rt,
            &mut eng,
            settings,
            model.ctx(&rt),
            n_prompt,
            n_gen,
            at_position,
        )?;
        best = Some(match best {
            None => r,
            Some(b) => {
                // The block-end share goes with the tg figure reported (the best repetition's).
                let (tg, share) = if r.tg_tokens_per_s >= b.tg_tokens_per_s {
                    (r.tg_tokens_per_s, r.tg_block_end_share)
                } else {
                    (b.tg_tokens_per_s, b.tg_block_end_share)
                };
                famstream::bench::BenchResult {
                    pp_tokens_per_s: b.pp_tokens_per_s.max(r.pp_tokens_per_s),
                    tg_tokens_per_s: tg,
                    tg_block_end_share: share,
                    ..r
                }
            }
        });
    }
    let r = best.expect("at least one repetition");
    let threads = model.threads.unwrap_or_else(default_threads);
    if json {
        let j = serde_json::json!({
            "model": model.path()?.display().to_string(), "threads": threads,
            "memory": settings.policy.as_str(), "settings": settings.to_json(),
            "n_prompt": r.pp_tokens, "n_gen": r.tg_tokens,
            "at_position": r.at_position, "fill_tokens": r.fill_tokens,
            "pp_tokens_per_s": r.pp_tokens_per_s, "tg_tokens_per_s": r.tg_tokens_per_s,
            "tg_block_end_share": r.tg_block_end_share,
            "state_bytes": r.state_bytes, "peak_rss_bytes": famstream::util::peak_rss_bytes(),
        });
        print_report(&rt, j);
    } else {
        println!("| model | threads | memory | test | at | t/s |\n|---|---|---|---|---|---|");
        let name = model
            .path()?
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "| {name} | {threads} | {} | pp{} | {} | {:.1} |",
            settings.policy, r.pp_tokens, r.at_position, r.pp_tokens_per_s
        );
        println!(
            "| {name} | {threads} | {} | tg{} | {} | {:.1} |",
            settings.policy, r.tg_tokens, r.at_position, r.tg_tokens_per_s
        );
        if r.tg_block_end_share > 0.0 {
            println!(
                "\ntg: {:.1}% of the time at block ends (the memory's upkeep: FAM updates, kept tokens)",
                100.0 * r.tg_block_end_share
            );
        }
    }
    Ok(())
}

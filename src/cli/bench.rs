//! `famstream bench`: prompt-processing and generation speed (tokens/s), like llama-bench's pp/tg.

use super::common::*;
use clap::{Args, Parser};
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
    /// Also measure another configuration, given as bench's model and memory flags in one
    /// argument (e.g. "-m BASE.gguf --memory sink --block 256 --mem-blocks 0 --sinks 4"), in the
    /// same process: the repetitions (-r, at least 4) alternate between the two (which goes
    /// first alternating too) and each repetition's tg ratio (this / that) is reported, with
    /// their median and quartiles. On a machine whose speed drifts between runs, this compares the two fairly.
    #[arg(long = "against", value_name = "FLAGS", allow_hyphen_values = true)]
    pub against: Option<String>,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// `--against`'s flags, parsed as bench's.
#[derive(Parser)]
struct Against {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    memory: MemoryArgs,
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
        against: args_against,
    } = args;
    memory.refuse_unused("bench", false, Some("bench keeps no state"))?;
    if let Some(flags) = args_against {
        return run_against(
            &model,
            &memory,
            &flags,
            n_prompt,
            n_gen,
            at_position,
            repetitions,
            json,
        );
    }
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

/// `bench --against FLAGS`: both configurations loaded in one process, repetitions alternated.
#[allow(clippy::too_many_arguments)]
fn run_against(
    model: &ModelArgs,
    memory: &MemoryArgs,
    flags: &str,
    n_prompt: usize,
    n_gen: usize,
    at_position: u64,
    repetitions: usize,
    json: bool,
) -> Result<()> {
    let other =
        Against::try_parse_from(std::iter::once("--against").chain(flags.split_whitespace()))
            .map_err(|e| famstream::Error::Invalid(format!("--against \"{flags}\": {e}")))?;
    other
        .memory
        .refuse_unused("bench", false, Some("bench keeps no state"))?;
    let sides = [(model, memory), (&other.model, &other.memory)];
    let mut loaded = Vec::new();
    for (i, (m, mem)) in sides.into_iter().enumerate() {
        // what is wrong with the other side's flags says so
        let named = |e: famstream::Error| match e {
            famstream::Error::Invalid(msg) if i == 1 => {
                famstream::Error::Invalid(format!("--against: {msg}"))
            }
            e => e,
        };
        let rt = m.load().map_err(named)?;
        let settings = mem.settings(&rt).map_err(named)?;
        let eng = rt.engine()?;
        let n_ctx = m.ctx(&rt);
        loaded.push((rt, settings, eng, n_ctx));
    }
    let mut runs: [Vec<famstream::bench::BenchResult>; 2] = [Vec::new(), Vec::new()];
    let n = repetitions.max(4);
    let bar = famstream::util::progress(2 * n as u64, "runs");
    for r in 0..n {
        for side in [r % 2, 1 - r % 2] {
            let (rt, settings, eng, n_ctx) = &mut loaded[side];
            let res =
                famstream::bench::run(rt, eng, *settings, *n_ctx, n_prompt, n_gen, at_position)?;
            runs[side].push(res);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let ratios: Vec<f64> = (0..n)
        .map(|i| runs[0][i].tg_tokens_per_s / runs[1][i].tg_tokens_per_s)
        .collect();
    let q = |v: &[f64], p: f64| famstream::util::quantile(v, p);
    let tg = |side: usize| {
        runs[side]
            .iter()
            .map(|r| r.tg_tokens_per_s)
            .collect::<Vec<_>>()
    };
    let share = |side: usize| {
        q(
            &runs[side]
                .iter()
                .map(|r| r.tg_block_end_share)
                .collect::<Vec<_>>(),
            0.5,
        )
    };
    if json {
        let side = |i: usize| {
            serde_json::json!({
                "memory": loaded[i].1.policy.as_str(), "settings": loaded[i].1.to_json(),
                "tg_tokens_per_s": tg(i),
                "pp_tokens_per_s": runs[i].iter().map(|r| r.pp_tokens_per_s).collect::<Vec<_>>(),
                "tg_block_end_share": share(i), "state_bytes": runs[i][0].state_bytes,
            })
        };
        let j = serde_json::json!({
            "n_prompt": n_prompt, "n_gen": n_gen, "at_position": at_position, "repetitions": n,
            "this": side(0), "against": side(1), "tg_ratios": ratios,
            "tg_ratio_median": q(&ratios, 0.5),
            "tg_ratio_quartiles": [q(&ratios, 0.25), q(&ratios, 0.75)],
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    } else {
        println!("| configuration | memory | tg{n_gen} t/s (median of {n}) | block ends |\n|---|---|---|---|");
        for (i, name) in ["this", "against"].iter().enumerate() {
            println!(
                "| {name} | {} | {:.1} | {:.1}% |",
                loaded[i].1.policy,
                q(&tg(i), 0.5),
                100.0 * share(i)
            );
        }
        println!(
            "\ntg ratio this / against, per repetition: median {:.3}, quartiles {:.3}-{:.3}",
            q(&ratios, 0.5),
            q(&ratios, 0.25),
            q(&ratios, 0.75)
        );
    }
    Ok(())
}

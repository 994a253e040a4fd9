//! `famstream recall`: recall of planted facts at distances of k windows (cases made by tools/recall_bench.py):

use super::common::*;
use clap::Args;
use famstream::Result;
use std::path::PathBuf;

#[derive(Args)]
pub struct RecallArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The cases, JSONL: {"k", "kind", "prompt": [token ids], "answer": [token ids]}.
    #[arg(long)]
    pub cases: PathBuf,
    /// Print JSON (the summary per k and every case).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

pub fn run(args: RecallArgs) -> Result<()> {
    let RecallArgs {
        model,
        cases,
        json,
        memory,
        ..
    } = args;
    memory.refuse_unused("recall", false, Some("recall saves no state"))?;
    let rt = model.load()?;
    let cases = famstream::recall::read_cases(&cases, rt.model.hp.n_vocab)?;
    let mut eng = rt.engine()?;
    let mut st = memory.state(&rt, &eng, model.ctx(&rt))?;
    let pb = famstream::util::progress(cases.len() as u64, "cases");
    let outcomes = famstream::recall::run_all(&mut eng, &mut st, &cases, |done| {
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    let report = famstream::recall::report(&cases, &outcomes, &st.settings);
    if json {
        print_report(&rt, report);
    } else {
        for r in report["summary"].as_array().into_iter().flatten() {
            println!(
                "memory {} k={}: {}/{} recalled ({:.2}, 95% CI {:.2}-{:.2}), mean answer \
                     log-likelihood {:.2}{}",
                st.settings.policy,
                r["k"],
                r["hits"],
                r["trials"],
                r["recall"].as_f64().unwrap_or(0.0),
                r["ci95"][0].as_f64().unwrap_or(0.0),
                r["ci95"][1].as_f64().unwrap_or(0.0),
                r["mean_answer_logprob"].as_f64().unwrap_or(0.0),
                match r["beyond_context"].as_u64() {
                    Some(n) if n > 0 => format!(" ({n} beyond the context, not run)"),
                    _ => String::new(),
                }
            );
        }
    }
    Ok(())
}

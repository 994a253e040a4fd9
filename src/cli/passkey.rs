//! `famstream passkey`: passkey retrieval: a key near the start, N filler tokens, the question at the end.

use super::common::*;
use clap::Args;
use famstream::runtime::default_threads;
use famstream::Result;

#[derive(Args)]
pub struct PasskeyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Filler lengths in tokens, comma-separated (e.g. 2000,8000,32000).
    #[arg(long = "filler-tokens", value_delimiter = ',', required = true)]
    pub filler_tokens: Vec<usize>,
    /// Trials per length.
    #[arg(long = "trials", default_value_t = 5)]
    pub trials: usize,
    /// Seed for the keys.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

pub fn run(args: PasskeyArgs) -> Result<()> {
    let PasskeyArgs {
        model,
        filler_tokens,
        trials,
        seed,
        json,
        memory,
        ..
    } = args;
    memory.refuse_unused("passkey", true, Some("passkey saves no state"))?;
    let rt = model.load()?;
    let mut settings = memory.settings(&rt)?;
    let mut eng = rt.engine()?;
    let mut rows = Vec::new();
    let mut details = Vec::new();
    for &n in &filler_tokens {
        let mut found = 0;
        for i in 0..trials {
            let mut st = memory.state(&rt, &eng, model.ctx(&rt))?;
            settings = st.settings; // a loaded state's own (reported below)
            let key = famstream::passkey::key_for(seed, i);
            let t = famstream::passkey::trial(&rt, &mut eng, &mut st, n, key)?;
            found += t.found as usize;
            details.push(serde_json::json!({
                "filler_tokens": n, "key": key, "answer": t.answer, "found": t.found,
                "prompt_tokens": t.prompt_tokens, "seconds": t.seconds,
            }));
            if !json {
                eprintln!(
                    "filler {n}: key {key} -> {:?} {} ({:.1}s)",
                    t.answer.trim(),
                    if t.found { "ok" } else { "miss" },
                    t.seconds
                );
            }
        }
        rows.push((n, found, trials));
    }
    if json {
        let r: Vec<serde_json::Value> = rows
                .iter()
                .map(|&(n, f, t)| serde_json::json!({"filler_tokens": n, "found": f, "trials": t, "accuracy": f as f64 / t as f64}))
                .collect();
        let j = serde_json::json!({
            "settings": settings.to_json(),
            "threads": model.threads.unwrap_or_else(default_threads),
            "results": r, "trials": details,
        });
        print_report(&rt, j);
    } else {
        for (n, f, t) in rows {
            println!("memory {} filler {n}: {f}/{t} found", settings.policy);
        }
    }
    Ok(())
}

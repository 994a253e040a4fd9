//! famstream vs llama.cpp on the same GGUF, same machine, same thread count, in one run:
//! pp512 / tg128 at short context, and decode at a far stream position (famstream `fam`/`sink`
//! vs llama.cpp full attention). Prints a table of tokens/s and ratios.
//!
//! `cargo bench --bench vs_llama -- [--quick] [--reps 5] [--short] [--only q4_0:1] [--at 32768]
//! [--pp 512 --tg 128] [--gguf FILE]`
//! (medians of `--reps` alternating runs; `--short`: only pp/tg at short context; `--only`: one
//! model type and thread count; `--side ours|llama`: run only one engine, e.g. to profile it;
//! `--gguf`: pp/tg on that file instead, e.g. Gemma 3 270M)
//! `cargo bench --bench vs_llama -- --llama-rss 8192 [--model q4_1]`: only llama.cpp, which
//! evaluates that many tokens with a context of that size and prints its peak RSS (run it as its
//! own process to compare with famstream's; nothing of famstream is loaded).
//! Models: SmolLM2-135M q8_0 and q4_0, made from the fetched Q4_1 GGUF by `famstream convert`
//! into the model cache on first use.

#[path = "../tests/common/llama.rs"]
mod llama;

use famstream::convert::{convert, ConvertOptions, Target};
use famstream::runtime::{LoadOptions, Runtime};
use famstream::settings::{FamSettings, MemoryPolicy};
use std::path::PathBuf;
use std::time::Instant;

fn model(ty: &str) -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/fetch_model.sh"))
        .output()
        .unwrap();
    let src = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let dst = src.with_file_name(format!("SmolLM2-135M-Instruct.{ty}.gguf"));
    if !dst.exists() {
        let o = ConvertOptions {
            target: Some(Target::parse(ty).unwrap()),
            fam: None,
            name: None,
        };
        convert(&src, &dst, &o, &mut |_, _, _| {}).unwrap();
    }
    dst
}

fn llama_pp_tg(
    path: &std::path::Path,
    threads: usize,
    n_ctx: usize,
    at: usize,
    pp: usize,
    tg: usize,
) -> (f64, f64) {
    let mut o = llama::LlamaOracle::new(path, n_ctx, threads);
    let toks: Vec<u32> = o.tokenize(
        &"The committee met on Tuesday to discuss the budget. ".repeat(4000),
        false,
        false,
    );
    o.clear();
    if at > 0 {
        o.eval(&toks[..at], 0, &[at - 1]);
    }
    let t = Instant::now();
    o.eval(&toks[at..at + pp], at, &[pp - 1]);
    let pps = pp as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..tg {
        o.eval(&[toks[at + pp + i]], at + pp + i, &[0]);
    }
    (pps, tg as f64 / t.elapsed().as_secs_f64())
}

fn ours(
    path: &std::path::Path,
    threads: usize,
    s: FamSettings,
    n_ctx: usize,
    at: u64,
    pp: usize,
    tg: usize,
) -> (f64, f64) {
    let rt = Runtime::load(
        path,
        &LoadOptions {
            threads,
            device: None,
            ..Default::default()
        },
    )
    .unwrap();
    let mut eng = rt.engine().unwrap();
    let r = famstream::bench::run(&rt, &mut eng, s, n_ctx, pp, tg, at).unwrap();
    (r.pp_tokens_per_s, r.tg_tokens_per_s)
}

/// llama.cpp alone: a context of `n` tokens filled with `n` tokens; prints peak RSS as JSON.
fn llama_rss(path: &std::path::Path, n: usize) {
    let mut o = llama::LlamaOracle::new(path, n, 2);
    let toks: Vec<u32> = o.tokenize(
        &"The committee met on Tuesday to discuss the budget. ".repeat(n / 8 + 16),
        false,
        false,
    );
    o.clear();
    let mut at = 0;
    while at < n {
        let k = 512.min(n - at);
        o.eval(&toks[at..at + k], at, &[k - 1]);
        at += k;
    }
    let hwm = famstream::util::peak_rss_bytes().unwrap_or(0);
    println!(
        "{{\"engine\": \"llama.cpp\", \"model\": {:?}, \"n_ctx\": {n}, \"tokens\": {n}, \"peak_rss_bytes\": {}}}",
        path.display().to_string(),
        hwm
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--llama-rss") {
        let n: usize = args[i + 1].parse().expect("--llama-rss N");
        let ty = args
            .iter()
            .position(|a| a == "--model")
            .map(|i| args[i + 1].clone())
            .unwrap_or_else(|| "q4_1".into());
        let path = if ty == "q4_1" {
            let out = std::process::Command::new("bash")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/fetch_model.sh"))
                .output()
                .unwrap();
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        } else {
            model(&ty)
        };
        llama_rss(&path, n);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    // The value after flag `name`, if any.
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let at: usize = value("--at").and_then(|v| v.parse().ok()).unwrap_or(32768);
    let (mut pp, mut tg) = if quick { (128, 32) } else { (512, 128) };
    // `--pp N --tg N`: other lengths (e.g. a short prompt and a long decode to profile decode).
    pp = value("--pp").and_then(|v| v.parse().ok()).unwrap_or(pp);
    tg = value("--tg").and_then(|v| v.parse().ok()).unwrap_or(tg);
    let full = FamSettings {
        policy: MemoryPolicy::Full,
        ..FamSettings::default()
    };
    println!(
        "| model | threads | test | famstream t/s | llama.cpp t/s | ratio | paired ratios: median (min-max) |\n|---|---|---|---|---|---|---|"
    );
    // Each engine is run `reps` times, alternating (and alternating which goes first), and the
    // medians are compared: a single run of a few seconds moves by several percent with the CPU
    // clock and the page cache. The ratios of each back-to-back pair show that spread.
    let reps: usize = value("--reps").and_then(|v| v.parse().ok()).unwrap_or(5);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let spread = |f: &[f64], l: &[f64]| {
        let r: Vec<f64> = f.iter().zip(l).map(|(f, l)| f / l).collect();
        let (lo, hi) = r
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        format!("{:.3} ({lo:.3}-{hi:.3})", median(&r))
    };
    // `--only q4_0:1`: one model type and thread count (e.g. to profile one row).
    let only = value("--only");
    let side = value("--side");
    let runs = |name: &str| side.as_ref().is_none_or(|s| s == name);
    // `--gguf FILE`: that model instead of SmolLM2 in q8_0 and q4_0 (e.g. Gemma 3 270M, from
    // `tools/fetch_model.sh gemma3-270m`).
    let models: Vec<(String, PathBuf)> = match value("--gguf") {
        Some(p) => {
            let p = PathBuf::from(p);
            let name = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            vec![(name, p)]
        }
        None => ["q8_0", "q4_0"]
            .iter()
            .map(|t| (t.to_string(), model(t)))
            .collect(),
    };
    for (ty, path) in &models {
        let path = path.clone();
        for threads in [1, 2] {
            if only
                .as_ref()
                .is_some_and(|o| *o != format!("{ty}:{threads}"))
            {
                continue;
            }
            let (mut lps, mut lts, mut fps, mut fts) = (vec![], vec![], vec![], vec![]);
            for rep in 0..reps.max(1) {
                let llama = || {
                    if runs("llama") {
                        llama_pp_tg(&path, threads, 2048, 0, pp, tg)
                    } else {
                        (f64::NAN, f64::NAN)
                    }
                };
                let famstream = || {
                    if runs("ours") {
                        ours(&path, threads, full, 2048, 0, pp, tg)
                    } else {
                        (f64::NAN, f64::NAN)
                    }
                };
                let ((lp, lt), (fp, ft)) = if rep % 2 == 0 {
                    let l = llama();
                    (l, famstream())
                } else {
                    let f = famstream();
                    (llama(), f)
                };
                lps.push(lp);
                lts.push(lt);
                fps.push(fp);
                fts.push(ft);
            }
            let (lp, lt, fp, ft) = (median(&lps), median(&lts), median(&fps), median(&fts));
            println!(
                "| {ty} | {threads} | pp{pp} | {fp:.1} | {lp:.1} | {:.2} | {} |",
                fp / lp,
                spread(&fps, &lps)
            );
            println!(
                "| {ty} | {threads} | tg{tg} | {ft:.1} | {lt:.1} | {:.2} | {} |",
                ft / lt,
                spread(&fts, &lts)
            );
        }
    }
    if args.iter().any(|a| a == "--short") || value("--gguf").is_some() {
        return;
    }
    // Decode far into the stream: famstream's windowed policies vs llama.cpp full attention.
    let path = model("q8_0");
    let (_, lt) = llama_pp_tg(&path, 2, at + 1024, at, 16, tg / 2);
    for p in [MemoryPolicy::Fam, MemoryPolicy::Sink] {
        let s = FamSettings {
            policy: p,
            ..FamSettings::default()
        };
        let (_, ft) = ours(&path, 2, s, 0, at as u64, 16, tg / 2);
        println!(
            "| q8_0 | 2 | tg{} at {at} ({p} vs full) | {ft:.1} | {lt:.1} | {:.2} | - |",
            tg / 2,
            ft / lt
        );
    }
}

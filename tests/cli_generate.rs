//! `run`, `chat`, `logits`, `perplexity` as a user runs them, on the real model.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

fn famstream() -> Command {
    Command::new(env!("CARGO_BIN_EXE_famstream"))
}

/// `famstream perplexity -m <the real model> -f <text>`, to add arguments to.
fn perplexity(text: &std::path::Path) -> Command {
    let mut cmd = famstream();
    cmd.args(["perplexity", "-m", common::model_path().to_str().unwrap()])
        .arg("-f")
        .arg(text);
    cmd
}

/// A command's JSON report, after checking that it succeeded (its stderr otherwise).
fn json_report(out: std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&succeeded(out).stdout).unwrap()
}

/// A command's output, after checking that it succeeded (its stderr otherwise).
fn succeeded(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The stderr of a command that must be refused: exit code 1, famstream's error prefix, no panic.
fn refused(args: &[&str]) -> String {
    let out = famstream().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(matches!(out.status.code(), Some(2..=5)), "{args:?}: {err}");
    assert!(err.starts_with("famstream: error:"), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    err
}

#[test]
fn run_streams_text_and_reports_speed() {
    let m = common::model_path();
    let out = famstream()
        .args([
            "run",
            "-m",
            m.to_str().unwrap(),
            "-p",
            "The capital of France is",
            "-n",
            "12",
            "--temp",
            "0",
            "-t",
            "2",
        ])
        .output()
        .unwrap();
    let out = succeeded(out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Paris"), "greedy answer: {text:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("tok/s") && err.contains("generated: 12 tokens"),
        "{err}"
    );
}

#[test]
fn chat_answers_two_turns_from_stdin() {
    let m = common::model_path();
    let mut child = famstream()
        .args([
            "chat",
            "-m",
            m.to_str().unwrap(),
            "--temp",
            "0",
            "-n",
            "40",
            "-t",
            "2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\nAnd of Italy?\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let out = succeeded(out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert!(
        text.contains("Rome"),
        "the second turn sees the first: {text}"
    );
}

#[test]
fn logits_writes_an_npy_array_of_every_position() {
    let m = common::model_path();
    let dir = common::scratch_dir("cli-logits");
    let out_path = dir.join("l.npy");
    let out = famstream()
        .args([
            "logits",
            "-m",
            m.to_str().unwrap(),
            "-p",
            "Hello world, this is a test.",
            "--out",
            out_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    succeeded(out);
    let (shape, data) = famstream::npy::read_f32(&out_path).unwrap();
    assert_eq!(shape[1], 49152);
    assert!(shape[0] >= 7);
    assert_eq!(data.len(), shape[0] * shape[1]);
    assert!(data.iter().all(|x| x.is_finite()));
    // Only the output file is left in the directory (no temporary files).
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn perplexity_json_on_a_text_file() {
    let dir = common::scratch_dir("cli-ppl");
    let f = dir.join("t.txt");
    std::fs::write(&f, &common::shared_text("austen_emma.txt")[..8000]).unwrap();
    let j = json_report(
        perplexity(&f)
            .args(["--ctx", "256", "--max-tokens", "512", "--json"])
            .output()
            .unwrap(),
    );
    let ppl = j["perplexity"].as_f64().unwrap();
    assert!(ppl > 2.0 && ppl < 200.0, "{ppl}");
    assert_eq!(j["windows"], 2);
    assert_eq!(j["tokens_scored"], 2 * 127);
    assert!(j["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn streaming_perplexity_logs_segments_with_or_without_scores() {
    let dir = common::scratch_dir("cli-ppl-stream");
    let f = dir.join("t.txt");
    std::fs::write(&f, &common::shared_text("moby_dick.txt")[..4000]).unwrap();
    let run = |no_scores: bool| {
        let log = dir.join(format!("seg-{no_scores}.jsonl"));
        let _ = std::fs::remove_file(&log);
        let mut cmd = perplexity(&f);
        cmd.args(["--memory", "bswa", "--block", "64", "--mem-blocks", "1"])
            .args(["--max-tokens", "300", "--segment", "100", "--json"])
            .arg("--segment-log")
            .arg(&log);
        if no_scores {
            cmd.arg("--no-scores");
        }
        let j = json_report(cmd.output().unwrap());
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (j, lines)
    };
    let (scored, scored_log) = run(false);
    let (plain, plain_log) = run(true);
    // 299 predictions (targets 1..299) in segments of 100, each logged as soon as it was done, in both modes.
    for (j, log) in [(&scored, &scored_log), (&plain, &plain_log)] {
        let segs = j["segments"].as_array().unwrap();
        assert_eq!(segs.len(), 3, "{j}");
        assert_eq!(log.len(), 3);
        for (s, l) in segs.iter().zip(log) {
            assert_eq!(s["start"], l["start"]);
            assert_eq!(s["tokens"], l["tokens"]);
            assert!(l["peak_rss_bytes"].as_u64().unwrap() > 0);
        }
        assert_eq!(segs[0]["tokens"], 99); // the first token is only context
    }
    assert_eq!(scored["scored"], true);
    let ppl = scored["perplexity"].as_f64().unwrap();
    assert!(ppl > 2.0 && ppl < 500.0, "{ppl}");
    assert!(scored_log
        .iter()
        .all(|l| l["perplexity"].as_f64().is_some()));
    // Without scores: no perplexity anywhere, the same state.
    assert_eq!(plain["scored"], false);
    assert!(plain["perplexity"].is_null());
    assert!(plain_log.iter().all(|l| l["perplexity"].is_null()));
    assert_eq!(plain["state_bytes"], scored["state_bytes"]);
    // Only a memory policy streams: without one the flag is refused, not ignored.
    let out = perplexity(&f).arg("--no-scores").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory"));
}

/// A streaming run stopped after a checkpoint and started again continues where the checkpoint
/// left off and reports exactly what a run that never stopped reports: every segment, the total
/// perplexity and the KL divergence from full attention (whose positions end before the first
/// checkpoint).
#[test]
fn streaming_perplexity_resumes_from_its_checkpoint() {
    let dir = common::scratch_dir("cli-ppl-resume");
    let f = dir.join("t.txt");
    std::fs::write(&f, &common::shared_text("moby_dick.txt")[..5000]).unwrap();
    let other = dir.join("other.txt");
    std::fs::write(&other, &common::shared_text("austen_emma.txt")[..5000]).unwrap();
    let ck = dir.join("run.ckpt");
    let _ = std::fs::remove_file(&ck);
    let run = |text: &std::path::Path, max: &str, checkpoint: bool, kl: &str| {
        let mut cmd = perplexity(text);
        cmd.args(["--memory", "sink", "--block", "64", "--mem-blocks", "1"])
            .args(["--sinks", "2", "--kl-vs-full", kl])
            .args(["--max-tokens", max, "--segment", "100", "--json"]);
        if checkpoint {
            cmd.arg("--checkpoint")
                .arg(&ck)
                .args(["--checkpoint-every", "128"]);
        }
        cmd.output().unwrap()
    };
    // No checkpoint inside the KL positions (the reference would be lost), nor after the last,
    // partial chunk (a resumed run would feed other chunks): none in a run of 180 tokens
    // with --kl-vs-full 150, in chunks of 64.
    json_report(run(&f, "180", true, "150"));
    assert!(!ck.exists());
    // "Stopped": a first run that reads 300 tokens, checkpointing after 128 and 256.
    let first = json_report(run(&f, "300", true, "100"));
    assert_eq!(first["resumed_from"], 0);
    assert!(ck.exists());
    // Started again on the whole text: resumes at 256, inside the segment of 200-299.
    let resumed = json_report(run(&f, "600", true, "100"));
    assert_eq!(resumed["resumed_from"], 256);
    let never = json_report(run(&f, "600", false, "100"));
    let segments = |j: &serde_json::Value| j["segments"].as_array().unwrap().clone();
    let (a, b) = (segments(&resumed), segments(&never));
    assert_eq!(a.len(), 6, "{resumed}");
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(&b) {
        // Same state bytes, same shapes, same kernels, sums saved bit for bit: the same numbers.
        for k in ["start", "tokens", "perplexity"] {
            assert_eq!(a[k], b[k], "{k} of the segment at {}", b["start"]);
        }
    }
    for k in ["perplexity", "tokens_scored", "kl_vs_full", "kl_positions"] {
        assert_eq!(resumed[k], never[k], "{k}");
    }
    assert_eq!(never["kl_positions"], 100);
    // The run's peak RSS counts the segments read before the checkpoint, by the first process.
    let seg_peak = a
        .iter()
        .map(|s| s["peak_rss_bytes"].as_u64().unwrap())
        .max();
    assert!(resumed["peak_rss_bytes"].as_u64() >= seg_peak, "{resumed}");
    // The checkpoint belongs to its text and its run: another text, or another KL range, is
    // refused with a clear message.
    for (text, kl, says) in [(&other, "100", "another text"), (&f, "50", "made with")] {
        let out = run(text, "600", true, kl);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn bad_inputs_fail_with_a_message_and_no_panic() {
    let m = common::model_path();
    let dir = common::scratch_dir("cli-badin");
    let corrupt = dir.join("c.gguf");
    std::fs::write(&corrupt, b"GGUF\x03\0\0\0").unwrap();
    for args in [
        vec!["run", "-m", corrupt.to_str().unwrap(), "-p", "x"],
        vec![
            "run",
            "-m",
            dir.join("missing.gguf").to_str().unwrap(),
            "-p",
            "x",
        ],
        vec!["run", "-m", m.to_str().unwrap()],
        vec![
            "run",
            "-m",
            m.to_str().unwrap(),
            "-f",
            dir.join("nope.txt").to_str().unwrap(),
        ],
        vec!["run", "-m", m.to_str().unwrap(), "-p", "x", "--top-p", "2"],
        vec![
            "perplexity",
            "-m",
            m.to_str().unwrap(),
            "-f",
            corrupt.to_str().unwrap(),
            "--ctx",
            "4096",
        ],
    ] {
        refused(&args);
    }
    // A flag the command would ignore is refused, named; no state is written.
    let snap = dir.join("s.snap");
    let text = dir.join("t.txt");
    std::fs::write(&text, "Call me Ishmael.").unwrap();
    let (m, t, s) = (
        m.to_str().unwrap(),
        text.to_str().unwrap(),
        snap.to_str().unwrap(),
    );
    let out = famstream()
        .args(["logits", "-m", m, "-p", "x", "--out"])
        .arg(dir.join("l.npy"))
        .args([
            "--memory",
            "sink",
            "--start-position",
            "5",
            "--save-state",
            s,
        ])
        .output()
        .unwrap();
    succeeded(out);
    let never = dir.join("never.snap");
    let n = never.to_str().unwrap();
    for (args, named) in [
        (vec!["bench", "-m", m, "--save-state", n], "--save-state"),
        (vec!["bench", "-m", m, "--load-state", s], "--load-state"),
        (
            vec!["serve", "-m", m, "--start-position", "3"],
            "--start-position",
        ),
        (
            vec![
                "passkey",
                "-m",
                m,
                "--filler-tokens",
                "10",
                "--save-state",
                n,
            ],
            "--save-state",
        ),
        (
            vec![
                "perplexity",
                "-m",
                m,
                "-f",
                t,
                "--memory",
                "sink",
                "--save-state",
                n,
            ],
            "--checkpoint",
        ),
        (
            vec!["perplexity", "-m", m, "-f", t, "--sinks", "2"],
            "--memory P",
        ),
        (
            vec!["perplexity", "-m", m, "-f", t, "--kl-vs-full", "64"],
            "--memory P",
        ),
        // A loaded stream keeps its start position (5): another one is refused.
        (
            vec![
                "run",
                "-m",
                m,
                "-p",
                "x",
                "-n",
                "1",
                "--load-state",
                s,
                "--start-position",
                "7",
            ],
            "start position 5",
        ),
        (
            vec![
                "run",
                "-m",
                m,
                "-p",
                "x",
                "--memory",
                "fam",
                "--fam-feedback",
                "reread",
                "--fam-renorm",
                "true",
            ],
            "renorm",
        ),
    ] {
        let err = refused(&args);
        assert!(err.contains(named), "{args:?}: {err}");
        assert!(!never.exists(), "{args:?}");
    }
    // Repeating the loaded stream's own start position is fine.
    let out = famstream()
        .args(["run", "-m", m, "-p", "x", "-n", "1", "--load-state", s])
        .args(["--start-position", "5"])
        .output()
        .unwrap();
    succeeded(out);
}

#[test]
fn logits_continue_from_a_saved_state_as_if_never_stopped() {
    let m = common::model_path();
    let dir = common::scratch_dir("cli-state");
    let snap = dir.join("s.snap");
    let mem = [
        "--memory",
        "fam",
        "--block",
        "16",
        "--mem-blocks",
        "1",
        "--fam-len",
        "4",
    ];
    let run = |args: &[&str]| {
        let out = famstream()
            .args(["logits", "-m", m.to_str().unwrap(), "-t", "2"])
            .args(args)
            .args(mem)
            .output()
            .unwrap();
        succeeded(out);
    };
    let a = "It was the best of times, it was the worst of times, it was the age of wisdom,";
    let b = " it was the age of foolishness, it was the epoch of belief.";
    // One stream: a then b, written as logits of b only, vs. a, save, load, b.
    run(&[
        "-p",
        a,
        "--out",
        dir.join("a.npy").to_str().unwrap(),
        "--save-state",
        snap.to_str().unwrap(),
    ]);
    run(&[
        "-p",
        b,
        "--out",
        dir.join("b_loaded.npy").to_str().unwrap(),
        "--load-state",
        snap.to_str().unwrap(),
    ]);
    run(&[
        "-p",
        &format!("{a}{b}"),
        "--out",
        dir.join("ab.npy").to_str().unwrap(),
    ]);
    let (sa, _) = famstream::npy::read_f32(dir.join("a.npy")).unwrap();
    let (_, ab) = famstream::npy::read_f32(dir.join("ab.npy")).unwrap();
    let (sb, bl) = famstream::npy::read_f32(dir.join("b_loaded.npy")).unwrap();
    let nv = sb[1];
    // (Tokenization of a and b separately equals that of a+b here: the join is at a space.)
    assert_eq!(sa[0] + sb[0], ab.len() / nv);
    // Both runs feed in different chunks (block boundaries fall elsewhere relative to calls),
    // but inside the FAM engine every graph is split at block boundaries: identical numbers.
    let tail = &ab[sa[0] * nv..];
    let d = tail
        .iter()
        .zip(&bl)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-3, "max diff {d}");
    // Mismatched settings are refused.
    let out = famstream()
        .args([
            "logits",
            "-m",
            m.to_str().unwrap(),
            "-p",
            b,
            "--out",
            dir.join("x.npy").to_str().unwrap(),
            "--load-state",
            snap.to_str().unwrap(),
            "--memory",
            "sink",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("other memory settings"));
    assert!(!dir.join("x.npy").exists());
}

/// Run `chat` with `input` on stdin; returns the answers (stdout split at the `> ` prompts).
fn chat(args: &[&str], input: &str) -> Vec<String> {
    let m = common::model_path();
    let mut child = famstream()
        .args([
            "chat",
            "-m",
            m.to_str().unwrap(),
            "--temp",
            "0",
            "-n",
            "24",
            "-t",
            "2",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let out = succeeded(out);
    String::from_utf8(out.stdout)
        .unwrap()
        .split("> ")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn a_session_continues_across_processes_as_in_one() {
    let dir = common::scratch_dir("cli-session");
    let d = dir.to_str().unwrap();
    // Small blocks so the conversation crosses FAM updates and ring wrap-around.
    let mem = [
        "--memory",
        "fam",
        "--block",
        "32",
        "--mem-blocks",
        "1",
        "--fam-len",
        "8",
        "--sessions-dir",
        d,
    ];
    let (q1, q2) = ("My name is Ada and I live in Paris.", "Where do I live?");
    let one = chat(
        &[&mem[..], &["--session", "one"]].concat(),
        &format!("{q1}\n{q2}\n"),
    );
    assert_eq!(one.len(), 2, "{one:?}");
    let a = chat(
        &[&mem[..], &["--session", "two"]].concat(),
        &format!("{q1}\n"),
    );
    let size1 = std::fs::metadata(dir.join("two.famsnap")).unwrap().len();
    let b = chat(
        &[&mem[..], &["--session", "two"]].concat(),
        &format!("{q2}\n"),
    );
    let size2 = std::fs::metadata(dir.join("two.famsnap")).unwrap().len();
    assert_eq!(a[0], one[0]);
    assert_eq!(
        b[0], one[1],
        "second turn after resuming differs from one process"
    );
    assert!(
        size2 >= size1 && size2 - size1 < 16,
        "snapshot size {size1} -> {size2}"
    );
    // Bad session names are refused.
    let m = common::model_path();
    let out = famstream()
        .args([
            "chat",
            "-m",
            m.to_str().unwrap(),
            "--session",
            "../x",
            "--sessions-dir",
            d,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn summarize_answers_from_a_transcript_file_and_stdin() {
    let m = common::model_path();
    let dir = common::scratch_dir("cli-summarize");
    let f = dir.join("meeting.txt");
    std::fs::write(
        &f,
        "Alice: Welcome everyone. Our budget for the bridge project is 42 thousand dollars.\n\
         Bob: I propose we start construction on March 3rd.\n\
         Alice: Agreed. The decision is to hire Carol as the lead engineer.\n",
    )
    .unwrap();
    let ask = [
        "--ask",
        "What is the budget for the bridge project?",
        "--temp",
        "0",
        "-n",
        "24",
        "-t",
        "2",
    ];
    // The old stream-then-ask layout answers too (the default, notes, is checked below).
    let out = famstream()
        .args(["summarize", "--method", "stream", "-m", m.to_str().unwrap()])
        .arg(&f)
        .args(ask)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&succeeded(out).stdout).into_owned();
    assert!(answer.contains("42"), "--method stream: {answer}");
    let out = famstream()
        .args(["summarize", "-m", m.to_str().unwrap(), f.to_str().unwrap()])
        .args(ask)
        .output()
        .unwrap();
    let out = succeeded(out);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("42"), "{answer}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tok/s"));
    // The same from stdin.
    let mut child = famstream()
        .args(["summarize", "-m", m.to_str().unwrap(), "-"])
        .args(ask)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&f).unwrap())
        .unwrap();
    let out2 = child.wait_with_output().unwrap();
    assert_eq!(out2.stdout, out.stdout);
    // Empty input is an error, not an empty summary.
    std::fs::write(dir.join("empty.txt"), "  \n").unwrap();
    let out = famstream()
        .args([
            "summarize",
            "-m",
            m.to_str().unwrap(),
            dir.join("empty.txt").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `bench --against FLAGS`: both configurations in one process, repetitions alternated; each
/// repetition's ratio is this side's tg over the other's, and bad flags there are refused by name.
#[test]
fn bench_against_alternates_two_configurations() {
    let m = common::model_path();
    let m = m.to_str().unwrap();
    let against = format!("-m {m} --memory sink --block 16 --mem-blocks 0 --sinks 4");
    let out = famstream()
        .args([
            "bench", "-m", m, "-p", "8", "-n", "24", "-r", "4", "-t", "2",
        ])
        .args([
            "--memory",
            "fam",
            "--block",
            "16",
            "--mem-blocks",
            "0",
            "--fam-len",
            "4",
        ])
        .args(["--json", "--against", &against])
        .output()
        .unwrap();
    let j = json_report(out);
    assert_eq!(j["this"]["memory"], "fam");
    assert_eq!(j["against"]["memory"], "sink");
    let tg = |side: &str| -> Vec<f64> {
        j[side]["tg_tokens_per_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (a, b) = (tg("this"), tg("against"));
    let ratios: Vec<f64> = j["tg_ratios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!((a.len(), b.len(), ratios.len()), (4, 4, 4));
    for i in 0..4 {
        assert!(
            (ratios[i] - a[i] / b[i]).abs() < 1e-9,
            "{ratios:?} {a:?} {b:?}"
        );
    }
    let med = j["tg_ratio_median"].as_f64().unwrap();
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    assert!(lo <= med && med <= hi, "{med} {ratios:?}");
    // the FAM crosses block ends (its upkeep), `sink` has none
    assert!(j["this"]["tg_block_end_share"].as_f64().unwrap() > 0.0);
    assert_eq!(j["against"]["tg_block_end_share"], 0.0);
    let out = famstream()
        .args(["bench", "-m", m, "-p", "8", "-n", "2", "-r", "4", "-t", "2"])
        .args(["--against", "--memory nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--against") && err.contains("nonsense"),
        "{err}"
    );
}

#[test]
fn bench_reports_pp_and_tg_as_json() {
    let m = common::model_path();
    let out = famstream()
        .args([
            "bench",
            "-m",
            m.to_str().unwrap(),
            "-p",
            "32",
            "-n",
            "4",
            "-r",
            "1",
            "-t",
            "2",
            "--memory",
            "sink",
            "--json",
        ])
        .output()
        .unwrap();
    let j = json_report(out);
    assert!(j["pp_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["tg_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(j["n_prompt"], 32);
    // `sink` has no memory to upkeep at block ends; a FAM whose decode crosses block ends
    // spends part of it there (two FAM updates in 40 tokens at B = 16), never all of it.
    assert_eq!(j["tg_block_end_share"], 0.0);
    let out = famstream()
        .args(["bench", "-m", m.to_str().unwrap(), "-p", "8", "-n", "40"])
        .args(["-r", "1", "-t", "2", "--memory", "fam", "--block", "16"])
        .args(["--mem-blocks", "0", "--fam-len", "4", "--json"])
        .output()
        .unwrap();
    let share = json_report(out)["tg_block_end_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");
    // At a far position a windowed policy fills one window plus a block, not the whole stream.
    let out = famstream()
        .args([
            "bench",
            "-m",
            m.to_str().unwrap(),
            "-p",
            "8",
            "-n",
            "2",
            "-r",
            "1",
            "-t",
            "2",
            "--memory",
            "sink",
            "--block",
            "32",
            "--mem-blocks",
            "1",
            "--at-position",
            "1000000",
            "--json",
        ])
        .output()
        .unwrap();
    let j = json_report(out);
    assert_eq!(j["fill_tokens"], 96);
    assert_eq!(j["at_position"], 1_000_000);
}

/// `passkey` as the evaluation runs it, on the real model: with the key inside what attention
/// sees (full attention over ~1,070 tokens) the model reads every key back; with a window that
/// has dropped it (64-token blocks, one memory block: the key's sentence left the window ~900
/// tokens before the question) no key is found. The report lists each trial's key and answer.
#[test]
fn passkey_finds_the_key_only_while_attention_still_sees_it() {
    let m = common::model_path();
    let passkey = |memory: &[&str]| {
        json_report(
            famstream()
                .args(["passkey", "-m", m.to_str().unwrap(), "-t", "2", "--json"])
                .args(["--filler-tokens", "1000", "--trials", "2"])
                .args(memory)
                .output()
                .unwrap(),
        )
    };
    let keys_found = |j: &serde_json::Value| -> Vec<bool> {
        let trials = j["trials"].as_array().unwrap();
        assert_eq!(trials.len(), 2, "{j}");
        trials
            .iter()
            .map(|t| {
                let key = t["key"].as_u64().unwrap().to_string();
                let answer = t["answer"].as_str().unwrap();
                assert!(t["prompt_tokens"].as_u64().unwrap() > 1000, "{t}");
                // The report's verdict is the answer's digits containing the key.
                let digits: String = answer.chars().filter(char::is_ascii_digit).collect();
                assert_eq!(t["found"].as_bool().unwrap(), digits.contains(&key), "{t}");
                digits.contains(&key)
            })
            .collect()
    };
    let full = passkey(&["--memory", "full"]);
    assert_eq!(keys_found(&full), [true, true], "{full}");
    assert_eq!(full["results"][0]["found"], 2);
    let windowed = passkey(&["--memory", "bswa", "--block", "64", "--mem-blocks", "1"]);
    assert_eq!(keys_found(&windowed), [false, false], "{windowed}");
    assert_eq!(windowed["results"][0]["found"], 0);
    // Both runs asked for the same keys.
    assert_eq!(full["trials"][0]["key"], windowed["trials"][0]["key"]);
}

#[test]
fn without_m_the_default_model_is_found_and_named_from_any_directory() {
    let cached = common::model_path(); // fetched into the cache if it was not there
    let out = famstream()
        .current_dir(std::env::temp_dir())
        .args([
            "run",
            "-p",
            "The capital of France is",
            "-n",
            "3",
            "--temp",
            "0",
            "-t",
            "2",
        ])
        .output()
        .unwrap();
    let out = succeeded(out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("model: {} (the default)", cached.display())),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"));
}

/// `--q8-copy` (a Q8_0 copy of the Q4_1 weights) and `--no-repack` (every weight left in the
/// file) contradict each other: refused, naming both, before any work.
#[test]
fn q8_copy_and_no_repack_together_are_refused() {
    let m = common::model_path();
    let m = m.to_str().unwrap();
    let err = refused(&[
        "bench",
        "-m",
        m,
        "-p",
        "8",
        "-n",
        "1",
        "--q8-copy",
        "--no-repack",
    ]);
    assert!(
        err.contains("--q8-copy") && err.contains("--no-repack"),
        "{err}"
    );
}

/// `summarize` reads the Q4_1 weights as Q8_0 copies unless told not to (`--q8-copy=off`, or
/// `--no-repack`, which keeps every weight in the file, and then wins over the default);
/// `--prefill-band` belongs to the notes method.
#[test]
fn summarize_reads_q4_1_weights_as_q8_0_copies_by_default() {
    const COPIED: &str = "read as Q8_0 copies";
    let m = common::model_path();
    let m = m.to_str().unwrap();
    let text = common::scratch_dir("q8-default").join("t.txt");
    std::fs::write(
        &text,
        "Alice: The meeting moves to Tuesday.\nBob: Agreed, Tuesday at nine.\n",
    )
    .unwrap();
    let t = text.to_str().unwrap();
    let stderr = |extra: &[&str]| {
        let mut args = vec!["summarize", "-m", m, "-t", "2", "-n", "4", "--temp", "0"];
        args.extend_from_slice(extra);
        args.push(t);
        let out = succeeded(famstream().args(&args).output().unwrap());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = stderr(&[]);
    assert!(err.contains(COPIED), "{err}");
    for off in ["--q8-copy=off", "--no-repack"] {
        let err = stderr(&[off]);
        assert!(!err.contains(COPIED), "{off}: {err}");
    }
    let err = refused(&[
        "summarize",
        "-m",
        m,
        "--method",
        "stream",
        "--prefill-band",
        "64",
        t,
    ]);
    assert!(err.contains("--prefill-band"), "{err}");
}

//! `summarize --method notes` (the default): every chunk of a long input reaches a note step,
//! the notes never exceed their budget, every step's prompt fits the window, memory does not
//! grow with the input, checkpoints resume, and bad inputs are refused. Real model, small
//! windows so that a few thousand tokens make many chunks.

mod common;

use famstream::notes::{self, NotesOptions, Step};
use famstream::settings::{FamSettings, MemoryPolicy};
use std::process::Command;

/// bswa with a 512-token window (B = 256, M = 1): chunks of 512 - 64 - 24 - 32 - 160 = 232
/// tokens (notes budget, note, quotes, prompt).
fn settings() -> FamSettings {
    FamSettings {
        policy: MemoryPolicy::Bswa,
        block_size: 256,
        mem_blocks: 1,
        ..FamSettings::default()
    }
}
const WINDOW: usize = 512;

fn small_notes() -> NotesOptions {
    NotesOptions {
        chunk_tokens: 0,
        note_tokens: 24,
        notes_budget: 64,
        focus: vec![],
        quotes_budget: Some(32),
        // chunks are read in a band (the pipeline must hold with it; tests/prefill_band.rs
        // checks what a band sees)
        band: 64,
    }
}

/// About `n_lines` lines of Emma, as `Name: text` turns.
fn transcript(n_lines: usize) -> String {
    let emma = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/austen_emma.txt"
    ))
    .expect("../shared/data/austen_emma.txt");
    let speakers = ["Alice", "Bob", "Carol"];
    emma.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| p.len() > 40)
        .take(n_lines)
        .enumerate()
        .map(|(i, p)| format!("{}: {p}\n", speakers[i % 3]))
        .collect()
}

#[test]
fn every_chunk_is_noted_within_the_window_and_the_budget() {
    let rt = common::runtime(common::model_path());
    let mut eng = rt.engine().unwrap();
    let mut state = rt.new_state(&eng, settings(), 0).unwrap();
    let state_bytes = state.state_bytes();
    // a fact in the first chunk, and a question about it: it must reach the answer as a quote
    let mut text = transcript(40);
    text.insert_str(
        0,
        "Dora: For the record, the bridge fund holds exactly 4217 gold crowns.\n",
    );
    let question = "How many gold crowns does the bridge fund hold?";
    let opts = small_notes();
    let (mut noted, mut merges, mut max_prompt) = (Vec::new(), 0, 0);
    let mut over_budget_at_chunk_end = Vec::new();
    let mut last_notes_tokens = 0;
    let path = common::scratch_dir("notes-chunks").join("t.txt");
    std::fs::write(&path, &text).unwrap();
    let source = notes::Source::open(&path).unwrap();
    let reading = notes::read(
        &rt,
        &mut eng,
        &mut state,
        &source,
        &opts,
        Some(question),
        None,
        |step, pr, _| match step {
            Step::Noted {
                index,
                prompt_tokens,
            } => {
                // the notes as they stood before this chunk was read had been merged down
                if last_notes_tokens > opts.notes_budget {
                    over_budget_at_chunk_end.push(*index);
                }
                noted.push(*index);
                max_prompt = max_prompt.max(*prompt_tokens + opts.note_tokens);
                last_notes_tokens = pr.notes_tokens();
            }
            Step::Merged { notes_tokens } => {
                merges += 1;
                last_notes_tokens = *notes_tokens;
            }
        },
    )
    .unwrap();
    let (chunks, progress) = (&reading.chunks, &reading.progress);
    assert!(chunks.len() >= 8, "only {} chunks", chunks.len());
    // every chunk but the last (which the answer reads verbatim) reached a note step, in order
    assert_eq!(noted, (0..chunks.len() - 1).collect::<Vec<_>>());
    assert_eq!(progress.done, chunks.len() - 1);
    assert!(merges > 0, "the budget never forced a merge");
    assert!(
        over_budget_at_chunk_end.is_empty(),
        "{over_budget_at_chunk_end:?}"
    );
    assert!(progress.notes_tokens() <= opts.notes_budget);
    assert!(
        max_prompt <= WINDOW,
        "a step of {max_prompt} tokens left the window"
    );
    // the merged notes still cover the input from its start, in order
    assert_eq!(progress.notes[0].start_token, 0);
    let covered: usize = progress.notes.iter().map(|n| n.chunks).sum();
    assert_eq!(covered, chunks.len() - 1);
    // the chunks are the input, in order, nothing dropped
    let joined: String = chunks
        .iter()
        .map(|c| c.text(&rt, &source).unwrap())
        .collect();
    assert_eq!(joined, text);
    assert!(chunks
        .windows(2)
        .all(|w| w[0].start_token + w[0].n_tokens == w[1].start_token));
    assert_eq!(state.state_bytes(), state_bytes, "the state grew");
    // the first chunk's fact is quoted, within the quotes budget, and the answer's prompt
    // (notes, quotes, last chunk, request) fits the window
    let quoted: usize = reading.quotes.iter().map(|q| q.n_tokens).sum();
    assert!(quoted <= 32, "{quoted} tokens of quotes");
    assert!(
        reading.quotes.iter().any(|q| q.text.contains("4217")),
        "{:?}",
        reading.quotes
    );
    let request = famstream::summarize::request(Some(question));
    let prompt = reading.answer_prompt(&rt, &request).len();
    assert!(prompt <= WINDOW, "the answer's prompt has {prompt} tokens");
}

fn famstream() -> Command {
    Command::new(env!("CARGO_BIN_EXE_famstream"))
}

fn notes_cli(input: &std::path::Path, extra: &[&str]) -> std::process::Output {
    famstream()
        .args([
            "summarize",
            "-m",
            common::model_path().to_str().unwrap(),
            "-t",
            "2",
        ])
        .args(["--memory", "bswa", "--block", "256", "--mem-blocks", "1"])
        .args([
            "--notes-tokens",
            "24",
            "--notes-budget",
            "64",
            "-n",
            "8",
            "--temp",
            "0",
            "--quiet",
        ])
        .arg(input)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn checkpoint_resumes_and_notes_out_is_a_timeline() {
    let dir = common::scratch_dir("notes-cli");
    let srt: String = transcript(24)
        .lines()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "{}\n00:{:02}:{:02},000 --> 00:{:02}:{:02},500\n{l}\n\n",
                i + 1,
                i / 6,
                (i % 6) * 10,
                i / 6,
                (i % 6) * 10 + 5
            )
        })
        .collect();
    let input = dir.join("meeting.srt");
    std::fs::write(&input, &srt).unwrap();
    let (ck, md, js) = (
        dir.join("ck.json"),
        dir.join("notes.md"),
        dir.join("notes.json"),
    );
    let out = notes_cli(
        &input,
        &[
            "--checkpoint",
            ck.to_str().unwrap(),
            "--notes-out",
            md.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md_text = std::fs::read_to_string(&md).unwrap();
    assert!(md_text.starts_with("# Notes"), "{md_text}");
    assert!(
        md_text.contains("## 00:00:00,000 (token 0)"),
        "subtitle times kept: {md_text}"
    );
    // a second run finds every note in the checkpoint: no note step runs again, same answer
    let again = notes_cli(
        &input,
        &[
            "--checkpoint",
            ck.to_str().unwrap(),
            "--notes-out",
            js.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        again.stdout, out.stdout,
        "the resumed run answers differently"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&js).unwrap()).unwrap();
    let ck_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ck).unwrap()).unwrap();
    assert_eq!(j["notes"], ck_json["notes"]);
    assert!(j["notes"][0]["start_time"].as_str().is_some());
    // a checkpoint of another input is refused, naming the problem
    std::fs::write(&input, srt.replace("Alice", "Alicia")).unwrap();
    let other = notes_cli(&input, &["--checkpoint", ck.to_str().unwrap()]);
    assert_eq!(other.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&other.stderr).contains("another input"));
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let dir = common::scratch_dir("notes-bad");
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty.txt", b" \n\n", "empty"),
        ("binary.bin", b"GGUF\x00\x00\x01\x02", "binary"),
        ("latin1.txt", b"Caf\xe9 au lait\n", "not UTF-8"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let out = notes_cli(&p, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(matches!(out.status.code(), Some(2..=5)), "{name}: {err}");
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{name}: {err}"
        );
    }
    let out = notes_cli(&dir.join("missing.txt"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("missing.txt"), "{err}");
    // flags of the other method are refused, not ignored
    let p = dir.join("ok.txt");
    std::fs::write(&p, "Alice: hello\n").unwrap();
    let out = notes_cli(
        &p,
        &[
            "--ingest-only",
            "--save-state",
            dir.join("s").to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--method stream"));
    // --quotes needs a question to match, and belongs to --method notes
    let out = notes_cli(&p, &["--quotes", "64"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--quotes needs --ask or --focus"), "{err}");
    let out = notes_cli(
        &p,
        &["--method", "stream", "--quotes", "64", "--ask", "Who?"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belong to --method notes"), "{err}");
    // a chunk that does not fit the window next to the notes is refused, with the most that fits
    let out = notes_cli(&p, &["--chunk-tokens", "5000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--chunk-tokens 5000 does not fit") && err.contains("at most"),
        "{err}"
    );
}

//! State snapshots: continue-after-load equals never stopping; size is independent of stream
//! length; corrupted, truncated and mismatched snapshots are refused with clear errors.

mod common;

use famstream::engine::Engine;
use famstream::ggml::Backend;
use famstream::model::Model;
use famstream::settings::{FamSettings, MemoryPolicy};
use famstream::state::{FamState, Logits};
use std::sync::Arc;

fn tiny(arch: &str) -> Arc<Model> {
    common::tiny_model(arch, 1)
}

fn settings(policy: MemoryPolicy) -> FamSettings {
    FamSettings {
        policy,
        block_size: 16,
        mem_blocks: 1,
        fam_len: 4,
        sinks: 2,
        ..FamSettings::default()
    }
}

fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 5 + (i * 31 + salt * 7) % 500)
        .collect()
}

fn new_state(m: &Arc<Model>, eng: &Engine, s: FamSettings) -> FamState {
    FamState::new(m, eng.backend(), s, 512, vec![1, 17, 42, 99], 1).unwrap()
}

#[test]
fn loading_a_snapshot_and_continuing_equals_never_stopping() {
    let m = tiny("llama");
    let dir = common::scratch_dir("snap-roundtrip");
    let (a, b) = (tokens(70, 1), tokens(50, 2));
    // ... and a FAM with kept tokens next to it (fewer slots than evicted tokens: the salience
    // scores travel in the snapshot too)
    let fam_keep = FamSettings {
        keep_len: 6,
        ..settings(MemoryPolicy::Fam)
    };
    let all = [
        MemoryPolicy::Full,
        MemoryPolicy::Bswa,
        MemoryPolicy::Sink,
        MemoryPolicy::Fam,
        MemoryPolicy::Keep,
    ];
    for (i, s) in all.map(settings).into_iter().chain([fam_keep]).enumerate() {
        let policy = format!("{}{}", s.policy, if i == all.len() { "-keep" } else { "" });
        let mut eng = Engine::new(m.clone(), Backend::cpu(1).unwrap()).unwrap();
        let mut never = new_state(&m, &eng, s);
        never.feed(&mut eng, &a, Logits::None).unwrap();
        let want = never.feed(&mut eng, &b, Logits::All).unwrap();

        let mut first = new_state(&m, &eng, s);
        first.feed(&mut eng, &a, Logits::None).unwrap();
        let path = dir.join(format!("{policy}.snap"));
        first
            .save(&path, &m, serde_json::json!({"note": "hi"}))
            .unwrap();
        drop(first);
        let (mut loaded, extra) = FamState::load(&path, &m, eng.backend(), Some(&s)).unwrap();
        assert_eq!(extra["note"], "hi");
        assert_eq!(loaded.n_past(), 70);
        let got = loaded.feed(&mut eng, &b, Logits::All).unwrap();
        assert!(got == want, "{policy}: logits after load differ");
    }
}

#[test]
fn snapshot_size_does_not_depend_on_stream_length() {
    let m = tiny("llama");
    let dir = common::scratch_dir("snap-size");
    let mut eng = Engine::new(m.clone(), Backend::cpu(1).unwrap()).unwrap();
    let mut st = new_state(&m, &eng, settings(MemoryPolicy::Fam));
    st.feed(&mut eng, &tokens(20, 3), Logits::None).unwrap();
    st.save(dir.join("short.snap"), &m, serde_json::Value::Null)
        .unwrap();
    st.feed(&mut eng, &tokens(2000, 4), Logits::None).unwrap();
    st.save(dir.join("long.snap"), &m, serde_json::Value::Null)
        .unwrap();
    let size = |n: &str| std::fs::metadata(dir.join(n)).unwrap().len();
    // The header's decimal counters may add a few digits; the binary body is identical in size.
    let (short, long) = (size("short.snap"), size("long.snap"));
    assert!(long >= short && long - short < 16, "{short} vs {long}");
}

#[test]
fn bad_snapshots_are_refused() {
    let m = tiny("llama");
    let other = tiny("qwen2");
    let dir = common::scratch_dir("snap-bad");
    let mut eng = Engine::new(m.clone(), Backend::cpu(1).unwrap()).unwrap();
    let s = settings(MemoryPolicy::Fam);
    let mut st = new_state(&m, &eng, s);
    st.feed(&mut eng, &tokens(40, 5), Logits::None).unwrap();
    let good = dir.join("good.snap");
    st.save(&good, &m, serde_json::Value::Null).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let err = |path: &std::path::Path, model: &Model, exp: Option<&FamSettings>| {
        FamState::load(path, model, &Backend::cpu(1).unwrap(), exp)
            .err()
            .expect("refused")
            .to_string()
    };
    // corrupted byte in the body
    let mut c = bytes.clone();
    let k = c.len() / 2;
    c[k] ^= 0x40;
    std::fs::write(dir.join("corrupt.snap"), &c).unwrap();
    assert!(err(&dir.join("corrupt.snap"), &m, None).contains("checksum mismatch"));
    // truncated
    // truncated
    std::fs::write(dir.join("trunc.snap"), &bytes[..bytes.len() - 1000]).unwrap();
    assert!(err(&dir.join("trunc.snap"), &m, None).contains("checksum mismatch"));
    // corrupted header (still valid JSON: a digit of a counter): refused by the checksum,
    // before any of it is used
    let mut c = bytes.clone();
    let at = 16 + c[16..].iter().position(|b| b.is_ascii_digit()).unwrap();
    c[at] = if c[at] == b'9' { b'8' } else { c[at] + 1 };
    std::fs::write(dir.join("header.snap"), &c).unwrap();
    assert!(err(&dir.join("header.snap"), &m, None).contains("checksum mismatch"));
    std::fs::write(dir.join("tiny.snap"), &bytes[..10]).unwrap();
    assert!(err(&dir.join("tiny.snap"), &m, None).contains("truncated"));
    // not a snapshot
    std::fs::write(
        dir.join("junk.snap"),
        b"hello world, this is not a snapshot at all",
    )
    .unwrap();
    assert!(err(&dir.join("junk.snap"), &m, None).contains("bad magic"));
    // other model
    assert!(err(&good, &other, None).contains("different model"));
    // other settings
    let s2 = FamSettings {
        block_size: 32,
        ..s
    };
    assert!(err(&good, &m, Some(&s2)).contains("other memory settings"));
    // missing file
    assert!(err(&dir.join("missing.snap"), &m, None).contains("missing.snap"));
    // and the good one still loads
    assert!(FamState::load(&good, &m, &Backend::cpu(1).unwrap(), Some(&s)).is_ok());
}

/// Streams that share an engine get exactly the logits they get on engines of their own: the
/// engine's cached decode graph must not outlive a compute buffer that another stream's
/// reservation grew (here a full-attention stream with many more slots reserves in between).
#[test]
fn streams_sharing_an_engine_compute_as_if_alone() {
    let m = tiny("llama");
    let small = settings(MemoryPolicy::Bswa);
    let big = FamSettings {
        policy: MemoryPolicy::Full,
        ..settings(MemoryPolicy::Full)
    };
    let (prompt, decode, other) = (tokens(20, 1), tokens(12, 2), tokens(200, 3));
    let new = |e: &Engine, s: FamSettings, n_ctx: usize| {
        FamState::new(&m, e.backend(), s, n_ctx, vec![1, 17, 42, 99], 1).unwrap()
    };

    // Alone: the small stream decodes token by token on its own engine.
    let mut eng = Engine::new(m.clone(), Backend::cpu(1).unwrap()).unwrap();
    let mut a = new(&eng, small, 512);
    a.feed(&mut eng, &prompt, Logits::None).unwrap();
    let alone: Vec<Vec<f32>> = decode
        .iter()
        .map(|&t| a.feed(&mut eng, &[t], Logits::Last).unwrap())
        .collect();
    let mut eng_b = Engine::new(m.clone(), Backend::cpu(1).unwrap()).unwrap();
    let mut b = new(&eng_b, big, 1024);
    let b_alone = b.feed(&mut eng_b, &other, Logits::Last).unwrap();

    // Shared: the big stream reserves (growing the compute buffer) and computes between the
    // small stream's decoded tokens.
    let mut eng = Engine::new(m.clone(), Backend::cpu(1).unwrap()).unwrap();
    let mut a = new(&eng, small, 512);
    a.feed(&mut eng, &prompt, Logits::None).unwrap();
    let mut b = new(&eng, big, 1024);
    let mut shared = Vec::new();
    let mut b_shared = Vec::new();
    for (i, &t) in decode.iter().enumerate() {
        shared.push(a.feed(&mut eng, &[t], Logits::Last).unwrap());
        match i {
            3 => b.feed(&mut eng, &[], Logits::None).map(|_| ()).unwrap(),
            6 => b_shared = b.feed(&mut eng, &other, Logits::Last).unwrap(),
            _ => {}
        }
    }
    assert_eq!(shared, alone);
    assert_eq!(b_shared, b_alone);
}

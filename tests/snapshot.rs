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
    let p = format!(
        "{}/tests/golden/tiny/{arch}/model.f32.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    Arc::new(Model::load(p, &Backend::cpu(1).unwrap()).unwrap())
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
    for policy in [
        MemoryPolicy::Full,
        MemoryPolicy::Bswa,
        MemoryPolicy::Sink,
        MemoryPolicy::Fam,
    ] {
        let s = settings(policy);
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
    // truncated: the body is shorter than the header's shapes imply (checked before reading)
    std::fs::write(dir.join("trunc.snap"), &bytes[..bytes.len() - 1000]).unwrap();
    let e = err(&dir.join("trunc.snap"), &m, None);
    assert!(e.contains("body of") && e.contains("expected"), "{e}");
    // corrupted header: refused while parsing it, before any body is read
    let mut c = bytes.clone();
    c[17] = b'#';
    std::fs::write(dir.join("header.snap"), &c).unwrap();
    let e = err(&dir.join("header.snap"), &m, None);
    assert!(e.contains("header"), "{e}");
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

//! Adapters trained by tools/fam_train.py (PyTorch: LoRA + a learned initial FAM) against that
//! trainer's own logits: tests/golden/adapter/cases.json lists cases
//! `{"arch", "model", "adapter", "policy", "settings": {...}, "ids": [...], "logits"}` (paths
//! relative to the repository root; logits f32 [n_ids, n_vocab], every row). Each case runs
//! through famstream with the case's memory policy and settings, the adapter attached (its
//! `fam.init_memory` is the initial FAM), and every logit is compared.

use famstream::engine::Engine;
use famstream::ggml::Backend;
use famstream::model::Model;
use famstream::settings::{FamFeedback, FamInit, FamQueryPos, FamSettings, MemoryPolicy};
use famstream::state::{FamState, Logits};
use std::path::PathBuf;
use std::sync::Arc;

/// The reasoning of tests/fam_reference.rs: famstream keeps K/V (and flash attention's Q) in
/// f16, which moves logits of the tiny models by up to ~3e-2 against an f32/f64 reference; a
/// wrong mask, position, FAM rule or a LoRA term missing or mis-scaled moves them by far more
/// than this.
const LOGIT_TOL: f32 = 5e-2;
/// The decay case (qwen2, decay 0.3) has one row that f16 K/V move more than others: famstream
/// is 6.9e-2 from the trainer at row 35 and within 3.4e-2 elsewhere, and that row is as
/// sensitive in the trainer itself (decay 0.29 or 0.31 instead of 0.3 moves it by 0.39 and 0.65,
/// every other row by at most 0.2). So 1e-1 still tells a decay off by 0.01 from the right one.
const DECAY_LOGIT_TOL: f32 = 1e-1;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The case's settings object over the built-in defaults (every key optional).
fn settings(policy: MemoryPolicy, j: &serde_json::Value) -> FamSettings {
    let d = FamSettings::default();
    let u = |k: &str, default: u32| j[k].as_u64().map_or(default, |v| v as u32);
    let parse = |k: &str| j[k].as_str().map(|s| s.to_string());
    FamSettings {
        policy,
        block_size: u("block_size", d.block_size),
        mem_blocks: u("mem_blocks", d.mem_blocks),
        fam_len: u("fam_len", d.fam_len),
        sinks: u("sinks", d.sinks),
        init: parse("init").map_or(d.init, |s| s.parse::<FamInit>().unwrap()),
        query_pos: parse("query_pos").map_or(d.query_pos, |s| s.parse::<FamQueryPos>().unwrap()),
        zero_first_residual: j["zero_first_residual"]
            .as_bool()
            .unwrap_or(d.zero_first_residual),
        renorm: j["renorm"].as_bool().unwrap_or(d.renorm),
        feedback: parse("feedback").map_or(d.feedback, |s| s.parse::<FamFeedback>().unwrap()),
        decay: j["decay"].as_f64().map_or(d.decay, |v| v as f32),
        keep_len: u("keep_len", d.keep_len),
    }
}

#[test]
fn adapters_match_the_pytorch_trainers_logits() {
    let cases_path = root().join("tests/golden/adapter/cases.json");
    let text = std::fs::read_to_string(&cases_path)
        .unwrap_or_else(|e| panic!("{}: {e} (made by tools/fam_train.py)", cases_path.display()));
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = cases.as_array().expect("cases.json is a list");
    assert!(!cases.is_empty());
    for c in cases {
        let arch = c["arch"].as_str().unwrap();
        let model = root().join(c["model"].as_str().unwrap());
        let adapter = root().join(c["adapter"].as_str().unwrap());
        let policy: MemoryPolicy = c["policy"].as_str().unwrap().parse().unwrap();
        let s = settings(policy, &c["settings"]);
        let ids: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let seed: Vec<u32> = c["seed_ids"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap() as u32).collect())
            .unwrap_or_default();

        let backend = Backend::cpu(2).unwrap();
        let mut m = Model::load(&model, &backend).unwrap();
        m.attach_adapter(&adapter, &backend).unwrap();
        let m = Arc::new(m);
        let mut eng = Engine::new(m.clone(), backend).unwrap();
        let mut st = FamState::new(&m, eng.backend(), s, ids.len(), seed, 1).unwrap();
        let ours = st.feed(&mut eng, &ids, Logits::All).unwrap();

        let file = c["logits"].as_str().unwrap();
        let (shape, want) = famstream::npy::read_f32(root().join(file)).unwrap();
        assert_eq!(shape, vec![ids.len(), m.hp.n_vocab], "{file}");
        assert_eq!(ours.len(), want.len());
        assert!(
            ours.iter().all(|x| x.is_finite()),
            "{file}: famstream gave NaN/inf"
        );
        let (mut worst, mut at) = (0f32, 0);
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            let d = (a - b).abs();
            if d > worst || d.is_nan() {
                worst = d;
                at = i;
            }
        }
        eprintln!(
            "{arch} {policy} {file}: max |famstream - trainer| = {worst:.2e} (row {}, token {})",
            at / m.hp.n_vocab,
            at % m.hp.n_vocab
        );
        let tol = if s.decay > 0.0 {
            DECAY_LOGIT_TOL
        } else {
            LOGIT_TOL
        };
        assert!(worst < tol, "{arch} {policy} {file}: {worst}"); // NaN fails too
    }
}

#[test]
fn a_decay_without_a_learned_initial_fam_is_refused() {
    let backend = Backend::cpu(1).unwrap();
    let m = Model::load(
        &root().join("tests/golden/tiny/llama/model.f32.gguf"),
        &backend,
    )
    .unwrap();
    let s = FamSettings {
        policy: MemoryPolicy::Fam,
        block_size: 8,
        mem_blocks: 1,
        fam_len: 4,
        init: FamInit::Bos,
        decay: 0.1,
        ..FamSettings::default()
    };
    let e = FamState::new(&m, &backend, s, 64, Vec::new(), 1)
        .err()
        .expect("a decay toward no learned FAM must be refused")
        .to_string();
    assert!(e.contains("decay") && e.contains("fam.init_memory"), "{e}");
}

//! LoRA adapters (`--adapter`, src/adapter.rs) on the tiny llama and qwen2 checkpoints:
//! famstream with an adapter against llama.cpp with the same file; a zero adapter changes
//! nothing; an adapter equals its merge into the weights under every memory policy (so the FAM
//! update graph applies it too); the adapter's learned FAM and `fam.*` defaults and their
//! precedence; the base fingerprint against gguf-py; and every refusal, through the CLI.

mod common;

use common::llama::{argmax, kl_divergence, LlamaOracle};
use common::Rng;
use famstream::adapter::{base_fingerprint, KEY_BASE_FINGERPRINT};
use famstream::dtype::GgmlType;
use famstream::engine::Engine;
use famstream::ggml::Backend;
use famstream::gguf::{Array, GgufFile, GgufWriter, Value};
use famstream::model::{HParams, Model};
use famstream::settings::{FamInit, FamSettings, MemoryPolicy};
use famstream::state::{FamState, Logits, LEARNED_FAM_TENSOR};
use half::f16;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// As tests/vs_llama_cpp.rs: both engines run the same weights and LoRA tensors through the
/// same ggml kernels in the same order (`build_lora_mm`), so next-token distributions differ by
/// rounding only; a LoRA term missing, transposed or mis-scaled shows up far above this (the
/// adapter itself moves the distribution by the KL asserted in `ADAPTER_EFFECT_KL`).
const MEAN_KL_BOUND: f64 = 1e-4;
/// The random adapters below must change the model clearly, or the comparisons prove nothing.
const ADAPTER_EFFECT_KL: f64 = 1e-2;
/// Choices closer than this may flip between engines (these random models have near-ties, as
/// in tests/convert.rs); the others must agree.
const NEAR_TIE: f32 = 0.05;
/// Adapter vs its merge into f32 weights: the same sums in another order (W'x against
/// Wx + s B(Ax)), about 1e-6 relative; K/V are stored in f16, where such a difference can round
/// to a neighbouring f16 value (2^-11 relative). That moves these tiny models' logits by well
/// under 1e-2, while a LoRA term missing from one linear of one graph moves them by > 0.1.
/// Measured worst: 5.7e-3.
const MERGE_LOGIT_TOL: f32 = 1e-2;
/// With f16 LoRA tensors ggml's CPU matmul also rounds the activations it multiplies them with
/// to f16 (as for any f16 weight), which the f32 merge does not: measured worst 1.03e-2, still
/// two orders below the adapter's own effect (> 3).
const MERGE_LOGIT_TOL_F16: f32 = 3e-2;
const RANK: usize = 4;
const ALPHA: f32 = 8.0;
const TARGETS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

fn tiny(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny")
        .join(arch)
        .join("model.f32.gguf")
}

/// The 40-token sequence of the tiny checkpoints' HF goldens.
fn ids(arch: &str) -> Vec<u32> {
    let p = tiny(arch).with_file_name("golden.json");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    j["sequences"][2]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An adapter file under construction (metadata and tensors, written with our GgufWriter).
struct AdapterBuilder {
    meta: Vec<(String, Value)>,
    tensors: Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
}

impl AdapterBuilder {
    /// A LoRA adapter for `base`'s architecture with alpha [`ALPHA`]; no tensors yet.
    fn new(base: &GgufFile) -> AdapterBuilder {
        let mut b = AdapterBuilder {
            meta: Vec::new(),
            tensors: Vec::new(),
        };
        b.set(
            "general.architecture",
            Value::String(base.architecture().unwrap().into()),
        );
        b.set("general.type", Value::String("adapter".into()));
        b.set("adapter.type", Value::String("lora".into()));
        b.set("adapter.lora.alpha", Value::F32(ALPHA));
        b
    }
    fn set(&mut self, k: &str, v: Value) {
        self.meta.retain(|(key, _)| key != k);
        self.meta.push((k.to_string(), v));
    }
    fn tensor(&mut self, name: &str, ty: GgmlType, ne: &[u64], data: Vec<u8>) {
        self.tensors.retain(|t| t.0 != name);
        self.tensors.push((name.to_string(), ty, ne.to_vec(), data));
    }
    fn drop_tensor(&mut self, name: &str) {
        self.tensors.retain(|t| t.0 != name);
    }
    fn has(&self, name: &str) -> bool {
        self.tensors.iter().any(|t| t.0 == name)
    }
    /// A rank-`r` pair for base weight `w` with entries uniform in (-amp, amp) (`b_amp` 0: a
    /// zero B), as f32 or f16.
    fn lora(&mut self, base: &GgufFile, w: &str, r: usize, rng: &mut Rng, b_amp: f32, half: bool) {
        let ne = &base.tensor(w).unwrap().ne;
        let (n_in, n_out) = (ne[0], ne[1]);
        let a: Vec<f32> = (0..n_in * r as u64).map(|_| 0.1 * rng.f32()).collect();
        let b: Vec<f32> = (0..r as u64 * n_out).map(|_| b_amp * rng.f32()).collect();
        for (suffix, v, ne) in [
            ("lora_a", a, [n_in, r as u64]),
            ("lora_b", b, [r as u64, n_out]),
        ] {
            let (ty, data) = if half {
                let h: Vec<u8> = v
                    .iter()
                    .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                    .collect();
                (GgmlType::F16, h)
            } else {
                (GgmlType::F32, f32_bytes(&v))
            };
            self.tensor(&format!("{w}.{suffix}"), ty, &ne, data);
        }
    }
    /// Rank-[`RANK`] pairs on every target of every layer.
    fn every_target(&mut self, base: &GgufFile, rng: &mut Rng, b_amp: f32, half: bool) {
        let n_layer = HParams::from_gguf(base).unwrap().n_layer;
        for il in 0..n_layer {
            for t in TARGETS {
                self.lora(
                    base,
                    &format!("blk.{il}.{t}.weight"),
                    RANK,
                    rng,
                    b_amp,
                    half,
                );
            }
        }
    }
    /// A learned initial FAM: f32 [n_embd, f, n_layer], layer il filled with `value(il)`, as
    /// a metadata array (what famstream and the trainer write).
    fn init_memory(&mut self, base: &GgufFile, f: u64, value: impl Fn(usize) -> f32) {
        let v = init_values(base, f, value);
        self.set(LEARNED_FAM_TENSOR, Value::Array(Array::F32(v)));
    }
    /// The same as a tensor (the older form, still read).
    fn init_memory_tensor(&mut self, base: &GgufFile, f: u64, value: impl Fn(usize) -> f32) {
        let hp = HParams::from_gguf(base).unwrap();
        let v = init_values(base, f, value);
        let ne = [hp.n_embd as u64, f, hp.n_layer as u64];
        self.tensor(LEARNED_FAM_TENSOR, GgmlType::F32, &ne, f32_bytes(&v));
    }
    fn write(&self, path: &Path) {
        let mut w = GgufWriter::new();
        for (k, v) in &self.meta {
            w.set(k, v.clone());
        }
        for (n, ty, ne, _) in &self.tensors {
            w.add_tensor(n, *ty, ne).unwrap();
        }
        let data: Vec<&[u8]> = self.tensors.iter().map(|t| t.3.as_slice()).collect();
        w.write_with_data(path, &data).unwrap();
    }
}

/// The values of a learned initial FAM of `f` rows whose layer il is all `value(il)`.
fn init_values(base: &GgufFile, f: u64, value: impl Fn(usize) -> f32) -> Vec<f32> {
    let hp = HParams::from_gguf(base).unwrap();
    let per_layer = hp.n_embd * f as usize;
    (0..hp.n_layer)
        .flat_map(|il| std::iter::repeat_n(value(il), per_layer))
        .collect()
}

/// A copy of `base` with extra metadata and the builder's tensors.
fn model_copy(base: &Path, out: &Path, meta: &[(&str, Value)], extra: &AdapterBuilder) {
    common::gguf_copy(base, out, meta, &extra.tensors);
}

/// `base` with every adapted weight replaced by W + scale * B A (in f32): what the adapter
/// means, computed without it.
fn merged_copy(base: &Path, adapter: &AdapterBuilder, out: &Path) {
    let g = GgufFile::open(base).unwrap();
    let tensor = |name: &str| adapter.tensors.iter().find(|t| t.0 == name);
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k, v.clone());
    }
    let mut data: Vec<Vec<u8>> = Vec::new();
    for t in g.tensors() {
        w.add_tensor(&t.name, t.ty, &t.ne).unwrap();
        let mut wt = floats(g.tensor_data(t).unwrap());
        if let (Some(a), Some(b)) = (
            tensor(&format!("{}.lora_a", t.name)),
            tensor(&format!("{}.lora_b", t.name)),
        ) {
            assert_eq!(a.1, GgmlType::F32);
            let (n_in, r, n_out) = (a.2[0] as usize, a.2[1] as usize, b.2[1] as usize);
            let (av, bv) = (floats(&a.3), floats(&b.3));
            let scale = ALPHA / r as f32;
            // ggml layout: W[o][i] = wt[o * n_in + i], A[k][i] = av[k * n_in + i],
            // B[o][k] = bv[o * r + k]; (B A)[o][i] = sum_k B[o][k] A[k][i].
            for o in 0..n_out {
                for i in 0..n_in {
                    let ba: f32 = (0..r).map(|k| bv[o * r + k] * av[k * n_in + i]).sum();
                    wt[o * n_in + i] += scale * ba;
                }
            }
        }
        data.push(f32_bytes(&wt));
    }
    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    w.write_with_data(out, &refs).unwrap();
}

/// A model (with `adapter` attached, if given) on the CPU, and an engine for it.
fn load(model: &Path, adapter: Option<&Path>) -> (Arc<Model>, Engine) {
    let backend = Backend::cpu(2).unwrap();
    let mut m = Model::load(model, &backend).unwrap();
    if let Some(a) = adapter {
        m.attach_adapter(a, &backend).unwrap();
    }
    let m = Arc::new(m);
    let eng = Engine::new(m.clone(), Backend::cpu(2).unwrap()).unwrap();
    (m, eng)
}

/// Every row's logits of `ids` under `settings` (a full-attention context of ids.len()).
fn logits(model: &Path, adapter: Option<&Path>, s: FamSettings, ids: &[u32]) -> Vec<f32> {
    let (m, mut eng) = load(model, adapter);
    let seed = vec![1u32, 17, 42, 99];
    let mut st = FamState::new(&m, eng.backend(), s, ids.len(), seed, 1).unwrap();
    st.feed(&mut eng, ids, Logits::All).unwrap()
}

fn full() -> FamSettings {
    FamSettings {
        policy: MemoryPolicy::Full,
        ..FamSettings::default()
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn mean_kl(p: &[Vec<f32>], q: &[f32]) -> f64 {
    let nv = p[0].len();
    p.iter()
        .enumerate()
        .map(|(i, row)| kl_divergence(row, &q[i * nv..(i + 1) * nv]))
        .sum::<f64>()
        / p.len() as f64
}

#[test]
fn an_adapter_gives_llama_cpps_logits_on_both_architectures() {
    for (arch, half) in [("llama", false), ("qwen2", true)] {
        let dir = common::scratch_dir(&format!("adapter-oracle-{arch}"));
        let base = GgufFile::open(tiny(arch)).unwrap();
        let mut ab = AdapterBuilder::new(&base);
        ab.every_target(&base, &mut Rng(7), 0.1, half);
        // a learned initial FAM, as the trainer exports it: llama.cpp must still load the file
        // (it refuses unknown tensors; the FAM rows are metadata it ignores)
        ab.init_memory(&base, 4, |il| 0.5 + il as f32);
        // and the trainer's soft prompt (`famtrain.prompt`, F x n_embd), kept for warm starts
        let n_embd = HParams::from_gguf(&base).unwrap().n_embd;
        ab.set(
            "famtrain.prompt",
            Value::Array(Array::F32(vec![0.25; 4 * n_embd])),
        );
        ab.set(
            KEY_BASE_FINGERPRINT,
            Value::String(format!("{:016x}", base_fingerprint(&base))),
        );
        let path = dir.join("adapter.gguf");
        ab.write(&path);
        let ids = ids(arch);

        let ours = logits(&tiny(arch), Some(&path), full(), &ids);
        let plain = logits(&tiny(arch), None, full(), &ids);
        let mut oracle = LlamaOracle::new(&tiny(arch), 256, 2);
        let theirs_plain = oracle.logits_all(&ids);
        oracle.set_adapter(&path);
        let theirs = oracle.logits_all(&ids);

        let kl = mean_kl(&theirs, &ours);
        let effect = mean_kl(&theirs_plain, &ours);
        eprintln!("{arch}: mean KL(llama.cpp || famstream) with the adapter {kl:.3e}; the adapter moves it by {effect:.3e}");
        assert!(kl < MEAN_KL_BOUND, "{arch}: mean KL {kl}");
        assert!(
            effect > ADAPTER_EFFECT_KL,
            "{arch}: the adapter changed too little ({effect})"
        );
        // And without the adapter the engines agree too (the oracle's adapter was really on).
        assert!(mean_kl(&theirs_plain, &plain) < MEAN_KL_BOUND);
        let nv = theirs[0].len();
        for (i, t) in theirs.iter().enumerate() {
            let best = argmax(t);
            let runner_up = t
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != best)
                .map(|(_, &x)| x)
                .fold(f32::MIN, f32::max);
            if t[best] - runner_up > NEAR_TIE {
                assert_eq!(
                    best,
                    argmax(&ours[i * nv..(i + 1) * nv]),
                    "{arch}: argmax at {i}"
                );
            }
        }
    }
}

#[test]
fn a_zero_adapter_changes_no_logit() {
    for arch in ["llama", "qwen2"] {
        let dir = common::scratch_dir(&format!("adapter-zero-{arch}"));
        let base = GgufFile::open(tiny(arch)).unwrap();
        let mut ab = AdapterBuilder::new(&base);
        ab.every_target(&base, &mut Rng(11), 0.0, false);
        let path = dir.join("zero.gguf");
        ab.write(&path);
        let ids = ids(arch);
        let s = common::settings(MemoryPolicy::Fam, 8, 1, 4, 0);
        for settings in [full(), s] {
            let with = logits(&tiny(arch), Some(&path), settings, &ids);
            let without = logits(&tiny(arch), None, settings, &ids);
            // B = 0: the low-rank term is exactly 0, and x + 0 is x.
            assert_eq!(with, without, "{arch} {:?}", settings.policy);
        }
    }
}

#[test]
fn an_adapter_equals_its_merge_under_every_memory_policy() {
    for arch in ["llama", "qwen2"] {
        let dir = common::scratch_dir(&format!("adapter-merge-{arch}"));
        let base = GgufFile::open(tiny(arch)).unwrap();
        let mut ab = AdapterBuilder::new(&base);
        ab.every_target(&base, &mut Rng(23), 0.1, false);
        let path = dir.join("adapter.gguf");
        ab.write(&path);
        let merged = dir.join("merged.gguf");
        merged_copy(&tiny(arch), &ab, &merged);
        let ids = ids(arch);
        let fam = |init: FamInit| FamSettings {
            init,
            ..common::settings(MemoryPolicy::Fam, 8, 1, 4, 0)
        };
        let cases = [
            full(),
            common::settings(MemoryPolicy::Bswa, 8, 1, 0, 0),
            common::settings(MemoryPolicy::Sink, 8, 1, 0, 2),
            // The FAM update graph runs after every block of 8: 4 updates over 40 tokens.
            fam(FamInit::SeedText),
            fam(FamInit::Bos),
            FamSettings {
                sinks: 2,
                ..fam(FamInit::TailOfBlock)
            },
        ];
        for s in cases {
            let with = logits(&tiny(arch), Some(&path), s, &ids);
            let want = logits(&merged, None, s, &ids);
            let plain = logits(&tiny(arch), None, s, &ids);
            let d = max_abs_diff(&with, &want);
            let effect = max_abs_diff(&plain, &want);
            eprintln!(
                "{arch} {} {}: max |adapter - merged| = {d:.2e} (the adapter moves logits by {effect:.2})",
                s.policy, s.init
            );
            assert!(d < MERGE_LOGIT_TOL, "{arch} {s:?}: {d}");
            assert!(
                effect > 10.0 * MERGE_LOGIT_TOL,
                "{arch} {s:?}: effect {effect}"
            );
        }
    }
}

#[test]
fn the_base_fingerprint_is_the_one_gguf_py_computes() {
    // Computed with gguf-py (GGUFReader) by the recipe in `base_fingerprint`'s docs.
    for (arch, want) in [
        ("llama", 0x231a20c4f0032201u64),
        ("qwen2", 0xa662437a132a69d0),
    ] {
        let g = GgufFile::open(tiny(arch)).unwrap();
        assert_eq!(
            base_fingerprint(&g),
            want,
            "{arch}: {:016x}",
            base_fingerprint(&g)
        );
    }
}

#[test]
fn the_adapters_learned_fam_is_the_initial_memory_and_overrides_the_model_files() {
    const F: u64 = 4;
    let dir = common::scratch_dir("adapter-learned");
    let base = GgufFile::open(tiny("llama")).unwrap();
    // A model file with its own learned FAM (every value 7, in the older tensor form) ...
    let mut own = AdapterBuilder::new(&base);
    own.init_memory_tensor(&base, F, |_| 7.0);
    let model = dir.join("model.gguf");
    model_copy(&tiny("llama"), &model, &[], &own);
    // ... and an adapter with another (layer il: 0.5 + il).
    let value = |il: usize| 0.5 + il as f32;
    let mut ab = AdapterBuilder::new(&base);
    ab.lora(&base, "blk.0.attn_q.weight", 2, &mut Rng(3), 0.1, false);
    ab.init_memory(&base, F, value);
    let path = dir.join("adapter.gguf");
    ab.write(&path);
    let s = FamSettings {
        init: FamInit::SeedText, // a learned FAM is used whatever the init says
        ..common::settings(MemoryPolicy::Fam, 16, 1, F as u32, 0)
    };
    for (adapter, want) in [
        (None, [7.0, 7.0]),
        (Some(path.as_path()), [value(0), value(1)]),
    ] {
        let (m, mut eng) = load(&model, adapter);
        let mut st = FamState::new(&m, eng.backend(), s, 64, vec![1, 17, 42, 99], 1).unwrap();
        // Fewer tokens than a block: the FAM rows are the initial ones.
        st.feed(&mut eng, &[1, 5, 9], Logits::Last).unwrap();
        let rms = st.fam_rms().unwrap();
        assert_eq!(rms.len(), m.hp.n_layer);
        for (il, r) in rms.iter().enumerate().take(2) {
            assert!((r - want[il]).abs() < 1e-5, "{adapter:?} layer {il}: {r}");
        }
    }
    // A stream of another FAM length is refused at creation, naming the tensor and the fix.
    let (m, eng) = load(&model, Some(&path));
    let s8 = FamSettings { fam_len: 8, ..s };
    let err = FamState::new(&m, eng.backend(), s8, 64, vec![1; 8], 1)
        .err()
        .expect("F = 8 against a learned FAM of 4 rows")
        .to_string();
    assert!(
        err.contains(LEARNED_FAM_TENSOR) && err.contains("--fam-len 4"),
        "{err}"
    );
}

#[test]
fn stream_defaults_come_from_the_flag_then_the_adapter_then_the_model_file() {
    let dir = common::scratch_dir("adapter-settings");
    let base = GgufFile::open(tiny("llama")).unwrap();
    let model = dir.join("model.gguf");
    let keys = [
        ("fam.policy", Value::String("fam".into())),
        ("fam.block_size", Value::U32(16)),
        ("fam.mem_blocks", Value::U32(2)),
        ("fam.fam_len", Value::U32(4)),
    ];
    model_copy(
        &tiny("llama"),
        &model,
        &keys,
        &AdapterBuilder::new(&base).no_tensors(),
    );
    let mut ab = AdapterBuilder::new(&base);
    ab.set("fam.block_size", Value::U32(8));
    ab.set("fam.init", Value::String("bos".into()));
    let path = dir.join("adapter.gguf");
    ab.write(&path);

    let (m, _) = load(&model, Some(&path));
    let s = m.fam_settings().unwrap();
    assert_eq!(s.block_size, 8, "adapter over model file");
    assert_eq!(s.init, FamInit::Bos, "adapter over default");
    assert_eq!(
        (s.policy, s.mem_blocks, s.fam_len),
        (MemoryPolicy::Fam, 2, 4),
        "model file"
    );
    assert_eq!(s.sinks, FamSettings::default().sinks, "built-in default");
    let (m, _) = load(&model, None);
    assert_eq!(m.fam_settings().unwrap().block_size, 16);

    // Through the CLI: the stream's settings as `perplexity --json` reports them.
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "Emma Woodhouse, handsome, clever, and rich. ".repeat(8),
    )
    .unwrap();
    let report = |extra: &[&str]| -> serde_json::Value {
        let out = famstream()
            .args(["perplexity", "-m", model.to_str().unwrap(), "--adapter"])
            .arg(&path)
            .arg("-f")
            .arg(&text)
            .args(["--memory", "fam", "--json", "-t", "1"])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let full_report = report(&[]);
    // every JSON report says what produced it: the commit and the model (with its adapter)
    let p = &full_report["provenance"];
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    // (outside a git checkout the build records "unknown")
    let head = if head.status.success() {
        String::from_utf8_lossy(&head.stdout).trim().to_string()
    } else {
        "unknown".to_string()
    };
    assert_eq!(p["commit"].as_str(), Some(head.as_str()), "{p}");
    let fp = p["model_fingerprint"].as_str().unwrap();
    assert!(
        fp.len() == 16 && fp.chars().all(|c| c.is_ascii_hexdigit()),
        "{p}"
    );
    let j = &full_report["settings"];
    assert_eq!(
        (j["block_size"].as_u64(), j["mem_blocks"].as_u64()),
        (Some(8), Some(2))
    );
    assert_eq!(j["init"], "bos");
    let j = &report(&["--block", "4", "--fam-init", "seed"])["settings"];
    assert_eq!(
        (j["block_size"].as_u64(), j["mem_blocks"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(j["init"], "seed");
}

impl AdapterBuilder {
    /// Only the tensors matter to `model_copy`: none.
    fn no_tensors(self) -> AdapterBuilder {
        AdapterBuilder {
            meta: self.meta,
            tensors: Vec::new(),
        }
    }
}

fn famstream() -> Command {
    Command::new(env!("CARGO_BIN_EXE_famstream"))
}

/// Run `famstream run -m <tiny llama> --adapter <adapter> -p ... <extra>`, which must be
/// refused: exit code 1, famstream's error prefix, no panic. Returns stderr.
fn refused_run(adapter: &Path, extra: &[&str]) -> String {
    let out = famstream()
        .args(["run", "-m", tiny("llama").to_str().unwrap(), "--adapter"])
        .arg(adapter)
        .args(["-p", "Emma", "-n", "1", "--temp", "0", "-t", "1"])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        matches!(out.status.code(), Some(2..=5)),
        "{adapter:?}: {err}"
    );
    assert!(err.starts_with("famstream: error:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_adapters_are_refused_naming_the_problem() {
    let dir = common::scratch_dir("adapter-bad");
    let base = GgufFile::open(tiny("llama")).unwrap();
    let qwen = GgufFile::open(tiny("qwen2")).unwrap();
    let good = || {
        let mut ab = AdapterBuilder::new(&base);
        ab.lora(&base, "blk.0.attn_q.weight", 2, &mut Rng(5), 0.1, false);
        ab.lora(&base, "blk.1.ffn_down.weight", 2, &mut Rng(6), 0.1, false);
        ab
    };
    let q = "blk.0.attn_q.weight";
    let n_embd = HParams::from_gguf(&base).unwrap().n_embd as u64;
    let n_layer = HParams::from_gguf(&base).unwrap().n_layer as u64;
    type Edit = Box<dyn Fn(&mut AdapterBuilder)>;
    // (name, edit of a good adapter, extra flags, words the message must contain)
    let cases: Vec<(&str, Edit, Vec<&str>, Vec<String>)> = vec![
        (
            "not-adapter",
            Box::new(|ab| ab.set("general.type", Value::String("model".into()))),
            vec![],
            vec![
                "not an adapter".into(),
                "general.type".into(),
                "`model`".into(),
            ],
        ),
        (
            "not-lora",
            Box::new(|ab| ab.set("adapter.type", Value::String("control_vector".into()))),
            vec![],
            vec![
                "adapter.type".into(),
                "control_vector".into(),
                "lora".into(),
            ],
        ),
        (
            "arch",
            Box::new(|ab| ab.set("general.architecture", Value::String("qwen2".into()))),
            vec![],
            vec![
                "general.architecture".into(),
                "qwen2".into(),
                "llama".into(),
            ],
        ),
        (
            "lora-scope",
            Box::new(|ab| ab.set("fam.adapter.lora_scope", Value::String("tokens".into()))),
            vec![],
            vec![
                "fam.adapter.lora_scope".into(),
                "`tokens`".into(),
                "`all` or `fam`".into(),
            ],
        ),
        (
            "fam-attn-bias",
            Box::new(|ab| ab.set("fam.adapter.fam_attn_bias", Value::F32(f32::NAN))),
            vec![],
            vec!["fam.adapter.fam_attn_bias".into(), "NaN".into()],
        ),
        (
            "unknown-target",
            Box::new(|ab| {
                let a = ab.tensors[0].clone();
                ab.tensor("output.weight.lora_a", a.1, &a.2, a.3);
            }),
            vec![],
            vec![
                "output.weight.lora_a".into(),
                "not a weight famstream adapts".into(),
            ],
        ),
        (
            "layer-out-of-range",
            Box::new(move |ab| {
                let a = ab.tensors[0].clone();
                ab.tensor(
                    &format!("blk.{n_layer}.attn_q.weight.lora_a"),
                    a.1,
                    &a.2,
                    a.3,
                );
            }),
            vec![],
            vec![format!("blk.{n_layer}.attn_q.weight")],
        ),
        (
            "odd-suffix",
            Box::new(|ab| {
                ab.tensor(
                    "blk.0.attn_q.weight.lora_c",
                    GgmlType::F32,
                    &[4],
                    vec![0; 16],
                )
            }),
            vec![],
            vec![
                "blk.0.attn_q.weight.lora_c".into(),
                "neither a LoRA tensor".into(),
            ],
        ),
        (
            "no-partner",
            Box::new(move |ab| ab.drop_tensor(&format!("{q}.lora_b"))),
            vec![],
            vec![format!("{q}.lora_a"), format!("no partner `{q}.lora_b`")],
        ),
        (
            "rank",
            Box::new(move |ab| {
                let b = ab
                    .tensors
                    .iter()
                    .find(|t| t.0 == format!("{q}.lora_b"))
                    .unwrap()
                    .clone();
                let n_out = b.2[1];
                ab.tensor(
                    &b.0,
                    GgmlType::F32,
                    &[3, n_out],
                    vec![0; 12 * n_out as usize],
                );
            }),
            vec![],
            vec!["rank mismatch".into(), "rank 2".into(), "rank 3".into()],
        ),
        (
            "in-dims",
            Box::new(move |ab| {
                let n = (n_embd + 1) * 2;
                ab.tensor(
                    &format!("{q}.lora_a"),
                    GgmlType::F32,
                    &[n_embd + 1, 2],
                    vec![0; 4 * n as usize],
                );
            }),
            vec![],
            vec![
                format!("{q}.lora_a"),
                format!("inputs of {}", n_embd + 1),
                format!("takes {n_embd}"),
            ],
        ),
        (
            "out-dims",
            Box::new(move |ab| {
                ab.tensor(&format!("{q}.lora_b"), GgmlType::F32, &[2, 3], vec![0; 24]);
            }),
            vec![],
            vec![format!("{q}.lora_b"), "outputs of 3".into()],
        ),
        (
            "dtype",
            Box::new(move |ab| {
                let a = ab
                    .tensors
                    .iter()
                    .find(|t| t.0 == format!("{q}.lora_a"))
                    .unwrap()
                    .clone();
                let n: u64 = a.2.iter().product();
                ab.tensor(&a.0, GgmlType::BF16, &a.2, vec![0; 2 * n as usize]);
            }),
            vec![],
            vec![format!("{q}.lora_a"), "bf16".into(), "f32 or f16".into()],
        ),
        (
            "init-shape",
            Box::new(|ab| {
                let g = GgufFile::open(tiny("llama")).unwrap();
                let hp = HParams::from_gguf(&g).unwrap();
                let ne = [hp.n_embd as u64, 4, hp.n_layer as u64 + 1];
                let n: u64 = ne.iter().product();
                ab.tensor(
                    LEARNED_FAM_TENSOR,
                    GgmlType::F32,
                    &ne,
                    vec![0; 4 * n as usize],
                );
            }),
            vec![],
            vec![LEARNED_FAM_TENSOR.into(), format!("n_layer = {n_layer}")],
        ),
        (
            "init-length",
            Box::new(|ab| ab.set(LEARNED_FAM_TENSOR, Value::Array(Array::F32(vec![0.5; 7])))),
            vec![],
            vec![
                LEARNED_FAM_TENSOR.into(),
                "7 values".into(),
                format!("n_layer ({n_layer})"),
            ],
        ),
        (
            "init-type",
            Box::new(|ab| ab.set(LEARNED_FAM_TENSOR, Value::Array(Array::U32(vec![1; 4])))),
            vec![],
            vec![LEARNED_FAM_TENSOR.into(), "array of f32".into()],
        ),
        (
            "init-twice",
            Box::new(|ab| {
                let g = GgufFile::open(tiny("llama")).unwrap();
                ab.init_memory(&g, 4, |_| 1.0);
                ab.init_memory_tensor(&g, 4, |_| 1.0);
            }),
            vec![],
            vec![LEARNED_FAM_TENSOR.into(), "both".into()],
        ),
        (
            "init-fam-len",
            Box::new(|ab| {
                let g = GgufFile::open(tiny("llama")).unwrap();
                ab.init_memory(&g, 4, |_| 1.0);
            }),
            vec!["--memory", "fam", "--block", "16", "--fam-len", "8"],
            vec![LEARNED_FAM_TENSOR.into(), "--fam-len 4".into()],
        ),
        (
            "fingerprint",
            Box::new(move |ab| {
                ab.set(
                    KEY_BASE_FINGERPRINT,
                    Value::String(format!("{:016x}", base_fingerprint(&qwen))),
                )
            }),
            vec![],
            vec![
                format!(
                    "{:016x}",
                    base_fingerprint(&GgufFile::open(tiny("qwen2")).unwrap())
                ),
                format!(
                    "{:016x}",
                    base_fingerprint(&GgufFile::open(tiny("llama")).unwrap())
                ),
                tiny("llama").display().to_string(),
                "fingerprint".into(),
            ],
        ),
        (
            "fingerprint-format",
            Box::new(|ab| ab.set(KEY_BASE_FINGERPRINT, Value::String("ABC".into()))),
            vec![],
            vec![
                KEY_BASE_FINGERPRINT.into(),
                "16 lowercase hex digits".into(),
            ],
        ),
        (
            "bad-setting",
            Box::new(|ab| ab.set("fam.policy", Value::String("forever".into()))),
            vec![],
            vec!["fam.policy".into(), "forever".into()],
        ),
    ];
    for (name, edit, extra, words) in &cases {
        let mut ab = good();
        edit(&mut ab);
        let path = dir.join(format!("{name}.gguf"));
        ab.write(&path);
        let err = refused_run(&path, extra);
        assert!(
            err.contains(path.to_str().unwrap()),
            "{name}: the file is named: {err}"
        );
        for w in words {
            assert!(
                err.contains(w.as_str()),
                "{name}: `{w}` missing from: {err}"
            );
        }
    }
    assert!(good().has(&format!("{q}.lora_a")));

    // The good adapter itself is accepted (so the refusals above are the edits').
    let path = dir.join("good.gguf");
    good().write(&path);
    let out = famstream()
        .args(["run", "-m", tiny("llama").to_str().unwrap(), "--adapter"])
        .arg(&path)
        .args(["-p", "Emma", "-n", "2", "--temp", "0", "-t", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A model file given as the adapter, and a truncated adapter: the reader's own errors.
    let err = refused_run(&tiny("llama"), &[]);
    assert!(
        err.contains("not an adapter") && err.contains("`model`"),
        "{err}"
    );
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("truncated.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = refused_run(&cut, &[]);
    assert!(
        err.contains("invalid GGUF") && err.contains("truncated.gguf"),
        "{err}"
    );
    let missing = dir.join("missing.gguf");
    let err = refused_run(&missing, &[]);
    assert!(err.contains("missing.gguf"), "{err}");
}

#[test]
fn inspect_shows_an_adapter_and_checks_it_against_a_model() {
    let dir = common::scratch_dir("adapter-inspect");
    let base = GgufFile::open(tiny("llama")).unwrap();
    let mut ab = AdapterBuilder::new(&base);
    ab.lora(&base, "blk.0.attn_q.weight", 2, &mut Rng(5), 0.1, false);
    ab.lora(&base, "blk.1.ffn_up.weight", 2, &mut Rng(6), 0.1, false);
    ab.init_memory(&base, 4, |_| 1.0);
    ab.set("fam.block_size", Value::U32(8));
    let fp = format!("{:016x}", base_fingerprint(&base));
    ab.set(KEY_BASE_FINGERPRINT, Value::String(fp.clone()));
    let path = dir.join("adapter.gguf");
    ab.write(&path);
    let run = |args: &[&str]| -> String {
        let out = famstream().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The adapter alone.
    let j: serde_json::Value =
        serde_json::from_str(&run(&["inspect", path.to_str().unwrap(), "--json"])).unwrap();
    let a = &j["adapter"];
    assert_eq!(a["pairs"], 2);
    assert_eq!(a["ranks"], serde_json::json!([2]));
    assert_eq!(a["alpha"].as_f64(), Some(ALPHA as f64));
    assert_eq!(a["targets"], serde_json::json!(["attn_q", "ffn_up"]));
    assert_eq!(a["base_fingerprint"], fp.as_str());
    assert_eq!(j["fam"]["block_size"], 8);
    // Against the model: checked, and the stream defaults are the adapter's over the model's.
    let model = tiny("llama");
    let args = [
        "inspect",
        model.to_str().unwrap(),
        "--adapter",
        path.to_str().unwrap(),
    ];
    let j: serde_json::Value =
        serde_json::from_str(&run(&[&args[..], &["--json"]].concat())).unwrap();
    assert_eq!(j["adapter"]["checked_against_model"], true);
    assert_eq!(j["adapter"]["base_fingerprint_of_model"], fp.as_str());
    assert_eq!(j["fam"]["block_size"], 8);
    let text = run(&[&args[..], &["--no-tensors"]].concat());
    assert!(
        text.contains("rank 2") && text.contains("attn_q,ffn_up") && text.contains(&fp),
        "{text}"
    );
    // Against the wrong model: refused like loading it.
    let out = famstream()
        .args(["inspect", tiny("qwen2").to_str().unwrap(), "--adapter"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("general.architecture"));
}

#[test]
fn convert_merges_an_adapter_into_a_model_that_needs_none() {
    use famstream::convert::{convert_with_adapter, ConvertOptions};
    let dir = common::scratch_dir("adapter-convert");
    let base = GgufFile::open(tiny("qwen2")).unwrap();
    let mut ab = AdapterBuilder::new(&base);
    ab.every_target(&base, &mut Rng(31), 0.1, true); // f16 LoRA tensors
    ab.init_memory(&base, 4, |il| 0.25 + il as f32);
    ab.set("fam.block_size", Value::U32(8));
    let path = dir.join("adapter.gguf");
    ab.write(&path);
    let out = dir.join("merged.gguf");
    let opts = ConvertOptions {
        target: None,
        fam: None,
        name: None,
    };
    convert_with_adapter(&tiny("qwen2"), &out, &opts, Some(&path), &mut |_, _, _| {}).unwrap();
    let g = GgufFile::open(&out).unwrap();
    // the learned FAM is metadata, so the merged file has only the architecture's tensors and
    // llama.cpp loads it (below)
    assert!(g.tensor(LEARNED_FAM_TENSOR).is_none());
    assert!(g.get(LEARNED_FAM_TENSOR).is_some());
    assert_eq!(g.u32("fam.block_size").unwrap(), 8);
    let ids = ids("qwen2");
    let s = FamSettings {
        init: FamInit::Learned,
        ..common::settings(MemoryPolicy::Fam, 8, 1, 4, 0)
    };
    for settings in [full(), s] {
        let merged = logits(&out, None, settings, &ids);
        let adapted = logits(&tiny("qwen2"), Some(&path), settings, &ids);
        let d = max_abs_diff(&merged, &adapted);
        eprintln!(
            "convert --adapter, {}: max |merged - adapted| = {d:.2e}",
            settings.policy
        );
        assert!(d < MERGE_LOGIT_TOL_F16, "{d}");
    }
    let plain = logits(&tiny("qwen2"), None, full(), &ids);
    let adapted = logits(&tiny("qwen2"), Some(&path), full(), &ids);
    assert!(max_abs_diff(&plain, &adapted) > 10.0 * MERGE_LOGIT_TOL);
    // llama.cpp reads the merged file and computes what famstream does with the adapter
    let theirs = LlamaOracle::new(&out, 256, 2).logits_all(&ids);
    let kl = mean_kl(&theirs, &adapted);
    eprintln!("llama.cpp on the merged file vs famstream with the adapter: mean KL {kl:.2e}");
    assert!(kl < MEAN_KL_BOUND, "{kl}");

    // An adapter convert cannot merge is refused naming why, and nothing is written.
    let out2 = dir.join("merged-refused.gguf");
    let refused_merge = |adapter: &Path, why: &str| {
        let err = convert_with_adapter(
            &tiny("qwen2"),
            &out2,
            &opts,
            Some(adapter),
            &mut |_, _, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(why) && err.contains("--adapter"), "{err}");
        assert!(!out2.exists());
    };
    // LoRA on FAM rows only
    ab.set("fam.adapter.lora_scope", Value::String("fam".into()));
    let rows = dir.join("fam-rows.gguf");
    ab.write(&rows);
    refused_merge(&rows, "FAM rows only");
    // ... and it leaves the token path alone: without a FAM, the base model's logits exactly
    assert_eq!(logits(&tiny("qwen2"), Some(&rows), full(), &ids), plain);
    // A bias on attention to the FAM is not a weight either.
    ab.set("fam.adapter.lora_scope", Value::String("all".into()));
    ab.set("fam.adapter.fam_attn_bias", Value::F32(-2.0));
    let biased = dir.join("fam-bias.gguf");
    ab.write(&biased);
    refused_merge(&biased, "fam.adapter.fam_attn_bias");
}

#[test]
fn a_state_saved_with_an_adapter_loads_only_with_that_adapter() {
    let dir = common::scratch_dir("adapter-snapshot");
    let base = GgufFile::open(tiny("llama")).unwrap();
    let write = |seed: u64, name: &str| {
        let mut ab = AdapterBuilder::new(&base);
        ab.every_target(&base, &mut Rng(seed), 0.1, false);
        let p = dir.join(name);
        ab.write(&p);
        p
    };
    let (a, other) = (write(41, "a.gguf"), write(43, "b.gguf"));
    let s = common::settings(MemoryPolicy::Bswa, 8, 1, 0, 0);
    let snap = dir.join("state.famsnap");
    {
        let (m, mut eng) = load(&tiny("llama"), Some(&a));
        let mut st = FamState::new(&m, eng.backend(), s, 64, Vec::new(), 1).unwrap();
        st.feed(&mut eng, &ids("llama"), Logits::None).unwrap();
        st.save(&snap, &m, serde_json::Value::Null).unwrap();
    }
    for adapter in [None, Some(other.as_path())] {
        let (m, eng) = load(&tiny("llama"), adapter);
        let err = FamState::load(&snap, &m, eng.backend(), None)
            .err()
            .expect("a state made with another adapter")
            .to_string();
        assert!(err.contains("different model"), "{adapter:?}: {err}");
    }
    let (m, eng) = load(&tiny("llama"), Some(&a));
    let (st, _) = FamState::load(&snap, &m, eng.backend(), Some(&s)).unwrap();
    assert_eq!(st.n_past(), ids("llama").len() as u64);
}

/// The adapter trained for the default model and committed (results/adapters), as shipped:
/// llama.cpp loads it (its learned initial FAM is metadata, which llama.cpp ignores) and, with
/// full attention on the real Q4_1 model, computes what famstream computes with it.
#[test]
fn the_shipped_adapter_loads_in_llama_cpp_and_agrees_with_famstream() {
    let model = common::model_path();
    let adapter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("results/adapters/smollm2-135m-fam-b64.gguf");
    let g = GgufFile::open(&adapter).unwrap();
    assert!(g.tensor(LEARNED_FAM_TENSOR).is_none() && g.get(LEARNED_FAM_TENSOR).is_some());
    let ids = common::prose_tokens(64);
    let ours = logits(&model, Some(&adapter), full(), &ids);
    let plain = logits(&model, None, full(), &ids);
    let mut oracle = LlamaOracle::new(&model, 256, 2);
    oracle.set_adapter(&adapter);
    let theirs = oracle.logits_all(&ids);
    let kl = mean_kl(&theirs, &ours);
    let effect = mean_kl(&theirs, &plain);
    eprintln!(
        "shipped adapter: mean KL(llama.cpp || famstream) {kl:.2e}; vs no adapter {effect:.2e}"
    );
    assert!(kl < MEAN_KL_BOUND, "{kl}");
    assert!(effect > ADAPTER_EFFECT_KL, "{effect}");
}

//! Shared test helpers: the real model (fetched by the project's script, never skipped), an
//! independent oracle for GGUF (ggml's own `gguf_*` reader), and small utilities.
#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of SmolLM2-135M-Instruct Q4_1, fetched by `tools/fetch_model.sh` if missing.
/// Panics (fails the test) if it cannot be fetched: tests never silently skip.
pub mod llama;

/// A tensor to add to a GGUF copy: name, type, ggml dims, bytes.
pub type ExtraTensor = (String, famstream::dtype::GgmlType, Vec<u64>, Vec<u8>);

/// Writes a copy of the GGUF at `src` to `out`, with the metadata `meta` set (added or replaced)
/// and the `extra` tensors appended after the file's own.
pub fn gguf_copy(
    src: &std::path::Path,
    out: &std::path::Path,
    meta: &[(&str, famstream::gguf::Value)],
    extra: &[ExtraTensor],
) {
    let g = famstream::gguf::GgufFile::open(src).unwrap();
    let mut w = famstream::gguf::GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k, v.clone());
    }
    for (k, v) in meta {
        w.set(k, v.clone());
    }
    let mut data: Vec<&[u8]> = Vec::new();
    for t in g.tensors() {
        w.add_tensor(&t.name, t.ty, &t.ne).unwrap();
        data.push(g.tensor_data(t).unwrap());
    }
    for (n, ty, ne, d) in extra {
        w.add_tensor(n, *ty, ne).unwrap();
        data.push(d);
    }
    w.write_with_data(out, &data).unwrap();
}

pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetch(None)).clone()
}

/// The second real model, Gemma 3 270M (Q4_K_M), fetched by `tools/fetch_model.sh gemma3-270m`.
pub fn gemma3_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetch(Some("gemma3-270m"))).clone()
}

/// `tools/fetch_model.sh [which]`: the model's path in the cache (fetched there if missing).
fn fetch(which: Option<&str>) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/fetch_model.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(which)
        .output()
        .expect("run tools/fetch_model.sh");
    assert!(
        out.status.success(),
        "tools/fetch_model.sh {which:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        p.is_file() || p.is_dir(),
        "fetch_model.sh printed {p:?}, which does not exist"
    );
    p
}

/// llama.cpp's tokenizer test vocabularies (`tools/fetch_model.sh vocabs`): a directory of
/// `ggml-vocab-NAME.gguf` with their `.inp`/`.out` texts and transformers' ids.
pub fn vocab_dir() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetch(Some("vocabs"))).clone()
}

/// The model at `path` as the tests run it: the CPU, 2 threads, default options.
pub fn runtime(path: impl AsRef<std::path::Path>) -> famstream::runtime::Runtime {
    famstream::runtime::Runtime::load(
        path,
        &famstream::runtime::LoadOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A scratch directory unique to this test process and name.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("famstream-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One tensor as ggml's own GGUF reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct OracleTensor {
    pub name: String,
    pub ty: u32,
    pub ne: Vec<u64>,
    pub offset: u64,
    pub size: u64,
}

/// What ggml's `gguf_*` reader reports for a file (independent of our reader).
#[derive(Debug)]
pub struct OracleFile {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub keys: Vec<(String, u32)>,
    pub tensors: Vec<OracleTensor>,
    pub ctx: *mut llama_cpp_sys_2::gguf_context,
}

impl Drop for OracleFile {
    fn drop(&mut self) {
        unsafe { llama_cpp_sys_2::gguf_free(self.ctx) }
    }
}

/// Read a file with ggml's gguf reader; `None` if it refuses the file.
pub fn ggml_gguf_read(path: &std::path::Path) -> Option<OracleFile> {
    use llama_cpp_sys_2 as sys;
    let c = CString::new(path.to_str().unwrap()).unwrap();
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    unsafe {
        let ctx = sys::gguf_init_from_file(c.as_ptr(), params);
        if ctx.is_null() {
            return None;
        }
        let n_dims_of = |ne: *const i64| -> Vec<u64> {
            let mut v: Vec<u64> = (0..4).map(|i| *ne.add(i) as u64).collect();
            while v.len() > 1 && *v.last().unwrap() == 1 {
                v.pop();
            }
            v
        };
        let keys = (0..sys::gguf_get_n_kv(ctx))
            .map(|i| {
                (
                    CStr::from_ptr(sys::gguf_get_key(ctx, i))
                        .to_string_lossy()
                        .into_owned(),
                    sys::gguf_get_kv_type(ctx, i) as u32,
                )
            })
            .collect();
        let tensors = (0..sys::gguf_get_n_tensors(ctx))
            .map(|i| OracleTensor {
                name: CStr::from_ptr(sys::gguf_get_tensor_name(ctx, i))
                    .to_string_lossy()
                    .into_owned(),
                ty: sys::gguf_get_tensor_type(ctx, i),
                ne: n_dims_of(sys::gguf_get_tensor_ne(ctx, i)),
                offset: sys::gguf_get_tensor_offset(ctx, i) as u64,
                size: sys::gguf_get_tensor_size(ctx, i) as u64,
            })
            .collect();
        Some(OracleFile {
            version: sys::gguf_get_version(ctx),
            alignment: sys::gguf_get_alignment(ctx) as u64,
            data_offset: sys::gguf_get_data_offset(ctx) as u64,
            keys,
            tensors,
            ctx,
        })
    }
}

/// Trailing 1-dims dropped, as ggml's reader cannot tell [n, 1] from [n].
pub fn squeeze(ne: &[u64]) -> Vec<u64> {
    let mut v = ne.to_vec();
    while v.len() > 1 && *v.last().unwrap() == 1 {
        v.pop();
    }
    v
}

/// A small deterministic PRNG (xorshift64*), so tests need no extra crates and are repeatable.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A public-domain text from ../shared/data (next to the checkout).
pub fn shared_text(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// An HF-format checkpoint of the real SmolLM2 (bf16, 2 shards), made once by
/// tools/make_hf_smollm2.py into the model cache (atomically: temp dir, then rename).
pub fn hf_smollm2() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let cache = model_path().parent().unwrap().to_path_buf();
        let dir = cache.join("smollm2-hf");
        if dir.join("config.json").is_file() {
            return dir;
        }
        let tmp = cache.join(format!(".smollm2-hf.tmp.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/make_hf_smollm2.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(&tmp)
            .arg("--gguf")
            .arg(model_path())
            .output()
            .expect("run tools/make_hf_smollm2.py");
        assert!(
            out.status.success(),
            "make_hf_smollm2.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another test process made it first.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        dir
    })
    .clone()
}

/// The first `n` tokens of Moby-Dick (its first 20k characters), with the real model's tokenizer.
pub fn prose_tokens(n: usize) -> Vec<u32> {
    let tok = famstream::runtime::tokenizer_from_gguf(
        &famstream::gguf::GgufFile::open(model_path()).unwrap(),
    )
    .unwrap();
    let mut t = tok.encode(&shared_text("moby_dick.txt")[..20_000], false, false);
    t.truncate(n);
    t
}

/// A tiny random checkpoint (`tests/golden/tiny/ARCH/model.f32.gguf`) on `threads` CPU threads.
pub fn tiny_model(arch: &str, threads: usize) -> std::sync::Arc<famstream::model::Model> {
    let p = format!(
        "{}/tests/golden/tiny/{arch}/model.f32.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let backend = famstream::ggml::Backend::cpu(threads).unwrap();
    std::sync::Arc::new(famstream::model::Model::load(p, &backend).unwrap())
}

/// Logits of every position of `tokens`, fed `chunk` tokens per call (0: all at once).
pub fn feed_all(
    st: &mut famstream::state::FamState,
    eng: &mut famstream::engine::Engine,
    tokens: &[u32],
    chunk: usize,
) -> Vec<f32> {
    use famstream::state::Logits;
    if chunk == 0 {
        st.feed(eng, tokens, Logits::All).unwrap()
    } else {
        tokens
            .chunks(chunk)
            .flat_map(|c| st.feed(eng, c, Logits::All).unwrap())
            .collect()
    }
}

/// Memory settings with block size `b`, `m` memory blocks, `f` FAM rows and `s` sinks.
pub fn settings(
    policy: famstream::settings::MemoryPolicy,
    b: u32,
    m: u32,
    f: u32,
    s: u32,
) -> famstream::settings::FamSettings {
    famstream::settings::FamSettings {
        policy,
        block_size: b,
        mem_blocks: m,
        fam_len: f,
        sinks: s,
        ..Default::default()
    }
}

/// Largest |a - b| over two equal-length logit arrays.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Mean KL(p || q) over the rows of two row-major [rows][nv] logit arrays.
pub fn mean_kl(p: &[f32], q: &[f32], nv: usize) -> f64 {
    let n = p.len() / nv;
    (0..n)
        .map(|i| llama::kl_divergence(&p[i * nv..(i + 1) * nv], &q[i * nv..(i + 1) * nv]))
        .sum::<f64>()
        / n as f64
}

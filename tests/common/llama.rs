//! llama.cpp in-process, as an independent oracle (tests and benches only; the product never
//! calls `llama_*`).
#![allow(dead_code)]

use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::path::Path;
use std::sync::Once;

pub struct LlamaOracle {
    model: *mut sys::llama_model,
    ctx: *mut sys::llama_context,
    vocab: *const sys::llama_vocab,
    pub n_vocab: usize,
    n_batch: usize,
}

/// llama.cpp's log, errors only (they explain a refused file).
unsafe extern "C" fn quiet(
    level: sys::ggml_log_level,
    text: *const std::ffi::c_char,
    _: *mut std::ffi::c_void,
) {
    if level == sys::GGML_LOG_LEVEL_ERROR && !text.is_null() {
        eprint!(
            "llama.cpp: {}",
            unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy()
        );
    }
}

impl LlamaOracle {
    pub fn new(path: &Path, n_ctx: usize, n_threads: usize) -> LlamaOracle {
        Self::with_gpu_layers(path, n_ctx, n_threads, 0)
    }

    /// With `n_gpu_layers` > 0, llama.cpp offloads that many layers to its first GPU device
    /// (in a build with a GPU backend).
    pub fn with_gpu_layers(
        path: &Path,
        n_ctx: usize,
        n_threads: usize,
        n_gpu_layers: i32,
    ) -> LlamaOracle {
        static INIT: Once = Once::new();
        INIT.call_once(|| unsafe {
            sys::llama_backend_init();
            sys::llama_log_set(Some(quiet), std::ptr::null_mut());
        });
        let c = CString::new(path.to_str().unwrap()).unwrap();
        unsafe {
            let mut mp = sys::llama_model_default_params();
            mp.n_gpu_layers = n_gpu_layers;
            // ggml's AMX weight buffer (x86 CPUs with AMX; llama.cpp picks it for quantized
            // weights such as Q4_1 and Q8_0) crashed llama.cpp on an Intel Xeon VM with amx_int8
            // (SIGSEGV in ggml_backend_amx_mul_mat, in the tests that load a quantized model
            // here; llama-cpp-sys-2 0.1.161; famstream never uses it, only CPU_REPACK). On such
            // a CPU the oracle keeps its weights in plain CPU buffers: the same arithmetic
            // without the extra layouts (so without llama.cpp's repacking too: benches on such
            // a CPU compare against that). There llama.cpp's token-by-token decode and its
            // one-batch read part on a near-tie in gemma3's greedy test (assert_greedy_matches).
            mp.use_extra_bufts = sys::ggml_cpu_has_amx_int8() == 0;
            let model = sys::llama_model_load_from_file(c.as_ptr(), mp);
            assert!(!model.is_null(), "llama.cpp failed to load {path:?}");
            let mut cp = sys::llama_context_default_params();
            let n_batch = 512.min(n_ctx);
            cp.n_ctx = n_ctx as u32;
            cp.n_batch = n_batch as u32;
            cp.n_ubatch = n_batch as u32;
            cp.n_seq_max = 1;
            cp.n_threads = n_threads as i32;
            cp.n_threads_batch = n_threads as i32;
            cp.no_perf = true;
            let ctx = sys::llama_init_from_model(model, cp);
            assert!(!ctx.is_null(), "llama.cpp failed to create a context");
            let vocab = sys::llama_model_get_vocab(model);
            let n_vocab = sys::llama_vocab_n_tokens(vocab) as usize;
            LlamaOracle {
                model,
                ctx,
                vocab,
                n_vocab,
                n_batch,
            }
        }
    }

    /// Apply the LoRA adapter at `path` (llama.cpp's loader, scale 1) to every later
    /// evaluation. Panics if llama.cpp refuses the file.
    pub fn set_adapter(&mut self, path: &Path) {
        let c = CString::new(path.to_str().unwrap()).unwrap();
        unsafe {
            let a = sys::llama_adapter_lora_init(self.model, c.as_ptr());
            assert!(!a.is_null(), "llama.cpp refused the adapter {path:?}");
            let mut adapters = [a];
            let mut scales = [1.0f32];
            let rc = sys::llama_set_adapters_lora(
                self.ctx,
                adapters.as_mut_ptr(),
                1,
                scales.as_mut_ptr(),
            );
            assert_eq!(rc, 0, "llama_set_adapters_lora failed");
        }
    }

    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut buf = vec![0i32; text.len() + 16];
        let n = unsafe {
            sys::llama_tokenize(
                self.vocab,
                text.as_ptr().cast(),
                text.len() as i32,
                buf.as_mut_ptr(),
                buf.len() as i32,
                add_special,
                parse_special,
            )
        };
        assert!(n >= 0, "llama_tokenize failed");
        buf.truncate(n as usize);
        buf.into_iter().map(|t| t as u32).collect()
    }

    pub fn piece(&self, token: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let n = unsafe {
            sys::llama_token_to_piece(
                self.vocab,
                token as i32,
                buf.as_mut_ptr().cast(),
                256,
                0,
                false,
            )
        };
        buf.truncate(n.max(0) as usize);
        buf
    }

    /// Forget everything (new sequence).
    pub fn clear(&mut self) {
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ctx), true) }
    }

    /// Evaluate `tokens` at positions start.., returning the logits of the rows in `want`
    /// (indices into `tokens`), in order.
    pub fn eval(&mut self, tokens: &[u32], start: usize, want: &[usize]) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        let mut i0 = 0;
        while i0 < tokens.len() {
            let n = (tokens.len() - i0).min(self.n_batch);
            unsafe {
                let mut batch = sys::llama_batch_init(n as i32, 0, 1);
                batch.n_tokens = n as i32;
                let mut rows = Vec::new();
                for j in 0..n {
                    *batch.token.add(j) = tokens[i0 + j] as i32;
                    *batch.pos.add(j) = (start + i0 + j) as i32;
                    *batch.n_seq_id.add(j) = 1;
                    **batch.seq_id.add(j) = 0;
                    let w = want.contains(&(i0 + j));
                    *batch.logits.add(j) = w as i8;
                    if w {
                        rows.push(j);
                    }
                }
                let rc = sys::llama_decode(self.ctx, batch);
                assert_eq!(rc, 0, "llama_decode failed");
                for j in rows {
                    let p = sys::llama_get_logits_ith(self.ctx, j as i32);
                    out.push(std::slice::from_raw_parts(p, self.n_vocab).to_vec());
                }
                sys::llama_batch_free(batch);
            }
            i0 += n;
        }
        out
    }

    /// Logits at every position of `tokens` from a fresh sequence.
    pub fn logits_all(&mut self, tokens: &[u32]) -> Vec<Vec<f32>> {
        self.clear();
        let want: Vec<usize> = (0..tokens.len()).collect();
        self.eval(tokens, 0, &want)
    }

    /// Greedy continuation of `prompt` for `n` tokens, token by token, with the logits each
    /// choice was made on.
    pub fn greedy(&mut self, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
        self.clear();
        let mut logits = self.eval(prompt, 0, &[prompt.len() - 1]).pop().unwrap();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for i in 0..n {
            let t = argmax(&logits) as u32;
            out.push(t);
            let next = self.eval(&[t], prompt.len() + i, &[0]).pop().unwrap();
            seen.push(std::mem::replace(&mut logits, next));
        }
        (out, seen)
    }
}

impl Drop for LlamaOracle {
    fn drop(&mut self) {
        unsafe {
            sys::llama_free(self.ctx);
            sys::llama_model_free(self.model);
        }
    }
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// log-softmax in f64.
pub fn log_softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = v.iter().map(|&x| (x as f64 - m).exp()).sum();
    let lse = m + s.ln();
    v.iter().map(|&x| x as f64 - lse).collect()
}

/// KL(p || q) for logits p (reference) and q.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let lp = log_softmax(p_logits);
    let lq = log_softmax(q_logits);
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// llama.cpp's own quantizer (`llama-quantize`): `input` GGUF -> `output` with llama.cpp file
/// type `ftype` (2 = Q4_0, 7 = Q8_0, 15 = Q4_K_M).
pub fn llama_quantize(input: &Path, output: &Path, ftype: u32) {
    let (i, o) = (
        CString::new(input.to_str().unwrap()).unwrap(),
        CString::new(output.to_str().unwrap()).unwrap(),
    );
    unsafe {
        let mut p = sys::llama_model_quantize_default_params();
        p.ftype = ftype as _;
        p.nthread = 2;
        let rc = sys::llama_model_quantize(i.as_ptr(), o.as_ptr(), &p);
        assert_eq!(rc, 0, "llama_model_quantize failed");
    }
}

/// famstream's greedy continuation of `tokens` (at most `n` tokens) equals llama.cpp's; where
/// ours stopped early, llama.cpp's next token is an end token (its loop does not stop there).
/// Where the two first differ, the choice must be one rounding explains (the two graphs order
/// their float operations differently, and ggml's SIMD kernels differ by CPU: a tie that held on
/// an AVX2 machine parted on an AVX-512 one). llama.cpp is asked twice there: the logits its
/// token-by-token decode chose on, and the prefix read again in one batch. The parting passes
/// if in either of them the two tokens' logits are closer than `tie_margin`, or if llama.cpp in
/// one batch itself picks our token (it then disagrees with its own decode: an Intel Xeon with
/// AMX, llama.cpp on plain CPU buffers, prefers ours there by 0.2 logits). A wrong graph
/// differs from both by whole logits. The continuations are compared no further, as after a
/// tie they need not agree.
pub fn assert_greedy_matches(
    rt: &famstream::runtime::Runtime,
    eng: &mut famstream::engine::Engine,
    oracle: &mut LlamaOracle,
    tokens: &[u32],
    n: usize,
    tie_margin: f32,
) {
    use famstream::runtime::GenerateOptions;
    use famstream::sample::SamplerConfig;
    let (theirs, seen) = oracle.greedy(tokens, n);
    let mut stream = rt.new_stream(eng, 512).unwrap();
    let opts = GenerateOptions {
        max_tokens: n,
        sampler: SamplerConfig::greedy(),
        ..GenerateOptions::default()
    };
    let ours = rt
        .generate(eng, &mut stream, tokens, &opts, |_| true)
        .unwrap();
    let k = ours.tokens.len();
    assert!(k > 0);
    if let Some(d) = (0..k).find(|&i| ours.tokens[i] != theirs[i]) {
        let mut prefix = tokens.to_vec();
        prefix.extend_from_slice(&theirs[..d]);
        oracle.clear();
        let batch = oracle.eval(&prefix, 0, &[prefix.len() - 1]).pop().unwrap();
        // how far llama.cpp prefers its choice theirs[d] to ours: in the logits its decode
        // chose on (never negative), and in one batch (negative: there it prefers ours)
        let (t, o) = (theirs[d] as usize, ours.tokens[d] as usize);
        let (lead_decode, lead_batch) = (seen[d][t] - seen[d][o], batch[t] - batch[o]);
        eprintln!(
            "greedy: llama.cpp and famstream agree on {d} tokens, then pick {t} and {o}; \
             llama.cpp prefers its choice by {lead_decode:.4} logits token by token and by \
             {lead_batch:.4} in one batch (tie margin {tie_margin})"
        );
        assert!(
            lead_decode < tie_margin || lead_batch < tie_margin,
            "greedy continuation differs at token {d} where llama.cpp prefers its choice by \
             {lead_decode} logits token by token and {lead_batch} in one batch (not a near-tie, \
             margin {tie_margin}): {:?}",
            ours.text
        );
        return;
    }
    if k < n {
        assert!(
            rt.tokenizer.is_eog(theirs[k]),
            "we stopped early at {k} without an end token"
        );
    }
}

/// `tok` gives llama.cpp's ids on the tokenizer corpus (tests/golden/tokenizer/smollm2.jsonl,
/// with and without special-token parsing) and on 60k characters of Moby-Dick.
pub fn assert_tokenizer_matches(tok: &famstream::tokenizer::Tokenizer, oracle: &LlamaOracle) {
    let corpus = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/tokenizer/smollm2.jsonl"
    ))
    .unwrap();
    let mut n = 0;
    for line in corpus.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = row["text"].as_str().unwrap();
        for parse_special in [false, true] {
            assert_eq!(
                tok.encode(t, true, parse_special),
                oracle.tokenize(t, true, parse_special),
                "{t:?} (parse_special {parse_special})"
            );
        }
        n += 1;
    }
    assert!(n > 50);
    // (read here, not through `common`: benches include this file without its parent module)
    let book = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/moby_dick.txt"
    ))
    .unwrap();
    let chunk = &book[..60_000];
    assert_eq!(
        tok.encode(chunk, false, false),
        oracle.tokenize(chunk, false, false)
    );
}

/// llama.cpp's perplexity of `tokens` scored as llama-perplexity does: independent windows of
/// `ctx` tokens, the second half of each scored. Logits are read 64 rows at a time (a row of a
/// large vocabulary is a megabyte).
pub fn llama_perplexity(oracle: &mut LlamaOracle, tokens: &[u32], ctx: usize) -> (f64, usize) {
    let (mut sum, mut n) = (0.0, 0);
    for win in tokens.chunks_exact(ctx) {
        oracle.clear();
        oracle.eval(&win[..ctx / 2], 0, &[]);
        for c0 in (ctx / 2..ctx - 1).step_by(64) {
            let c1 = (c0 + 64).min(ctx - 1);
            let want: Vec<usize> = (0..c1 - c0).collect();
            let logits = oracle.eval(&win[c0..c1], c0, &want);
            for (j, l) in (c0..c1).zip(&logits) {
                sum += famstream::perplexity::nll(l, win[j + 1]);
                n += 1;
            }
        }
    }
    ((sum / n as f64).exp(), n)
}

//! Gemma 3 270M, the second real model: QK-norm, post-norms, GeGLU, scaled embeddings and
//! interleaved local (512-token sliding window, RoPE base 10k) and global (RoPE base 1M) layers,
//! checked against llama.cpp in-process on the same file, plus the memory policies' behaviour on
//! the local layers.

mod common;

use common::llama::{argmax, kl_divergence, LlamaOracle};
use common::{max_diff, settings};
use famstream::engine::Engine;
use famstream::ggml::Backend;
use famstream::model::Model;
use famstream::settings::{FamSettings, MemoryPolicy};
use famstream::state::{FamState, Logits};
use famstream::tokenizer::Tokenizer;
use std::sync::Arc;

/// Same quantized weights and ggml kernels as llama.cpp, fed in the same batches; the graphs
/// differ in details (where the attention scale is applied, RoPE angle computation, op fusion),
/// so distributions differ by rounding only. This model amplifies rounding more than SmolLM2:
/// llama.cpp against itself, 800 tokens in one batch vs in batches of 32, differs by a mean KL
/// of 2.3e-2 at the positions checked here (0.41 at the worst); we measured 5e-3 against it with
/// equal batches. A wrong mask, RoPE base or norm gives > 0.1.
const MEAN_KL_BOUND: f64 = 0.015;
/// The brief: perplexity equal to llama.cpp's within 1%.
const PERPLEXITY_REL_TOL: f64 = 0.01;
/// Greedy continuations may part only where llama.cpp's logits for the two tokens are closer
/// than this in one of llama.cpp's two reads (see common::llama::assert_greedy_matches).
/// Measured on an AVX-512 machine: after "The capital of France is" + 11 tokens, llama.cpp
/// token by token picks one token and in one batch the other (0.03 apart), and ours picks the
/// second; on an Intel Xeon with AMX (llama.cpp on plain CPU buffers) the same place is 0.016
/// apart token by token and 0.197 the other way in one batch. This model amplifies rounding
/// (see MEAN_KL_BOUND). A wrong graph differs by whole logits.
const GREEDY_TIE_MARGIN: f32 = 0.1;
/// Decode (one row) and prefill (many rows) run different matmul kernels; see
/// tests/fam_equivalence.rs, where the same bound is explained.
const STREAM_VS_BATCH_MEAN_KL: f64 = 0.02;

fn load() -> Arc<Model> {
    Arc::new(Model::load(common::gemma3_path(), &Backend::cpu(2).unwrap()).unwrap())
}

fn tokenizer() -> Tokenizer {
    famstream::runtime::tokenizer_from_gguf(
        &famstream::gguf::GgufFile::open(common::gemma3_path()).unwrap(),
    )
    .unwrap()
}

/// BOS then Moby-Dick, `n` tokens in all.
fn prose(n: usize) -> Vec<u32> {
    let tok = tokenizer();
    let mut t = tok.encode(&common::shared_text("moby_dick.txt")[..20_000], true, false);
    assert!(t.len() >= n, "{} tokens", t.len());
    t.truncate(n);
    t
}

fn state(m: &Arc<Model>, s: FamSettings, n_ctx: usize) -> FamState {
    let seed: Vec<u32> = (0..s.fam_len)
        .map(|i| if i == 0 { 2 } else { 1000 + i * 7 })
        .collect();
    FamState::new(m, &Backend::cpu(1).unwrap(), s, n_ctx, seed, 2).unwrap()
}

#[test]
fn the_file_reads_as_gemma3_with_local_and_global_layers() {
    let m = load();
    let hp = &m.hp;
    assert_eq!(hp.arch, famstream::model::Arch::Gemma3);
    assert_eq!(
        (hp.n_layer, hp.n_embd, hp.head_dim, hp.n_swa),
        (18, 640, 256, 512)
    );
    // Every sixth layer is global (llama.cpp's pattern for gemma3).
    let global: Vec<usize> = (0..18).filter(|&il| !hp.is_swa(il)).collect();
    assert_eq!(global, [5, 11, 17]);
    assert_eq!((hp.rope_base(0), hp.rope_base(5)), (10_000.0, 1_000_000.0));
}

#[test]
fn tokenizer_matches_llama_cpp() {
    let path = common::gemma3_path();
    let tok = tokenizer();
    let oracle = LlamaOracle::new(&path, 64, 1);
    common::llama::assert_tokenizer_matches(&tok, &oracle);
}

#[test]
fn logits_match_llama_cpp_across_the_local_window() {
    // 800 tokens: rows past 512 have tokens their local layers must no longer see.
    let tokens = prose(800);
    let checked: Vec<usize> = (31..tokens.len()).step_by(32).collect(); // 31, 63, ..., 799
    let mut oracle = LlamaOracle::new(&common::gemma3_path(), 1024, 2);
    oracle.clear();
    let m = load();
    let mut eng = Engine::new(m.clone(), Backend::cpu(2).unwrap()).unwrap();
    let mut st = FamState::full(&m, &Backend::cpu(2).unwrap(), 1024).unwrap();
    let (mut prev, mut kl_sum, mut kl_past_window, mut same_argmax) = (0, 0.0, 0.0, 0);
    for &i in &checked {
        let chunk = &tokens[prev..=i];
        let theirs = oracle.eval(chunk, prev, &[chunk.len() - 1]).pop().unwrap();
        let ours = st.feed(&mut eng, chunk, Logits::Last).unwrap();
        prev = i + 1;
        let kl = kl_divergence(&theirs, &ours);
        kl_sum += kl;
        if i >= 512 {
            kl_past_window += kl;
        }
        same_argmax += usize::from(argmax(&ours) == argmax(&theirs));
    }
    let mean = kl_sum / checked.len() as f64;
    let n_past = checked.iter().filter(|&&i| i >= 512).count();
    let mean_past = kl_past_window / n_past as f64;
    eprintln!(
        "mean KL(llama.cpp || famstream) at {} positions: {mean:.3e} ({mean_past:.3e} at the {n_past} past 512); same argmax at {same_argmax}",
        checked.len()
    );
    assert!(mean < MEAN_KL_BOUND, "mean KL {mean}");
    assert!(
        mean_past < MEAN_KL_BOUND,
        "mean KL past the local window {mean_past}"
    );
    assert!(
        same_argmax + 1 >= checked.len(),
        "argmax differs at {} positions",
        checked.len() - same_argmax
    );
}

#[test]
fn greedy_generation_matches_llama_cpp() {
    let path = common::gemma3_path();
    let rt = common::runtime(&path);
    let mut oracle = LlamaOracle::new(&path, 512, 2);
    let mut eng = rt.engine().unwrap();
    for p in ["The capital of France is", "def fibonacci(n):\n"] {
        let tokens = rt.tokenizer.encode(p, true, false);
        common::llama::assert_greedy_matches(
            &rt,
            &mut eng,
            &mut oracle,
            &tokens,
            24,
            GREEDY_TIE_MARGIN,
        );
    }
}

#[test]
fn perplexity_matches_llama_cpp_on_moby_dick() {
    // Windows of 1024 tokens, so the local window of 512 is exercised; scored like
    // llama-perplexity (second half of each window).
    let ctx = 1024;
    let tok = tokenizer();
    let text = common::shared_text("moby_dick.txt");
    let mut tokens = tok.encode(&text[..40_000], true, false);
    tokens.truncate(2 * ctx);
    assert_eq!(tokens.len(), 2 * ctx);
    let m = load();
    let mut eng = Engine::new(m.clone(), Backend::cpu(2).unwrap()).unwrap();
    let ours =
        famstream::perplexity::windowed(&m, &mut eng, &tokens, ctx, None, |_, _| {}).unwrap();
    drop(eng);

    let mut oracle = LlamaOracle::new(&common::gemma3_path(), ctx, 2);
    let (theirs, n) = common::llama::llama_perplexity(&mut oracle, &tokens, ctx);
    eprintln!(
        "perplexity: famstream {:.4}, llama.cpp {theirs:.4}",
        ours.perplexity
    );
    assert_eq!(ours.tokens_scored, n);
    assert!(ours.perplexity > 1.0 && ours.perplexity < 1000.0);
    assert!((ours.perplexity / theirs - 1.0).abs() < PERPLEXITY_REL_TOL);
}

/// Logits of the rows `from..` of `tokens`, fed in one call up to `from` and then `chunk` at a
/// time (0: all at once).
fn tail_logits(
    m: &Arc<Model>,
    s: FamSettings,
    tokens: &[u32],
    from: usize,
    chunk: usize,
) -> Vec<f32> {
    let mut eng = Engine::new(m.clone(), Backend::cpu(2).unwrap()).unwrap();
    let mut st = state(m, s, tokens.len());
    st.feed(&mut eng, &tokens[..from], Logits::None).unwrap();
    let rest = &tokens[from..];
    if chunk == 0 {
        st.feed(&mut eng, rest, Logits::All).unwrap()
    } else {
        rest.chunks(chunk)
            .flat_map(|c| st.feed(&mut eng, c, Logits::All).unwrap())
            .collect()
    }
}

#[test]
fn a_window_covering_the_stream_equals_full_attention() {
    let m = load();
    let tokens = prose(700);
    // Both fed 64 tokens per call: identical graph shapes, so bit-identical results when the
    // policy hides nothing ((M+1)*B = 768 >= 700), local layers included.
    let full = tail_logits(
        &m,
        settings(MemoryPolicy::Full, 64, 1, 0, 0),
        &tokens,
        640,
        64,
    );
    let bswa = tail_logits(
        &m,
        settings(MemoryPolicy::Bswa, 64, 11, 0, 0),
        &tokens,
        640,
        64,
    );
    assert!(full == bswa, "max diff {}", max_diff(&full, &bswa));
}

#[test]
fn local_layers_keep_their_window_under_a_small_policy_window() {
    // bswa with B = 64, M = 0: the global layers see only the current block. The local layers
    // still see the 512 latest tokens, so a token 100 before the last row (outside the policy's
    // window, inside the local one) matters to the last row. (Nothing is cut off exactly beyond
    // 512: earlier tokens still reach it through the layers below, in llama.cpp too.)
    let m = load();
    let s = settings(MemoryPolicy::Bswa, 64, 0, 0, 0);
    let tokens = prose(704);
    let last = |t: &[u32]| {
        let mut eng = Engine::new(m.clone(), Backend::cpu(2).unwrap()).unwrap();
        let mut st = state(&m, s, 0);
        st.feed(&mut eng, t, Logits::Last).unwrap()
    };
    let base = last(&tokens);
    let mut near = tokens.clone();
    near[703 - 100] = 1000;
    assert!(
        max_diff(&base, &last(&near)) > 0.1,
        "the local window was cut short"
    );
    // And the global layers do have the policy's window: the result is not full attention's.
    let mut eng = Engine::new(m.clone(), Backend::cpu(2).unwrap()).unwrap();
    let mut full = FamState::full(&m, &Backend::cpu(2).unwrap(), 1024).unwrap();
    let f = full.feed(&mut eng, &tokens, Logits::Last).unwrap();
    assert!(
        max_diff(&base, &f) > 0.1,
        "the policy's window did not apply"
    );
}

#[test]
fn streaming_one_token_at_a_time_equals_block_prefill() {
    // With B = 32 the ring must be stretched to the local window (512 + 32 slots): decode and
    // prefill meet that ring in different states.
    let m = load();
    let tokens = prose(600);
    for s in [
        settings(MemoryPolicy::Bswa, 32, 1, 0, 0),
        settings(MemoryPolicy::Sink, 32, 1, 0, 4),
        settings(MemoryPolicy::Fam, 32, 1, 8, 0),
    ] {
        let batch = tail_logits(&m, s, &tokens, 540, 0);
        let stream = tail_logits(&m, s, &tokens, 540, 1);
        let nv = m.hp.n_vocab;
        let n = batch.len() / nv;
        let kl = (0..n)
            .map(|i| kl_divergence(&batch[i * nv..(i + 1) * nv], &stream[i * nv..(i + 1) * nv]))
            .sum::<f64>()
            / n as f64;
        eprintln!("{:?}: mean KL(batch || stream) = {kl:.2e}", s.policy);
        assert!(kl < STREAM_VS_BATCH_MEAN_KL, "{s:?}: {kl}");
    }
}

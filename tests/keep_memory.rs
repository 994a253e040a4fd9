//! The `keep` policy (a training-free salience memory): kept tokens are exactly the ones it says
//! (the most surprising, scored from the stream's own logits), a stream whose every evicted
//! token is kept is full attention, decode equals prefill, the state keeps its size.

mod common;

use common::{max_diff, mean_kl, prose_tokens, settings};

use famstream::engine::Engine;
use famstream::ggml::Backend;
use famstream::keep::SALIENCE_RADIUS;
use famstream::model::Model;
use famstream::settings::{FamSettings, MemoryPolicy};
use famstream::state::{FamState, Logits};
use std::sync::Arc;

/// Kept keys are stored rotated at their position (f16), rotated back to position 0 (f16
/// again) and rotated to their shown position each batch, where full attention rotates once:
/// two more f16 roundings of K (relative 2^-11 each). Measured at M = 0 on the tiny f32
/// checkpoints, whose logits are large (full vs bswa differ by up to 10): mean KL 0.4e-6 to
/// 5.2e-6 (at M = 1, before kept tokens moved next to the current block: 0.4e-6 to 4e-6);
/// showing the kept tokens one position off gave 0.19, and bswa 0.07 to 1.4.
const KEPT_VS_FULL_MEAN_KL: f64 = 3e-5;
/// The same on the real Q4_1 SmolLM2, whose keys are larger, and where ggml's CPU flash
/// attention accumulates V in f16 in slot order (kept slots come before the ring, full
/// attention has one order): measured 3.8e-3 at M = 0, where `sink`, which forgets the same
/// tokens, is at 0.74 (at M = 1: 3.1e-3 and 8.5e-2).
const KEPT_VS_FULL_MEAN_KL_REAL: f64 = 1e-2;
/// Decode vs block prefill run different kernels (see fam_equivalence.rs, same bound).
const STREAM_VS_BATCH_MEAN_KL: f64 = 0.02;

fn tiny(arch: &str) -> Arc<Model> {
    common::tiny_model(arch, 2)
}

fn engine(m: &Arc<Model>) -> Engine {
    Engine::new(m.clone(), Backend::cpu(2).unwrap()).unwrap()
}

fn state(m: &Arc<Model>, s: FamSettings, n_ctx: usize) -> FamState {
    FamState::new(m, &Backend::cpu(1).unwrap(), s, n_ctx, Vec::new(), 1).unwrap()
}

/// Logits of every position, fed `chunk` tokens per call (0: all at once), and the state.
fn run_all(m: &Arc<Model>, s: FamSettings, tokens: &[u32], chunk: usize) -> (Vec<f32>, FamState) {
    let mut eng = engine(m);
    let mut st = state(m, s, tokens.len());
    let out = common::feed_all(&mut st, &mut eng, tokens, chunk);
    (out, st)
}

fn keep(b: u32, m: u32, f: u32, s: u32) -> FamSettings {
    settings(MemoryPolicy::Keep, b, m, f, s)
}

#[test]
fn keeping_every_evicted_token_is_full_attention() {
    // B = 16, M = 0, 150 tokens: 144 leave the window; with F = 160 every one of them is kept
    // and shown just before the current block, which with M = 0 is its own position, so each
    // row sees what full attention sees. (With M > 0 kept tokens share positions with the
    // window's memory blocks, nearer than their own: no longer full attention.)
    let tokens: Vec<u32> = (0..150).map(|i| 5 + (i * 37) % 500).collect();
    for arch in ["llama", "llama3", "qwen2", "qwen3", "gemma3", "phi3"] {
        let m = tiny(arch);
        let nv = m.hp.n_vocab;
        let (full, _) = run_all(&m, settings(MemoryPolicy::Full, 16, 1, 0, 0), &tokens, 16);
        let (bswa, _) = run_all(&m, settings(MemoryPolicy::Bswa, 16, 0, 0, 0), &tokens, 16);
        for s in [keep(16, 0, 160, 0), keep(16, 0, 160, 4)] {
            let (got, st) = run_all(&m, s, &tokens, 16);
            let want_kept: Vec<i64> = (s.sinks as i64..144).collect();
            assert_eq!(st.kept_tokens(), want_kept, "{arch} {s:?}");
            let kl = mean_kl(&full, &got, nv);
            eprintln!("{arch} S={}: mean KL(full || keep-all) = {kl:.2e}", s.sinks);
            assert!(kl < KEPT_VS_FULL_MEAN_KL, "{arch} {s:?}: {kl}");
            // inside the first window nothing is kept yet: bit-identical to full
            assert!(got[..16 * nv] == full[..16 * nv], "{arch} {s:?}");
        }
        // and the window alone does hide something (the test can fail)
        assert!(
            mean_kl(&full, &bswa, nv) > 100.0 * KEPT_VS_FULL_MEAN_KL,
            "{arch}"
        );
    }
    // The real model: same, with the rounding of its larger keys and of ggml's f16 flash
    // attention summing the rows in another slot order (kept slots come first).
    let m = Arc::new(Model::load(common::model_path(), &Backend::cpu(2).unwrap()).unwrap());
    let nv = m.hp.n_vocab;
    let tokens = prose_tokens(200);
    let (full, _) = run_all(&m, settings(MemoryPolicy::Full, 32, 1, 0, 0), &tokens, 32);
    let (got, _) = run_all(&m, keep(32, 0, 200, 4), &tokens, 32);
    let (sink, _) = run_all(&m, settings(MemoryPolicy::Sink, 32, 0, 0, 4), &tokens, 32);
    let (kl, kl_sink) = (mean_kl(&full, &got, nv), mean_kl(&full, &sink, nv));
    eprintln!("SmolLM2: mean KL from full: keep-all {kl:.2e}, sink {kl_sink:.2e}");
    assert!(kl < KEPT_VS_FULL_MEAN_KL_REAL, "{kl}");
    assert!(kl_sink > 5.0 * kl, "{kl_sink} vs {kl}");
}

/// -ln softmax(logits)[token].
fn surprisal(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    lse - logits[token as usize] as f64
}

#[test]
fn the_kept_tokens_are_the_most_surprising_ones_that_left() {
    // Scores recomputed here from the logits the stream itself returned (row i-1 predicts
    // token i), in f64, with the rule of the keep module's doc (densities, then the largest
    // density within the radius): the kept set must be the top
    // F of the tokens that left the window.
    let m = Arc::new(Model::load(common::model_path(), &Backend::cpu(2).unwrap()).unwrap());
    let nv = m.hp.n_vocab;
    let tokens = prose_tokens(300);
    let (b, f, s) = (32u32, 12u32, 4u32);
    let r = SALIENCE_RADIUS as i64;
    for chunk in [0, 7] {
        let (logits, st) = run_all(&m, keep(b, 1, f, s), &tokens, chunk);
        // tokens 0..(blocks completed - M) * B have left (or are about to leave) the window
        let left = (tokens.len() as i64 / b as i64 - 1) * b as i64;
        let sur = |i: i64| {
            let row = &logits[(i as usize - 1) * nv..i as usize * nv];
            surprisal(row, tokens[i as usize])
        };
        // within r tokens of i, in i's block, sinks excluded
        let near = |i: i64| {
            let blk = i / b as i64 * b as i64;
            (i - r).max(blk).max(s as i64)..=(i + r).min(blk + b as i64 - 1)
        };
        // density(j) = the sum of the surprisals near j; score(i) = the largest density near i
        let density = |j: i64| near(j).map(sur).sum::<f64>();
        let mut scored: Vec<(f64, i64)> = (s as i64..left)
            .map(|i| (near(i).map(density).fold(0.0, f64::max), i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1))); // ties: the later
        let mut want: Vec<i64> = scored[..f as usize].iter().map(|x| x.1).collect();
        want.sort_unstable();
        let margin = scored[f as usize - 1].0 - scored[f as usize].0;
        eprintln!(
            "chunk {chunk}: kept {:?}, score margin at the cut {margin:.3}",
            st.kept_tokens()
        );
        assert_eq!(st.kept_tokens(), want, "chunk {chunk}");
    }
}

#[test]
fn decode_equals_prefill_and_state_size_is_constant() {
    let m = Arc::new(Model::load(common::model_path(), &Backend::cpu(2).unwrap()).unwrap());
    let tokens = prose_tokens(150);
    let s = keep(32, 1, 8, 4);
    let (batch, a) = run_all(&m, s, &tokens, 0);
    let (stream, b) = run_all(&m, s, &tokens, 1);
    let kl = mean_kl(&batch, &stream, m.hp.n_vocab);
    eprintln!("keep: mean KL(batch || stream) = {kl:.2e}");
    assert!(kl < STREAM_VS_BATCH_MEAN_KL, "{kl}");
    assert_eq!(a.kept_tokens(), b.kept_tokens());
    assert_eq!(a.kept_tokens().len(), 8);
    // keep differs from sink past the window (it shows more)
    let (sink, _) = run_all(&m, settings(MemoryPolicy::Sink, 32, 1, 0, 4), &tokens, 0);
    let nv = m.hp.n_vocab;
    assert!(batch[..64 * nv] == sink[..64 * nv]);
    assert!(max_diff(&batch[96 * nv..], &sink[96 * nv..]) > 0.1);

    let t = tiny("llama");
    let mut eng = engine(&t);
    let mut st = state(&t, keep(8, 2, 4, 2), 0);
    let before = (st.state_bytes(), st.host_bytes());
    let block: Vec<u32> = (0..8).map(|i| 5 + i * 3).collect();
    for _ in 0..1000 {
        st.feed(&mut eng, &block, Logits::None).unwrap();
    }
    assert_eq!(st.n_past(), 8000);
    assert_eq!((st.state_bytes(), st.host_bytes()), before);
}

/// Scoring from chunks of the LM head (a few rows' logits wanted) and from every row's logits
/// run the same matmul per row; measured: identical kept tokens, last-row logits within 1e-5.
const CHUNKED_VS_ALL_LOGIT_DIFF: f32 = 1e-3;

#[test]
fn scoring_in_chunks_keeps_the_same_tokens() {
    // B = 160: a batch of 159 scored rows spans three SURPRISAL_CHUNKs (64, 64, 31), so a row
    // read from the wrong chunk or offset changes the scores and the kept set.
    assert!(160 > 2 * famstream::forward::SURPRISAL_CHUNK);
    let m = Arc::new(Model::load(common::model_path(), &Backend::cpu(2).unwrap()).unwrap());
    let nv = m.hp.n_vocab;
    let tokens = prose_tokens(700);
    let s = keep(160, 1, 64, 4); // 64 of the 316 tokens that left: several surprises
    let (all, a) = run_all(&m, s, &tokens, 0); // every row's logits: the unchunked LM head
    let mut eng = engine(&m);
    let mut b = state(&m, s, tokens.len());
    let last = b.feed(&mut eng, &tokens, Logits::Last).unwrap(); // chunked
    eprintln!("kept {:?}", a.kept_tokens());
    assert_eq!(a.kept_tokens().len(), 64);
    assert_eq!(a.kept_tokens(), b.kept_tokens());
    let d = max_diff(&all[all.len() - nv..], &last);
    eprintln!("last row: max |all - chunked| = {d:.2e}");
    assert!(d < CHUNKED_VS_ALL_LOGIT_DIFF, "{d}");
}

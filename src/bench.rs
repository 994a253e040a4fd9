//! `famstream bench`: prompt processing (pp) and text generation (tg) speed, like llama-bench.
//!
//! pp: `n_prompt` tokens fed in one call (split at block boundaries / 512-token batches as usual),
//! from an empty state. tg: `n_gen` single-token decode steps after that. With `at_position`,
//! the stream is first brought to that position: for windowed policies by filling one window
//! plus a block (the state then has the same shape as at any later position) with the stream
//! started at `at_position - fill`, so RoPE positions are the real ones; for `full` by feeding
//! every token up to it.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::settings::{FamSettings, MemoryPolicy};
use crate::state::{FamState, Logits};
use std::time::Instant;

#[derive(Clone, Debug, Default)]
pub struct BenchResult {
    pub pp_tokens: usize,
    pub pp_tokens_per_s: f64,
    pub tg_tokens: usize,
    pub tg_tokens_per_s: f64,
    /// The share of the tg time spent at block ends (FAM updates, `keep`'s selection):
    /// [`FamState::block_end_time`] over the decode steps.
    pub tg_block_end_share: f64,
    pub at_position: u64,
    pub fill_tokens: usize,
    pub state_bytes: usize,
}

/// Deterministic, ordinary-looking tokens (ids from a text, repeated).
fn tokens(rt: &Runtime, n: usize) -> Vec<u32> {
    let base = rt.tokenizer.encode(
        "The committee met on Tuesday to discuss the budget for the new library, the repairs to the \
         old bridge, and the schedule for the summer festival. After a long debate they agreed. ",
        false,
        false,
    );
    base.iter().cycle().take(n).copied().collect()
}

pub fn run(
    rt: &Runtime,
    eng: &mut Engine,
    settings: FamSettings,
    n_ctx: usize,
    n_prompt: usize,
    n_gen: usize,
    at_position: u64,
) -> Result<BenchResult> {
    let mut st: FamState = rt.new_state(eng, settings, n_ctx)?;
    let window = (settings.mem_blocks as usize + 2) * settings.block_size as usize;
    let fill = match settings.policy {
        MemoryPolicy::Full => at_position as usize,
        _ => (at_position as usize).min(window),
    };
    if settings.policy == MemoryPolicy::Full && fill + n_prompt + n_gen > n_ctx {
        return Err(Error::Invalid(format!(
            "full attention: {} tokens exceed the context of {n_ctx}",
            fill + n_prompt + n_gen
        )));
    }
    st.set_start_position(at_position as i64 - fill as i64)?;
    if fill > 0 {
        st.feed(eng, &tokens(rt, fill), Logits::None)?;
    }
    let prompt = tokens(rt, n_prompt);
    let t = Instant::now();
    let mut logits = st.feed(eng, &prompt, Logits::Last)?;
    let pp = t.elapsed().as_secs_f64();
    let upkeep = st.block_end_time();
    let t = Instant::now();
    for _ in 0..n_gen {
        let next =
            crate::sample::Sampler::new(crate::sample::SamplerConfig::greedy()).sample(&logits);
        logits = st.feed(eng, &[next], Logits::Last)?;
    }
    let tg = t.elapsed().as_secs_f64();
    let upkeep = (st.block_end_time() - upkeep).as_secs_f64();
    Ok(BenchResult {
        pp_tokens: n_prompt,
        pp_tokens_per_s: n_prompt as f64 / pp.max(1e-9),
        tg_tokens: n_gen,
        tg_tokens_per_s: n_gen as f64 / tg.max(1e-9),
        tg_block_end_share: upkeep / tg.max(1e-9),
        at_position,
        fill_tokens: fill,
        state_bytes: st.state_bytes(),
    })
}

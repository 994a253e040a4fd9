//! The passkey retrieval test (Mohtashami & Jaggi 2023; the format the FAM paper uses): a
//! random 5-digit key near the start, `filler_tokens` of repeated irrelevant text, and the
//! question at the end. Success: the greedy answer contains the key.

use crate::engine::Engine;
use crate::error::Result;
use crate::runtime::{GenerateOptions, Runtime};
use crate::sample::SamplerConfig;
use crate::state::FamState;

const INTRO: &str =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. \
I will quiz you about the important information there.\n";
const FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
const QUESTION: &str = "\nWhat is the pass key? The pass key is";

/// One passkey prompt with (about) `filler_tokens` tokens of filler; returns (tokens, key).
pub fn prompt(rt: &Runtime, filler_tokens: usize, key: u32) -> Vec<u32> {
    let tok = &rt.tokenizer;
    let mut t = tok.encode(INTRO, true, false);
    t.extend(tok.encode(
        &format!("The pass key is {key}. Remember it. {key} is the pass key.\n"),
        false,
        false,
    ));
    let filler = tok.encode(FILLER, false, false);
    let mut n = 0;
    while n < filler_tokens {
        let take = (filler_tokens - n).min(filler.len());
        t.extend(&filler[..take]);
        n += take;
    }
    t.extend(tok.encode(QUESTION, false, false));
    t
}

/// Result of one trial.
#[derive(Clone, Debug)]
pub struct Trial {
    pub filler_tokens: usize,
    pub key: u32,
    pub answer: String,
    pub found: bool,
    pub prompt_tokens: usize,
    pub seconds: f64,
}

/// Run one trial in a fresh state made by `new_state`.
pub fn trial(
    rt: &Runtime,
    eng: &mut Engine,
    state: &mut FamState,
    filler_tokens: usize,
    key: u32,
) -> Result<Trial> {
    let tokens = prompt(rt, filler_tokens, key);
    let opts = GenerateOptions {
        max_tokens: 8,
        sampler: SamplerConfig::greedy(),
        ..GenerateOptions::default()
    };
    let t0 = std::time::Instant::now();
    let stats = rt.generate(eng, state, &tokens, &opts, |_| true)?;
    let digits: String = stats.text.chars().filter(|c| c.is_ascii_digit()).collect();
    Ok(Trial {
        filler_tokens,
        key,
        found: digits.contains(&key.to_string()),
        answer: stats.text,
        prompt_tokens: tokens.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Deterministic keys for trial `i` under `seed`.
pub fn key_for(seed: u64, i: usize) -> u32 {
    let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    10_000 + ((z ^ (z >> 31)) % 90_000) as u32
}

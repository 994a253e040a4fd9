//! Sampling: turn logits into the next token.
//!
//! Order of operations (as llama.cpp's default chain): logit bias -> presence/frequency
//! penalties -> repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
//! Temperature 0 is greedy (argmax, no randomness).

use std::collections::HashMap;

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0 = off).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0 = off).
    pub min_p: f32,
    /// Penalty for tokens among the last `repeat_last_n` (1.0 = off).
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
    /// Subtracted once from the logit of every token the completion has produced (OpenAI's
    /// `presence_penalty`; 0 = off).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit per time the completion has produced it (OpenAI's
    /// `frequency_penalty`; 0 = off).
    pub frequency_penalty: f32,
    /// Added to these tokens' logits (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 0x5EED,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        }
    }
}

/// A seeded sampler with its own random state and penalty history.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub cfg: SamplerConfig,
    rng: u64,
    history: Vec<u32>,
    /// How often the completion produced each token (presence/frequency penalties).
    produced: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        // splitmix64 of the seed, so nearby seeds give unrelated streams
        let mut z = cfg.seed.wrapping_add(0x9E3779B97F4A7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        let rng = (z ^ (z >> 31)) | 1;
        Sampler {
            cfg,
            rng,
            history: Vec::new(),
            produced: HashMap::new(),
        }
    }

    /// Remember a token the completion produced: the repetition penalty's history and the
    /// presence/frequency counts.
    pub fn accept_generated(&mut self, token: u32) {
        self.accept(token);
        *self.produced.entry(token).or_insert(0) += 1;
    }

    /// Remember a token for the repetition penalty (prompt tokens too).
    pub fn accept(&mut self, token: u32) {
        self.history.push(token);
        let keep = self.cfg.repeat_last_n.max(1);
        if self.history.len() > 2 * keep {
            self.history.drain(..self.history.len() - keep);
        }
    }

    fn next_f64(&mut self) -> f64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Pick the next token from `logits` (one row of n_vocab).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let c = self.cfg.clone();
        let penalised = c.repeat_penalty != 1.0 && c.repeat_last_n > 0;
        let openai = !c.logit_bias.is_empty()
            || (!self.produced.is_empty()
                && (c.presence_penalty != 0.0 || c.frequency_penalty != 0.0));
        if c.temperature <= 0.0 && !penalised && !openai {
            // Greedy without penalties: no candidate list (a vocabulary-sized allocation per
            // token).
            return first_max(logits.iter().copied()) as u32;
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        for &(t, b) in &c.logit_bias {
            if let Some(x) = cand.get_mut(t as usize) {
                x.1 += b;
            }
        }
        if c.presence_penalty != 0.0 || c.frequency_penalty != 0.0 {
            for (&t, &n) in &self.produced {
                if let Some(x) = cand.get_mut(t as usize) {
                    x.1 -= c.presence_penalty + c.frequency_penalty * n as f32;
                }
            }
        }
        if penalised {
            let start = self.history.len().saturating_sub(c.repeat_last_n);
            let mut seen: Vec<u32> = self.history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(x) = cand.get_mut(t as usize) {
                    x.1 = if x.1 > 0.0 {
                        x.1 / c.repeat_penalty
                    } else {
                        x.1 * c.repeat_penalty
                    };
                }
            }
        }
        if c.temperature <= 0.0 {
            return argmax(&cand);
        }
        // Sort descending (ties by id for determinism); NaN logits sort last.
        let k = if c.top_k > 0 {
            c.top_k.min(cand.len())
        } else {
            cand.len()
        };
        let cmp = |a: &(u32, f32), b: &(u32, f32)| {
            b.1.partial_cmp(&a.1)
                .unwrap_or_else(|| a.1.is_nan().cmp(&b.1.is_nan()))
                .then(a.0.cmp(&b.0))
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, cmp);
            cand.truncate(k);
        }
        cand.sort_by(cmp);
        // Softmax at temperature 1 for the filters (as llama.cpp), then temperature.
        let probs = softmax(&cand, 1.0);
        let mut keep = cand.len();
        if c.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= c.top_p as f64 {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let thresh = probs[0] * c.min_p as f64;
            let n = probs.iter().take_while(|&&p| p >= thresh).count().max(1);
            keep = keep.min(n);
        }
        cand.truncate(keep.max(1));
        let probs = softmax(&cand, c.temperature);
        let r = self.next_f64();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return cand[i].0;
            }
        }
        cand[cand.len() - 1].0
    }
}

fn argmax(c: &[(u32, f32)]) -> u32 {
    c[first_max(c.iter().map(|x| x.1))].0
}

/// Index of the first of the largest values (0 when empty; a later value wins only if it is
/// strictly greater, so ties go to the lower index).
fn first_max(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NAN);
    for (i, v) in values.enumerate() {
        if i == 0 || v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

fn softmax(c: &[(u32, f32)], temp: f32) -> Vec<f64> {
    let m = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = c
        .iter()
        .map(|x| ((x.1 as f64 - m) / temp as f64).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_penalty_changes_it() {
        let logits = [1.0, 3.0, 2.9, -1.0];
        assert_eq!(Sampler::new(SamplerConfig::greedy()).sample(&logits), 1);
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 1.5,
            ..SamplerConfig::greedy()
        });
        s.accept(1);
        assert_eq!(s.sample(&logits), 2, "3.0 / 1.5 = 2.0 < 2.9");
    }

    #[test]
    fn top_k_1_is_greedy_and_seeds_reproduce() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let mut s = Sampler::new(SamplerConfig {
            top_k: 1,
            temperature: 1.0,
            ..Default::default()
        });
        assert_eq!(
            s.sample(&logits),
            Sampler::new(SamplerConfig::greedy()).sample(&logits)
        );
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                seed,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                temperature: 1.5,
                repeat_penalty: 1.0,
                repeat_last_n: 0,
                ..Default::default()
            });
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Two tokens with probabilities 0.8 / 0.2 at temperature 1.
        let logits = [(0.8f32).ln(), (0.2f32).ln()];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        });
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&logits) == 1).count() as f64 / n as f64;
        // Binomial std at n=20000 is 0.0028; 5 sigma.
        assert!((ones - 0.2).abs() < 0.015, "{ones}");
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits = [(0.6f32).ln(), (0.3f32).ln(), (0.1f32).ln()];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.85,
            min_p: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        });
        assert!((0..2000).all(|_| s.sample(&logits) != 2));
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.4,
            repeat_penalty: 1.0,
            ..Default::default()
        });
        assert!(
            (0..2000).all(|_| s.sample(&logits) != 2),
            "min-p drops the 0.1 token"
        );
    }

    #[test]
    fn logit_bias_and_openai_penalties_move_the_choice() {
        let logits = [1.0, 3.0, 2.5, -1.0];
        let greedy = SamplerConfig::greedy;
        let biased = SamplerConfig {
            logit_bias: vec![(3, 4.5)],
            ..greedy()
        };
        assert_eq!(Sampler::new(biased).sample(&logits), 3, "-1 + 4.5 > 3");
        let banned = SamplerConfig {
            logit_bias: vec![(1, -100.0)],
            ..greedy()
        };
        assert_eq!(Sampler::new(banned).sample(&logits), 2);
        // presence: once per produced token, whatever the count
        let mut s = Sampler::new(SamplerConfig {
            presence_penalty: 0.6,
            ..greedy()
        });
        assert_eq!(s.sample(&logits), 1, "nothing produced yet: no penalty");
        s.accept(1); // a prompt token does not count
        assert_eq!(s.sample(&logits), 1);
        s.accept_generated(1);
        assert_eq!(s.sample(&logits), 2, "3.0 - 0.6 < 2.5");
        // frequency: per time produced
        let mut s = Sampler::new(SamplerConfig {
            frequency_penalty: 0.3,
            ..greedy()
        });
        s.accept_generated(1);
        assert_eq!(s.sample(&logits), 1, "3.0 - 0.3 > 2.5");
        s.accept_generated(1);
        assert_eq!(s.sample(&logits), 2, "3.0 - 0.6 < 2.5");
    }
}

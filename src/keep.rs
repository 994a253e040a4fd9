//! The `keep` policy's salience memory, host side: which tokens that leave the window keep
//! their K/V in the F kept slots.
//!
//! Salience starts from surprisal, `-ln p(token | what came before)`, taken when the token is
//! read (the token graph returns each row's probability of the next token; the first token of
//! a batch is scored from the previous batch's last logits, kept here as log-probabilities).
//! When a block leaves the window, each of its tokens is scored in two steps over the tokens
//! within [`SALIENCE_RADIUS`] of it, before or after, in the same block: its *density*, the sum
//! of their surprisals, then its score, the largest density among them:
//! `density(j) = sum(surprisal(j - r ..= j + r))`, `score(i) = max(density(i - r ..= i + r))`.
//! The block's tokens then compete with the tokens already kept: the F highest scores stay
//! (ties: the later token). This is what an un-tuned model gets without training (a
//! heavy-hitter cache, scored by surprisal instead of attention, which ggml's fused attention
//! does not return).
//!
//! Why a window around each token: in a planted fact ("The farm has exactly 8943 sheep.") the
//! surprising tokens are the first words, where the topic changes, not the value (digits are
//! about 2 nats each, below the 8-10 of Moby-Dick's rarer words). Surprisal alone rarely keeps
//! the value. The rule before the window carried a token's score to the tokens after it, fading
//! by 0.1 nat per token: the value, last in its sentence, then scored lowest in the span and
//! was the part cut off first ("farm has exactly" kept, "8943 sheep" not). The window gives the
//! whole neighbourhood of a surprise the same score, and ties keep the later tokens. Measured by
//! `tools/keep_salience.py` on 160 cases of the training split of `tools/fam_data.py`
//! (surprisal from the HF model; the share of cases whose whole value was kept; F = 64, B = 64):
//! the fading carry kept 43/80 at 4 windows and 32/80 at 16, surprisal alone 4/80 and 10/80, the
//! largest surprisal within radius 8 62/80 and 41/80 (radius 6: 53/80 and 33/80; 10: 66/80 and
//! 43/80; 16: 57/80 and 37/80). At F = 16 and 4 windows: the carry 10/80, radius 8 26/80,
//! radius 10 21/80.
//!
//! Why density: at the default window (B = 1024, M = 3) every surprise's 17 tokens compete for
//! the F slots with a whole novel's rare words, each a lone spike; a fact dropped into the text
//! is several surprising tokens together (the topic, the value, the unit). Ranking spans by the
//! sum of their surprisals instead of their largest one keeps more facts. Same tool, training
//! split, B = 1024, M = 3, whole value kept (largest surprisal -> density): one window back
//! (40 cases) F = 256 31/40 -> 39/40, F = 128 26/40 -> 33/40; two windows back (48 cases)
//! F = 256 26/48 -> 32/48, F = 128 13/48 -> 25/48. The sum alone (no second step) was between
//! (F = 256: 38/40, 26/48); radius 4 and 12 were below 8 at both distances.
//!
//! Everything here is pure bookkeeping with a size fixed at creation (ring length, F, the
//! vocabulary), so the stream's memory stays constant; [`Salience::to_bytes`] /
//! [`Salience::load_bytes`] carry it in snapshots.

use crate::error::{Error, Result};

/// The surprisal given to a token whose probability underflowed to 0 (f32's smallest positive
/// number is 1.4e-45 = e^-103.3).
pub const MAX_SURPRISAL: f32 = 104.0;

/// Tokens on each side of a token whose surprisal counts toward its score (see the module doc).
pub const SALIENCE_RADIUS: usize = 8;

/// `-ln p`, clamped to [0, MAX_SURPRISAL]; a NaN probability scores 0.
pub fn surprisal(p: f32) -> f32 {
    if p.is_nan() {
        0.0
    } else {
        (-p.max(0.0).ln()).clamp(0.0, MAX_SURPRISAL)
    }
}

/// `ln(sum(exp(x)))` over a row of logits, as `max + ln(sum(exp(x - max)))` (NaN if any is NaN;
/// -inf for an empty row). It runs once per decoded token over the whole vocabulary (the next
/// token's surprisal), so it is written for the vectorizer: 8 independent lanes and a branch-free
/// exponential ([`exp_nonpositive`]); with libm's scalar `expf` it was ~1.5-2% of decode time with
/// 64 kept tokens (perf, B = 64); 64 us per 49,152 logits (0.5% of decode at B = 256) while
/// `2^n` came from a saturating cast, 26 us since. A `+inf` logit gives `+inf` (its token scores NaN).
pub fn log_sum_exp(x: &[f32]) -> f32 {
    const L: usize = 8;
    let chunks = x.chunks_exact(L);
    let tail = chunks.remainder();
    let mut m = [f32::NEG_INFINITY; L];
    for c in chunks.clone() {
        for i in 0..L {
            // `>` lets NaN through to the sum below, where it makes the result NaN.
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let max = m
        .iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    if max == f32::NEG_INFINITY || max == f32::INFINITY {
        // no finite largest logit: an empty row, all -inf, all NaN, or a +inf
        return if x.iter().any(|v| v.is_nan()) {
            f32::NAN
        } else {
            max
        };
    }
    let mut s = [0.0f32; L];
    for c in chunks {
        for i in 0..L {
            s[i] += exp_nonpositive(c[i] - max);
        }
    }
    let total = s.iter().sum::<f32>() + tail.iter().map(|&v| exp_nonpositive(v - max)).sum::<f32>();
    max + total.ln()
}

/// `e^x` for `x <= 0` (larger `x` is not asked for), to ~2 ulp; below -87 (where `e^x` nears
/// f32's smallest normal number) it returns `e^-87`, which next to the 1 that the largest logit
/// adds is nothing. Cody-Waite reduction `x = n ln2 + r`, `|r| <= ln2 / 2`, and a degree-7
/// Taylor polynomial for `e^r` (its error there is below 1e-8), then `2^n` from the exponent
/// bits. NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 x 2^23: adding it rounds to an integer
    let x = if x < -87.0 { -87.0 } else { x }; // (not f32::max, which turns NaN into -87)
    let t = x * std::f32::consts::LOG2_E + ROUND; // 1.5 x 2^23 + n: n in its low mantissa bits
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n from t's bits (integer lanes; `n as i32`, a saturating cast, kept the loop from
    // vectorizing: 64 -> 26 us per 49,152 logits); n is in [-126, 0], so n + 127 is a normal
    // exponent. For a NaN x the bits are meaningless and `p` is NaN.
    p * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23)
}

/// Salience scores of the ring's tokens and of the kept tokens, and what the next token will be
/// scored against.
#[derive(Clone, Debug, PartialEq)]
pub struct Salience {
    /// Surprisal of the token in each ring slot (by offset from the ring's first slot).
    ring: Vec<f32>,
    /// Score of the token in each kept slot (meaningless where the slot is empty).
    kept: Vec<f32>,
    /// ln p over the vocabulary after the last token read; valid when `has_next`.
    next: Vec<f32>,
    has_next: bool,
    /// Tokens on each side whose surprisal counts toward a leaving token's score.
    radius: usize,
}

impl Salience {
    /// Scores for a ring of `ring_len` slots and `n_keep` kept slots, a token scored by the
    /// surprisal within `radius` tokens of it ([`SALIENCE_RADIUS`]; 0: its own alone).
    pub fn new(ring_len: usize, n_keep: usize, n_vocab: usize, radius: usize) -> Salience {
        Salience {
            ring: vec![0.0; ring_len],
            kept: vec![0.0; n_keep],
            next: vec![0.0; n_vocab],
            has_next: false,
            radius,
        }
    }

    /// Forget the stream (scores are overwritten before they are read again).
    pub fn clear(&mut self) {
        self.has_next = false;
    }

    /// The score of token `token` if it comes next (0 at the stream's start).
    pub fn score_next(&self, token: u32) -> f32 {
        match self.next.get(token as usize) {
            Some(&lp) if self.has_next && !lp.is_nan() => (-lp).clamp(0.0, MAX_SURPRISAL),
            _ => 0.0,
        }
    }

    /// Remember the last row's `logits` (n_vocab) to score the token after it.
    pub fn set_next_logits(&mut self, logits: &[f32]) -> Result<()> {
        if logits.len() != self.next.len() {
            return Err(Error::Internal(format!(
                "{} logits for a vocabulary of {}",
                logits.len(),
                self.next.len()
            )));
        }
        let lse = log_sum_exp(logits);
        for (o, &x) in self.next.iter_mut().zip(logits) {
            *o = x - lse;
        }
        self.has_next = true;
        Ok(())
    }

    /// The surprisal of the token now in ring offset `offset`.
    pub fn record(&mut self, offset: usize, surprisal: f32) {
        self.ring[offset] = surprisal;
    }

    /// The scores of the tokens leaving the window (`(stream index, ring offset)`): the largest
    /// density (sum of surprisals within the radius) among the leaving tokens within the radius
    /// of each (see the module doc).
    pub fn leaving_scores(&self, leaving: &[(i64, usize)]) -> Vec<f32> {
        let r = self.radius as i64;
        let near = |j: i64| {
            leaving
                .iter()
                .enumerate()
                .filter(move |&(_, &(i, _))| (i - j).abs() <= r)
        };
        let density: Vec<f32> = leaving
            .iter()
            .map(|&(j, _)| near(j).map(|(_, &(_, o))| self.ring[o]).sum())
            .collect();
        leaving
            .iter()
            .map(|&(j, _)| near(j).map(|(x, _)| density[x]).fold(0.0, f32::max))
            .collect()
    }

    /// The tokens leaving the window, `(stream index, ring offset)`, compete with the kept
    /// ones (`kept[k]`: the stream index kept slot k holds, if any), scored by
    /// [`Salience::leaving_scores`]: the F highest scores stay (ties: the later token). Returns
    /// the newly kept tokens as (kept slot, stream index, ring offset); the slots they take were
    /// empty or held a token that lost.
    pub fn select(
        &mut self,
        kept: &[Option<i64>],
        leaving: &[(i64, usize)],
    ) -> Vec<(usize, i64, usize)> {
        let f = self.kept.len();
        assert_eq!(kept.len(), f, "one entry per kept slot");
        // (score, stream index, Err(kept slot) | Ok(ring offset))
        let mut all: Vec<(f32, i64, std::result::Result<usize, usize>)> = kept
            .iter()
            .enumerate()
            .filter_map(|(k, j)| j.map(|j| (self.kept[k], j, Err(k))))
            .chain(
                leaving
                    .iter()
                    .zip(self.leaving_scores(leaving))
                    .map(|(&(j, o), score)| (score, j, Ok(o))),
            )
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        all.truncate(f);
        let mut free: Vec<usize> = (0..f)
            .filter(|&k| !all.iter().any(|e| e.2 == Err(k)))
            .collect();
        free.reverse(); // pop from the lowest slot
        let mut new = Vec::new();
        for (score, j, src) in all {
            if let Ok(o) = src {
                let k = free.pop().expect("at most F winners, F slots");
                self.kept[k] = score;
                new.push((k, j, o));
            }
        }
        new
    }

    /// Bytes of the snapshot form (fixed by the sizes).
    pub fn n_bytes(&self) -> usize {
        4 * (self.ring.len() + self.kept.len() + self.next.len() + 1) + 1
    }

    /// Snapshot form: ring, kept and next scores (f32 LE), 4 bytes that held the fading carry
    /// of the rule before the window (written as 0, ignored when read: snapshots from before
    /// it still load), then `has_next` (a byte).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b: Vec<u8> = self
            .ring
            .iter()
            .chain(&self.kept)
            .chain(&self.next)
            .chain(std::iter::once(&0.0))
            .flat_map(|x| x.to_le_bytes())
            .collect();
        b.push(self.has_next as u8);
        b
    }

    /// Read the snapshot form (of the same sizes).
    pub fn load_bytes(&mut self, b: &[u8]) -> Result<()> {
        if b.len() != self.n_bytes() || b[b.len() - 1] > 1 {
            return Err(Error::Internal("salience scores of another size".into()));
        }
        let mut x = b[..b.len() - 1]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
        for v in self
            .ring
            .iter_mut()
            .chain(self.kept.iter_mut())
            .chain(self.next.iter_mut())
        {
            *v = x.next().expect("sized above");
        }
        self.has_next = b[b.len() - 1] == 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_surprising_tokens_stay() {
        // F = 2, a ring of 4; block 0 (indices 0..4) leaves with scores 1, 5, 2, 7.
        let mut s = Salience::new(4, 2, 3, 0);
        for (o, x) in [1.0, 5.0, 2.0, 7.0].into_iter().enumerate() {
            s.record(o, x);
        }
        let leaving: Vec<(i64, usize)> = (0..4).map(|i| (i, i as usize)).collect();
        let new = s.select(&[None, None], &leaving);
        let mut kept: Vec<i64> = new.iter().map(|e| e.1).collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![1, 3]);
        // block 1 (4..8) leaves with 6, 0, 0, 0: it replaces index 1 (score 5), not 3 (7)
        let mut slots = [None, None];
        for &(k, j, _) in &new {
            slots[k] = Some(j);
        }
        for (o, x) in [6.0, 0.0, 0.0, 0.0].into_iter().enumerate() {
            s.record(o, x);
        }
        let leaving: Vec<(i64, usize)> = (4..8).map(|i| (i, (i - 4) as usize)).collect();
        let new2 = s.select(&slots, &leaving);
        assert_eq!(new2.len(), 1);
        let (k, j, o) = new2[0];
        assert_eq!((slots[k], j, o), (Some(1), 4, 0));
        // nothing beats what is kept: nothing changes
        for o in 0..4 {
            s.record(o, 0.5);
        }
        let leaving: Vec<(i64, usize)> = (8..12).map(|i| (i, (i - 8) as usize)).collect();
        slots[k] = Some(4);
        assert!(s.select(&slots, &leaving).is_empty());
    }

    #[test]
    fn ties_keep_the_later_token_and_empty_slots_fill_first() {
        let mut s = Salience::new(2, 3, 1, 0);
        s.record(0, 1.0);
        s.record(1, 1.0);
        let new = s.select(&[None, None, None], &[(10, 0), (11, 1)]);
        assert_eq!(new, vec![(0, 11, 1), (1, 10, 0)]);
    }

    #[test]
    fn a_surprise_scores_the_tokens_around_it_by_density() {
        // radius 1; a block of 7 tokens read with surprisal 0, 0, 9, 1, 1, 0, 2: densities
        // (sums over i-1..=i+1) 0, 9, 10, 11, 2, 3, 2; scores (largest density within 1)
        // 9, 10, 11, 11, 11, 3, 3
        let mut s = Salience::new(7, 1, 1, 1);
        for (o, x) in [0.0, 0.0, 9.0, 1.0, 1.0, 0.0, 2.0].into_iter().enumerate() {
            s.record(o, x);
        }
        let leaving: Vec<(i64, usize)> = (0..7).map(|i| (100 + i, i as usize)).collect();
        assert_eq!(
            s.leaving_scores(&leaving),
            vec![9.0, 10.0, 11.0, 11.0, 11.0, 3.0, 3.0]
        );
        // only leaving tokens count: without index 102 (a sink, say) the 9 is not seen
        let without: Vec<(i64, usize)> = leaving.iter().copied().filter(|e| e.0 != 102).collect();
        assert_eq!(
            s.leaving_scores(&without),
            vec![0.0, 0.0, 2.0, 3.0, 3.0, 3.0]
        );
        // ties keep the later token: F = 1 keeps index 104, the last one that scores 11
        assert_eq!(s.select(&[None], &leaving), vec![(0, 104, 4)]);
        // two lone spikes lose to a denser run of smaller surprises (radius 2): 8 vs 3 + 3 + 3
        let mut d = Salience::new(12, 1, 1, 2);
        for (o, x) in [8.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 0.0, 0.0]
            .into_iter()
            .enumerate()
        {
            d.record(o, x);
        }
        let leaving: Vec<(i64, usize)> = (0..12).map(|i| (i, i as usize)).collect();
        // the run's span 5..=11 scores 9, the spike's 8
        assert_eq!(d.select(&[None], &leaving)[0].1, 11);
        // radius 0: a token's own surprisal
        let mut own = Salience::new(6, 1, 1, 0);
        for (o, x) in [0.0, 0.0, 9.0, 1.0, 1.0, 2.0].into_iter().enumerate() {
            own.record(o, x);
        }
        let leaving: Vec<(i64, usize)> = (0..6).map(|i| (100 + i, i as usize)).collect();
        assert_eq!(
            own.leaving_scores(&leaving),
            vec![0.0, 0.0, 9.0, 1.0, 1.0, 2.0]
        );
    }

    #[test]
    fn next_token_scores_are_log_softmax() {
        let mut s = Salience::new(1, 1, 3, 0);
        assert_eq!(s.score_next(0), 0.0); // stream start
        s.set_next_logits(&[0.0, 1.0, 2.0]).unwrap();
        let z: f32 = [0.0f32, 1.0, 2.0].iter().map(|x| x.exp()).sum();
        assert!((s.score_next(2) - (z.ln() - 2.0)).abs() < 1e-6);
        assert!(s.set_next_logits(&[0.0]).is_err());
        assert_eq!(surprisal(0.0), MAX_SURPRISAL);
        assert_eq!(surprisal(1.0), 0.0);
        assert_eq!(surprisal(f32::NAN), 0.0);
    }

    #[test]
    fn log_sum_exp_matches_f64() {
        // f32 lane sums over up to 49k terms, against an f64 sum: measured 1.2 ulp of the result
        // (7e-8 relative); 2e-7 is ~3 ulp, and one 8-term chunk lost would be 40x that.
        const LSE_TOL: f64 = 2e-7;
        // The polynomial's error (< 1e-8) plus the rounding of its f32 steps: measured 1.2 ulp
        // (9.8e-8); without its last term the worst error is 2.1e-7, so 1.5e-7 catches that.
        const EXP_REL_TOL: f32 = 1.5e-7;
        // A vocabulary's worth of logits, spread like a model's (and a tail that is not a
        // multiple of the 8 lanes): within f32 rounding of the f64 sum.
        let mut r = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            (r >> 40) as f32 / (1u64 << 24) as f32
        };
        for (n, lo, hi) in [(49_155, -30.0f32, 25.0f32), (3, -1.0, 1.0), (1, 4.0, 4.0)] {
            let x: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * next()).collect();
            let m = x
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, |a, b| a.max(b as f64));
            let want = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            let got = log_sum_exp(&x) as f64;
            assert!(
                (got - want).abs() <= LSE_TOL * want.abs().max(1.0),
                "{n}: {got} vs {want}"
            );
        }
        // The exponential across its range, against std's
        for i in 0..=2000 {
            let x = -100.0 * i as f32 / 2000.0;
            let (got, want) = (exp_nonpositive(x), x.max(-87.0).exp());
            assert!(
                (got - want).abs() <= EXP_REL_TOL * want,
                "e^{x}: {got} vs {want}"
            );
        }
        assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);
        assert!(log_sum_exp(&[1.0, f32::NAN, 2.0]).is_nan());
        assert!(log_sum_exp(&[f32::NAN; 9]).is_nan());
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY, 0.0]), 0.0);
    }

    #[test]
    fn snapshot_bytes_round_trip() {
        let mut s = Salience::new(3, 2, 4, 2);
        s.record(2, 3.5);
        s.set_next_logits(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        s.select(&[None, None], &[(7, 2)]);
        let mut t = Salience::new(3, 2, 4, 2);
        t.load_bytes(&s.to_bytes()).unwrap();
        assert_eq!(s, t);
        assert!(t.load_bytes(&[0; 5]).is_err());
    }
}

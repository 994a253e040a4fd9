//! `SlotLayout`: where each row of a stream lives in the K/V store, and which rows each row
//! may see. Pure arithmetic on (B, M, F, S, n_ctx, the local window) and the stream indices
//! the slots hold: no model, no ggml, so it is tested on its own (below).
//!
//! ```text
//! [ sinks: S | kept: K | FAM: F | ring: (M+1)*B (windowed)  or  n_ctx (full) | scratch | pad ]
//! ```
//! Kept slots hold tokens that left the window, chosen by salience ([`crate::keep`]): F of them
//! under the `keep` policy (which has no FAM), `keep_len` next to a FAM; the slot records which
//! stream index it holds. Sinks and kept slots are the *pinned* rows, [0, S + K).
//! Token at stream index i lives in ring slot `ring_base + i % ring_len`: block t occupies ring
//! block `t % (M+1)`, so starting block t+1 overwrites block t-M, which has just left every
//! window. Models with local sliding-window layers (gemma3) get a longer ring when their native
//! window `n_swa` needs it (`n_swa - 1 + B` slots, rounded up to whole blocks): those layers see
//! the `n_swa` latest tokens under every policy (their own mask, without FAM or sinks), while
//! the global layers see the policy's window. Scratch slots (F of them) serve the `reread`
//! feedback; padding makes every attention length a multiple of [`KV_PAD`] (of [`KV_PAD_CPU`] on
//! the CPU backend; the store itself is always padded to [`KV_PAD`]).

use crate::error::{Error, Result};
use crate::settings::{FamFeedback, FamSettings, MemoryPolicy};
use half::f16;

/// Attention graphs read K/V slots [0, n_kv) with n_kv a multiple of this (the store is padded
/// with never-visible slots; the extra slots are masked), as llama.cpp pads its cache for flash
/// attention: fewer distinct graph shapes, and only the sizes GPU flash-attention kernels are
/// exercised with. (ggml's Vulkan backend corrupted host memory on lavapipe with arbitrary
/// lengths such as 36 or 150; with padded lengths it does not: tests/backend_vulkan.rs.)
pub const KV_PAD: usize = 256;
/// On the CPU backend an attention graph's length is padded to this instead (the store keeps
/// [`KV_PAD`]): ggml's CPU flash attention has no length it needs, skips masked slots one by
/// one, and from 512 slots on splits one query row's keys in equal halves across threads
/// (`use_split_kv_path`), which with a window filling from the front leaves one thread with
/// nearly every visible key. With 256, `sink` at B = 256, M = 0 read 512 slots (260 used) on one
/// thread's worth of work; with 32 it reads the used ones, its heads shared across threads.
pub const KV_PAD_CPU: usize = 32;
/// A slot holding no token.
const EMPTY: i64 = i64::MIN;

#[derive(Clone, Debug)]
pub struct SlotLayout {
    /// Block size B and memory blocks M.
    b: i64,
    m: i64,
    /// Every policy but `full` keeps a window.
    windowed: bool,
    /// S and F as laid out (0 when the policy does not use them).
    n_sink: usize,
    n_fam: usize,
    /// Kept-token slots (`keep`), right after the sinks.
    n_keep: usize,
    /// Ring slots: (M+1)*B (or more for a local window), or n_ctx for `full`.
    ring_len: usize,
    n_scratch: usize,
    /// Stream index held by each slot, or EMPTY.
    slot_pos: Vec<i64>,
    /// Added to token rows' attention logits at the FAM's slots (an adapter's learned
    /// `fam.adapter.fam_attn_bias`; 0 without one).
    fam_bias: f16,
    /// Attention lengths are multiples of this ([`KV_PAD`], or [`KV_PAD_CPU`] on the CPU).
    attn_pad: usize,
    /// A banded prompt read ([`PrefillBand`]), or none.
    band: Option<PrefillBand>,
}

/// Rows `[from, to)` of a stream see, of the tokens from `from` on, only the `width` latest
/// (themselves included); every token before `from` stays visible to them, and rows outside
/// `[from, to)` see as the policy says. A prompt's long middle part (a summarizer's chunk) is
/// then read at the cost of a `width`-token window while every one of its tokens stays in the
/// window for the rows after it (the request, the generated reply), which attend to all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillBand {
    pub from: i64,
    pub to: i64,
    pub width: i64,
}

impl SlotLayout {
    /// The layout of a stream with `settings` (`n_ctx` for the `full` policy) on a model whose
    /// local layers have a window of `n_swa` tokens (0: none).
    pub fn new(settings: &FamSettings, n_ctx: usize, n_swa: usize) -> Result<SlotLayout> {
        let (b, m) = (settings.block_size as usize, settings.mem_blocks as usize);
        // Attention sinks: the `sink` policy, and `fam` when S > 0 (FAM plus sinks).
        let n_sink = if matches!(
            settings.policy,
            MemoryPolicy::Sink | MemoryPolicy::Fam | MemoryPolicy::Keep
        ) {
            settings.sinks as usize
        } else {
            0
        };
        let n_keep = match settings.policy {
            MemoryPolicy::Keep => settings.fam_len as usize,
            MemoryPolicy::Fam => settings.keep_len as usize,
            _ => 0,
        };
        let n_fam = if settings.policy == MemoryPolicy::Fam {
            settings.fam_len as usize
        } else {
            0
        };
        let ring_len = match settings.policy {
            MemoryPolicy::Full => {
                if n_ctx == 0 {
                    return Err(Error::Invalid(
                        "the full policy needs a context length > 0".into(),
                    ));
                }
                n_ctx
            }
            // Local layers keep their native window: the oldest token a row of block t needs,
            // n_swa - 1 before the block's first, must not have been overwritten yet.
            _ => ((m + 1) * b).max((n_swa.saturating_sub(1) + b).next_multiple_of(b)),
        };
        // `reread` feedback computes the next FAM in F scratch slots after the ring.
        let n_scratch = if settings.feedback == FamFeedback::Reread {
            n_fam
        } else {
            0
        };
        let n_slots = (n_sink + n_fam + n_keep + ring_len + n_scratch).next_multiple_of(KV_PAD);
        Ok(SlotLayout {
            b: b as i64,
            m: m as i64,
            windowed: settings.policy != MemoryPolicy::Full,
            n_sink,
            n_fam,
            n_keep,
            ring_len,
            n_scratch,
            slot_pos: vec![EMPTY; n_slots],
            fam_bias: f16::ZERO,
            attn_pad: KV_PAD,
            band: None,
        })
    }

    /// Slots of the K/V store, padding included.
    pub fn n_slots(&self) -> usize {
        self.slot_pos.len()
    }
    pub fn n_sink(&self) -> usize {
        self.n_sink
    }
    pub fn n_fam(&self) -> usize {
        self.n_fam
    }
    pub fn n_keep(&self) -> usize {
        self.n_keep
    }
    /// Sinks and kept slots: rows whose keys are stored un-rotated and shown at virtual
    /// positions (sinks just before the window; with `keep`, kept tokens and sinks just before
    /// the current block).
    pub fn n_pinned(&self) -> usize {
        self.n_sink + self.n_keep
    }
    /// Ring slots.
    pub fn ring_len(&self) -> usize {
        self.ring_len
    }
    /// Record that kept slot `k` (0..n_keep) holds stream index `i` (`None`: nothing).
    pub fn keep_at(&mut self, k: usize, i: Option<i64>) {
        assert!(k < self.n_keep, "kept slot {k} of {}", self.n_keep);
        self.slot_pos[self.n_sink + k] = i.unwrap_or(EMPTY);
    }
    /// The stream index kept slot `k` holds.
    pub fn kept(&self, k: usize) -> Option<i64> {
        let j = self.slot_pos[self.n_sink + k];
        (j != EMPTY).then_some(j)
    }
    pub fn block_of(&self, i: i64) -> i64 {
        i.div_euclid(self.b)
    }
    pub fn ring_base(&self) -> usize {
        self.n_sink + self.n_fam + self.n_keep
    }
    /// First FAM slot: after the sinks and the kept slots.
    pub fn fam_base(&self) -> usize {
        self.n_sink + self.n_keep
    }
    /// First scratch slot (`reread` feedback), right after the ring.
    pub fn scratch_base(&self) -> usize {
        self.ring_base() + self.ring_len
    }
    /// Scratch slots (F with the `reread` feedback and a FAM, else 0).
    pub fn n_scratch(&self) -> usize {
        if self.n_fam > 0 {
            self.n_scratch
        } else {
            0
        }
    }
    pub fn ring_slot(&self, i: i64) -> usize {
        self.ring_base() + (i.rem_euclid(self.ring_len as i64)) as usize
    }
    /// Put stream index `i` in its ring slot; returns the slot.
    pub fn place(&mut self, i: i64) -> usize {
        let s = self.ring_slot(i);
        self.slot_pos[s] = i;
        s
    }
    /// First stream index of the window of block t.
    pub fn window_start(&self, t: i64) -> i64 {
        (t - self.m).max(0) * self.b
    }
    pub fn fam_slots(&self) -> Vec<i64> {
        (self.fam_base()..self.fam_base() + self.n_fam)
            .map(|s| s as i64)
            .collect()
    }
    /// Slots [0, n) that any row may attend to once stream indices below `upto` are placed,
    /// rounded up to a multiple of the attention pad (the extra slots are masked).
    pub fn n_kv(&self, upto: i64) -> usize {
        let used = self.ring_base() + (upto.max(0) as usize).min(self.ring_len);
        used.next_multiple_of(self.attn_pad).min(self.n_slots())
    }
    /// The attention length of token rows `[i0, i1)` of block t (slots placed): one past the
    /// last ring slot any of them may see (`n_swa`: a local window, 0: none), padded, at most
    /// [`Self::n_kv`]`(i1)`. With M = 0 a row early in its block reads its block so far, not the
    /// last block's masked slots behind it (from 512 slots ggml splits them: [`KV_PAD_CPU`]).
    pub fn attn_len(&self, i0: i64, i1: i64, t: i64, n_swa: i64) -> usize {
        let swa_lo = if n_swa > 0 { i0 - n_swa + 1 } else { i64::MAX };
        let lo = match self.windowed {
            true => self.window_start(t).min(swa_lo),
            false => EMPTY + 1,
        };
        let ring = self.ring_base()..self.ring_base() + self.ring_len;
        let seen = |s: &usize| (lo..i1).contains(&self.slot_pos[*s]); // EMPTY is below any lo
        let end = ring.clone().rev().find(seen).map_or(ring.start, |s| s + 1);
        end.next_multiple_of(self.attn_pad).min(self.n_kv(i1))
    }
    /// Pad attention lengths to `pad` slots (a divisor of [`KV_PAD`]) instead of [`KV_PAD`].
    pub fn set_attention_pad(&mut self, pad: usize) {
        debug_assert!(pad > 0 && KV_PAD % pad == 0);
        self.attn_pad = pad;
    }
    /// Stream index each slot holds (`i64::MIN`: none), for snapshots.
    pub fn positions(&self) -> &[i64] {
        &self.slot_pos
    }
    pub fn set_positions(&mut self, p: &[i64]) -> Result<()> {
        if p.len() != self.slot_pos.len() {
            return Err(Error::Internal("slot positions of another layout".into()));
        }
        self.slot_pos.copy_from_slice(p);
        Ok(())
    }
    /// Forget every placed token (and the band).
    pub fn clear(&mut self) {
        self.slot_pos.fill(EMPTY);
        self.band = None;
    }

    /// Read rows `band.from .. band.to` with a band (see [`PrefillBand`]); `None` ends it.
    pub fn set_band(&mut self, band: Option<PrefillBand>) {
        self.band = band;
    }

    /// Whether token row `i` (in block t) may attend to `slot`, with `n_past` tokens placed
    /// before this batch and a FAM that exists (`fam_valid`) or not.
    pub fn visible(&self, i: i64, t: i64, slot: usize, n_past: u64, fam_valid: bool) -> bool {
        if slot < self.n_sink {
            // A sink token is shown here only once it has left the window (else it is in the ring).
            let k = slot as i64;
            k < n_past as i64 && k <= i && self.block_of(k) < t - self.m
        } else if slot < self.fam_base() {
            // A kept token: shown once it has left the window (it is kept only then).
            let j = self.slot_pos[slot];
            j != EMPTY && j <= i && self.block_of(j) < t - self.m
        } else if slot < self.ring_base() {
            fam_valid
        } else if slot >= self.scratch_base() {
            false // reread scratch and padding
        } else {
            let j = self.slot_pos[slot];
            j != EMPTY
                && j <= i
                && (!self.windowed || self.block_of(j) >= t - self.m)
                && self
                    .band
                    .is_none_or(|b| i < b.from || i >= b.to || j < b.from || i - j < b.width)
        }
    }

    /// Whether token row `i` of a local sliding-window layer may attend to `slot`: the `n_swa`
    /// latest tokens, itself included, whatever the policy (llama.cpp's
    /// `LLAMA_SWA_TYPE_STANDARD`).
    pub fn visible_swa(&self, i: i64, slot: usize, n_swa: i64) -> bool {
        if slot < self.ring_base() || slot >= self.scratch_base() {
            return false;
        }
        let j = self.slot_pos[slot];
        j != EMPTY && j <= i && i - j < n_swa
    }

    /// The mask of token row `i` (a stream index, in block t) over slots [0, row.len()),
    /// written into `row` (see [`fill_row`]). Rows are made one at a time, straight into the
    /// graph's input (`engine::Mask::Rows`), not as a batch x n_kv buffer.
    pub fn mask_row(&self, i: i64, t: i64, n_past: u64, fam_valid: bool, row: &mut [f16]) {
        fill_row(row, |s| self.visible(i, t, s, n_past, fam_valid));
        if fam_valid && self.fam_bias != f16::ZERO {
            let fam = self.fam_base()..(self.fam_base() + self.n_fam).min(row.len());
            row[fam].fill(self.fam_bias); // the FAM's slots, all visible once it exists
        }
    }

    /// Bias token rows' attention logits at the FAM's slots by `b` (see [`Self::mask_row`]).
    pub fn set_fam_bias(&mut self, b: f32) {
        self.fam_bias = f16::from_f32(b);
    }

    /// [`Self::mask_row`] for the local sliding-window layers.
    pub fn mask_swa_row(&self, i: i64, n_swa: i64, row: &mut [f16]) {
        fill_row(row, |s| self.visible_swa(i, s, n_swa))
    }

    /// What the F rows computing the next FAM may see after block t: the current FAM (if
    /// `with_fam`), every token of block t, and (`reread` scratch slots) the earlier rows; not
    /// the sinks or kept tokens (the update a FAM is trained with reads the block alone).
    pub fn fam_rows_mask(&self, t: i64, n_kv: usize, with_fam: bool) -> Vec<f16> {
        let scratch = self.scratch_base();
        mask_of(0..self.n_fam as i64, n_kv, |r, s| {
            if s < self.fam_base() {
                false
            } else if s < self.ring_base() {
                with_fam
            } else if s < scratch {
                let j = self.slot_pos[s];
                j != EMPTY && self.block_of(j) == t
            } else if s < scratch + self.n_scratch() {
                (s - scratch) as i64 <= r
            } else {
                false // padding
            }
        })
    }
}

/// One mask row: 0 where `visible(slot)`, -inf elsewhere.
pub fn fill_row(row: &mut [f16], visible: impl Fn(usize) -> bool) {
    for (s, m) in row.iter_mut().enumerate() {
        *m = if visible(s) {
            f16::ZERO
        } else {
            f16::NEG_INFINITY
        };
    }
}

/// Row-major [rows][n_kv] f16 mask: 0 where `visible(row, slot)`, -inf elsewhere.
fn mask_of(
    rows: std::ops::Range<i64>,
    n_kv: usize,
    visible: impl Fn(i64, usize) -> bool,
) -> Vec<f16> {
    let mut mask = vec![f16::NEG_INFINITY; (rows.end - rows.start) as usize * n_kv];
    for (row, i) in mask.chunks_mut(n_kv.max(1)).zip(rows) {
        fill_row(row, |s| visible(i, s));
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(policy: MemoryPolicy, b: u32, m: u32, f: u32, s: u32) -> FamSettings {
        FamSettings {
            policy,
            block_size: b,
            mem_blocks: m,
            fam_len: f,
            sinks: s,
            ..FamSettings::default()
        }
    }

    /// Place stream indices 0..n, one by one.
    fn fed(mut l: SlotLayout, n: i64) -> SlotLayout {
        for i in 0..n {
            l.place(i);
        }
        l
    }

    /// Stream indices row `i` of block t sees in the ring.
    fn seen(l: &SlotLayout, i: i64, t: i64, n_past: u64) -> Vec<i64> {
        let mut v: Vec<i64> = (0..l.n_slots())
            .filter(|&s| s >= l.ring_base() && l.visible(i, t, s, n_past, false))
            .map(|s| l.positions()[s])
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn bswa_sees_its_block_and_m_blocks_before() {
        // B = 4, M = 1: row 13 (block 3) sees blocks 2 and 3 up to itself: 8..=13.
        let l = fed(
            SlotLayout::new(&settings(MemoryPolicy::Bswa, 4, 1, 0, 0), 0, 0).unwrap(),
            14,
        );
        assert_eq!(l.n_slots(), KV_PAD);
        assert_eq!(seen(&l, 13, 3, 14), (8..=13).collect::<Vec<_>>());
        // The ring is 8 slots: index 13 overwrote index 5.
        assert_eq!(l.ring_slot(13), l.ring_slot(5));
    }

    #[test]
    fn a_prefill_band_narrows_its_rows_only() {
        // Sink policy, B = 16, M = 3: a 64-token window holds the whole 40-token prompt.
        let mut l = fed(
            SlotLayout::new(&settings(MemoryPolicy::Sink, 16, 3, 0, 4), 0, 0).unwrap(),
            40,
        );
        let before: Vec<Vec<i64>> = (0..40).map(|i| seen(&l, i, i / 16, 40)).collect();
        // Rows 10..30 are the chunk, read in a band of 5.
        l.set_band(Some(PrefillBand {
            from: 10,
            to: 30,
            width: 5,
        }));
        for i in 0..40 {
            let want: Vec<i64> = if (10..30).contains(&i) {
                // the prefix 0..10 and the band's 5 latest chunk rows, itself included
                (0..10).chain((i - 4).max(10)..=i).collect()
            } else {
                (0..=i).collect() // before the chunk, and the request after it: everything
            };
            assert_eq!(seen(&l, i, i / 16, 40), want, "row {i}");
        }
        assert_eq!(seen(&l, 39, 2, 40), before[39]);
        // A reset (a new stream) ends the band.
        l.clear();
        let l = fed(l, 40);
        assert_eq!(seen(&l, 20, 1, 40), before[20]);
    }

    #[test]
    fn full_attention_sees_everything_before() {
        let l = fed(
            SlotLayout::new(&settings(MemoryPolicy::Full, 4, 1, 0, 0), 64, 0).unwrap(),
            40,
        );
        assert_eq!(seen(&l, 39, 9, 40), (0..=39).collect::<Vec<_>>());
        assert!(SlotLayout::new(&settings(MemoryPolicy::Full, 4, 1, 0, 0), 0, 0).is_err());
    }

    #[test]
    fn sinks_show_once_they_left_the_window() {
        let l = fed(
            SlotLayout::new(&settings(MemoryPolicy::Sink, 4, 1, 0, 2), 0, 0).unwrap(),
            24,
        );
        let sinks_seen = |i: i64, t: i64, n_past: u64| -> Vec<usize> {
            (0..2)
                .filter(|&s| l.visible(i, t, s, n_past, false))
                .collect()
        };
        assert!(sinks_seen(5, 1, 6).is_empty()); // still in the window (block 0)
        assert_eq!(sinks_seen(23, 5, 24), vec![0, 1]);
    }

    #[test]
    fn a_fam_bias_goes_to_the_fam_slots_of_token_rows_only() {
        let mut l = fed(
            SlotLayout::new(&settings(MemoryPolicy::Fam, 4, 1, 2, 0), 0, 0).unwrap(),
            8,
        );
        let plain = |l: &SlotLayout, fam_valid| {
            let mut row = vec![f16::ZERO; KV_PAD];
            l.mask_row(8, 2, 8, fam_valid, &mut row);
            row
        };
        let before = plain(&l, true);
        l.set_fam_bias(-3.0);
        let after = plain(&l, true);
        for s in 0..KV_PAD {
            let want = if s < 2 {
                f16::from_f32(-3.0)
            } else {
                before[s]
            };
            assert_eq!(after[s], want, "slot {s}");
        }
        // no FAM yet: its slots stay hidden; the FAM rows' own mask is not biased
        assert!(plain(&l, false)[..2]
            .iter()
            .all(|m| *m == f16::NEG_INFINITY));
        assert!(l.fam_rows_mask(1, KV_PAD, true)[..2]
            .iter()
            .all(|m| *m == f16::ZERO));
    }

    #[test]
    fn fam_slots_are_seen_only_once_the_fam_exists() {
        let l = SlotLayout::new(&settings(MemoryPolicy::Fam, 4, 1, 2, 0), 0, 0).unwrap();
        assert_eq!(l.fam_slots(), vec![0, 1]);
        assert!(!l.visible(0, 0, 0, 0, false) && l.visible(0, 0, 0, 0, true));
        // the rows computing the next FAM see the old FAM and the block just finished
        let l = fed(l, 8);
        let m = l.fam_rows_mask(1, KV_PAD, true);
        let row0: Vec<usize> = (0..KV_PAD).filter(|&s| m[s] == f16::ZERO).collect();
        let block1: Vec<usize> = (4..8).map(|i| l.ring_slot(i)).collect();
        assert_eq!(row0, [vec![0, 1], block1].concat());
    }

    #[test]
    fn local_layers_keep_their_window_when_the_ring_is_shorter() {
        // B = 4, M = 0 would keep 4 slots; a local window of 10 needs 13, rounded to 16.
        let l = SlotLayout::new(&settings(MemoryPolicy::Bswa, 4, 0, 0, 0), 0, 10).unwrap();
        assert_eq!(l.scratch_base() - l.ring_base(), 16);
        let l = fed(l, 40);
        let local: Vec<i64> = (0..l.n_slots())
            .filter(|&s| l.visible_swa(39, s, 10))
            .map(|s| l.positions()[s])
            .collect();
        let mut local = local;
        local.sort_unstable();
        assert_eq!(local, (30..=39).collect::<Vec<_>>());
        // the global layers still see only the current block
        assert_eq!(seen(&l, 39, 9, 40), (36..=39).collect::<Vec<_>>());
    }

    #[test]
    fn kept_tokens_show_once_they_left_the_window() {
        // B = 4, M = 0, S = 1, F = 2: [sink | kept, kept | ring of 4]
        let mut l = fed(
            SlotLayout::new(&settings(MemoryPolicy::Keep, 4, 0, 2, 1), 0, 0).unwrap(),
            8,
        );
        assert_eq!((l.n_pinned(), l.ring_base()), (3, 3));
        assert_eq!(l.kept(0), None);
        l.keep_at(1, Some(2));
        assert_eq!(l.kept(1), Some(2));
        let shown = |l: &SlotLayout, i: i64, t: i64| -> Vec<usize> {
            (1..3)
                .filter(|&s| l.visible(i, t, s, i as u64, false))
                .collect()
        };
        assert_eq!(shown(&l, 5, 1), vec![2]); // index 2 (block 0) left with block 1
        assert!(shown(&l, 2, 0).is_empty()); // not to rows of its own block
        l.keep_at(1, None);
        assert!(shown(&l, 5, 1).is_empty());
        // other policies have no kept slots, whatever keep_len says (it is the FAM's)
        let sink = FamSettings {
            keep_len: 8,
            ..settings(MemoryPolicy::Sink, 4, 0, 2, 1)
        };
        let s = SlotLayout::new(&sink, 0, 0).unwrap();
        assert_eq!((s.n_keep(), s.ring_base()), (0, 1));
        let keep = FamSettings {
            keep_len: 8,
            ..settings(MemoryPolicy::Keep, 4, 0, 2, 1)
        };
        assert_eq!(SlotLayout::new(&keep, 0, 0).unwrap().n_keep(), 2);
    }

    #[test]
    fn kept_tokens_next_to_a_fam_go_between_the_sinks_and_the_fam() {
        // B = 4, M = 0, S = 1, F = 2, keep_len = 3: [sink | kept x3 | FAM x2 | ring of 4]
        let s = FamSettings {
            keep_len: 3,
            ..settings(MemoryPolicy::Fam, 4, 0, 2, 1)
        };
        let mut l = fed(SlotLayout::new(&s, 0, 0).unwrap(), 8);
        assert_eq!((l.n_pinned(), l.fam_base(), l.ring_base()), (4, 4, 6));
        assert_eq!(l.fam_slots(), vec![4, 5]);
        l.keep_at(2, Some(1));
        // a row of block 1 sees the sink (index 0 left the window), the kept index 1, the FAM
        // and its own block so far
        let row: Vec<usize> = (0..l.n_slots())
            .filter(|&s| l.visible(5, 1, s, 5, true))
            .collect();
        let ring = |i: i64| l.ring_slot(i);
        assert_eq!(row, vec![0, 3, 4, 5, ring(4), ring(5)]);
        // the FAM update reads the old FAM and the block, never a sink or a kept token
        let n_kv = l.n_kv(8);
        let mask = l.fam_rows_mask(1, n_kv, true);
        let seen: Vec<usize> = (0..n_kv).filter(|&s| mask[s] == f16::ZERO).collect();
        assert_eq!(seen, vec![4, 5, ring(4), ring(5), ring(6), ring(7)]);
        // the FAM's learned bias lands on the FAM's slots, not the kept ones
        l.set_fam_bias(2.0);
        let mut m = vec![f16::ZERO; n_kv];
        l.mask_row(5, 1, 5, true, &mut m);
        assert_eq!(
            (m[3], m[4], m[5]),
            (f16::ZERO, f16::from_f32(2.0), f16::from_f32(2.0))
        );
    }

    #[test]
    fn attention_lengths_are_padded() {
        let l = SlotLayout::new(&settings(MemoryPolicy::Full, 4, 1, 0, 0), 1000, 0).unwrap();
        assert_eq!(l.n_slots(), 1024);
        assert_eq!(l.n_kv(1), KV_PAD);
        assert_eq!(l.n_kv(300), 2 * KV_PAD);
        // the CPU's finer pad: shorter attention, the same store
        let mut l = l;
        l.set_attention_pad(KV_PAD_CPU);
        assert_eq!(l.n_slots(), 1024);
        assert_eq!(l.n_kv(1), KV_PAD_CPU);
        assert_eq!(l.n_kv(300), 300usize.next_multiple_of(KV_PAD_CPU));
        assert_eq!(l.n_kv(5000), 1024);
        // sink at B = 256, M = 0: 4 sinks and a 256-token ring in 288 slots, not 512
        let mut s = SlotLayout::new(&settings(MemoryPolicy::Sink, 256, 0, 0, 4), 0, 0).unwrap();
        assert_eq!(s.n_kv(256), 512);
        s.set_attention_pad(KV_PAD_CPU);
        assert_eq!(s.n_kv(256), 288);
    }

    #[test]
    fn attention_lengths_hold_every_visible_slot() {
        // sink, B = 256, M = 0: rows 256-299 read 4 sinks + 44 tokens (64 slots), not all 288
        let mut s = SlotLayout::new(&settings(MemoryPolicy::Sink, 256, 0, 0, 4), 0, 0).unwrap();
        s.set_attention_pad(KV_PAD_CPU);
        assert_eq!(fed(s, 300).attn_len(256, 300, 1, 0), 64);
        // every slot a row may see is inside its length: M = 0, M > 0 (the ring wraps), a local
        // window wider than the block (Gemma 3), no window
        for (set, n_ctx, n_swa) in [
            (settings(MemoryPolicy::Sink, 8, 0, 0, 2), 0, 0),
            (settings(MemoryPolicy::Fam, 8, 2, 2, 1), 0, 0),
            (settings(MemoryPolicy::Bswa, 8, 0, 0, 0), 0, 20),
            (settings(MemoryPolicy::Full, 8, 0, 0, 0), 64, 0),
        ] {
            let mut l = SlotLayout::new(&set, n_ctx, n_swa).unwrap();
            l.set_attention_pad(4);
            for i in 0..60i64 {
                l.place(i);
                let t = l.block_of(i);
                let len = l.attn_len(i, i + 1, t, n_swa as i64);
                assert!(len <= l.n_kv(i + 1), "{set:?} row {i}");
                for slot in len..l.n_slots() {
                    let swa = n_swa > 0 && l.visible_swa(i, slot, n_swa as i64);
                    assert!(
                        !l.visible(i, t, slot, i as u64 + 1, true) && !swa,
                        "{:?} row {i}: slot {slot} visible beyond length {len}",
                        set.policy
                    );
                }
            }
        }
    }
}

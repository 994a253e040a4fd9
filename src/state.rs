//! `FamState`: everything one token stream needs besides the shared model, allocated once with a
//! size that never changes, whatever the stream's length.
//!
//! ## Slots
//! Per layer K and V in f16, laid out by [`SlotLayout`] (sinks, FAM, ring, scratch, padding),
//! which also decides what each row may see: the graph gets that as an attention mask.
//!
//! ## Positions
//! K is stored rotated by RoPE. Positions given to ggml are relative to an *origin* (a stream
//! index), so they stay small for any stream length: when the window start has moved
//! [`REBASE_INTERVAL`] past the origin, stored keys are rotated back by the difference (a
//! "K-shift") and the origin moves. Attention only depends on relative positions, so this changes
//! nothing but float rounding, and f32 RoPE angles stay exact to ~1e-3 rad at any stream length.
//!
//! ## FAM (fam.md §2-5)
//! Per layer F rows of residual-stream activations (f32) plus their K/V in the FAM slots, owned
//! by `FamMemory` ([`crate::fam_memory`]) with its initialisations and feedback rules. Token
//! rows see the FAM of the previous block. When a block completes, one graph updates every
//! layer's FAM from its old FAM and the block's K/V ([`crate::forward::build_fam_graph`]).
//! Attention sinks (`sink`) keep their un-rotated keys and are shown at virtual positions just
//! before the window (StreamingLLM: positions within the cache, not in the text).
//!
//! ## Kept tokens (`keep`, and `fam` with `keep_len`)
//! Like sinks, plus F slots for the most salient tokens that left the window ([`Salience`]):
//! when a block is about to leave, [`crate::forward::build_keep_graph`] rotates the winners'
//! keys back to position 0 into the sink store and copies their values; they are then shown,
//! in stream order, at the F positions just before the current block (sinks before them), so
//! with M memory blocks they share positions with the window's older rows: a kept fact looks
//! as near as the last finished block, not M blocks further away (at the default window that
//! took recall of kept facts from 1 of 8 to 6 of 8; results/README.md). The token graph
//! rotates the pinned keys to those positions in the cache when they move or change (once per
//! block; `pinned_rotated`), not at every decoded token. A FAM with `keep_len` K keeps K
//! tokens the same way next to its F rows: the token rows see both, the FAM update neither.

use crate::dtype::GgmlType;
use crate::engine::{Engine, KeepEntry, Mask, TokenBatch};
use crate::error::{Error, Result};
use crate::fam_memory::FamMemory;
use crate::ggml::{Backend, TensorSet};
use crate::keep::{surprisal, Salience, SALIENCE_RADIUS};
use crate::kv::KvStore;
use crate::model::Model;
use crate::settings::{FamSettings, MemoryPolicy};
use crate::slots::{PrefillBand, SlotLayout};
use half::f16;

pub use crate::slots::KV_PAD;
/// Stored keys are re-based when the window start is this far past the RoPE origin. Positions
/// handed to ggml then stay below REBASE_INTERVAL + window, where f32 angles (pos * theta) are
/// accurate to ~1e-3 rad, like llama.cpp's at 8-16k contexts.
pub const REBASE_INTERVAL: i64 = 8192;
/// Most token rows per graph during prefill.
pub const MAX_BATCH: usize = 512;
pub use crate::fam_memory::LEARNED_FAM_TENSOR;
/// The fixed text of the `seed` FAM initialisation (after BOS, repeated to F tokens).
pub const SEED_TEXT: &str =
    "The following is a long document. Remember the names, numbers, places and \
decisions in it, from the beginning to the end.";

/// Which logits a feed returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Logits {
    /// None (pure ingestion).
    None,
    /// The last token's.
    Last,
    /// Every token's.
    All,
}

/// The per-stream state. Create with [`FamState::new`]; feed with [`FamState::feed`].
pub struct FamState {
    pub settings: FamSettings,
    /// Context limit of the `full` policy (0 otherwise).
    pub(crate) n_ctx: usize,
    pub(crate) n_layer: usize,
    pub(crate) n_embd: usize,
    pub(crate) kv: KvStore,
    /// The FAM (`fam` policy with F > 0).
    pub(crate) fam: Option<FamMemory>,
    /// Per layer f16 [n_embd_kv, S + kept] un-rotated keys of the sinks and the kept tokens.
    pub(crate) sinks: Option<TensorSet>,
    /// Salience scores (`keep` policy).
    pub(crate) salience: Option<Salience>,
    /// Where rows live and what each may see.
    pub(crate) slots: SlotLayout,
    /// Tokens fed so far (the stream index of the next token).
    pub(crate) n_past: u64,
    /// Absolute position of stream index 0.
    pub(crate) start_position: i64,
    /// Absolute position that RoPE position 0 stands for.
    pub(crate) origin: i64,
    /// Whether the stream was started (the initial FAM computed, lazily, at the first feed).
    pub(crate) initialised: bool,
    /// The engine whose compute buffer was reserved for this stream's graphs (see `reserve`).
    pub(crate) reserved_for: Option<u64>,
    /// The (position, KV slot) of each pinned row (sinks, kept tokens) whose key the cache holds
    /// rotated: a batch re-rotates them only when they move (a new block, a RoPE rebase) or the
    /// kept tokens change, not at every decoded token. None: rotate at the next batch.
    pub(crate) pinned_rotated: Option<Vec<(i32, i64)>>,
    /// Time spent at block ends since the state was made (see [`FamState::block_end_time`]).
    pub(crate) block_end_time: std::time::Duration,
}

impl FamState {
    /// A state for `settings` (and `n_ctx` for the `full` policy). `seed_tokens`/`bos` are used
    /// by the `seed`/`bos` FAM initialisations (see [`FamState::seed_tokens_for`]).
    pub fn new(
        model: &Model,
        backend: &Backend,
        settings: FamSettings,
        n_ctx: usize,
        seed_tokens: Vec<u32>,
        bos: u32,
    ) -> Result<FamState> {
        settings.validate()?;
        let hp = &model.hp;
        let mut slots = SlotLayout::new(&settings, n_ctx, hp.n_swa)?;
        slots.set_fam_bias(model.adapter().map_or(0.0, |a| a.file.fam_attn_bias));
        if backend.is_cpu() {
            slots.set_attention_pad(crate::slots::KV_PAD_CPU);
        }
        let fam = FamMemory::new(model, backend, &settings, &slots, seed_tokens, bos)?;
        let kv = KvStore::new(hp, slots.n_slots(), backend)?;
        // One [row width, rows] tensor per layer, or nothing when the policy has no such rows.
        let per_layer =
            |name: &str, ty: GgmlType, width: usize, rows: usize| -> Result<Option<TensorSet>> {
                if rows == 0 {
                    return Ok(None);
                }
                let mut set = TensorSet::new(hp.n_layer)?;
                for il in 0..hp.n_layer {
                    set.add(&format!("{name}_l{il}"), ty, &[width as i64, rows as i64]);
                }
                set.alloc_all(backend)?;
                Ok(Some(set))
            };
        let n_pinned = slots.n_pinned();
        let sinks = per_layer(
            "sink_k",
            GgmlType::F16,
            hp.n_head_kv * hp.head_dim,
            n_pinned,
        )?;
        let salience = (slots.n_keep() > 0).then(|| {
            Salience::new(
                slots.ring_len(),
                slots.n_keep(),
                hp.n_vocab,
                SALIENCE_RADIUS,
            )
        });
        Ok(FamState {
            settings,
            n_ctx: if settings.policy == MemoryPolicy::Full {
                n_ctx
            } else {
                0
            },
            n_layer: hp.n_layer,
            n_embd: hp.n_embd,
            kv,
            fam,
            sinks,
            salience,
            slots,
            n_past: 0,
            start_position: 0,
            origin: 0,
            initialised: false,
            reserved_for: None,
            pinned_rotated: None,
            block_end_time: std::time::Duration::ZERO,
        })
    }

    /// The `seed` initialisation's tokens: BOS then the seed text's tokens, cycled to F.
    pub fn seed_tokens_for(tokenizer: &crate::tokenizer::Tokenizer, f: usize) -> (Vec<u32>, u32) {
        let bos = tokenizer.bos().or(tokenizer.eos()).unwrap_or(0);
        let text = tokenizer.encode(SEED_TEXT, false, false);
        let mut v = vec![bos];
        while v.len() < f && !text.is_empty() {
            v.extend(text.iter().take(f - v.len()));
        }
        v.truncate(f);
        (v, bos)
    }

    /// Plain causal attention over up to `n_ctx` tokens.
    pub fn full(model: &Model, backend: &Backend, n_ctx: usize) -> Result<FamState> {
        let s = FamSettings {
            policy: MemoryPolicy::Full,
            ..FamSettings::default()
        };
        FamState::new(model, backend, s, n_ctx, Vec::new(), 0)
    }

    /// Start the stream at absolute position `p` (before the first token). Only relative
    /// positions matter to attention, so this must not change any result; it exists to check
    /// exactly that.
    pub fn set_start_position(&mut self, p: i64) -> Result<()> {
        if self.n_past != 0 {
            return Err(Error::Invalid(
                "the start position is set before the first token".into(),
            ));
        }
        self.start_position = p;
        Ok(())
    }

    pub fn n_past(&self) -> u64 {
        self.n_past
    }
    /// Absolute position of the stream's first token (0 unless set).
    pub fn start_position(&self) -> i64 {
        self.start_position
    }
    /// Tokens the `full` policy can hold (0 for windowed policies: unlimited).
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    /// Bytes of device memory this state holds (constant for its whole life).
    pub fn state_bytes(&self) -> usize {
        self.kv.bytes()
            + self.fam.as_ref().map_or(0, |f| f.buffer_bytes())
            + self.sinks.as_ref().map_or(0, |s| s.buffer_bytes())
    }
    /// RMS of each layer's FAM activations (diagnostics: how the working memory evolves).
    pub fn fam_rms(&self) -> Result<Vec<f32>> {
        self.fam.as_ref().map_or(Ok(Vec::new()), |f| f.rms())
    }

    /// Bytes of host bookkeeping (constant too).
    pub fn host_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + 8 * self.slots.n_slots()
            + self.fam.as_ref().map_or(0, |f| f.host_bytes())
            + self.salience.as_ref().map_or(0, |s| s.n_bytes())
    }

    /// Forget the stream: the next token is stream index 0 again.
    /// Read the prompt rows `band.from .. band.to` with a band (see [`PrefillBand`]) until
    /// `None` or [`Self::reset`].
    pub fn set_prefill_band(&mut self, band: Option<PrefillBand>) {
        self.slots.set_band(band);
    }

    pub fn reset(&mut self) {
        self.slots.clear();
        self.n_past = 0;
        self.origin = 0;
        if let Some(f) = &mut self.fam {
            f.reset();
        }
        self.initialised = false;
        self.pinned_rotated = None;
        if let Some(s) = &mut self.salience {
            s.clear();
        }
    }

    fn b(&self) -> i64 {
        self.settings.block_size as i64
    }
    fn windowed(&self) -> bool {
        self.settings.policy != MemoryPolicy::Full
    }
    /// RoPE position handed to ggml for stream index `i`.
    fn rope_pos(&self, i: i64) -> Result<i32> {
        rope_pos(self.start_position, self.origin, i)
    }

    /// Whether a FAM exists that token rows see.
    pub(crate) fn fam_valid(&self) -> bool {
        self.fam.as_ref().is_some_and(|f| f.valid)
    }
    fn sink_tensors(&self) -> Option<Vec<crate::ggml::Tensor<'_>>> {
        self.sinks
            .as_ref()
            .map(|s| (0..self.n_layer).map(|i| s.get(i)).collect())
    }

    /// Size the engine's compute buffer for the largest graphs this stream will run (a full
    /// batch over all slots, with its sink and capture rows; the FAM update; the K-shift),
    /// before its first graph, so the buffer never grows between computes. That is llama.cpp's
    /// practice too (it reserves the worst-case graph up front), and it is required on ggml's
    /// Vulkan backend: there a compute buffer that grows after a graph has run (a short batch,
    /// then a longer one) corrupted host memory on lavapipe, in roughly half of the runs
    /// (tests/backend_vulkan.rs `growing_batches_on_vulkan`).
    fn reserve(&self, eng: &mut Engine) -> Result<()> {
        let mut n = MAX_BATCH;
        if self.windowed() {
            n = n.min(self.b() as usize);
        }
        let n = n.max(self.slots.n_fam()).max(1);
        // Every row's logits (perplexity, `Logits::All`) need a batch x vocabulary buffer
        // (200 MB at B = 1024): reserved on devices where growing later is unsafe; the CPU
        // reserves for the common case (logits of the last row) and grows if asked for more.
        // (`keep` scores every row from chunks of 64 rows' logits: see forward::SURPRISAL_CHUNK.)
        let all_logits = !eng.backend().is_cpu();
        let shape = crate::forward::TokenBatchShape {
            n_tokens: n,
            n_kv: self.kv.n_slots(),
            n_out: if all_logits { None } else { Some(1) },
            n_capture: self.slots.n_fam().min(n),
            n_sink_capture: self.slots.n_sink().min(n),
            n_sink_rotate: self.slots.n_pinned(),
            swa_mask: eng.model.hp.n_swa > 0,
            kept_heads: self.kept_slots(eng).is_some(),
            n_surprisal: if self.salience.is_some() { n - 1 } else { 0 },
        };
        let sinks = self.sink_tensors();
        eng.reserve_tokens(&self.kv, sinks.as_deref(), shape)?;
        if let Some(f) = &self.fam {
            let init = f.init_tensors();
            eng.reserve_fam(&self.kv, &f.tensors(), init.as_deref(), self.kv.n_slots())?;
        }
        if let (Some(sinks), true) = (&sinks, self.slots.n_keep() > 0) {
            eng.reserve_keep(&self.kv, sinks, self.slots.n_keep())?;
        }
        if self.windowed() {
            // the RoPE rebase (see `rebase`)
            eng.reserve_kshift(&self.kv, self.slots.n_pinned(), self.kv.n_slots())?;
        }
        Ok(())
    }

    /// Start the stream: the RoPE origin at its start, and the initial FAM (fam.md §5).
    fn initialise(&mut self, eng: &mut Engine) -> Result<()> {
        self.initialised = true;
        self.origin = self.start_position;
        let (start, origin) = (self.start_position, self.origin);
        if let Some(f) = self.fam.as_mut() {
            f.initialise(eng, &self.kv, &self.slots, self.settings.init, &|i| {
                rope_pos(start, origin, i)
            })?;
        }
        Ok(())
    }

    /// Before the first token of block t: move the RoPE origin if the window has run far ahead.
    fn begin_block(&mut self, eng: &mut Engine, t: i64) -> Result<()> {
        let w = self.start_position + self.slots.window_start(t);
        let delta = w - self.origin;
        if self.windowed() && delta >= REBASE_INTERVAL {
            let d = i32::try_from(delta)
                .map_err(|_| Error::Internal("RoPE rebase too large".into()))?;
            eng.run_kshift(&self.kv, self.slots.n_pinned(), self.kv.n_slots(), d)?;
            self.origin = w;
            self.pinned_rotated = None;
        }
        Ok(())
    }

    /// Virtual positions of the pinned rows in block t. `sink`: the S sinks just before the
    /// window. `keep`: the kept tokens, in stream order, take the positions just before the
    /// current block, the sinks the S before them (with M = 0 that is just before the window,
    /// so a stream whose every evicted token is kept sees them all at their own positions:
    /// full attention). Returns (position, KV slot) for each of the S + F pinned rows (empty
    /// kept slots are masked; their position does not matter).
    fn pinned_positions(&self, t: i64) -> Result<Vec<(i32, i64)>> {
        let (n_sink, n_keep) = (self.slots.n_sink(), self.slots.n_keep());
        let mut kept: Vec<(i64, usize)> = (0..n_keep)
            .filter_map(|k| self.slots.kept(k).map(|j| (j, k)))
            .collect();
        kept.sort_unstable();
        let shown_before = if n_keep > 0 {
            t * self.settings.block_size as i64
        } else {
            self.slots.window_start(t)
        };
        let first = shown_before - kept.len() as i64;
        let at = |p: i64| self.rope_pos(p);
        let mut out = vec![(at(first)?, 0i64); n_sink + n_keep];
        for k in 0..n_sink {
            out[k] = (at(first - (n_sink - k) as i64)?, k as i64);
        }
        for k in 0..n_keep {
            out[n_sink + k].1 = (n_sink + k) as i64;
        }
        for (rank, &(_, k)) in kept.iter().enumerate() {
            out[n_sink + k].0 = at(first + rank as i64)?;
        }
        Ok(out)
    }

    /// Wall time this state has spent at block ends since it was made (in this process): the
    /// memory's upkeep, what a windowed stream computes beyond its tokens (the FAM update of
    /// each finished block, `keep`'s selection and copies). `bench` reports its share of decoding.
    pub fn block_end_time(&self) -> std::time::Duration {
        self.block_end_time
    }

    /// The kept slots next to a FAM, when the model shows them to some heads only
    /// ([`crate::kept_heads`]; the `keep` policy's own kept slots are shown to every head).
    fn kept_slots(&self, eng: &Engine) -> Option<std::ops::Range<usize>> {
        let on = self.settings.policy == MemoryPolicy::Fam
            && self.slots.n_keep() > 0
            && eng.model.kept_heads().is_some();
        let from = self.slots.n_sink();
        on.then(|| from..from + self.slots.n_keep())
    }

    /// Stream indices of the kept tokens (`keep`), in stream order.
    pub fn kept_tokens(&self) -> Vec<i64> {
        let mut v: Vec<i64> = (0..self.slots.n_keep())
            .filter_map(|k| self.slots.kept(k))
            .collect();
        v.sort_unstable();
        v
    }

    /// After the last token of block t (`keep`): the tokens of block t - M, which leave the
    /// window with the next block, compete with the kept ones; the winners move to kept slots.
    fn keep_block(&mut self, eng: &mut Engine, t: i64) -> Result<()> {
        let leaving_block = t - self.settings.mem_blocks as i64;
        let Some(sal) = self.salience.as_mut() else {
            return Ok(());
        };
        if leaving_block < 0 {
            return Ok(());
        }
        let b = self.settings.block_size as i64;
        let base = self.slots.ring_base();
        let leaving: Vec<(i64, usize)> = (leaving_block * b..(leaving_block + 1) * b)
            .filter(|&i| i as usize >= self.slots.n_sink()) // sinks stay anyway
            .map(|i| (i, self.slots.ring_slot(i) - base))
            .collect();
        let kept: Vec<Option<i64>> = (0..self.slots.n_keep())
            .map(|k| self.slots.kept(k))
            .collect();
        let new = sal.select(&kept, &leaving);
        if new.is_empty() {
            return Ok(());
        }
        let entries: Vec<KeepEntry> = new
            .iter()
            .map(|&(k, i, o)| {
                Ok(KeepEntry {
                    src: base + o,
                    pos: self.rope_pos(i)?,
                    slot: self.slots.n_sink() + k,
                })
            })
            .collect::<Result<_>>()?;
        let sinks = self
            .sink_tensors()
            .ok_or_else(|| Error::Internal("keep without a sink store".into()))?;
        eng.run_keep(&self.kv, &sinks, &entries)?;
        for &(k, i, _) in &new {
            self.slots.keep_at(k, Some(i));
        }
        self.pinned_rotated = None; // new kept keys: rotate them at the next batch
        Ok(())
    }

    /// After the last token of block t: keep tokens, and make or update the FAM (`fam` with
    /// `keep_len` does both: the kept K/V are copies, the FAM update reads the ring as before).
    /// The time it takes is the memory's upkeep ([`FamState::block_end_time`]).
    fn end_block(&mut self, eng: &mut Engine, t: i64) -> Result<()> {
        if self.fam.is_none() && self.slots.n_keep() == 0 {
            return Ok(()); // `sink`, `bswa`: nothing to upkeep
        }
        let t0 = std::time::Instant::now();
        if self.slots.n_keep() > 0 {
            self.keep_block(eng, t)?;
        }
        let (start, origin) = (self.start_position, self.origin);
        if let Some(f) = self.fam.as_mut() {
            f.end_block(eng, &self.kv, &self.slots, &self.settings, t, &|i| {
                rope_pos(start, origin, i)
            })?;
        }
        self.block_end_time += t0.elapsed();
        Ok(())
    }

    /// Feed tokens; returns the requested logits, row-major [rows][n_vocab].
    pub fn feed(&mut self, eng: &mut Engine, tokens: &[u32], want: Logits) -> Result<Vec<f32>> {
        if !self.windowed() && self.n_past as usize + tokens.len() > self.n_ctx {
            return Err(Error::Invalid(format!(
                "context full: {} tokens already, {} more would exceed the context of {} \
                 (use a windowed memory policy, e.g. --memory fam, for longer streams)",
                self.n_past,
                tokens.len(),
                self.n_ctx
            )));
        }
        // Once per engine, not only on the first feed: a state loaded from a snapshot, or fed by
        // another engine, reserves there too.
        if self.reserved_for != Some(eng.id()) {
            self.reserve(eng)?;
            self.reserved_for = Some(eng.id());
        }
        if !self.initialised {
            self.initialise(eng)?;
        }
        let mut out = Vec::new();
        let mut k = 0;
        while k < tokens.len() {
            let i0 = self.n_past as i64;
            let t = self.slots.block_of(i0);
            let in_block = (i0 - t * self.b()) as usize;
            if self.windowed() && in_block == 0 {
                self.begin_block(eng, t)?;
            }
            let mut n = (tokens.len() - k).min(MAX_BATCH);
            if self.windowed() {
                n = n.min(self.b() as usize - in_block);
            }
            let chunk = &tokens[k..k + n];
            let last_chunk = k + n == tokens.len();
            let rows = i0..i0 + n as i64;
            // Record where the new tokens go before building the mask (they see themselves).
            let slots: Vec<i64> = rows.clone().map(|i| self.slots.place(i) as i64).collect();
            // Only as far as the last slot these rows see (SlotLayout::attn_len): while the
            // ring fills, the tokens so far; with M = 0, the block so far. Attention then reads
            // no slot it must skip, and on the CPU its keys stay shared across threads (see
            // slots::KV_PAD_CPU).
            let n_swa = eng.model.hp.n_swa as i64;
            let n_kv = self.slots.attn_len(i0, i0 + n as i64, t, n_swa);
            let pos: Vec<i32> = rows
                .clone()
                .map(|i| self.rope_pos(i))
                .collect::<Result<_>>()?;
            let out_rows: Option<Vec<i32>> = match want {
                Logits::All => None,
                _ => Some(vec![n as i32 - 1]),
            };
            // `keep`: each row's probability of the next token in this chunk.
            let next_of_row: Vec<(i32, u32)> = if self.salience.is_some() {
                (1..n).map(|r| (r as i32 - 1, chunk[r])).collect()
            } else {
                Vec::new()
            };
            // Tail init: keep the layer inputs of block 0's last F rows.
            let tail = self.fam.as_ref().is_some_and(|f| !f.valid) && t == 0;
            let tail_from = self.b() - self.slots.n_fam() as i64;
            let capture: Vec<i32> = if tail {
                rows.clone()
                    .filter(|&i| i >= tail_from)
                    .map(|i| (i - i0) as i32)
                    .collect()
            } else {
                Vec::new()
            };
            // Sinks: capture the first S tokens; show them before the window once they left it.
            let sink_capture: Vec<(i32, i64, i64)> = rows
                .clone()
                .filter(|&i| (i as usize) < self.slots.n_sink())
                .map(|i| ((i - i0) as i32, i, i))
                .collect();
            let m = self.settings.mem_blocks as i64;
            let pinned: Option<Vec<(i32, i64)>> = if self.slots.n_pinned() > 0 && t - m > 0 {
                Some(self.pinned_positions(t)?)
            } else {
                None
            };
            let sink_rotate = match &pinned {
                Some(p) if self.pinned_rotated.as_ref() != Some(p) => p.clone(),
                _ => Vec::new(),
            };
            let sink_store = self.sink_tensors();
            let kept_slots = self.kept_slots(eng);
            let (layout, n_past, fam_valid) = (&self.slots, self.n_past, self.fam_valid());
            let mask = |r: usize, row: &mut [f16]| {
                layout.mask_row(i0 + r as i64, t, n_past, fam_valid, row)
            };
            let mask_swa =
                |r: usize, row: &mut [f16]| layout.mask_swa_row(i0 + r as i64, n_swa, row);
            let r = eng.run_tokens(
                &self.kv,
                sink_store.as_deref(),
                &TokenBatch {
                    tokens: chunk,
                    pos: &pos,
                    slots: &slots,
                    n_kv,
                    mask: Mask::Rows(&mask),
                    mask_swa: (n_swa > 0).then_some(Mask::Rows(&mask_swa)),
                    kept: kept_slots,
                    out_rows: out_rows.as_deref(),
                    capture_rows: &capture,
                    sink_capture: &sink_capture,
                    sink_rotate: &sink_rotate,
                    surprisal: &next_of_row,
                },
            )?;
            self.pinned_rotated = pinned;
            if let Some(sal) = self.salience.as_mut() {
                let base = self.slots.ring_base();
                for (row, &slot) in slots.iter().enumerate() {
                    let score = if row == 0 {
                        sal.score_next(chunk[0])
                    } else {
                        surprisal(r.next_prob[row - 1])
                    };
                    sal.record(slot as usize - base, score);
                }
                let v = eng.model.hp.n_vocab;
                sal.set_next_logits(&r.logits[r.logits.len() - v..])?;
            }
            if let (Some(f), false) = (&self.fam, capture.is_empty()) {
                let first = (i0 + capture[0] as i64 - tail_from) as usize;
                f.write_rows(&r.layer_inputs, first)?;
            }
            self.n_past += n as u64;
            if want == Logits::All || (want == Logits::Last && last_chunk) {
                if out.is_empty() {
                    out = r.logits; // the usual case (one chunk): no second copy
                } else {
                    out.extend_from_slice(&r.logits);
                }
            }
            if self.windowed() && self.n_past as i64 % self.b() == 0 {
                self.end_block(eng, t)?;
            }
            k += n;
        }
        Ok(out)
    }
}

/// RoPE position handed to ggml for stream index `i` of a stream that starts at absolute
/// position `start`, with RoPE position 0 standing for absolute position `origin`.
fn rope_pos(start: i64, origin: i64, i: i64) -> Result<i32> {
    i32::try_from(start + i - origin).map_err(|_| {
        Error::Invalid(format!(
            "position {i} is too far from the RoPE origin {origin}"
        ))
    })
}

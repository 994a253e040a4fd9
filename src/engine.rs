//! Runs graphs: owns the compute backend (with its persistent threadpool) and the graph
//! allocator, and turns host-side batch descriptions into filled ggml inputs and read-back
//! outputs. Per-stream state is passed in; the engine holds none.

use crate::error::{Error, Result};
use crate::forward::{
    build_fam_graph, build_keep_graph, build_kshift_graph, build_kv_copy_graph, build_token_graph,
    graph_size, SinkStore, TokenBatchShape,
};
use crate::forward::{TokenInputs, TokenOutputs};
use crate::ggml::{Allocator, Backend, Context, Graph, Tensor};
use crate::kv::KvStore;
use crate::model::Model;
use half::f16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(0);

/// One batch of token rows, described on the host.
#[derive(Default)]
pub struct TokenBatch<'x> {
    pub tokens: &'x [u32],
    /// RoPE positions, relative to the stream's origin.
    pub pos: &'x [i32],
    /// KV slot each row's K/V is written to.
    pub slots: &'x [i64],
    /// Rows attend over slots [0, n_kv).
    pub n_kv: usize,
    /// [n_tokens][n_kv]: 0 = visible, -inf = hidden.
    pub mask: Mask<'x>,
    /// Like `mask`, for the local sliding-window layers of models that have them; `None`: those
    /// layers use `mask` too (right for batches that see neither FAM nor sinks and span less
    /// than the local window, such as the seed of the FAM initialisation).
    pub mask_swa: Option<Mask<'x>>,
    /// The kept slots (`keep_len`), when the model shows them to some heads only
    /// ([`crate::kept_heads`]): those layers' masks hide these slots where the heads do not
    /// see them. `None`: every layer uses `mask`.
    pub kept: Option<std::ops::Range<usize>>,
    /// Rows whose logits are wanted (`None`: all rows).
    pub out_rows: Option<&'x [i32]>,
    /// Rows whose every layer input is returned.
    pub capture_rows: &'x [i32],
    /// Attention sinks in this batch: (batch row, sink index, KV slot for its V).
    pub sink_capture: &'x [(i32, i64, i64)],
    /// Sinks to re-rotate: (virtual position, KV slot).
    pub sink_rotate: &'x [(i32, i64)],
    /// Rows whose next token's probability is wanted: (row, next token). Needs every row's
    /// logits in the graph (`keep` salience).
    pub surprisal: &'x [(i32, u32)],
}

/// An attention mask of a token batch, [n_tokens][n_kv] (0 = visible, -inf = hidden).
#[derive(Clone, Copy)]
pub enum Mask<'x> {
    /// The whole mask, row-major.
    Dense(&'x [f16]),
    /// A rule that fills row r (`n_kv` values), written into the graph's input one row at a
    /// time: no n_tokens x n_kv buffer on the host (4.5 MB for a 512-token batch in a 4k
    /// window, allocated and freed on every batch, which fragmented a long run's heap).
    Rows(&'x dyn Fn(usize, &mut [f16])),
}

impl Default for Mask<'_> {
    fn default() -> Self {
        Mask::Dense(&[])
    }
}

impl Mask<'_> {
    fn fits(&self, n: usize, n_kv: usize) -> bool {
        match self {
            Mask::Dense(m) => m.len() == n * n_kv,
            Mask::Rows(_) => true,
        }
    }

    fn write(&self, t: Tensor<'_>, n: usize, n_kv: usize) -> Result<()> {
        match self {
            Mask::Dense(m) => t.write_bytes(0, as_bytes(m)),
            Mask::Rows(fill) => {
                let mut row = vec![f16::NEG_INFINITY; n_kv];
                for r in 0..n {
                    fill(r, &mut row);
                    t.write_bytes(r * n_kv * std::mem::size_of::<f16>(), as_bytes(&row))?;
                }
                Ok(())
            }
        }
    }
}

/// The masks of a batch whose kept slots some heads do not see (see [`crate::kept_heads`]):
/// `mask` itself where a layer reads it, `mask` with the `kept` slots hidden, and per head set
/// and head, either `mask`'s row or that one; each row of `mask` is made once.
fn write_kept_masks(
    mask: &Mask<'_>,
    n: usize,
    n_kv: usize,
    kept: std::ops::Range<usize>,
    plan: &crate::kept_heads::KeptHeads,
    inp: &crate::forward::TokenInputs<'_>,
) -> Result<()> {
    let es = std::mem::size_of::<f16>();
    let kept = kept.start.min(n_kv)..kept.end.min(n_kv);
    let mut row = vec![f16::NEG_INFINITY; n_kv];
    let mut hidden = vec![f16::NEG_INFINITY; n_kv];
    let n_head = plan.sets().first().map_or(0, |s| s.len());
    for r in 0..n {
        match mask {
            Mask::Dense(m) => row.copy_from_slice(&m[r * n_kv..(r + 1) * n_kv]),
            Mask::Rows(fill) => fill(r, &mut row),
        }
        // (no layer may read the plain mask, when every layer hides some heads' kept slots)
        if inp.mask.is_allocated() {
            inp.mask.write_bytes(r * n_kv * es, as_bytes(&row))?;
        }
        hidden.copy_from_slice(&row);
        hidden[kept.clone()].fill(f16::NEG_INFINITY);
        if let Some(t) = inp.mask_nokept {
            t.write_bytes(r * n_kv * es, as_bytes(&hidden))?;
        }
        if let Some(t) = inp.mask_heads {
            for (j, set) in plan.sets().iter().enumerate() {
                for (h, &sees) in set.iter().enumerate() {
                    let at = ((j * n_head + h) * n + r) * n_kv * es;
                    t.write_bytes(at, as_bytes(if sees { &row } else { &hidden }))?;
                }
            }
        }
    }
    Ok(())
}

/// What a token batch produced.
pub struct TokenResult {
    /// [n_out][n_vocab] row-major.
    pub logits: Vec<f32>,
    /// Per layer: [n_capture][n_embd] row-major.
    pub layer_inputs: Vec<Vec<f32>>,
    /// The probability of each requested row's next token (`TokenBatch::surprisal` order).
    pub next_prob: Vec<f32>,
}

/// A token about to leave the ring that the `keep` policy keeps.
#[derive(Clone, Copy, Debug)]
pub struct KeepEntry {
    /// The ring slot it is in.
    pub src: usize,
    /// Its RoPE position (relative to the stream's origin).
    pub pos: i32,
    /// The sink-store column for its un-rotated key, which is also the KV slot of its value.
    pub slot: usize,
}

pub use crate::forward::FamUpdate;

/// A FAM graph, described on the host.
pub struct FamBatch<'x> {
    /// `Some` for an update; `None` to only (re)compute the FAM's K/V.
    pub update: Option<FamUpdate<'x>>,
    pub n_kv: usize,
    /// Positions of the (new) FAM rows.
    pub pos: &'x [i32],
    /// KV slots of the FAM.
    pub slots: &'x [i64],
}

pub struct Engine {
    pub model: Arc<Model>,
    backend: Backend,
    alloc: Allocator,
    /// Unique per engine in this process (a stream reserves compute space once per engine).
    id: u64,
    /// The last token graph, kept for the next batch of the same shape on the same store: a
    /// decoded token then builds nothing, and allocates nothing while no other graph ran in
    /// between (llama.cpp reuses its decode graph the same way).
    token_graph: Option<CachedTokenGraph>,
}

/// What a cached token graph was built for: equal keys give identical graphs.
#[derive(PartialEq, Eq)]
struct TokenGraphKey {
    shape: TokenBatchShape,
    kv: u64,
    /// The sink tensors' headers (sink stores live and die with their K/V store).
    sinks: Option<Vec<usize>>,
}

struct CachedTokenGraph {
    key: TokenGraphKey,
    /// The model the graph reads (held, so its address cannot be reused while cached).
    model: Arc<Model>,
    /// The allocator generation at which this graph's tensors were placed.
    placed_at: u64,
    // The handles below point into `ctx`, `model` and the K/V store `key.kv`. They are used
    // only while the key matches, that is while the caller passes that very store (so it is
    // alive), and while the engine still holds that model.
    graph: Graph<'static>,
    inp: TokenInputs<'static>,
    out: TokenOutputs<'static>,
    _ctx: Context,
}

// SAFETY: the cached graph is plain ggml memory owned by (or, for the store and the model,
// borrowed for the duration of each use by) the engine; ggml has no thread affinity.
unsafe impl Send for CachedTokenGraph {}

impl Engine {
    /// An engine for `model` computing on `backend` (the one the model was loaded for).
    pub fn new(model: Arc<Model>, backend: Backend) -> Result<Engine> {
        if backend.name() != model.device() {
            return Err(Error::Invalid(format!(
                "model loaded for device {} but the engine runs on {}",
                model.device(),
                backend.name()
            )));
        }
        let alloc = Allocator::new(&backend)?;
        Ok(Engine {
            model,
            backend,
            alloc,
            id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
            token_graph: None,
        })
    }

    /// This engine's identity, unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Bytes of the compute buffer (graph intermediates), as sized by the largest graph so far.
    pub fn compute_buffer_bytes(&self) -> usize {
        self.alloc.buffer_size()
    }

    fn new_ctx(&self) -> Result<Context> {
        let g = graph_size(self.model.hp.n_layer);
        Context::new_no_alloc(2 * g, g)
    }

    /// Size the compute buffer for a token batch of `shape` on `kv` (and `sinks`), without
    /// computing anything; smaller graphs then fit without the buffer growing (a graph no larger
    /// than the buffer leaves it as it is).
    pub fn reserve_tokens(
        &mut self,
        kv: &KvStore,
        sinks: Option<&[Tensor<'_>]>,
        shape: TokenBatchShape,
    ) -> Result<()> {
        let model = self.model.clone();
        let ctx = self.new_ctx()?;
        let store = sinks.map(|s| SinkStore { k_raw: s.to_vec() });
        let (graph, _, _) = build_token_graph(&ctx, &model, kv, store.as_ref(), shape);
        self.alloc.reserve(&graph)
    }

    /// Size the compute buffer for a FAM update over `n_kv` slots (see [`Self::reserve_tokens`]).
    /// `init`: the initial FAM a decay pulls toward, if the stream has one.
    pub fn reserve_fam(
        &mut self,
        kv: &KvStore,
        fam: &[Tensor<'_>],
        init: Option<&[Tensor<'_>]>,
        n_kv: usize,
    ) -> Result<()> {
        let model = self.model.clone();
        let ctx = self.new_ctx()?;
        // The largest update graph: renorm and decay on (the graph does not read the inputs).
        let update = FamUpdate {
            q_pos: &[],
            mask: &[],
            zero_residual: false,
            renorm: true,
            decay: init.map(|i| (0.5, i)),
        };
        let (graph, _) = build_fam_graph(&ctx, &model, kv, fam, n_kv, Some(&update));
        self.alloc.reserve(&graph)
    }

    /// Size the compute buffer for a K-shift of slots [from, to) (see [`Self::reserve_tokens`]).
    pub fn reserve_kshift(&mut self, kv: &KvStore, from: usize, to: usize) -> Result<()> {
        let model = self.model.clone();
        let ctx = self.new_ctx()?;
        let (graph, _) = build_kshift_graph(&ctx, &model, kv, from, to);
        self.alloc.reserve(&graph)
    }

    /// Size the compute buffer for keeping `n` tokens (see [`Self::reserve_tokens`]).
    pub fn reserve_keep(&mut self, kv: &KvStore, sinks: &[Tensor<'_>], n: usize) -> Result<()> {
        let model = self.model.clone();
        let ctx = self.new_ctx()?;
        let store = SinkStore {
            k_raw: sinks.to_vec(),
        };
        let (graph, _) = build_keep_graph(&ctx, &model, kv, &store, n);
        self.alloc.reserve(&graph)
    }

    /// Keep tokens that are about to leave the ring (`keep` policy): un-rotated keys to the
    /// sink store, values to their kept slots.
    pub fn run_keep(
        &mut self,
        kv: &KvStore,
        sinks: &[Tensor<'_>],
        keep: &[KeepEntry],
    ) -> Result<()> {
        let cols = sinks.first().map_or(0, |t| t.ne()[1] as usize);
        if keep.is_empty()
            || sinks.len() != self.model.hp.n_layer
            || !keep
                .iter()
                .all(|e| e.src < kv.n_slots() && e.slot < cols.min(kv.n_slots()) && e.src != e.slot)
        {
            return Err(Error::Internal("bad keep batch".into()));
        }
        let model = self.model.clone();
        let ctx = self.new_ctx()?;
        let store = SinkStore {
            k_raw: sinks.to_vec(),
        };
        let (graph, inp) = build_keep_graph(&ctx, &model, kv, &store, keep.len());
        self.run(&graph, || {
            let src: Vec<i32> = keep.iter().map(|e| e.src as i32).collect();
            let unpos: Vec<i32> = keep.iter().map(|e| -e.pos).collect();
            let slots: Vec<i64> = keep.iter().map(|e| e.slot as i64).collect();
            inp.src.write_i32(&src)?;
            inp.unpos.write_i32(&unpos)?;
            inp.cols.write_bytes(0, as_bytes(&slots))?;
            inp.dst.write_bytes(0, as_bytes(&slots))
        })
    }

    /// Allocate, let `fill` write the inputs, compute.
    fn run(&mut self, graph: &Graph<'_>, fill: impl FnOnce() -> Result<()>) -> Result<()> {
        self.alloc.alloc_graph(graph)?;
        fill()?;
        self.backend.compute(graph)
    }

    /// Run one batch of tokens through the model.
    pub fn run_tokens(
        &mut self,
        kv: &KvStore,
        sinks: Option<&[Tensor<'_>]>,
        b: &TokenBatch,
    ) -> Result<TokenResult> {
        let n = b.tokens.len();
        let hp = &self.model.hp;
        if n == 0
            || b.pos.len() != n
            || b.slots.len() != n
            || !b.mask.fits(n, b.n_kv)
            || b.mask_swa.is_some_and(|m| !m.fits(n, b.n_kv))
        {
            return Err(Error::Internal(format!(
                "inconsistent batch: {n} tokens, {} positions, {} slots, a mask that is not \
                 {n} x {} (n_kv)",
                b.pos.len(),
                b.slots.len(),
                b.n_kv
            )));
        }
        let in_cache = |s: i64| s >= 0 && (s as usize) < kv.n_slots();
        if b.n_kv > kv.n_slots()
            || !b.slots.iter().all(|&s| in_cache(s))
            || !b.sink_capture.iter().all(|&(_, _, s)| in_cache(s))
            || !b.sink_rotate.iter().all(|&(_, s)| in_cache(s))
        {
            return Err(Error::Internal(format!(
                "batch addresses slots beyond the {} of the cache",
                kv.n_slots()
            )));
        }
        if let Some(&t) = b.tokens.iter().find(|&&t| t as usize >= hp.n_vocab) {
            return Err(Error::Invalid(format!(
                "token id {t} is outside the vocabulary of {}",
                hp.n_vocab
            )));
        }
        let rows_ok = |r: &[i32]| r.iter().all(|&i| i >= 0 && (i as usize) < n);
        if !rows_ok(b.out_rows.unwrap_or(&[]))
            || !rows_ok(b.capture_rows)
            || !b
                .surprisal
                .iter()
                .all(|&(r, t)| r >= 0 && (r as usize) < n && (t as usize) < hp.n_vocab)
            || !b
                .sink_capture
                .iter()
                .all(|c| c.0 >= 0 && (c.0 as usize) < n)
        {
            return Err(Error::Internal("batch row index out of range".into()));
        }
        // The chunked LM head (forward::SURPRISAL_CHUNK) reads row i's target at index i.
        if b.out_rows.is_some()
            && b.surprisal
                .iter()
                .enumerate()
                .any(|(i, &(r, _))| r != i as i32)
        {
            return Err(Error::Internal(
                "next-token rows must be 0, 1, 2, ... in order".into(),
            ));
        }
        if (!b.sink_capture.is_empty() || !b.sink_rotate.is_empty()) && sinks.is_none() {
            return Err(Error::Internal(
                "sink operations without a sink store".into(),
            ));
        }
        let shape = TokenBatchShape {
            n_tokens: n,
            n_kv: b.n_kv,
            n_out: b.out_rows.map(|r| r.len()),
            n_capture: b.capture_rows.len(),
            n_sink_capture: b.sink_capture.len(),
            n_sink_rotate: b.sink_rotate.len(),
            swa_mask: hp.n_swa > 0,
            kept_heads: b.kept.is_some() && self.model.kept_heads().is_some(),
            n_surprisal: b.surprisal.len(),
        };
        let key = TokenGraphKey {
            shape,
            kv: kv.id(),
            sinks: sinks.map(|s| s.iter().map(|t| t.addr()).collect()),
        };
        // Reuse only while nothing else was placed since (allocator generation): ggml's
        // allocator treats tensors that already have data as placed, so a graph cannot be
        // re-placed after the buffer moved (it grows by reallocation); it is rebuilt instead.
        // Between decoded tokens of a block nothing else runs, so decode keeps its graph.
        let reusable = self.token_graph.as_ref().is_some_and(|c| {
            c.key == key
                && Arc::ptr_eq(&c.model, &self.model)
                && c.placed_at == self.alloc.generation()
        });
        if !reusable {
            self.token_graph = None;
            let model = self.model.clone();
            let ctx = self.new_ctx()?;
            let store = sinks.map(|s| SinkStore { k_raw: s.to_vec() });
            let (graph, inp, out) = build_token_graph(&ctx, &model, kv, store.as_ref(), shape);
            // SAFETY: only lifetimes change. The handles point into `ctx` (moved into the cache
            // with them), the model (held by the engine, checked by the key) and `kv` (checked
            // by its unique id on every use); see `CachedTokenGraph`.
            let (graph, inp, out) = unsafe {
                (
                    std::mem::transmute::<Graph<'_>, Graph<'static>>(graph),
                    std::mem::transmute::<TokenInputs<'_>, TokenInputs<'static>>(inp),
                    std::mem::transmute::<TokenOutputs<'_>, TokenOutputs<'static>>(out),
                )
            };
            self.alloc.alloc_graph(&graph)?;
            self.token_graph = Some(CachedTokenGraph {
                key,
                model,
                placed_at: self.alloc.generation(),
                graph,
                inp,
                out,
                _ctx: ctx,
            });
        }
        let c = self.token_graph.as_ref().expect("set above");
        let (inp, out) = (&c.inp, &c.out);
        {
            let tokens: Vec<i32> = b.tokens.iter().map(|&t| t as i32).collect();
            inp.tokens.write_i32(&tokens)?;
            inp.pos.write_i32(b.pos)?;
            inp.slots.write_bytes(0, as_bytes(b.slots))?;
            match (&b.kept, self.model.kept_heads()) {
                (Some(kept), Some(plan)) => {
                    write_kept_masks(&b.mask, n, b.n_kv, kept.clone(), plan, inp)?
                }
                _ => b.mask.write(inp.mask, n, b.n_kv)?,
            }
            if let Some(t) = inp.mask_swa {
                b.mask_swa.unwrap_or(b.mask).write(t, n, b.n_kv)?;
            }
            if let (Some(t), Some(r)) = (inp.out_rows, b.out_rows) {
                t.write_i32(r)?;
            }
            if let Some(t) = inp.capture_rows {
                t.write_i32(b.capture_rows)?;
            }
            if let Some((rows, idx, slots)) = inp.sink_capture {
                rows.write_i32(&b.sink_capture.iter().map(|c| c.0).collect::<Vec<_>>())?;
                idx.write_bytes(
                    0,
                    as_bytes(&b.sink_capture.iter().map(|c| c.1).collect::<Vec<_>>()),
                )?;
                slots.write_bytes(
                    0,
                    as_bytes(&b.sink_capture.iter().map(|c| c.2).collect::<Vec<_>>()),
                )?;
            }
            if let Some(t) = inp.surprisal {
                let v = hp.n_vocab as i64;
                // With out_rows the LM head runs on chunks of rows (forward::SURPRISAL_CHUNK),
                // and a row's index counts from its chunk's first row.
                let ch = match b.out_rows {
                    Some(_) => crate::forward::SURPRISAL_CHUNK as i64,
                    None => i64::MAX,
                };
                let flat: Vec<i32> = b
                    .surprisal
                    .iter()
                    .map(|&(r, tok)| i32::try_from(r as i64 % ch * v + tok as i64))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| Error::Internal("surprisal index beyond i32".into()))?;
                t.write_i32(&flat)?;
            }
            if let Some((pos, slots)) = inp.sink_rotate {
                pos.write_i32(&b.sink_rotate.iter().map(|c| c.0).collect::<Vec<_>>())?;
                slots.write_bytes(
                    0,
                    as_bytes(&b.sink_rotate.iter().map(|c| c.1).collect::<Vec<_>>()),
                )?;
            }
        }
        self.backend.compute(&c.graph)?;
        let logits = out.logits.read_f32()?;
        let layer_inputs = out
            .layer_inputs
            .iter()
            .map(|t| t.read_f32())
            .collect::<Result<_>>()?;
        let next_prob = match out.surprisal {
            Some(t) => t.read_f32()?,
            None => Vec::new(),
        };
        Ok(TokenResult {
            logits,
            layer_inputs,
            next_prob,
        })
    }

    /// Run a FAM update (or K/V refresh) for every layer.
    pub fn run_fam(&mut self, kv: &KvStore, fam: &[Tensor<'_>], b: &FamBatch) -> Result<()> {
        let f = fam.first().map_or(0, |t| t.ne()[1] as usize);
        if f == 0 || fam.len() != self.model.hp.n_layer || b.pos.len() != f || b.slots.len() != f {
            return Err(Error::Internal("inconsistent FAM batch".into()));
        }
        if let Some(u) = &b.update {
            let init_ok = u.decay.is_none_or(|(_, init)| {
                init.len() == fam.len() && init.iter().all(|t| t.ne() == fam[0].ne())
            });
            if u.q_pos.len() != f || u.mask.len() != f * b.n_kv || b.n_kv > kv.n_slots() || !init_ok
            {
                return Err(Error::Internal("inconsistent FAM update".into()));
            }
        }
        if !b
            .slots
            .iter()
            .all(|&s| s >= 0 && (s as usize) < kv.n_slots())
        {
            return Err(Error::Internal("FAM slots beyond the cache".into()));
        }
        let model = self.model.clone();
        let ctx = self.new_ctx()?;
        let (graph, inp) = build_fam_graph(&ctx, &model, kv, fam, b.n_kv, b.update.as_ref());
        self.run(&graph, || {
            inp.pos.write_i32(b.pos)?;
            inp.slots.write_bytes(0, as_bytes(b.slots))?;
            if let (Some(t), Some(u)) = (inp.q_pos, &b.update) {
                t.write_i32(u.q_pos)?;
            }
            if let (Some(t), Some(u)) = (inp.mask, &b.update) {
                // attention's query rows are the F rows once per query head of a K/V head,
                // then padding (ops::attend_grouped)
                for r in 0..t.ne()[1] as usize {
                    let i = crate::model::arch::ops::grouped_source_row(&model.hp, f, r);
                    let src = &u.mask[i * b.n_kv..(i + 1) * b.n_kv];
                    t.write_bytes(r * b.n_kv * std::mem::size_of::<f16>(), as_bytes(src))?;
                }
            }
            Ok(())
        })
    }

    /// Copy K/V slots [from, from+n) to [to, to+n) in every layer.
    pub fn run_kv_copy(&mut self, kv: &KvStore, from: usize, to: usize, n: usize) -> Result<()> {
        if n == 0 || from.max(to) + n > kv.n_slots() || from.abs_diff(to) < n {
            return Err(Error::Internal("bad K/V copy range".into()));
        }
        let model = self.model.clone();
        let ctx = self.new_ctx()?;
        let graph = build_kv_copy_graph(&ctx, &model, kv, from, to, n);
        self.run(&graph, || Ok(()))
    }

    /// Rotate the stored keys of slots [from, to) by `-delta` positions (RoPE origin moved
    /// forward by `delta`).
    pub fn run_kshift(&mut self, kv: &KvStore, from: usize, to: usize, delta: i32) -> Result<()> {
        if from >= to || to > kv.n_slots() {
            return Err(Error::Internal("bad K-shift range".into()));
        }
        let model = self.model.clone();
        let ctx = self.new_ctx()?;
        let (graph, shift) = build_kshift_graph(&ctx, &model, kv, from, to);
        self.run(&graph, || shift.write_i32(&vec![-delta; to - from]))
    }
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: only used with i64 and f16 (plain data without padding); u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

//! The transformer as ggml graphs: one readable function per graph kind, one loop over layers.
//! Each layer is the architecture's own function ([`crate::model::arch`]); the graphs here decide what
//! it attends to and where its K/V go.
//!
//! Shapes are in ggml order (`[ne0, ne1, ...]`, ne0 fastest). Every intermediate is named
//! (`attn_norm-3`, `ffn_out-3`, ...) so a graph can be dumped and compared layer by layer
//! against a reference.

use crate::dtype::GgmlType;
use crate::ggml::{Context, Graph, Tensor};
use crate::kept_heads::LayerKept;
use crate::kv::KvStore;
use crate::model::arch::ops::{attend, attend_grouped, grouped_rows, norm, rope};
use crate::model::arch::{Block, Qkv};
use crate::model::Model;
use half::f16;

/// Nodes one layer adds to a graph, with room to spare; used to size graphs. An adapter adds
/// up to 4 nodes to each of the 7 linear layers (see [`crate::model::arch::ops::linear`]), so 28 of these are for it;
/// QK-norm and post-norms (gemma3) add 8.
const NODES_PER_LAYER: usize = 84;

pub fn graph_size(n_layer: usize) -> usize {
    (NODES_PER_LAYER * n_layer + 256).max(2048)
}

/// The host-filled inputs of a token graph, to be written after allocation.
pub struct TokenInputs<'a> {
    /// i32 [n]: token ids.
    pub tokens: Tensor<'a>,
    /// i32 [n]: RoPE positions (relative to the stream's origin).
    pub pos: Tensor<'a>,
    /// i64 [n]: KV slot of each row.
    pub slots: Tensor<'a>,
    /// f16 [n_kv, n]: 0 where row i may attend to slot j, -inf elsewhere.
    pub mask: Tensor<'a>,
    /// f16 [n_kv, n]: the mask of the local sliding-window layers (models that have them).
    pub mask_swa: Option<Tensor<'a>>,
    /// f16 [n_kv, n]: `mask` with the kept slots hidden, for the layers where no head sees them
    /// ([`crate::kept_heads`]).
    pub mask_nokept: Option<Tensor<'a>>,
    /// f16 [n_kv, n, n_head, n_sets]: per head set j and head h, `mask`, or `mask` with the kept
    /// slots hidden where set j does not hold h ([`crate::kept_heads::KeptHeads::sets`]).
    pub mask_heads: Option<Tensor<'a>>,
    /// i32 [n_out]: rows whose logits are computed (absent: all rows).
    pub out_rows: Option<Tensor<'a>>,
    /// i32 [n_capture]: rows whose layer inputs are returned.
    pub capture_rows: Option<Tensor<'a>>,
    /// i32 [n_sink_capture] batch rows and i64 [n_sink_capture] sink indices (sink store rows)
    /// and KV slots for their V.
    pub sink_capture: Option<(Tensor<'a>, Tensor<'a>, Tensor<'a>)>,
    /// i32 [n_sink_rotate] virtual positions and i64 [n_sink_rotate] KV slots of the sinks.
    pub sink_rotate: Option<(Tensor<'a>, Tensor<'a>)>,
    /// i32 [n_surprisal]: flat indices `row * n_vocab + next token` into the rows' softmax;
    /// with `out_rows`, `row` counts from the start of the row's [`SURPRISAL_CHUNK`].
    pub surprisal: Option<Tensor<'a>>,
}

/// Rows per LM-head chunk when only the rows' next-token probabilities are wanted (`keep`
/// with `n_out` rows of logits): the chunks' logits and softmax, 64 x n_vocab floats each
/// (12.6 MB for SmolLM2), are all the graph holds, not a batch x vocabulary buffer (200 MB at
/// B = 1024).
pub const SURPRISAL_CHUNK: usize = 64;

/// The FAM update's query rows are padded to this many for attention: ggml's CPU flash
/// attention (llama-cpp-sys-2 0.1.161, `ggml-cpu/ops.cpp`) reads K/V in tiles with a matrix
/// product for 64 (`GGML_FA_TILE_Q`) query rows or more, and below that visits each key once per
/// query row and head in a scalar loop, which made the F = 16 rows' attention most of a FAM
/// update's time. The padded rows (zero queries, the last real row's mask) are dropped after.
/// Before padding, the query heads sharing a K/V head become rows of one head
/// ([`attend_grouped`]: SmolLM2's 9 heads over 3 K/V heads give 48 rows of 3 heads, not 64 rows
/// of 9), so the tiles are read for a third of the heads and 16 of 64 rows are padding.
pub const FAM_ATTN_ROWS: usize = 64;

/// Outputs of a token graph.
pub struct TokenOutputs<'a> {
    /// f32 [n_vocab, n_out].
    pub logits: Tensor<'a>,
    /// Per layer, f32 [n_embd, n_capture]: the layer's input hidden states of the captured rows.
    pub layer_inputs: Vec<Tensor<'a>>,
    /// f32 [1, n_surprisal]: the probability each row gave its next token (`keep` salience).
    pub surprisal: Option<Tensor<'a>>,
}

/// Graph dimensions of a token batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBatchShape {
    pub n_tokens: usize,
    /// Attend over KV slots [0, n_kv).
    pub n_kv: usize,
    /// Rows whose logits are wanted; `None` = all rows.
    pub n_out: Option<usize>,
    /// Output every layer's input hidden states of this many selected rows (FAM init).
    pub n_capture: usize,
    /// Rows that are attention sinks: their un-rotated K goes to the sink store (`sink` policy).
    pub n_sink_capture: usize,
    /// Re-rotate this many stored sink keys into their KV slots at virtual positions.
    pub n_sink_rotate: usize,
    /// The local sliding-window layers get their own mask input.
    pub swa_mask: bool,
    /// Kept slots are shown to the model's `fam.kept_heads` only: the layers' masks follow
    /// [`crate::kept_heads::KeptHeads::layer`].
    pub kept_heads: bool,
    /// Rows whose next token's probability is wanted (the `keep` policy's salience): every
    /// row's logits when every row's are returned, else [`SURPRISAL_CHUNK`] rows at a time.
    pub n_surprisal: usize,
}

/// Per-stream tensors a token graph may write besides the KV store.
pub struct SinkStore<'a> {
    /// Per layer, f16 [n_embd_kv, S + kept]: un-rotated keys of the first S tokens, then of
    /// the kept tokens (`keep` policy).
    pub k_raw: Vec<Tensor<'a>>,
}

/// Layer `il` of model `m` for graph context `ctx`, over FAM rows or tokens (`fam_rows`).
fn block<'a>(ctx: &'a Context, m: &'a Model, il: usize, fam_rows: bool) -> Block<'a> {
    Block {
        ctx,
        m,
        l: m.layer(il),
        il,
        fam_rows,
    }
}

/// The token graph: embed `n` tokens, run every layer (writing their K/V into `kv` at the given
/// slots and attending over slots [0, n_kv) under the mask), and compute logits for the wanted
/// rows. (`LlamaForCausalLM.forward`)
pub fn build_token_graph<'a>(
    ctx: &'a Context,
    m: &'a Model,
    kv: &'a KvStore,
    sinks: Option<&SinkStore<'a>>,
    shape: TokenBatchShape,
) -> (Graph<'a>, TokenInputs<'a>, TokenOutputs<'a>) {
    let hp = &m.hp;
    let n = shape.n_tokens as i64;
    let n_embd_kv = kv.n_embd_kv() as i64;
    let mut gf = ctx.new_graph(graph_size(hp.n_layer));

    let input = |ty, ne: &[i64], name: &str| ctx.new_tensor(ty, ne).set_name(name).set_input();
    let tokens = input(GgmlType::I32, &[n], "tokens");
    let pos = input(GgmlType::I32, &[n], "pos");
    let slots = input(GgmlType::I64, &[n], "slots");
    let mask = input(GgmlType::F16, &[shape.n_kv as i64, n], "mask");
    let mask_swa = shape
        .swa_mask
        .then(|| input(GgmlType::F16, &[shape.n_kv as i64, n], "mask_swa"));
    let kept_plan = m.kept_heads().filter(|_| shape.kept_heads);
    let mask_nokept = kept_plan
        .filter(|k| k.any_none())
        .map(|_| input(GgmlType::F16, &[shape.n_kv as i64, n], "mask_nokept"));
    let mask_heads = kept_plan.filter(|k| !k.sets().is_empty()).map(|k| {
        let ne = [
            shape.n_kv as i64,
            n,
            hp.n_head as i64,
            k.sets().len() as i64,
        ];
        input(GgmlType::F16, &ne, "mask_heads")
    });
    let capture_rows = (shape.n_capture > 0)
        .then(|| input(GgmlType::I32, &[shape.n_capture as i64], "capture_rows"));
    let k = shape.n_sink_capture as i64;
    let sink_capture = (k > 0).then(|| {
        (
            input(GgmlType::I32, &[k], "sink_rows"),
            input(GgmlType::I64, &[k], "sink_idx"),
            input(GgmlType::I64, &[k], "sink_slots"),
        )
    });
    let r = shape.n_sink_rotate as i64;
    let sink_rotate = (r > 0).then(|| {
        (
            input(GgmlType::I32, &[r], "sink_pos"),
            input(GgmlType::I64, &[r], "sink_rot_slots"),
        )
    });

    let mut x = ctx.get_rows(m.token_embd(), tokens).set_name("inp_embd"); // [n_embd, n]
    if let Some(s) = hp.embd_scale {
        x = ctx.scale(x, s); // Gemma3TextScaledWordEmbedding
    }
    let mut layer_inputs = Vec::new();
    let layer = hp.arch.spec().layer;
    for il in 0..hp.n_layer {
        if let Some(rows) = capture_rows {
            let c = ctx
                .get_rows(x, rows)
                .set_name(&format!("layer_in-{il}"))
                .set_output();
            gf.expand(c);
            layer_inputs.push(c);
        }
        let b = block(ctx, m, il, false);
        // Store this batch's K/V in the cache, then attend over the cache.
        let mut attend_cache = |Qkv { q, k, k_raw, v }: Qkv<'a>| {
            let mut kc = ctx.set_rows(kv.k(il), ctx.reshape(k, &[n_embd_kv, n]), slots);
            let mut vc = ctx.set_rows(kv.v(il), v, slots);
            if let (Some(st), Some((rows, idx, sslots))) = (sinks, sink_capture) {
                // Attention sinks: keep their un-rotated K, and their V in the sink slots.
                let kr = ctx.get_rows(ctx.reshape(k_raw, &[n_embd_kv, n]), rows);
                gf.expand(ctx.set_rows(st.k_raw[il], kr, idx));
                vc = ctx.set_rows(vc, ctx.get_rows(v, rows), sslots);
            }
            if let (Some(st), Some((spos, sslots))) = (sinks, sink_rotate) {
                // Sinks outside the window sit just before it: rotate their stored K there.
                let raw = ctx.view(
                    st.k_raw[il],
                    &[hp.head_dim as i64, hp.n_head_kv as i64, r],
                    &[hp.head_dim * 2, kv.n_embd_kv() * 2],
                    0,
                );
                let rot = rope(ctx, m, ctx.cont(raw), spos, il);
                kc = ctx.set_rows(kc, ctx.reshape(rot, &[n_embd_kv, r]), sslots);
            }
            let layer_mask = match (mask_swa, kept_plan.map(|k| k.layer(il))) {
                (Some(ms), _) if hp.is_swa(il) => ms,
                (_, Some(LayerKept::None)) => mask_nokept.expect("made when a layer has none"),
                (_, Some(LayerKept::Set(j))) => {
                    let t = mask_heads.expect("made when a layer has a head set");
                    let nb = t.nb();
                    ctx.view(
                        t,
                        &[shape.n_kv as i64, n, hp.n_head as i64],
                        &[nb[1], nb[2]],
                        j * nb[3],
                    )
                }
                _ => mask,
            };
            attend(ctx, m, q, kc, vc, shape.n_kv, layer_mask)
        };
        x = layer(&b, x, pos, true, &mut attend_cache);
    }
    let out_rows = shape
        .n_out
        .map(|k| input(GgmlType::I32, &[k as i64], "out_rows"));
    let surprisal = (shape.n_surprisal > 0).then(|| {
        input(
            GgmlType::I32,
            &[shape.n_surprisal as i64],
            "surprisal_targets",
        )
    });
    let lm_head = |x: Tensor<'a>| {
        let logits = ctx.mul_mat(m.output(), x);
        if hp.logit_softcap > 0.0 {
            let c = hp.logit_softcap;
            return ctx.scale(ctx.tanh(ctx.scale(logits, 1.0 / c)), c);
        }
        logits
    };
    // Salience: each row's probability of the token that follows it, picked out of the
    // flattened softmax ([1, n_vocab * rows], one element per "row").
    let pick = |logits: Tensor<'a>, targets: Tensor<'a>, rows: i64| {
        let p = ctx.soft_max_ext(logits, None, 1.0);
        ctx.get_rows(ctx.reshape(p, &[1, hp.n_vocab as i64 * rows]), targets)
    };
    let normed = |x: Tensor<'a>| norm(ctx, x, m.output_norm(), hp.rms_eps).set_name("result_norm");
    let mut probs = None;
    let logits = match (out_rows, surprisal) {
        (Some(r), None) => lm_head(normed(ctx.get_rows(x, r))), // [n_vocab, n_out]
        (None, None) => lm_head(normed(x)),
        (None, Some(targets)) => {
            let logits = lm_head(normed(x)); // every row's logits are wanted anyway
            probs = Some(pick(logits, targets, n));
            logits
        }
        (Some(r), Some(targets)) => {
            // A few rows' logits: the LM head runs on SURPRISAL_CHUNK rows at a time.
            let x = normed(x);
            let (ns, ch, nb1) = (shape.n_surprisal as i64, SURPRISAL_CHUNK as i64, x.nb()[1]);
            let mut acc: Option<Tensor<'a>> = None;
            for c0 in (0..ns).step_by(SURPRISAL_CHUNK) {
                let rows = ch.min(ns - c0);
                let xc = ctx.view(x, &[hp.n_embd as i64, rows], &[nb1], c0 as usize * nb1);
                let tc = ctx.view(targets, &[rows], &[], c0 as usize * 4);
                let s = pick(lm_head(xc), tc, rows);
                acc = Some(acc.map_or(s, |a| ctx.concat(a, s, 1)));
            }
            probs = acc;
            lm_head(ctx.get_rows(x, r)) // [n_vocab, n_out]
        }
    };
    let probs = probs.map(|s| {
        let s = s.set_name("surprisal").set_output();
        gf.expand(s);
        s
    });
    let logits = logits.set_name("result_output").set_output();
    gf.expand(logits);
    let inputs = TokenInputs {
        tokens,
        pos,
        slots,
        mask,
        mask_swa,
        mask_nokept,
        mask_heads,
        out_rows,
        capture_rows,
        sink_capture,
        sink_rotate,
        surprisal,
    };
    (
        gf,
        inputs,
        TokenOutputs {
            logits,
            layer_inputs,
            surprisal: probs,
        },
    )
}

/// Write K/V of FAM rows `x` [n_embd, F] (layer `il`'s input activations) at positions `pos`
/// into the FAM slots `slots` of layer `il`. Returns the updated cache tensors.
fn fam_kv<'a>(
    ctx: &'a Context,
    m: &'a Model,
    kv: &'a KvStore,
    il: usize,
    x: Tensor<'a>,
    pos: Tensor<'a>,
    slots: Tensor<'a>,
) -> (Tensor<'a>, Tensor<'a>) {
    let f = x.ne()[1];
    let Qkv { k, v, .. } = (m.hp.arch.spec().attn_in)(&block(ctx, m, il, true), x, pos);
    let n_embd_kv = kv.n_embd_kv() as i64;
    (
        ctx.set_rows(kv.k(il), ctx.reshape(k, &[n_embd_kv, f]), slots),
        ctx.set_rows(kv.v(il), v, slots),
    )
}

/// Inputs of a FAM graph.
pub struct FamInputs<'a> {
    /// i32 [F]: positions of the FAM queries (update graph only).
    pub q_pos: Option<Tensor<'a>>,
    /// i32 [F]: positions of the (new) FAM rows, for their keys.
    pub pos: Tensor<'a>,
    /// i64 [F]: the FAM's KV slots.
    pub slots: Tensor<'a>,
    /// f16 [n_kv, F]: what FAM rows may attend to (update graph only).
    pub mask: Option<Tensor<'a>>,
}

/// A FAM update, described on the host.
pub struct FamUpdate<'x> {
    /// RoPE positions of the FAM rows' queries.
    pub q_pos: &'x [i32],
    /// f16 [F][n_kv]: what the FAM rows may attend to.
    pub mask: &'x [f16],
    /// Zero residual (the stream's first update, if the settings ask).
    pub zero_residual: bool,
    /// Rescale each updated row to its previous RMS.
    pub renorm: bool,
    /// `Some((decay, per-layer initial FAM))`: a leaky memory (`fam.decay`).
    pub decay: Option<(f32, &'x [Tensor<'x>])>,
}

/// The FAM update after a block: for every layer (independently, batched in one graph), the F
/// FAM rows attend to the old FAM's keys and the whole finished block, then go through o_proj,
/// the residual (zero on the stream's first update if asked), the post-attention norm and the
/// MLP, exactly like tokens. The result replaces the layer's FAM activations, and its K/V at the
/// new positions replace the FAM slots. (fam.md §2; Algorithm 2 of the paper)
///
/// `fam` holds per layer f32 [n_embd, F] activations (read, then overwritten).
/// With `update == None` only the K/V of the current activations are (re)computed (FAM
/// initialisation). With a decay, each updated row becomes (1 - decay) x itself + decay x its
/// initial row (after the renorm, if both are set).
pub fn build_fam_graph<'a>(
    ctx: &'a Context,
    m: &'a Model,
    kv: &'a KvStore,
    fam: &[Tensor<'a>],
    n_kv: usize,
    update: Option<&FamUpdate<'a>>,
) -> (Graph<'a>, FamInputs<'a>) {
    let zero_residual = update.is_some_and(|u| u.zero_residual);
    let renorm = update.is_some_and(|u| u.renorm);
    let decay = update.and_then(|u| u.decay);
    let update = update.is_some();
    let hp = &m.hp;
    let f = fam[0].ne()[1];
    let mut gf = ctx.new_graph(graph_size(hp.n_layer));
    let input = |ty, ne: &[i64], name: &str| ctx.new_tensor(ty, ne).set_name(name).set_input();
    let pos = input(GgmlType::I32, &[f], "fam_pos");
    let slots = input(GgmlType::I64, &[f], "fam_slots");
    let q_pos = update.then(|| input(GgmlType::I32, &[f], "fam_q_pos"));
    // (attention reads its query rows grouped by K/V head, FAM_ATTN_ROWS at least: see there)
    let f_attn = grouped_rows(hp, f as usize, FAM_ATTN_ROWS) as i64;
    let mask = update.then(|| input(GgmlType::F16, &[n_kv as i64, f_attn], "fam_mask"));
    let layer = hp.arch.spec().layer;
    for il in 0..hp.n_layer {
        let x = fam[il];
        let new = match (q_pos, mask) {
            (Some(q_pos), Some(mask)) => {
                // The FAM rows' queries read the old FAM and the finished block; their own K/V
                // are written after, at the new positions (`fam_kv`).
                let mut read = |qkv: Qkv<'a>| {
                    let (kc, vc) = (kv.k(il), kv.v(il));
                    attend_grouped(ctx, m, qkv.q, kc, vc, n_kv, mask, FAM_ATTN_ROWS)
                };
                let mut out = layer(
                    &block(ctx, m, il, true),
                    x,
                    q_pos,
                    !zero_residual,
                    &mut read,
                )
                .set_name(&format!("fam_new-{il}"));
                if renorm {
                    // Keep each row's RMS: rms_norm(new) * rms(old). Without it the residual of
                    // an un-tuned model's FAM rows grows by o + ffn every block, without bound.
                    let rms_old = ctx.sqrt(ctx.mean(ctx.sqr(x))); // [1, F]
                    out = ctx.mul(ctx.rms_norm(out, hp.rms_eps), rms_old);
                }
                if let Some((d, init)) = decay {
                    out = ctx.add(ctx.scale(out, 1.0 - d), ctx.scale(init[il], d));
                }
                // Overwrite the stored activations (after all reads of `x`: `out` depends on them).
                let stored = ctx.cpy(out, x);
                gf.expand(stored);
                out
            }
            _ => x,
        };
        let (kc, vc) = fam_kv(ctx, m, kv, il, new, pos, slots);
        gf.expand(kc);
        gf.expand(vc);
    }
    (
        gf,
        FamInputs {
            q_pos,
            pos,
            slots,
            mask,
        },
    )
}

/// Rotate stored keys of slots [from, to) of every layer by `delta` positions (a change of the
/// stream's RoPE origin). The angle of a rotation by delta is computed once in f32 for a small
/// delta, so stored keys keep their precision.
pub fn build_kshift_graph<'a>(
    ctx: &'a Context,
    m: &'a Model,
    kv: &'a KvStore,
    from: usize,
    to: usize,
) -> (Graph<'a>, Tensor<'a>) {
    let hp = &m.hp;
    let n = (to - from) as i64;
    let mut gf = ctx.new_graph(graph_size(hp.n_layer));
    let shift = ctx
        .new_tensor(GgmlType::I32, &[n])
        .set_name("kshift")
        .set_input();
    let row = kv.n_embd_kv() * 2;
    for il in 0..hp.n_layer {
        let view = ctx.view(
            kv.k(il),
            &[hp.head_dim as i64, hp.n_head_kv as i64, n],
            &[hp.head_dim * 2, row],
            from * row,
        );
        let rot = rope(ctx, m, view, shift, il);
        gf.expand(ctx.cpy(rot, view));
    }
    (gf, shift)
}

/// Inputs of a keep graph (see [`build_keep_graph`]).
pub struct KeepInputs<'a> {
    /// i32 [n]: ring slots of the tokens to keep.
    pub src: Tensor<'a>,
    /// i32 [n]: minus each token's RoPE position (to rotate its stored key back).
    pub unpos: Tensor<'a>,
    /// i64 [n]: columns of the sink store for their un-rotated keys.
    pub cols: Tensor<'a>,
    /// i64 [n]: KV slots for their values.
    pub dst: Tensor<'a>,
}

/// Keep `n` tokens that are about to leave the ring (`keep` policy), in every layer: their
/// stored keys, rotated back to position 0, go to the sink store (the token graph rotates them
/// to virtual positions before the window, as it does for sinks), their values to kept slots.
pub fn build_keep_graph<'a>(
    ctx: &'a Context,
    m: &'a Model,
    kv: &'a KvStore,
    sinks: &SinkStore<'a>,
    n: usize,
) -> (Graph<'a>, KeepInputs<'a>) {
    let hp = &m.hp;
    let n = n as i64;
    let n_embd_kv = kv.n_embd_kv() as i64;
    let mut gf = ctx.new_graph(graph_size(hp.n_layer));
    let input = |ty, name: &str| ctx.new_tensor(ty, &[n]).set_name(name).set_input();
    let inp = KeepInputs {
        src: input(GgmlType::I32, "keep_src"),
        unpos: input(GgmlType::I32, "keep_unpos"),
        cols: input(GgmlType::I64, "keep_cols"),
        dst: input(GgmlType::I64, "keep_dst"),
    };
    for il in 0..hp.n_layer {
        let k = ctx.get_rows(kv.k(il), inp.src); // [n_embd_kv, n] f32
        let k = ctx.reshape(k, &[hp.head_dim as i64, hp.n_head_kv as i64, n]);
        let raw = rope(ctx, m, k, inp.unpos, il);
        gf.expand(ctx.set_rows(sinks.k_raw[il], ctx.reshape(raw, &[n_embd_kv, n]), inp.cols));
        let v = ctx.get_rows(kv.v(il), inp.src);
        gf.expand(ctx.set_rows(kv.v(il), v, inp.dst));
    }
    (gf, inp)
}

/// Copy K/V rows [from, from+n) to [to, to+n) in every layer.
pub fn build_kv_copy_graph<'a>(
    ctx: &'a Context,
    m: &'a Model,
    kv: &'a KvStore,
    from: usize,
    to: usize,
    n: usize,
) -> Graph<'a> {
    let mut gf = ctx.new_graph(graph_size(m.hp.n_layer));
    let row = kv.n_embd_kv() * 2;
    for il in 0..m.hp.n_layer {
        for t in [kv.k(il), kv.v(il)] {
            let src = ctx.view(t, &[kv.n_embd_kv() as i64, n as i64], &[row], from * row);
            let dst = ctx.view(t, &[kv.n_embd_kv() as i64, n as i64], &[row], to * row);
            gf.expand(ctx.cpy(src, dst));
        }
    }
    gf
}

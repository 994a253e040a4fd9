//! The transformer as ggml graphs: one readable function per graph kind, one loop over layers.
//!
//! Shapes are in ggml order (`[ne0, ne1, ...]`, ne0 fastest). Every intermediate is named
//! (`attn_norm-3`, `ffn_out-3`, ...) so a graph can be dumped and compared layer by layer
//! against a reference. The PyTorch (HF `LlamaDecoderLayer`) equivalent of each step is noted.

use crate::dtype::GgmlType;
use crate::ggml::{Context, Graph, Tensor};
use crate::kv::KvStore;
use crate::model::{LayerWeights, Model, RopeLayout};

/// Nodes one layer adds to a graph, with room to spare; used to size graphs.
const NODES_PER_LAYER: usize = 48;

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
    /// i32 [n_out]: rows whose logits are computed (absent: all rows).
    pub out_rows: Option<Tensor<'a>>,
}

/// Outputs of a token graph.
pub struct TokenOutputs<'a> {
    /// f32 [n_vocab, n_out].
    pub logits: Tensor<'a>,
    /// Per layer, f32 [n_embd, n]: the layer's input hidden states (only when requested).
    pub layer_inputs: Vec<Tensor<'a>>,
}

/// Graph dimensions of a token batch.
#[derive(Clone, Copy, Debug)]
pub struct TokenBatchShape {
    pub n_tokens: usize,
    /// Attend over KV slots [0, n_kv).
    pub n_kv: usize,
    /// Rows whose logits are wanted; `None` = all rows.
    pub n_out: Option<usize>,
    /// Also output every layer's input hidden states (for FAM initialisation).
    pub capture_layer_inputs: bool,
}

/// RMSNorm with its learned weight. (`LlamaRMSNorm`)
fn norm<'a>(ctx: &'a Context, x: Tensor<'a>, w: Tensor<'a>, eps: f32) -> Tensor<'a> {
    ctx.mul(ctx.rms_norm(x, eps), w)
}

/// `W x + b`. (`nn.Linear`)
fn linear<'a>(ctx: &'a Context, m: &'a Model, w: usize, b: Option<usize>, x: Tensor<'a>) -> Tensor<'a> {
    let y = ctx.mul_mat(m.w(w), x);
    match b {
        Some(b) => ctx.add(y, m.w(b)),
        None => y,
    }
}

/// Q, K, V of `x` [n_embd, n] for layer `l`, with RoPE applied to Q and K at `pos`.
/// Returns q [hd, n_head, n], k [hd, n_head_kv, n], v [hd * n_head_kv, n].
pub fn qkv<'a>(
    ctx: &'a Context,
    m: &'a Model,
    l: &LayerWeights,
    x: Tensor<'a>,
    pos: Tensor<'a>,
    il: usize,
) -> (Tensor<'a>, Tensor<'a>, Tensor<'a>) {
    let hp = &m.hp;
    let n = x.ne()[1];
    let hd = hp.head_dim as i64;
    let neox = hp.arch.rope_layout() == RopeLayout::Halves;
    let q = linear(ctx, m, l.wq, l.bq, x); // q_proj
    let k = linear(ctx, m, l.wk, l.bk, x); // k_proj
    let v = linear(ctx, m, l.wv, l.bv, x).set_name(&format!("v-{il}")); // v_proj
    let q = ctx.reshape(q, &[hd, hp.n_head as i64, n]);
    let k = ctx.reshape(k, &[hd, hp.n_head_kv as i64, n]);
    // apply_rotary_pos_emb
    let q = ctx.rope(q, pos, hp.rope_dims, neox, hp.rope_freq_base, hp.n_ctx_train).set_name(&format!("q-{il}"));
    let k = ctx.rope(k, pos, hp.rope_dims, neox, hp.rope_freq_base, hp.n_ctx_train).set_name(&format!("k-{il}"));
    (q, k, v)
}

/// Attention of q [hd, n_head, n] over KV slots [0, n_kv) of layer `il`, with `mask`.
/// `kc`/`vc` are the cache tensors *after* this graph's writes (so reads follow writes).
/// Returns [n_head * hd, n]. (`eager_attention_forward` with GQA `repeat_kv`)
pub fn attend<'a>(
    ctx: &'a Context,
    m: &'a Model,
    q: Tensor<'a>,
    kc: Tensor<'a>,
    vc: Tensor<'a>,
    n_kv: usize,
    mask: Tensor<'a>,
) -> Tensor<'a> {
    let hp = &m.hp;
    let hd = hp.head_dim;
    let n = q.ne()[2];
    let row = kc.nb()[1];
    let es = 2; // f16 element size
    // [hd, n_kv, n_head_kv] views of the [hd * n_head_kv, n_slots] caches.
    let k = ctx.view(kc, &[hd as i64, n_kv as i64, hp.n_head_kv as i64], &[row, hd * es], 0);
    let v = ctx.view(vc, &[hd as i64, n_kv as i64, hp.n_head_kv as i64], &[row, hd * es], 0);
    let q = ctx.permute(q, [0, 2, 1, 3]); // [hd, n, n_head]
    let scale = 1.0 / (hd as f32).sqrt();
    let o = ctx.flash_attn_ext(q, k, v, Some(mask), scale); // [hd, n_head, n]
    ctx.reshape(o, &[(hd * hp.n_head) as i64, n])
}

/// SwiGLU MLP. (`LlamaMLP`: down(silu(gate(x)) * up(x)))
pub fn ffn<'a>(ctx: &'a Context, m: &'a Model, l: &LayerWeights, x: Tensor<'a>) -> Tensor<'a> {
    let gate = ctx.mul_mat(m.w(l.ffn_gate), x);
    let up = ctx.mul_mat(m.w(l.ffn_up), x);
    ctx.mul_mat(m.w(l.ffn_down), ctx.swiglu(gate, up))
}

/// The token graph: embed `n` tokens, run every layer (writing their K/V into `kv` at the given
/// slots and attending over slots [0, n_kv) under the mask), and compute logits for the wanted
/// rows. (`LlamaForCausalLM.forward`)
pub fn build_token_graph<'a>(
    ctx: &'a Context,
    m: &'a Model,
    kv: &'a KvStore,
    shape: TokenBatchShape,
) -> (Graph<'a>, TokenInputs<'a>, TokenOutputs<'a>) {
    let hp = &m.hp;
    let n = shape.n_tokens as i64;
    let mut gf = ctx.new_graph(graph_size(hp.n_layer));

    let tokens = ctx.new_tensor(GgmlType::I32, &[n]).set_name("tokens").set_input();
    let pos = ctx.new_tensor(GgmlType::I32, &[n]).set_name("pos").set_input();
    let slots = ctx.new_tensor(GgmlType::I64, &[n]).set_name("slots").set_input();
    let mask = ctx.new_tensor(GgmlType::F16, &[shape.n_kv as i64, n]).set_name("mask").set_input();

    let mut x = ctx.get_rows(m.token_embd(), tokens).set_name("inp_embd"); // [n_embd, n]
    let mut layer_inputs = Vec::new();
    for il in 0..hp.n_layer {
        let l = m.layer(il);
        if shape.capture_layer_inputs {
            let c = ctx.cont(x).set_name(&format!("layer_in-{il}")).set_output();
            gf.expand(c);
            layer_inputs.push(c);
        }
        let h = norm(ctx, x, m.w(l.attn_norm), hp.rms_eps).set_name(&format!("attn_norm-{il}"));
        let (q, k, v) = qkv(ctx, m, l, h, pos, il);
        // Store this batch's K/V in the cache, then attend over the cache.
        let n_embd_kv = kv.n_embd_kv() as i64;
        let kc = ctx.set_rows(kv.k(il), ctx.reshape(k, &[n_embd_kv, n]), slots);
        let vc = ctx.set_rows(kv.v(il), v, slots);
        let attn = attend(ctx, m, q, kc, vc, shape.n_kv, mask).set_name(&format!("kqv-{il}"));
        let attn = ctx.mul_mat(m.w(l.wo), attn).set_name(&format!("attn_out-{il}")); // o_proj
        x = ctx.add(x, attn).set_name(&format!("ffn_inp-{il}")); // residual
        let h = norm(ctx, x, m.w(l.ffn_norm), hp.rms_eps).set_name(&format!("ffn_norm-{il}"));
        let f = ffn(ctx, m, l, h).set_name(&format!("ffn_out-{il}"));
        x = ctx.add(x, f).set_name(&format!("l_out-{il}")); // residual
    }
    let out_rows = shape.n_out.map(|k| ctx.new_tensor(GgmlType::I32, &[k as i64]).set_name("out_rows").set_input());
    if let Some(r) = out_rows {
        x = ctx.get_rows(x, r); // [n_embd, n_out]
    }
    let x = norm(ctx, x, m.output_norm(), hp.rms_eps).set_name("result_norm");
    let logits = ctx.mul_mat(m.output(), x).set_name("result_output").set_output(); // lm_head
    gf.expand(logits);
    (gf, TokenInputs { tokens, pos, slots, mask, out_rows }, TokenOutputs { logits, layer_inputs })
}

//! Graph pieces the architectures' layers are made of. Each names the HF module it computes.

use super::{Block, Qkv, RopeLayout, Slot};
use crate::ggml::{Context, Tensor};
use crate::model::Model;

/// RMSNorm with its learned weight. (`LlamaRMSNorm`)
pub fn norm<'a>(ctx: &'a Context, x: Tensor<'a>, w: Tensor<'a>, eps: f32) -> Tensor<'a> {
    ctx.mul(ctx.rms_norm(x, eps), w)
}

/// `W x + b`, plus an adapter's low-rank term `scale * B (A x)` when the model has one for `W`
/// in this graph (`nn.Linear` with a PEFT `lora.Linear` around it): `fam_rows` says whether
/// `x` holds FAM rows (the FAM update graph, the FAM's K/V) or tokens, for adapters whose
/// LoRA applies to FAM rows only ([`crate::adapter::LoraScope`]). Every linear layer of a
/// block goes through here. The
/// order of operations is llama.cpp's `build_lora_mm` (then the bias), so both engines round
/// alike.
pub fn linear<'a>(
    ctx: &'a Context,
    m: &'a Model,
    w: usize,
    b: Option<usize>,
    x: Tensor<'a>,
    fam_rows: bool,
) -> Tensor<'a> {
    let mut y = ctx.mul_mat(m.w(w), x);
    if let Some(l) = m.lora(w, fam_rows) {
        let ab = ctx.mul_mat(l.b, ctx.mul_mat(l.a, x));
        y = ctx.add(y, ctx.scale(ab, l.scale));
    }
    match b {
        Some(b) => ctx.add(y, m.w(b)),
        None => y,
    }
}

/// RoPE of layer `il`'s keys or queries `x` [hd, heads, n] at `pos` (i32 `[n]`), in the
/// architecture's layout; local sliding-window layers have their own base.
/// (`apply_rotary_pos_emb`)
pub fn rope<'a>(
    ctx: &'a Context,
    m: &'a Model,
    x: Tensor<'a>,
    pos: Tensor<'a>,
    il: usize,
) -> Tensor<'a> {
    let hp = &m.hp;
    let neox = hp.arch.rope_layout() == RopeLayout::Halves;
    ctx.rope(
        x,
        pos,
        hp.rope_dims,
        neox,
        hp.rope_base(il),
        hp.rope_scale(il),
        m.rope_freqs(),
        hp.n_ctx_train,
    )
}

/// Attention of q [hd, n_head, n] over KV slots [0, n_kv) of the caches `kc`/`vc`
/// ([hd * n_head_kv, n_slots], f16), with `mask`. Returns [n_head * hd, n].
/// (`eager_attention_forward` with GQA `repeat_kv`)
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
    let n = q.ne()[2];
    let view = |c| kv_heads(ctx, m, c, n_kv);
    let q = ctx.permute(q, [0, 2, 1, 3]); // [hd, n, n_head]
    let o = ctx.flash_attn_ext(q, view(kc), view(vc), Some(mask), hp.attn_scale); // [hd, n_head, n]
    ctx.reshape(o, &[(hp.head_dim * hp.n_head) as i64, n])
}

/// [hd, n_kv, n_head_kv] view of slots [0, n_kv) of a [hd * n_head_kv, n_slots] K or V cache.
fn kv_heads<'a>(ctx: &'a Context, m: &Model, c: Tensor<'a>, n_kv: usize) -> Tensor<'a> {
    let hp = &m.hp;
    let es = c.nb()[0]; // element size
    ctx.view(
        c,
        &[hp.head_dim as i64, n_kv as i64, hp.n_head_kv as i64],
        &[c.nb()[1], hp.head_dim * es],
        0,
    )
}

/// [`attend`] for a few query rows (the FAM update's): the `rep` query heads that share a K/V
/// head become rows of one head, `q` [hd, n_head, n] -> [hd, rep * n, n_head_kv] (row
/// `j * n + i` is row i of the group's head j), padded to `min_rows`, so that ggml's tiled CPU
/// kernel reads each K/V tile once for all of them instead of once per head. `mask` has
/// [`grouped_rows`] rows, row `j * n + i` being query row i's (see there). Returns
/// [n_head * hd, n], as [`attend`].
#[allow(clippy::too_many_arguments)]
pub fn attend_grouped<'a>(
    ctx: &'a Context,
    m: &'a Model,
    q: Tensor<'a>,
    kc: Tensor<'a>,
    vc: Tensor<'a>,
    n_kv: usize,
    mask: Tensor<'a>,
    min_rows: usize,
) -> Tensor<'a> {
    let hp = &m.hp;
    let (hd, g) = (hp.head_dim as i64, hp.n_head_kv as i64);
    let rep = (hp.n_head / hp.n_head_kv) as i64;
    let n = q.ne()[2];
    let (rows, padded) = (rep * n, grouped_rows(hp, n as usize, min_rows) as i64);
    let view = |c| kv_heads(ctx, m, c, n_kv);
    // head h = kv head * rep + j: [hd, rep, g, n] -> [hd, n, rep, g] -> [hd, n * rep, g]
    let q = ctx.cont(ctx.permute(ctx.reshape(q, &[hd, rep, g, n]), [0, 2, 3, 1]));
    let q = ctx.reshape(q, &[hd, rows, g]);
    let q = ctx.pad(q, [0, (padded - rows) as i32, 0, 0]);
    let o = ctx.flash_attn_ext(q, view(kc), view(vc), Some(mask), hp.attn_scale); // [hd, g, padded]
    let o = ctx.view(
        o,
        &[hd, g, n, rep],
        &[o.nb()[1], o.nb()[2], o.nb()[2] * n as usize],
        0,
    );
    // [hd, g, n, rep] -> [hd, rep, g, n]: back to head-major rows
    let o = ctx.cont(ctx.permute(o, [0, 2, 3, 1]));
    ctx.reshape(o, &[hd * rep * g, n])
}

/// The rows of [`attend_grouped`]'s queries and mask for `n` query rows: `n_head / n_head_kv`
/// copies of them, at least `min_rows`.
pub fn grouped_rows(hp: &crate::model::HParams, n: usize, min_rows: usize) -> usize {
    (hp.n_head / hp.n_head_kv * n).max(min_rows)
}

/// Which of the `n` query rows [`attend_grouped`]'s row `r` holds (its mask row): row
/// `j * n + i` is row i; a padding row repeats the last, so that it stays finite (it is
/// dropped after).
pub fn grouped_source_row(hp: &crate::model::HParams, n: usize, r: usize) -> usize {
    if r < hp.n_head / hp.n_head_kv * n {
        r % n
    } else {
        n - 1
    }
}

/// The gate activation of a gated MLP.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Act {
    /// `silu(gate) * up` (SwiGLU)
    Silu,
    /// `gelu_tanh(gate) * up` (GeGLU, `gelu_pytorch_tanh`)
    GeluTanh,
}

/// Q, K, V before RoPE: [hd, n_head, n], [hd, n_head_kv, n], [hd * n_head_kv, n].
pub struct Projected<'a> {
    pub q: Tensor<'a>,
    pub k: Tensor<'a>,
    pub v: Tensor<'a>,
}

impl<'a> Block<'a> {
    pub fn w(&self, s: Slot) -> Tensor<'a> {
        self.m.w(self.l.get(s))
    }
    /// RMSNorm with the layer's weight in `s`.
    pub fn norm(&self, x: Tensor<'a>, s: Slot) -> Tensor<'a> {
        norm(self.ctx, x, self.w(s), self.m.hp.rms_eps)
    }
    /// The linear layer in `s`, with its bias in `bias` if the file has one.
    pub fn linear(&self, s: Slot, bias: Option<Slot>, x: Tensor<'a>) -> Tensor<'a> {
        let b = bias.and_then(|b| self.l.opt(b));
        linear(self.ctx, self.m, self.l.get(s), b, x, self.fam_rows)
    }
    fn heads(&self, x: Tensor<'a>, heads: usize) -> Tensor<'a> {
        let n = x.ne()[1];
        self.ctx
            .reshape(x, &[self.m.hp.head_dim as i64, heads as i64, n])
    }
    /// Separate q_proj, k_proj, v_proj (with their biases where the file has them).
    pub fn project_qkv(&self, h: Tensor<'a>) -> Projected<'a> {
        let hp = &self.m.hp;
        let q = self.linear(Slot::Q, Some(Slot::BiasQ), h);
        let k = self.linear(Slot::K, Some(Slot::BiasK), h);
        let v = self.linear(Slot::V, Some(Slot::BiasV), h);
        Projected {
            q: self.heads(q, hp.n_head),
            k: self.heads(k, hp.n_head_kv),
            v: v.set_name(&format!("v-{}", self.il)),
        }
    }
    /// One qkv_proj whose rows are q | k | v (`Phi3Attention`).
    pub fn project_qkv_fused(&self, h: Tensor<'a>) -> Projected<'a> {
        let (ctx, hp) = (self.ctx, &self.m.hp);
        let y = self.linear(Slot::Qkv, None, h);
        let n = y.ne()[1];
        let (qd, kvd, row) = (
            hp.n_head * hp.head_dim,
            hp.n_head_kv * hp.head_dim,
            y.nb()[1],
        );
        let f = 4; // f32
        let head = |heads: usize, off: usize| {
            ctx.cont(ctx.view(
                y,
                &[hp.head_dim as i64, heads as i64, n],
                &[hp.head_dim * f, row],
                off * f,
            ))
        };
        let v = ctx.cont(ctx.view(y, &[kvd as i64, n], &[row], (qd + kvd) * f));
        Projected {
            q: head(hp.n_head, 0),
            k: head(hp.n_head_kv, qd),
            v: v.set_name(&format!("v-{}", self.il)),
        }
    }
    /// Q and K RMS-normed per head before RoPE (`q_norm`, `k_norm`).
    pub fn qk_norm(&self, p: Projected<'a>) -> Projected<'a> {
        Projected {
            q: self.norm(p.q, Slot::QNorm),
            k: self.norm(p.k, Slot::KNorm),
            v: p.v,
        }
    }
    /// RoPE on Q and K at `pos`.
    pub fn rope(&self, p: Projected<'a>, pos: Tensor<'a>) -> Qkv<'a> {
        let il = self.il;
        let q = rope(self.ctx, self.m, p.q, pos, il).set_name(&format!("q-{il}"));
        let k = rope(self.ctx, self.m, p.k, pos, il).set_name(&format!("k-{il}"));
        Qkv {
            q,
            k,
            k_raw: p.k,
            v: p.v,
        }
    }
    /// `residual + y`, or `y` alone when `residual` is false.
    pub fn residual(&self, x: Tensor<'a>, y: Tensor<'a>, residual: bool) -> Tensor<'a> {
        if residual {
            self.ctx.add(x, y)
        } else {
            y
        }
    }
    /// down(act(gate(h)) * up(h)) (`LlamaMLP`, `Gemma3MLP`).
    pub fn glu(&self, h: Tensor<'a>, act: Act) -> Tensor<'a> {
        let gate = self.linear(Slot::Gate, None, h);
        let up = self.linear(Slot::Up, None, h);
        let a = match act {
            Act::Silu => self.ctx.swiglu(gate, up),
            Act::GeluTanh => self.ctx.geglu(gate, up),
        };
        self.linear(Slot::Down, None, a)
    }
    /// down(silu(g) * u) with one gate_up_proj whose rows are gate | up (`Phi3MLP`).
    pub fn glu_fused(&self, h: Tensor<'a>) -> Tensor<'a> {
        let gu = self.linear(Slot::GateUp, None, h);
        self.linear(Slot::Down, None, self.ctx.swiglu_fused(gu))
    }
    /// Name a layer's intermediate result (`{what}-{il}`, as llama.cpp names them).
    pub fn named(&self, x: Tensor<'a>, what: &str) -> Tensor<'a> {
        x.set_name(&format!("{what}-{}", self.il))
    }
}

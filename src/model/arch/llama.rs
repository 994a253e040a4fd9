//! `llama`: SmolLM2, TinyLlama, Llama 2/3.x (with Llama 3's RoPE frequency factors), Mistral.
//! (`LlamaDecoderLayer`)

use super::ops::Act;
use super::{opt, t, Arch, ArchSpec, Attend, Block, Dim::*, LayerTensor, Qkv, RopeLayout, Slot};
use crate::ggml::Tensor;

/// The tensors of a `llama` layer; `qwen2` and `qwen3` start from these.
pub(super) const ATTN: [LayerTensor; 5] = [
    t(
        Slot::AttnNorm,
        "attn_norm.weight",
        "input_layernorm.weight",
        &[Embd],
    ),
    t(
        Slot::Q,
        "attn_q.weight",
        "self_attn.q_proj.weight",
        &[Embd, Q],
    ),
    t(
        Slot::K,
        "attn_k.weight",
        "self_attn.k_proj.weight",
        &[Embd, Kv],
    ),
    t(
        Slot::V,
        "attn_v.weight",
        "self_attn.v_proj.weight",
        &[Embd, Kv],
    ),
    t(
        Slot::O,
        "attn_output.weight",
        "self_attn.o_proj.weight",
        &[Q, Embd],
    ),
];
pub(super) const MLP: [LayerTensor; 4] = [
    t(
        Slot::FfnNorm,
        "ffn_norm.weight",
        "post_attention_layernorm.weight",
        &[Embd],
    ),
    t(
        Slot::Gate,
        "ffn_gate.weight",
        "mlp.gate_proj.weight",
        &[Embd, Ff],
    ),
    t(Slot::Up, "ffn_up.weight", "mlp.up_proj.weight", &[Embd, Ff]),
    t(
        Slot::Down,
        "ffn_down.weight",
        "mlp.down_proj.weight",
        &[Ff, Embd],
    ),
];
/// Q/K/V biases: optional in llama (`attention_bias`), required in qwen2.
pub(super) const BIASES: [LayerTensor; 3] = [
    opt(Slot::BiasQ, "attn_q.bias", "self_attn.q_proj.bias", &[Q]),
    opt(Slot::BiasK, "attn_k.bias", "self_attn.k_proj.bias", &[Kv]),
    opt(Slot::BiasV, "attn_v.bias", "self_attn.v_proj.bias", &[Kv]),
];

pub static SPEC: ArchSpec = ArchSpec {
    arch: Arch::Llama,
    hf_classes: &["LlamaForCausalLM", "MistralForCausalLM"],
    rope: RopeLayout::Interleaved,
    tensors: &[
        ATTN[0], ATTN[1], ATTN[2], ATTN[3], ATTN[4], BIASES[0], BIASES[1], BIASES[2], MLP[0],
        MLP[1], MLP[2], MLP[3],
    ],
    hf_norm_offset: 0.0,
    attn_in,
    layer,
};

/// input_layernorm, q/k/v_proj, RoPE.
pub fn attn_in<'a>(b: &Block<'a>, x: Tensor<'a>, pos: Tensor<'a>) -> Qkv<'a> {
    let h = b.named(b.norm(x, Slot::AttnNorm), "attn_norm");
    b.rope(b.project_qkv(h), pos)
}

/// The MLP of a pre-norm layer.
pub(super) enum Mlp {
    /// Separate gate and up projections with this activation.
    Glu(Act),
    /// One gate|up projection, SwiGLU (phi3).
    FusedSwiGlu,
}

/// Pre-norm attention and a gated MLP, each added to the residual; `attn_in` is the
/// architecture's attention inputs (qwen3 adds QK-norm to llama's, phi3 fuses Q|K|V).
pub(super) fn pre_norm_layer<'a>(
    b: &Block<'a>,
    x: Tensor<'a>,
    pos: Tensor<'a>,
    residual: bool,
    attend: Attend<'_, 'a>,
    attn_in: super::AttnInFn,
    mlp: Mlp,
) -> Tensor<'a> {
    let attn = b.named(attend(attn_in(b, x, pos)), "kqv");
    let o = b.named(b.linear(Slot::O, None, attn), "attn_out");
    let x = b.named(b.residual(x, o, residual), "ffn_inp");
    let h = b.named(b.norm(x, Slot::FfnNorm), "ffn_norm");
    let f = match mlp {
        Mlp::Glu(act) => b.glu(h, act),
        Mlp::FusedSwiGlu => b.glu_fused(h),
    };
    let f = b.named(f, "ffn_out");
    b.named(b.ctx.add(x, f), "l_out")
}

pub fn layer<'a>(
    b: &Block<'a>,
    x: Tensor<'a>,
    pos: Tensor<'a>,
    residual: bool,
    attend: Attend<'_, 'a>,
) -> Tensor<'a> {
    pre_norm_layer(b, x, pos, residual, attend, attn_in, Mlp::Glu(Act::Silu))
}

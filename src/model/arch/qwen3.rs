//! `qwen3`: llama's layer in the halves RoPE layout with QK-norm (Q and K RMS-normed per head
//! before RoPE), no biases by default. (`Qwen3DecoderLayer`)

use super::llama::{pre_norm_layer, Mlp, ATTN, BIASES, MLP};
use super::ops::Act;
use super::{t, Arch, ArchSpec, Attend, Block, Dim::Head, LayerTensor, Qkv, RopeLayout, Slot};
use crate::ggml::Tensor;

pub(super) const QK_NORM: [LayerTensor; 2] = [
    t(
        Slot::QNorm,
        "attn_q_norm.weight",
        "self_attn.q_norm.weight",
        &[Head],
    ),
    t(
        Slot::KNorm,
        "attn_k_norm.weight",
        "self_attn.k_norm.weight",
        &[Head],
    ),
];

pub static SPEC: ArchSpec = ArchSpec {
    arch: Arch::Qwen3,
    hf_classes: &["Qwen3ForCausalLM"],
    rope: RopeLayout::Halves,
    tensors: &[
        ATTN[0], ATTN[1], ATTN[2], ATTN[3], ATTN[4], BIASES[0], BIASES[1], BIASES[2], QK_NORM[0],
        QK_NORM[1], MLP[0], MLP[1], MLP[2], MLP[3],
    ],
    hf_norm_offset: 0.0,
    attn_in,
    layer,
};

/// input_layernorm, q/k/v_proj, q_norm/k_norm, RoPE.
pub fn attn_in<'a>(b: &Block<'a>, x: Tensor<'a>, pos: Tensor<'a>) -> Qkv<'a> {
    let h = b.named(b.norm(x, Slot::AttnNorm), "attn_norm");
    b.rope(b.qk_norm(b.project_qkv(h)), pos)
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

//! `phi3`: one fused Q|K|V projection and one fused gate|up projection (kept fused, as
//! llama.cpp keeps them), halves RoPE layout, SwiGLU. (`Phi3DecoderLayer`)

use super::llama::{pre_norm_layer, Mlp, ATTN, MLP};
use super::{t, Arch, ArchSpec, Attend, Block, Dim::*, Qkv, RopeLayout, Slot};
use crate::ggml::Tensor;

pub static SPEC: ArchSpec = ArchSpec {
    arch: Arch::Phi3,
    hf_classes: &["Phi3ForCausalLM"],
    rope: RopeLayout::Halves,
    tensors: &[
        ATTN[0],
        t(
            Slot::Qkv,
            "attn_qkv.weight",
            "self_attn.qkv_proj.weight",
            &[Embd, Qkv],
        ),
        ATTN[4],
        MLP[0],
        t(
            Slot::GateUp,
            "ffn_up.weight",
            "mlp.gate_up_proj.weight",
            &[Embd, Ff2],
        ),
        MLP[3],
    ],
    hf_norm_offset: 0.0,
    attn_in,
    layer,
};

/// input_layernorm, qkv_proj split into heads, RoPE.
pub fn attn_in<'a>(b: &Block<'a>, x: Tensor<'a>, pos: Tensor<'a>) -> Qkv<'a> {
    let h = b.named(b.norm(x, Slot::AttnNorm), "attn_norm");
    b.rope(b.project_qkv_fused(h), pos)
}

pub fn layer<'a>(
    b: &Block<'a>,
    x: Tensor<'a>,
    pos: Tensor<'a>,
    residual: bool,
    attend: Attend<'_, 'a>,
) -> Tensor<'a> {
    pre_norm_layer(b, x, pos, residual, attend, attn_in, Mlp::FusedSwiGlu)
}

//! `phi3`: one fused Q|K|V projection and one fused gate|up projection (kept fused, as
//! llama.cpp keeps them), halves RoPE layout, SwiGLU. (`Phi3DecoderLayer`)

use super::{t, Arch, ArchSpec, Attend, Block, Dim::*, Qkv, RopeLayout, Slot};
use crate::ggml::Tensor;

pub static SPEC: ArchSpec = ArchSpec {
    arch: Arch::Phi3,
    hf_classes: &["Phi3ForCausalLM"],
    rope: RopeLayout::Halves,
    tensors: &[
        t(
            Slot::AttnNorm,
            "attn_norm.weight",
            "input_layernorm.weight",
            &[Embd],
        ),
        t(
            Slot::Qkv,
            "attn_qkv.weight",
            "self_attn.qkv_proj.weight",
            &[Embd, Qkv],
        ),
        t(
            Slot::O,
            "attn_output.weight",
            "self_attn.o_proj.weight",
            &[Q, Embd],
        ),
        t(
            Slot::FfnNorm,
            "ffn_norm.weight",
            "post_attention_layernorm.weight",
            &[Embd],
        ),
        t(
            Slot::GateUp,
            "ffn_up.weight",
            "mlp.gate_up_proj.weight",
            &[Embd, Ff2],
        ),
        t(
            Slot::Down,
            "ffn_down.weight",
            "mlp.down_proj.weight",
            &[Ff, Embd],
        ),
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
    let attn = b.named(attend(attn_in(b, x, pos)), "kqv");
    let o = b.named(b.linear(Slot::O, None, attn), "attn_out");
    let x = b.named(b.residual(x, o, residual), "ffn_inp");
    let h = b.named(b.norm(x, Slot::FfnNorm), "ffn_norm");
    let f = b.named(b.glu_fused(h), "ffn_out");
    b.named(b.ctx.add(x, f), "l_out")
}

//! `gemma3`: QK-norm, RMSNorms after attention and after the MLP as well as before, GeGLU.
//! Outside the layer (hyperparameters): embeddings scaled by sqrt(n_embd), local
//! sliding-window layers with their own RoPE base between global ones, a final logit
//! soft-cap where set. (`Gemma3DecoderLayer`)

use super::llama::{ATTN, MLP};
use super::ops::Act;
use super::qwen3::QK_NORM;
use super::{t, Arch, ArchSpec, Attend, Block, Dim::*, RopeLayout, Slot};
use crate::ggml::Tensor;

pub static SPEC: ArchSpec = ArchSpec {
    arch: Arch::Gemma3,
    hf_classes: &["Gemma3ForCausalLM"],
    rope: RopeLayout::Halves,
    tensors: &[
        ATTN[0],
        ATTN[1],
        ATTN[2],
        ATTN[3],
        ATTN[4],
        QK_NORM[0],
        QK_NORM[1],
        t(
            Slot::PostAttnNorm,
            "post_attention_norm.weight",
            "post_attention_layernorm.weight",
            &[Embd],
        ),
        t(
            Slot::FfnNorm,
            "ffn_norm.weight",
            "pre_feedforward_layernorm.weight",
            &[Embd],
        ),
        MLP[1],
        MLP[2],
        MLP[3],
        t(
            Slot::PostFfnNorm,
            "post_ffw_norm.weight",
            "post_feedforward_layernorm.weight",
            &[Embd],
        ),
    ],
    // Gemma's norms compute x * (1 + w); the GGUF stores 1 + w.
    hf_norm_offset: 1.0,
    attn_in: super::qwen3::attn_in,
    layer,
};

pub fn layer<'a>(
    b: &Block<'a>,
    x: Tensor<'a>,
    pos: Tensor<'a>,
    residual: bool,
    attend: Attend<'_, 'a>,
) -> Tensor<'a> {
    let attn = b.named(attend(super::qwen3::attn_in(b, x, pos)), "kqv");
    let o = b.named(b.linear(Slot::O, None, attn), "attn_out");
    let o = b.norm(o, Slot::PostAttnNorm);
    let x = b.named(b.residual(x, o, residual), "ffn_inp");
    let h = b.named(b.norm(x, Slot::FfnNorm), "ffn_norm");
    let f = b.norm(
        b.named(b.glu(h, Act::GeluTanh), "ffn_out"),
        Slot::PostFfnNorm,
    );
    b.named(b.ctx.add(x, f), "l_out")
}

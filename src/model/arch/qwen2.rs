//! `qwen2`: llama's layer with required Q/K/V biases and the halves RoPE layout; usually tied
//! embeddings. (`Qwen2DecoderLayer`)

use super::llama::{ATTN, BIASES, MLP};
use super::{Arch, ArchSpec, LayerTensor, RopeLayout};

const fn required(t: LayerTensor) -> LayerTensor {
    LayerTensor {
        required: true,
        ..t
    }
}

pub static SPEC: ArchSpec = ArchSpec {
    arch: Arch::Qwen2,
    hf_classes: &["Qwen2ForCausalLM"],
    rope: RopeLayout::Halves,
    tensors: &[
        ATTN[0],
        ATTN[1],
        ATTN[2],
        ATTN[3],
        ATTN[4],
        required(BIASES[0]),
        required(BIASES[1]),
        required(BIASES[2]),
        MLP[0],
        MLP[1],
        MLP[2],
        MLP[3],
    ],
    hf_norm_offset: 0.0,
    attn_in: super::llama::attn_in,
    layer: super::llama::layer,
};

//! Model hyperparameters, read from the standard `{arch}.*` GGUF keys.

use crate::error::{Error, Result};
use crate::gguf::{Array, GgufFile};

/// Architectures the runtime supports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    /// `llama`: SmolLM2, TinyLlama, Llama 2/3.x. RoPE in the interleaved-pair layout (the GGUF
    /// converter permuted Q/K rows for it).
    Llama,
    /// `qwen2`: Q/K/V biases, NEOX RoPE layout (halves), usually tied embeddings.
    Qwen2,
}

/// How RoPE pairs dimensions of a head.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1): ggml's "normal" mode, used by `llama` GGUFs.
    Interleaved,
    /// Pairs (i, i + d/2): ggml's NEOX mode, used by `qwen2`.
    Halves,
}

impl Arch {
    pub fn from_name(name: &str) -> Result<Arch> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(Error::Unsupported(format!(
                "architecture `{other}` (famstream runs `llama` and `qwen2`)"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
    pub fn rope_layout(self) -> RopeLayout {
        match self {
            Arch::Llama => RopeLayout::Interleaved,
            Arch::Qwen2 => RopeLayout::Halves,
        }
    }
}

/// The numbers that define a model's shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    pub arch: Arch,
    /// Layers (`block_count`).
    pub n_layer: usize,
    /// Residual width (`embedding_length`).
    pub n_embd: usize,
    /// Query heads (`attention.head_count`).
    pub n_head: usize,
    /// Key/value heads (`attention.head_count_kv`).
    pub n_head_kv: usize,
    /// Head width (`attention.key_length`, else n_embd / n_head).
    pub head_dim: usize,
    /// MLP width (`feed_forward_length`).
    pub n_ff: usize,
    /// Training context length (`context_length`).
    pub n_ctx_train: usize,
    pub n_vocab: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    /// Rotated dimensions per head (`rope.dimension_count`, else head_dim).
    pub rope_dims: usize,
}

impl HParams {
    pub fn from_gguf(g: &GgufFile) -> Result<HParams> {
        let arch = Arch::from_name(g.architecture()?)?;
        let k = |s: &str| format!("{}.{s}", arch.name());
        let usize_of = |key: &str| -> Result<usize> { Ok(g.u32(key)? as usize) };
        let n_embd = usize_of(&k("embedding_length"))?;
        let n_head = usize_of(&k("attention.head_count"))?;
        let n_head_kv = match g.opt_u32(&k("attention.head_count_kv"))? {
            Some(v) => v as usize,
            None => n_head,
        };
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(Error::metadata(
                &k("attention.head_count_kv"),
                format!("{n_head} query heads cannot be grouped over {n_head_kv} KV heads"),
            ));
        }
        let head_dim = match g.opt_u32(&k("attention.key_length"))? {
            Some(v) => v as usize,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(Error::metadata(
                    &k("embedding_length"),
                    format!("{n_embd} is not divisible by {n_head} heads"),
                ))
            }
        };
        let n_vocab = match g.opt_u32(&k("vocab_size"))? {
            Some(v) => v as usize,
            None => match g.opt_array("tokenizer.ggml.tokens")? {
                Some(Array::String(t)) => t.len(),
                _ => match g.tensor("token_embd.weight") {
                    Some(t) if t.ne.len() == 2 => t.ne[1] as usize,
                    _ => {
                        return Err(Error::metadata(
                            "tokenizer.ggml.tokens",
                            "missing: vocabulary size unknown",
                        ))
                    }
                },
            },
        };
        let hp = HParams {
            arch,
            n_layer: usize_of(&k("block_count"))?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: usize_of(&k("feed_forward_length"))?,
            n_ctx_train: usize_of(&k("context_length"))?,
            n_vocab,
            rms_eps: g.f32(&k("attention.layer_norm_rms_epsilon"))?,
            rope_freq_base: g.opt_f32(&k("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_dims: match g.opt_u32(&k("rope.dimension_count"))? {
                Some(v) => v as usize,
                None => head_dim,
            },
        };
        if hp.n_layer == 0 || hp.n_embd == 0 || hp.n_ff == 0 || hp.n_vocab == 0 || hp.head_dim == 0
        {
            return Err(Error::metadata(
                &k("block_count"),
                format!("degenerate hyperparameters {hp:?}"),
            ));
        }
        if hp.rope_dims > hp.head_dim || !hp.rope_dims.is_multiple_of(2) {
            return Err(Error::metadata(
                &k("rope.dimension_count"),
                format!("{} rotated dims for heads of {}", hp.rope_dims, hp.head_dim),
            ));
        }
        Ok(hp)
    }

    /// Bytes of K plus V for one token over all layers at `bytes_per_elem`.
    pub fn kv_bytes_per_token(&self, bytes_per_elem: usize) -> usize {
        2 * self.n_layer * self.n_head_kv * self.head_dim * bytes_per_elem
    }
}

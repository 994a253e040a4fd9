//! Model hyperparameters, read from the standard `{arch}.*` GGUF keys.

use crate::error::{Error, Result};
use crate::gguf::{Array, GgufFile};

/// Architectures the runtime supports. Each has a row in the architecture table
/// (`model::arch`), with its tensors and its layer function.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    /// `llama`: SmolLM2, TinyLlama, Llama 2/3.x. RoPE in the interleaved-pair layout (the GGUF
    /// converter permuted Q/K rows for it).
    Llama,
    /// `qwen2`: Q/K/V biases, NEOX RoPE layout (halves), usually tied embeddings.
    Qwen2,
    /// `qwen3`: `qwen2` without the biases, with QK-norm (Q and K RMS-normed per head).
    Qwen3,
    /// `phi3`: fused Q|K|V (`attn_qkv`) and gate|up (`ffn_up`) projections, NEOX RoPE.
    Phi3,
    /// `gemma3`: RMS-normed Q and K per head (QK-norm), norms after attention and after the
    /// MLP as well as before, GeGLU MLP, embeddings scaled by sqrt(n_embd), NEOX RoPE, and
    /// local sliding-window layers (their own RoPE base) between global ones.
    Gemma3,
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
            "qwen3" => Ok(Arch::Qwen3),
            "gemma3" => Ok(Arch::Gemma3),
            "phi3" => Ok(Arch::Phi3),
            other => Err(Error::Unsupported(format!(
                "architecture `{other}` (famstream runs `llama`, `qwen2`, `qwen3`, `gemma3` and \
                 `phi3`)"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
        }
    }
}

/// The RoPE position scale the file's `{arch}.rope.scaling.*` keys ask for: 1 without scaling,
/// 1 / factor for `linear`. Other kinds (YaRN, LongRoPE) change more than positions and are
/// refused, naming them: run as if absent they give wrong positions with no error. (Llama 3's
/// "llama3" scaling comes as per-dimension frequency factors, `rope_freqs.weight`, which the
/// model applies; see `Model::rope_freqs`.)
fn rope_scaling(g: &GgufFile, arch: Arch) -> Result<f32> {
    let ty_key = format!("{}.rope.scaling.type", arch.name());
    let factor_key = format!("{}.rope.scaling.factor", arch.name());
    let ty = g.opt_str(&ty_key)?;
    let factor = g.opt_f32(&factor_key)?;
    match (ty, factor) {
        (None | Some("none"), None) => Ok(1.0),
        (None | Some("none"), Some(f)) if f == 0.0 || f == 1.0 => Ok(1.0),
        (Some("linear"), Some(f)) if f > 0.0 && f.is_finite() => Ok(1.0 / f),
        (Some("linear"), _) => Err(Error::metadata(
            &factor_key,
            format!("linear RoPE scaling needs a positive factor, got {factor:?}"),
        )),
        (ty, factor) => Err(Error::Unsupported(format!(
            "{}: RoPE scaling `{}` (`{ty_key}`), factor {} (`{factor_key}`); famstream \
             supports linear scaling and Llama 3 frequency factors",
            g.path().display(),
            ty.unwrap_or("unnamed"),
            factor.map_or("unset".to_string(), |f| f.to_string())
        ))),
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
    /// Native window of the local (sliding-window) layers (`attention.sliding_window`; 0 when
    /// every layer is global). A local layer's token sees the `n_swa` latest tokens, itself
    /// included, and neither FAM nor sinks: memory policies act on the global layers.
    pub n_swa: usize,
    /// Per layer: whether it is a local sliding-window layer.
    pub swa_layers: Vec<bool>,
    /// RoPE base of the local layers (`rope.freq_base_swa`, else 10000 as in llama.cpp).
    pub rope_freq_base_swa: f32,
    /// Scale of the attention logits (1/sqrt(head_dim) unless the architecture says otherwise).
    pub attn_scale: f32,
    /// Token embeddings are multiplied by this (gemma3: sqrt(n_embd)).
    pub embd_scale: Option<f32>,
    /// `final_logit_softcapping`: logits become `c * tanh(logits / c)` (0: none).
    pub logit_softcap: f32,
    /// Linear RoPE scaling (`rope.scaling.type = linear`): positions are multiplied by this
    /// (1 / `rope.scaling.factor`) in the global layers. 1: none.
    pub rope_freq_scale: f32,
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
        let n_layer = usize_of(&k("block_count"))?;
        let n_swa = match g.opt_u32(&k("attention.sliding_window"))? {
            Some(v) if arch == Arch::Gemma3 => v as usize,
            // llama.cpp runs phi3 without its sliding window (its converters do not say which
            // layers have one); famstream does the same, so both agree on these files.
            Some(_) if arch == Arch::Phi3 => 0,
            Some(v) if v > 0 => {
                return Err(Error::Unsupported(format!(
                    "sliding-window attention (`{}` = {v}) in a `{}` model",
                    k("attention.sliding_window"),
                    arch.name()
                )))
            }
            _ => 0,
        };
        let pattern_key = k("attention.sliding_window_pattern");
        let swa_layers: Vec<bool> = if n_swa == 0 {
            vec![false; n_layer]
        } else {
            match g.get(&pattern_key) {
                Some(crate::gguf::Value::Array(Array::Bool(v))) if v.len() == n_layer => v.clone(),
                Some(crate::gguf::Value::Array(_)) => {
                    return Err(Error::metadata(
                        &pattern_key,
                        format!("expected {n_layer} booleans, one per layer"),
                    ))
                }
                _ => {
                    // Every `pattern`-th layer is global (gemma3: 6, llama.cpp's default).
                    let p = g.opt_u32(&pattern_key)?.unwrap_or(6) as usize;
                    (0..n_layer).map(|il| p == 0 || il % p < p - 1).collect()
                }
            }
        };
        let hp = HParams {
            arch,
            n_layer,
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
            n_swa,
            swa_layers,
            rope_freq_base_swa: g.opt_f32(&k("rope.freq_base_swa"))?.unwrap_or(10_000.0),
            // gemma_pytorch's `query_pre_attn_scalar`: head_dim for every Gemma 3 but the 27B
            // (62 layers), which scales by n_embd / n_head, as llama.cpp does.
            attn_scale: if arch == Arch::Gemma3 && n_layer == 62 {
                1.0 / ((n_embd / n_head) as f32).sqrt()
            } else {
                1.0 / (head_dim as f32).sqrt()
            },
            embd_scale: (arch == Arch::Gemma3).then(|| (n_embd as f32).sqrt()),
            logit_softcap: g.opt_f32(&k("final_logit_softcapping"))?.unwrap_or(0.0),
            rope_freq_scale: rope_scaling(g, arch)?,
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

    /// Whether layer `il` is a local sliding-window layer.
    pub fn is_swa(&self, il: usize) -> bool {
        self.swa_layers.get(il).copied().unwrap_or(false)
    }
    /// RoPE position scale of layer `il` (local layers are never scaled, as in llama.cpp).
    pub fn rope_scale(&self, il: usize) -> f32 {
        if self.is_swa(il) {
            1.0
        } else {
            self.rope_freq_scale
        }
    }
    /// RoPE base of layer `il`.
    pub fn rope_base(&self, il: usize) -> f32 {
        if self.is_swa(il) {
            self.rope_freq_base_swa
        } else {
            self.rope_freq_base
        }
    }

    /// Bytes of K plus V for one token over all layers at `bytes_per_elem`.
    pub fn kv_bytes_per_token(&self, bytes_per_elem: usize) -> usize {
        2 * self.n_layer * self.n_head_kv * self.head_dim * bytes_per_elem
    }
}

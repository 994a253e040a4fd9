//! Hugging Face checkpoints: `config.json`, tensor names, tokenizer files -> GGUF metadata.
//!
//! The HF -> GGUF names of layer tensors are the architecture table's
//! ([`crate::model::arch`]); the per-architecture quirks are data plus two small functions
//! ([`gguf_name`], [`permute_rows`]), as in llama.cpp's converter.

use super::safetensors::{SafeTensors, StTensor};
use crate::error::{Error, Result};
use crate::gguf::{Array, Value};
use crate::model::arch::Slot;
use crate::model::{Arch, RopeLayout};
use crate::tokenizer::token_type;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What config.json says, in GGUF terms.
#[derive(Clone, Debug)]
pub struct HfConfig {
    pub arch: Arch,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub tied: bool,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Linear RoPE scaling factor (of the global layers, for gemma3).
    pub rope_linear: Option<f32>,
    /// Llama 3 RoPE frequency factors, one per rotated pair (`rope_freqs.weight`).
    pub rope_freqs: Option<Vec<f32>>,
    /// gemma3: the local layers' window, RoPE base and which layers they are.
    pub sliding_window: Option<usize>,
    pub rope_theta_local: Option<f32>,
    pub swa_layers: Option<Vec<bool>>,
    /// `final_logit_softcapping`.
    pub final_softcap: Option<f32>,
}

/// The `rope_parameters` (transformers 5) or `rope_scaling` (4.x) entry that applies to the
/// global layers, with `rope_theta` merged in where 4.x kept it at the top level.
fn rope_params(c: &Json) -> Json {
    let p = if c["rope_parameters"].is_object() {
        &c["rope_parameters"]
    } else {
        &c["rope_scaling"]
    };
    let p = if p["full_attention"].is_object() {
        &p["full_attention"]
    } else {
        p
    };
    let mut p = if p.is_object() {
        p.clone()
    } else {
        Json::Object(Default::default())
    };
    if p.get("rope_theta").is_none() {
        if let Some(t) = c["rope_theta"].as_f64() {
            p["rope_theta"] = Json::from(t);
        }
    }
    if p.get("rope_type").is_none() {
        if let Some(t) = p.get("type").cloned() {
            p["rope_type"] = t;
        }
    }
    p
}

/// Llama 3's frequency factors, computed as llama.cpp's converter does (`generate_extra_tensors`
/// in conversion/llama.py), so both converters write the same tensor.
fn llama3_rope_factors(p: &Json, head_dim: usize, base: f32) -> Vec<f32> {
    let factor = p["factor"].as_f64().unwrap_or(8.0) as f32;
    let low = p["low_freq_factor"].as_f64().unwrap_or(1.0) as f32;
    let high = p["high_freq_factor"].as_f64().unwrap_or(4.0) as f32;
    let old_ctx = p["original_max_position_embeddings"]
        .as_f64()
        .unwrap_or(8192.0) as f32;
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

fn read_json(path: &Path) -> Result<Json> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read", e))?;
    serde_json::from_str(&s)
        .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", path.display())))
}

fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

impl HfConfig {
    pub fn read(dir: &Path) -> Result<HfConfig> {
        let path = dir.join("config.json");
        let c = read_json(&path)?;
        let archs: Vec<&str> = c["architectures"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let class = archs.first().copied();
        let Some(arch) = class.and_then(Arch::from_hf_class) else {
            return Err(Error::Unsupported(format!(
                "{}: architecture {class:?} (famstream converts {})",
                path.display(),
                Arch::hf_class_list()
            )));
        };
        let need = |k: &str| -> Result<usize> {
            c[k].as_u64().map(|v| v as usize).ok_or_else(|| {
                Error::Invalid(format!("{}: `{k}` missing or not a number", path.display()))
            })
        };
        let n_embd = need("hidden_size")?;
        let n_head = need("num_attention_heads")?;
        let n_head_kv = c["num_key_value_heads"]
            .as_u64()
            .map_or(n_head, |v| v as usize);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 || n_embd % n_head != 0 {
            return Err(Error::Invalid(format!(
                "{}: {n_head} heads / {n_head_kv} KV heads / hidden {n_embd} are inconsistent",
                path.display()
            )));
        }
        let rope = rope_params(&c);
        let rope_theta = rope["rope_theta"].as_f64().unwrap_or(10_000.0) as f32;
        let partial = rope["partial_rotary_factor"]
            .as_f64()
            .or_else(|| c["partial_rotary_factor"].as_f64())
            .unwrap_or(1.0);
        if partial != 1.0 {
            return Err(Error::Unsupported(format!(
                "{}: partial RoPE (`partial_rotary_factor` {partial})",
                path.display()
            )));
        }
        let head_dim = c["head_dim"]
            .as_u64()
            .map_or(n_embd / n_head, |v| v as usize);
        let (mut rope_linear, mut rope_freqs) = (None, None);
        match rope["rope_type"].as_str() {
            None | Some("default") => {}
            Some("linear") => {
                let f = rope["factor"]
                    .as_f64()
                    .filter(|f| *f > 0.0)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "{}: linear RoPE scaling without a positive `factor`",
                            path.display()
                        ))
                    })?;
                rope_linear = Some(f as f32);
            }
            Some("llama3") if arch == Arch::Llama => {
                rope_freqs = Some(llama3_rope_factors(&rope, head_dim, rope_theta));
            }
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "{}: RoPE scaling `{other}` (famstream converts linear scaling and, for \
                     llama, \"llama3\")",
                    path.display()
                )))
            }
        }
        let (mut sliding_window, mut rope_theta_local, mut swa_layers) = (None, None, None);
        if arch == Arch::Gemma3 {
            // llama.cpp scales gemma3's attention by 1/sqrt(head_dim) (n_embd / n_head for the
            // 27B): a checkpoint that asks for anything else would run wrong there and here.
            if let Some(s) = c["query_pre_attn_scalar"].as_f64() {
                let ok = s as usize == head_dim || s as usize == n_embd / n_head;
                if !ok {
                    return Err(Error::Unsupported(format!(
                        "{}: gemma3 `query_pre_attn_scalar` {s} (neither head_dim {head_dim} \
                         nor hidden_size / heads)",
                        path.display()
                    )));
                }
            }
            // Final logit softcapping runs (see `metadata`); attention softcapping does not.
            if c["attn_logit_softcapping"].as_f64().is_some() {
                return Err(Error::Unsupported(format!(
                    "{}: gemma3 `attn_logit_softcapping`",
                    path.display()
                )));
            }
            sliding_window = c["sliding_window"].as_u64().map(|v| v as usize);
            let params = if c["rope_parameters"].is_object() {
                &c["rope_parameters"]
            } else {
                &Json::Null
            };
            rope_theta_local = params["sliding_attention"]["rope_theta"]
                .as_f64()
                .or_else(|| c["rope_local_base_freq"].as_f64())
                .map(|v| v as f32);
            swa_layers = c["layer_types"].as_array().map(|a| {
                a.iter()
                    .map(|t| t.as_str() == Some("sliding_attention"))
                    .collect()
            });
        }
        let id = |k: &str| c[k].as_u64().map(|v| v as u32);
        Ok(HfConfig {
            arch,
            n_embd,
            n_ff: need("intermediate_size")?,
            n_layer: need("num_hidden_layers")?,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx: need("max_position_embeddings")?,
            n_vocab: need("vocab_size")?,
            rms_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
            rope_theta,
            tied: c["tie_word_embeddings"].as_bool().unwrap_or(false),
            bos: id("bos_token_id"),
            eos: id("eos_token_id").or_else(|| {
                c["eos_token_id"]
                    .as_array()
                    .and_then(|a| a.first()?.as_u64())
                    .map(|v| v as u32)
            }),
            rope_linear,
            rope_freqs,
            sliding_window,
            rope_theta_local,
            swa_layers,
            final_softcap: c["final_logit_softcapping"].as_f64().map(|v| v as f32),
        })
    }

    /// The `{arch}.*` keys.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let a = self.arch.name();
        let k = |s: &str| format!("{a}.{s}");
        let mut v = vec![
            (k("context_length"), Value::U32(self.n_ctx as u32)),
            (k("embedding_length"), Value::U32(self.n_embd as u32)),
            (k("block_count"), Value::U32(self.n_layer as u32)),
            (k("feed_forward_length"), Value::U32(self.n_ff as u32)),
            (k("attention.head_count"), Value::U32(self.n_head as u32)),
            (
                k("attention.head_count_kv"),
                Value::U32(self.n_head_kv as u32),
            ),
            (
                k("attention.layer_norm_rms_epsilon"),
                Value::F32(self.rms_eps),
            ),
            (k("rope.freq_base"), Value::F32(self.rope_theta)),
        ];
        if self.head_dim != self.n_embd / self.n_head {
            v.push((k("attention.key_length"), Value::U32(self.head_dim as u32)));
            v.push((
                k("attention.value_length"),
                Value::U32(self.head_dim as u32),
            ));
        }
        if let Some(f) = self.rope_linear {
            v.push((k("rope.scaling.type"), Value::String("linear".into())));
            v.push((k("rope.scaling.factor"), Value::F32(f)));
        }
        if let Some(c) = self.final_softcap {
            v.push((k("final_logit_softcapping"), Value::F32(c)));
        }
        if let Some(w) = self.sliding_window {
            v.push((k("attention.sliding_window"), Value::U32(w as u32)));
            if let Some(t) = self.rope_theta_local {
                v.push((k("rope.freq_base_swa"), Value::F32(t)));
            }
            if let Some(layers) = &self.swa_layers {
                v.push((
                    k("attention.sliding_window_pattern"),
                    Value::Array(Array::Bool(layers.clone())),
                ));
            }
        }
        if self.arch == Arch::Llama {
            v.push((k("rope.dimension_count"), Value::U32(self.head_dim as u32)));
            v.push((k("vocab_size"), Value::U32(self.n_vocab as u32)));
        }
        v
    }
}

/// How a converted tensor's values change on the way: llama-style Q/K rows are permuted for
/// `n` heads; Gemma's norms, `x * (1 + w)` in transformers, get their 1 added.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Transform {
    pub permute: Option<usize>,
    pub add: f32,
}

/// GGUF name of an HF tensor, and how its values change (see [`Transform`]). Layer tensors are
/// named by the architecture's table ([`crate::model::arch::ArchSpec::tensors`]).
pub fn gguf_name(hf: &str, cfg: &HfConfig) -> Option<(String, Transform)> {
    const TOP: &[(&str, &str)] = &[
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    let spec = cfg.arch.spec();
    let add = if hf.ends_with("norm.weight") {
        spec.hf_norm_offset
    } else {
        0.0
    };
    let plain = Transform { permute: None, add };
    if let Some((_, g)) = TOP.iter().find(|(h, _)| *h == hf) {
        return Some((g.to_string(), plain));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (il, suffix) = rest.split_once('.')?;
    let il: usize = il.parse().ok()?;
    let t = spec.tensors.iter().find(|t| t.hf == suffix)?;
    // llama.cpp's `llama` RoPE pairs adjacent dims; HF's rotate_half pairs halves: permute Q/K
    // rows (weights and biases) so the two agree. The other layouts are HF's own.
    let permute = match (spec.rope, t.slot) {
        (RopeLayout::Interleaved, Slot::Q | Slot::BiasQ) => Some(cfg.n_head),
        (RopeLayout::Interleaved, Slot::K | Slot::BiasK) => Some(cfg.n_head_kv),
        _ => None,
    };
    Some((format!("blk.{il}.{}", t.gguf), Transform { permute, add }))
}

/// llama.cpp's `permute`: within each head, rows (a, b) with a in {0,1} (halves) become (b, a)
/// (interleaved). `data` is row-major with `row_len` values per row.
pub fn permute_rows(data: &[f32], row_len: usize, n_head: usize) -> Vec<f32> {
    let rows = data.len() / row_len;
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for a in 0..2 {
            for b in 0..half {
                let src = h * hd + a * half + b;
                let dst = h * hd + b * 2 + a;
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

/// All tensors of the checkpoint: one or many shards.
pub struct HfWeights {
    pub shards: Vec<SafeTensors>,
    /// name -> (shard index, tensor)
    pub index: Vec<(String, usize, StTensor)>,
}

impl HfWeights {
    pub fn open(dir: &Path) -> Result<HfWeights> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let idx = read_json(&index_path)?;
            let map = idx["weight_map"].as_object().ok_or_else(|| {
                Error::Invalid(format!("{}: no weight_map", index_path.display()))
            })?;
            let mut f: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            f.sort();
            f.dedup();
            f.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut shards = Vec::new();
        for f in &files {
            if !f.exists() {
                return Err(Error::Invalid(format!(
                    "missing shard {} (named by the checkpoint)",
                    f.display()
                )));
            }
            shards.push(SafeTensors::open(f)?);
        }
        let mut index = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            for (n, t) in &s.tensors {
                index.push((n.clone(), i, t.clone()));
            }
        }
        Ok(HfWeights { shards, index })
    }
}

/// Tokenizer metadata (`tokenizer.ggml.*`) from tokenizer.json + tokenizer_config.json.
pub fn tokenizer_metadata(dir: &Path, cfg: &HfConfig) -> Result<Vec<(String, Value)>> {
    let tpath = dir.join("tokenizer.json");
    let t = read_json(&tpath)?;
    let tc = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let gc = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
    let model = &t["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(Error::Unsupported(format!(
            "{}: tokenizer model {:?} (BPE only)",
            tpath.display(),
            model["type"]
        )));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| Error::Invalid(format!("{}: no model.vocab", tpath.display())))?;
    let mut tokens: Vec<Option<String>> = vec![None; cfg.n_vocab];
    let mut put = |id: u64, s: &str| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: token id {id} >= vocab_size {}",
                tpath.display(),
                cfg.n_vocab
            ))
        })?;
        *slot = Some(s.to_string());
        Ok(())
    };
    for (s, id) in vocab {
        put(id.as_u64().unwrap_or(u64::MAX), s)?;
    }
    let mut special: HashMap<u64, bool> = HashMap::new();
    for a in t["added_tokens"].as_array().into_iter().flatten() {
        let id = a["id"].as_u64().unwrap_or(u64::MAX);
        put(id, a["content"].as_str().unwrap_or(""))?;
        special.insert(id, a["special"].as_bool().unwrap_or(false));
    }
    let spm = model["byte_fallback"].as_bool().unwrap_or(false);
    let unk = model["unk_token"].as_str();
    let mut types = Vec::with_capacity(cfg.n_vocab);
    let mut texts = Vec::with_capacity(cfg.n_vocab);
    for (id, tok) in tokens.into_iter().enumerate() {
        let (text, ty) = match tok {
            None => (format!("[PAD{id}]"), token_type::UNUSED),
            Some(s) => {
                let ty = match special.get(&(id as u64)) {
                    Some(true) => token_type::CONTROL,
                    Some(false) => token_type::USER_DEFINED,
                    None if Some(s.as_str()) == unk => token_type::UNKNOWN,
                    None if spm && s.len() == 6 && s.starts_with("<0x") && s.ends_with('>') => {
                        token_type::BYTE
                    }
                    None => token_type::NORMAL,
                };
                (s, ty)
            }
        };
        texts.push(text);
        types.push(ty);
    }
    let merges: Vec<String> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(p) if p.len() == 2 => {
                Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?))
            }
            _ => None,
        })
        .collect();
    let pre = detect_pre(&t["pre_tokenizer"]);
    let id_of = |v: &Json| -> Option<u32> {
        let s = v.as_str().or_else(|| v["content"].as_str())?;
        texts.iter().position(|x| x == s).map(|i| i as u32)
    };
    let bos = id_of(&tc["bos_token"])
        .or(cfg.bos)
        .or(gc["bos_token_id"].as_u64().map(|v| v as u32));
    let eos = id_of(&tc["eos_token"])
        .or(cfg.eos)
        .or(gc["eos_token_id"].as_u64().map(|v| v as u32));
    let pad = id_of(&tc["pad_token"]);
    let mut md: Vec<(String, Value)> = vec![(
        "tokenizer.ggml.model".into(),
        Value::String(if spm { "llama" } else { "gpt2" }.into()),
    )];
    if !spm {
        md.push(("tokenizer.ggml.pre".into(), Value::String(pre.into())));
    }
    if spm {
        // SentencePiece BPE merges by score: earlier pieces (lower ids) merge first.
        let scores: Vec<f32> = (0..texts.len())
            .map(|i| {
                if types[i] == token_type::NORMAL {
                    -(i as f32)
                } else {
                    0.0
                }
            })
            .collect();
        md.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(Array::F32(scores)),
        ));
    }
    md.push((
        "tokenizer.ggml.tokens".into(),
        Value::Array(Array::String(texts)),
    ));
    md.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(Array::I32(types)),
    ));
    if !spm {
        md.push((
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::String(merges)),
        ));
    }
    if let Some(b) = bos {
        md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(e) = eos {
        md.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    if let Some(u) = unk.and_then(|u| vocab.get(u)).and_then(|v| v.as_u64()) {
        md.push((
            "tokenizer.ggml.unknown_token_id".into(),
            Value::U32(u as u32),
        ));
    }
    if let Some(p) = pad {
        md.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(p)));
    }
    let add_bos = tc["add_bos_token"].as_bool().unwrap_or(spm);
    md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    md.push((
        "tokenizer.ggml.add_eos_token".into(),
        Value::Bool(tc["add_eos_token"].as_bool().unwrap_or(false)),
    ));
    let template = match &tc["chat_template"] {
        Json::String(s) => Some(s.clone()),
        Json::Array(a) => a
            .iter()
            .find(|x| x["name"] == "default")
            .and_then(|x| x["template"].as_str())
            .map(str::to_string),
        _ => None,
    };
    if let Some(tpl) = template {
        md.push(("tokenizer.chat_template".into(), Value::String(tpl)));
    }
    Ok(md)
}

/// llama.cpp's pre-tokenizer name for a tokenizer.json `pre_tokenizer`.
fn detect_pre(p: &Json) -> &'static str {
    let s = p.to_string();
    let digits_individual = s.contains("\"Digits\"") && s.contains("\"individual_digits\":true");
    if digits_individual && s.contains("ByteLevel") {
        "smollm"
    } else if s.contains("\\\\p{N}{1,3}") || s.contains("\\p{N}{1,3}") {
        "llama-bpe"
    } else if s.contains("\\\\p{N}") && s.contains("Split") {
        "qwen2"
    } else {
        "gpt-2" // llama.cpp's name for the plain GPT-2 pattern
    }
}

//! `famstream convert`: Hugging Face checkpoints or GGUF files -> quantized GGUF.
//!
//! Brief overview. A *plan* lists every output tensor with its GGUF name, shape, chosen type and
//! where its values come from (a safetensors tensor, maybe with llama's Q/K row permutation, or
//! a tensor of an input GGUF). The writer streams the plan: one tensor at a time is read from the
//! mapped input, converted to f32, quantized by ggml's own quantizers (rows in parallel with
//! rayon) and written, so memory stays around the size of the largest tensor. The output is
//! written to a temporary file and renamed at the end.
//!
//! Types: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k and the mixed `q4_k_m`.
//! 1-D tensors (norms, biases) stay f32; below 8 bits the LM head gets q6_k. A K-quant needs rows that are a multiple of 256; where
//! a row is not (SmolLM2: 576), the tensor falls back as llama.cpp does (q4_k -> q5_0,
//! q5_k -> q5_1, q6_k -> q8_0) and the fallback is reported.

pub mod hf;
pub mod safetensors;

use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use crate::ggml;
use crate::gguf::{GgufFile, GgufWriter, Value};
use crate::model::arch::Dims;
use crate::settings::FamSettings;
use hf::{gguf_name, permute_rows, HfConfig, HfWeights};
use rayon::prelude::*;
use std::path::Path;

/// A conversion target: one type for all matrices, or a per-tensor recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Type(GgmlType),
    /// llama.cpp's Q4_K_M: Q4_K, with Q6_K for the LM head and for attn_v/ffn_down of some
    /// layers (the first and last eighth, and every third in between).
    Q4KM,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target> {
        let t = match s.to_ascii_lowercase().as_str() {
            "q4_k_m" => return Ok(Target::Q4KM),
            "f32" => GgmlType::F32,
            "f16" => GgmlType::F16,
            "bf16" => GgmlType::BF16,
            "q8_0" => GgmlType::Q8_0,
            "q4_0" => GgmlType::Q4_0,
            "q4_1" => GgmlType::Q4_1,
            "q5_0" => GgmlType::Q5_0,
            "q5_1" => GgmlType::Q5_1,
            "q4_k" => GgmlType::Q4_K,
            "q5_k" => GgmlType::Q5_K,
            "q6_k" => GgmlType::Q6_K,
            other => {
                return Err(Error::Invalid(format!(
                    "unknown type `{other}` (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m)"
                )))
            }
        };
        Ok(Target::Type(t))
    }
    /// llama.cpp's `general.file_type` code.
    fn file_type(self) -> u32 {
        match self {
            Target::Q4KM => 15,
            Target::Type(t) => match t.0 {
                0 => 0,
                1 => 1,
                2 => 2,
                3 => 3,
                8 => 7,
                6 => 8,
                7 => 9,
                12 => 14,
                13 => 16,
                14 => 18,
                30 => 32,
                _ => 0,
            },
        }
    }
}

/// The nearest type with 32-element blocks for a K-quant that does not fit a row.
fn fallback(t: GgmlType) -> GgmlType {
    match t.0 {
        12 => GgmlType::Q5_0,
        13 => GgmlType::Q5_1,
        14 => GgmlType::Q8_0,
        _ => GgmlType::F16,
    }
}

fn use_more_bits(il: usize, n_layer: usize) -> bool {
    // The first and last eighth of the layers, and every third layer in between.
    il < n_layer / 8 || il >= 7 * n_layer / 8 || (il - n_layer / 8) % 3 == 2
}

/// The type a tensor gets: (wanted, used).
fn choose(
    target: Target,
    name: &str,
    ne: &[u64],
    n_layer: usize,
    tied: bool,
) -> (GgmlType, GgmlType) {
    if ne.len() < 2 {
        return (GgmlType::F32, GgmlType::F32);
    }
    let head = name == "output.weight" || (tied && name == "token_embd.weight");
    let want = match target {
        // As llama.cpp does: below 8 bits the LM head (or the tied embedding that serves as
        // one) gets Q6_K; it decides every next-token distribution and quantizes badly.
        Target::Type(t) if head && matches!(t.0, 2 | 3 | 6 | 7 | 12 | 13) => GgmlType::Q6_K,
        Target::Type(t) => t,
        Target::Q4KM => {
            let layer = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<usize>().ok());
            let more = layer.is_some_and(|il| use_more_bits(il, n_layer))
                && (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"));
            if head || more {
                GgmlType::Q6_K
            } else {
                GgmlType::Q4_K
            }
        }
    };
    let used = if ne[0].is_multiple_of(want.block_size()) {
        want
    } else {
        let f = fallback(want);
        if ne[0].is_multiple_of(f.block_size()) {
            f
        } else {
            GgmlType::F16
        }
    };
    (want, used)
}

/// Where a planned tensor's values come from.
enum Source {
    /// Shard index and tensor of an HF checkpoint, and how its values change on the way.
    Hf {
        shard: usize,
        tensor: safetensors::StTensor,
        transform: hf::Transform,
    },
    /// Values the converter computes (Llama 3's RoPE frequency factors).
    Values(Vec<f32>),
    /// A tensor of the input GGUF (by index); copied as bytes when the type is unchanged. With
    /// `Some(pair)` (an index into the adapter's pairs), the adapter's `scale * B A` is added
    /// in f32 first.
    Gguf(usize, Option<usize>),
}

struct Planned {
    name: String,
    ne: Vec<u64>,
    wanted: GgmlType,
    ty: GgmlType,
    source: Source,
}

/// Conversion settings.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// `None` with a GGUF input: keep every tensor as it is (metadata rewrite only).
    pub target: Option<Target>,
    /// FAM defaults to store in `fam.*` (`None`: keep the input's, or write none for HF input).
    pub fam: Option<FamSettings>,
    /// `general.name`.
    pub name: Option<String>,
}

/// What a conversion did.
#[derive(Clone, Debug, Default)]
pub struct ConvertReport {
    pub n_tensors: usize,
    pub n_params: u64,
    pub tensor_bytes: u64,
    pub bits_per_weight: f64,
    /// (tensor, wanted type, used type) where a type did not fit.
    pub fallbacks: Vec<(String, GgmlType, GgmlType)>,
    pub file_bytes: u64,
}

/// Progress: (tensor name, bytes done, bytes total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Convert `input` (an HF checkpoint directory or a GGUF file) into a GGUF file at `output`.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<ConvertReport> {
    convert_with_adapter(input, output, opts, None, progress)
}

/// [`convert`], merging a LoRA `adapter` into the weights (GGUF input only): each adapted
/// weight becomes `W + scale * B A` (dequantized, summed in f32, quantized to its output type:
/// the `--type` asked for, else its own); the adapter's `fam.*` keys are copied (`opts.fam`
/// still overrides them) and its `fam.init_memory` replaces the input's. A learned initial FAM
/// is written as a metadata array ([`crate::init_memory`]), so llama.cpp reads the result. The
/// result runs without the adapter.
pub fn convert_with_adapter(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    adapter: Option<&Path>,
    progress: Progress,
) -> Result<ConvertReport> {
    if input.is_dir() {
        if let Some(a) = adapter {
            return Err(Error::adapter(
                a,
                "adapters are merged into GGUF models; convert the checkpoint first",
            ));
        }
        convert_hf(input, output, opts, progress)
    } else if input.is_file() {
        convert_gguf(input, output, opts, adapter, progress)
    } else {
        Err(Error::Invalid(format!(
            "{}: no such file or directory",
            input.display()
        )))
    }
}

fn finish(
    w: &mut GgufWriter,
    plan: &[Planned],
    target: Option<Target>,
    opts: &ConvertOptions,
) -> Result<ConvertReport> {
    w.set("general.quantization_version", Value::U32(2));
    if let Some(t) = target {
        w.set("general.file_type", Value::U32(t.file_type()));
    }
    if let Some(n) = &opts.name {
        w.set("general.name", Value::String(n.clone()));
    }
    if let Some(f) = &opts.fam {
        f.validate()?;
        f.write_to(w);
    }
    let mut r = ConvertReport::default();
    for p in plan {
        let info = w.add_tensor(&p.name, p.ty, &p.ne)?;
        r.tensor_bytes += info.size;
        r.n_params += info.n_elements();
        if p.wanted != p.ty {
            r.fallbacks.push((p.name.clone(), p.wanted, p.ty));
        }
    }
    r.n_tensors = plan.len();
    r.bits_per_weight = r.tensor_bytes as f64 * 8.0 / r.n_params.max(1) as f64;
    Ok(r)
}

/// Quantize f32 rows to `ty` with ggml, rows split across threads.
fn quantize_rows(ty: GgmlType, data: &[f32], row_len: usize) -> Result<Vec<u8>> {
    const ROWS_PER_TASK: usize = 16;
    let chunks: Vec<Result<Vec<u8>>> = data
        .par_chunks(row_len * ROWS_PER_TASK)
        .map(|c| ggml::quantize(ty, c, row_len))
        .collect();
    let mut out = Vec::with_capacity(
        ty.row_size(row_len as u64).unwrap_or(0) as usize * (data.len() / row_len.max(1)),
    );
    for c in chunks {
        out.extend(c?);
    }
    Ok(out)
}

fn write_plan(
    w: &GgufWriter,
    plan: &[Planned],
    output: &Path,
    progress: Progress,
    mut values: impl FnMut(&Planned) -> Result<Option<Vec<u8>>>,
) -> Result<()> {
    let total: u64 = w.tensors().iter().map(|t| t.size).sum();
    let mut done = 0u64;
    w.write(output, |i, info, out| {
        let p = &plan[i];
        progress(&p.name, done, total);
        let bytes = match values(p)? {
            Some(b) => b,
            None => return Err(Error::tensor(&p.name, "no data")),
        };
        if bytes.len() as u64 != info.size {
            return Err(Error::tensor(
                &p.name,
                format!("produced {} bytes, expected {}", bytes.len(), info.size),
            ));
        }
        std::io::Write::write_all(out, &bytes).map_err(|e| Error::io(output, "write", e))?;
        done += info.size;
        progress(&p.name, done, total);
        Ok(())
    })
}

fn convert_hf(
    dir: &Path,
    output: &Path,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<ConvertReport> {
    let cfg = HfConfig::read(dir)?;
    let target = opts.target.unwrap_or(Target::Type(GgmlType::F16));
    let weights = HfWeights::open(dir)?;
    let tied = cfg.tied || !weights.index.iter().any(|(n, _, _)| n == "lm_head.weight");
    // Plan: every known tensor, checked against the config.
    let mut plan = Vec::new();
    for (hf_name, shard, t) in &weights.index {
        let Some((name, transform)) = gguf_name(hf_name, &cfg) else {
            if hf_name.contains("rotary_emb.inv_freq") {
                continue;
            }
            return Err(Error::tensor(hf_name, "not a tensor of this architecture"));
        };
        if name == "output.weight" && cfg.tied {
            continue; // tied: the LM head is the token embedding
        }
        let ne: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        let (wanted, ty) = choose(target, &name, &ne, cfg.n_layer, tied);
        plan.push(Planned {
            name,
            ne,
            wanted,
            ty,
            source: Source::Hf {
                shard: *shard,
                tensor: t.clone(),
                transform,
            },
        });
    }
    if let Some(f) = &cfg.rope_freqs {
        plan.push(Planned {
            name: "rope_freqs.weight".into(),
            ne: vec![f.len() as u64],
            wanted: GgmlType::F32,
            ty: GgmlType::F32,
            source: Source::Values(f.clone()),
        });
    }
    check_shapes(&plan, &cfg)?;
    // GGUF order: token embedding, layers in order, then the head (as llama.cpp writes).
    plan.sort_by_key(|p| order_key(&p.name));
    let mut w = GgufWriter::new();
    w.set(
        "general.architecture",
        Value::String(cfg.arch.name().into()),
    );
    w.set("general.type", Value::String("model".into()));
    let default_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    w.set("general.name", Value::String(default_name));
    w.set("general.source.format", Value::String("huggingface".into()));
    w.set(
        "general.converter",
        Value::String(format!("famstream {}", env!("CARGO_PKG_VERSION"))),
    );
    for (k, v) in cfg.metadata() {
        w.set(&k, v);
    }
    for (k, v) in hf::tokenizer_metadata(dir, &cfg)? {
        w.set(&k, v);
    }
    let report = finish(&mut w, &plan, Some(target), opts)?;
    write_plan(&w, &plan, output, progress, |p| {
        let row = p.ne[0] as usize;
        let (shard, tensor, transform) = match &p.source {
            Source::Hf {
                shard,
                tensor,
                transform,
            } => (*shard, tensor, *transform),
            Source::Values(v) => return quantize_rows(p.ty, v, row).map(Some),
            Source::Gguf(..) => return Ok(None),
        };
        let mut v = weights.shards[shard].f32(tensor);
        weights.shards[shard].release(tensor);
        if let Some(n_head) = transform.permute {
            v = permute_rows(&v, row, n_head);
        }
        if transform.add != 0.0 {
            v.iter_mut().for_each(|x| *x += transform.add);
        }
        quantize_rows(p.ty, &v, row).map(Some)
    })?;
    Ok(ConvertReport {
        file_bytes: std::fs::metadata(output).map(|m| m.len()).unwrap_or(0),
        ..report
    })
}

/// `w += scale * B A` for a weight `w` in ggml layout (`n_out` rows of `n_in`): row `o` gets
/// `scale * sum_k B[o][k] A[k][..]`, with A `[n_in, r]` (r rows of n_in) and B `[r, n_out]`.
fn add_lora(
    w: &mut [f32],
    a: &crate::adapter::AdapterFile,
    p: &crate::adapter::LoraPair,
) -> Result<()> {
    let r = p.rank;
    let n_in = p.a.n_elements() as usize / r;
    let av = ggml::dequantize(p.a.ty, a.gguf.tensor_data(&p.a)?, n_in * r)?;
    let n_out = p.b.n_elements() as usize / r;
    let bv = ggml::dequantize(p.b.ty, a.gguf.tensor_data(&p.b)?, r * n_out)?;
    if w.len() != n_in * n_out {
        return Err(Error::tensor(
            &p.base_name(),
            format!("{} values, the adapter implies {n_in} x {n_out}", w.len()),
        ));
    }
    let scale = a.scale(r);
    w.par_chunks_mut(n_in).enumerate().for_each(|(o, row)| {
        for k in 0..r {
            let c = scale * bv[o * r + k];
            for (x, &y) in row.iter_mut().zip(&av[k * n_in..(k + 1) * n_in]) {
                *x += c * y;
            }
        }
    });
    Ok(())
}

fn order_key(name: &str) -> (u32, usize, String) {
    if name == "token_embd.weight" {
        return (0, 0, String::new());
    }
    if let Some(rest) = name.strip_prefix("blk.") {
        let (il, s) = rest.split_once('.').unwrap_or((rest, ""));
        return (1, il.parse().unwrap_or(usize::MAX), s.to_string());
    }
    (2, 0, name.to_string())
}

/// Every tensor the runtime needs is there, with the shape the config implies (the
/// architecture's table, as the loader checks it).
fn check_shapes(plan: &[Planned], cfg: &HfConfig) -> Result<()> {
    let dims = Dims {
        n_embd: cfg.n_embd,
        n_head: cfg.n_head,
        n_head_kv: cfg.n_head_kv,
        head_dim: cfg.head_dim,
        n_ff: cfg.n_ff,
    };
    let (e, nv) = (cfg.n_embd as u64, cfg.n_vocab as u64);
    let mut want: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![e, nv]),
        ("output_norm.weight".into(), vec![e]),
    ];
    if !cfg.tied && plan.iter().any(|p| p.name == "output.weight") {
        want.push(("output.weight".into(), vec![e, nv]));
    }
    for il in 0..cfg.n_layer {
        for t in cfg.arch.spec().tensors {
            let name = format!("blk.{il}.{}", t.gguf);
            if t.required || plan.iter().any(|p| p.name == name) {
                want.push((name, t.ne.iter().map(|&d| dims.get(d) as u64).collect()));
            }
        }
    }
    for (name, ne) in want {
        match plan.iter().find(|p| p.name == name) {
            None => return Err(Error::tensor(&name, "missing from the checkpoint")),
            Some(p) if p.ne != ne => {
                return Err(Error::tensor(
                    &name,
                    format!(
                        "shape {:?} (ggml order), but config.json implies {ne:?}",
                        p.ne
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn convert_gguf(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    adapter: Option<&Path>,
    progress: Progress,
) -> Result<ConvertReport> {
    let g = GgufFile::open(input)?;
    if std::fs::canonicalize(input).ok() == std::fs::canonicalize(output).ok() {
        return Err(Error::Invalid(
            "the output would overwrite the input; choose another path".into(),
        ));
    }
    let n_layer = g.u32(&g.arch_key("block_count")?)? as usize;
    let tied = g.tensor("output.weight").is_none();
    let hp = crate::model::HParams::from_gguf(&g)?;
    let adapter = match adapter {
        Some(p) => Some(crate::adapter::AdapterFile::open(p, &g, &hp)?),
        None => None,
    };
    if let Some(a) = adapter.as_ref() {
        use crate::adapter::{LoraScope, KEY_FAM_ATTN_BIAS, KEY_LORA_SCOPE};
        let what = if a.scope != LoraScope::All {
            Some(format!(
                "its LoRA applies to FAM rows only (`{KEY_LORA_SCOPE}` = `{}`): merged into the \
                 weights it would change every token",
                a.scope.name()
            ))
        } else if a.fam_attn_bias != 0.0 {
            Some(format!(
                "it biases attention to the FAM (`{KEY_FAM_ATTN_BIAS}` = {}), which no weight \
                 holds",
                a.fam_attn_bias
            ))
        } else {
            None
        };
        if let Some(what) = what {
            return Err(Error::adapter(
                a.path(),
                format!("{what}; load it with --adapter instead"),
            ));
        }
    }
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if k != "general.alignment" {
            w.set(k, v.clone());
        }
    }
    if let Some(a) = &adapter {
        // The heads that see kept tokens belong with the adapter's weights (checked like the
        // model's: a pair beyond this model is refused).
        if let Some(v) = a.gguf.get(crate::kept_heads::KEY) {
            crate::kept_heads::KeptHeads::from_gguf(&a.gguf, hp.n_layer, hp.n_head)
                .map_err(|e| Error::adapter(a.path(), e.to_string()))?;
            w.set(crate::kept_heads::KEY, v.clone());
        }
        for k in crate::settings::SETTINGS_KEYS {
            if let Some(v) = a.gguf.get(k) {
                w.set(k, v.clone());
            }
        }
    }
    // The learned initial FAM, the adapter's over the input's, goes out as a metadata array
    // (crate::init_memory): a tensor llama.cpp does not know would make it refuse the file.
    let init = match adapter
        .as_ref()
        .map(|a| crate::init_memory::find(&a.gguf, hp.n_embd, hp.n_layer))
        .transpose()?
        .flatten()
    {
        Some(l) => Some(l),
        None => crate::init_memory::find(&g, hp.n_embd, hp.n_layer)?,
    };
    if let Some(l) = &init {
        let values: Vec<f32> = l
            .data
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        w.set(
            crate::init_memory::KEY,
            crate::gguf::Value::Array(crate::gguf::Array::F32(values)),
        );
    }
    let mut plan = Vec::new();
    for (i, t) in g.tensors().iter().enumerate() {
        if t.name == crate::init_memory::KEY {
            continue; // written as metadata, above
        }
        let pair = adapter
            .as_ref()
            .and_then(|a| a.pairs.iter().position(|p| p.base_name() == t.name));
        let (wanted, ty) = match opts.target {
            None => (t.ty, t.ty),
            Some(target) => {
                let quantizable = t.ne.len() >= 2 && t.name.ends_with(".weight");
                if quantizable {
                    choose(target, &t.name, &t.ne, n_layer, tied)
                } else {
                    (t.ty, t.ty)
                }
            }
        };
        plan.push(Planned {
            name: t.name.clone(),
            ne: t.ne.clone(),
            wanted,
            ty,
            source: Source::Gguf(i, pair),
        });
    }
    let report = finish(&mut w, &plan, opts.target, opts)?;
    write_plan(&w, &plan, output, progress, |p| {
        let (i, pair) = match &p.source {
            Source::Gguf(i, pair) => (*i, *pair),
            Source::Hf { .. } | Source::Values(_) => return Ok(None),
        };
        let t = &g.tensors()[i];
        let bytes = g.tensor_data(t)?;
        if p.ty == t.ty && pair.is_none() {
            return Ok(Some(bytes.to_vec()));
        }
        let n = t.n_elements() as usize;
        let mut v = ggml::dequantize(t.ty, bytes, n)?;
        if let (Some(a), Some(k)) = (&adapter, pair) {
            add_lora(&mut v, a, &a.pairs[k])?;
        }
        quantize_rows(p.ty, &v, t.ne[0] as usize).map(Some)
    })?;
    Ok(ConvertReport {
        file_bytes: std::fs::metadata(output).map(|m| m.len()).unwrap_or(0),
        ..report
    })
}

//! LoRA adapters: llama.cpp's GGUF adapter layout, plus a learned initial FAM and FAM settings.
//!
//! ## File format
//!
//! - Metadata: `general.type` = `adapter`, `adapter.type` = `lora`, `general.architecture` =
//!   the base model's (`llama`, `qwen2`), `adapter.lora.alpha` (f32; missing or 0 means a scale
//!   of 1, as in llama.cpp).
//! - `fam.adapter.base_fingerprint` (optional): 16 lowercase hex digits of
//!   [`base_fingerprint`] of the base model file the adapter was trained on. Present and
//!   different from the given base: refused.
//! - For a base weight `blk.{l}.{attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down}.weight`
//!   of ggml shape `[n_in, n_out]`: `<name>.lora_a` `[n_in, r]` and `<name>.lora_b` `[r, n_out]`,
//!   f32 or f16. The layer computes `W x + scale * B (A x)` with `scale = alpha / r`, in ggml as
//!   `mul_mat(lora_b, mul_mat(lora_a, x))` (llama.cpp's `build_lora_mm`). Any subset of layers
//!   and targets may be present. For `llama`, `lora_b` rows of `attn_q`/`attn_k` are in the
//!   GGUF's (interleaved RoPE) row order, like the base weights.
//! - `fam.init_memory` (optional) f32 `[n_embd, F, n_layer]`: each layer's initial FAM rows,
//!   a metadata array (what famstream writes: llama.cpp then loads the adapter) or, in older
//!   files, a tensor ([`crate::init_memory`]). It replaces the model file's own.
//! - `fam.adapter.lora_scope` (optional string): `all` (the default, llama.cpp's meaning: every
//!   row of every graph) or `fam`: the low-rank terms apply to the FAM's rows only (the FAM
//!   update graph and the FAM rows' K/V), so tokens run the base model and read the memory
//!   through attention alone. Such an adapter changes nothing without a FAM (`full`, `sink`,
//!   ...) and cannot be merged into the weights.
//! - `fam.adapter.fam_attn_bias` (optional f32, default 0): added to every token's attention
//!   logits at the FAM's slots, in every layer and head (learned with the FAM: a memory that
//!   tokens can learn to discount). Like a FAM-rows scope, it cannot be merged into weights.
//! - `fam.*` settings keys ([`crate::settings`]): the stream defaults while the adapter is
//!   loaded. Precedence: command-line flag > adapter > model file > built-in default.
//!
//! [`AdapterFile::open`] validates all of this against the base model file (no device memory);
//! [`Adapter::upload`] copies the LoRA tensors to the model's device. The base weights are never
//! touched: the graphs add the low-rank term next to each base matmul
//! ([`crate::forward`]'s `linear`).

use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use crate::ggml::{Backend, Tensor, TensorSet};
use crate::gguf::{GgufFile, TensorInfo};
use crate::hparams::HParams;
use crate::init_memory::KEY as LEARNED_FAM_TENSOR;
use crate::settings::FamSettings;
use crate::util::Fnv64;
use std::path::Path;

pub const KEY_GENERAL_TYPE: &str = "general.type";
pub const KEY_ADAPTER_TYPE: &str = "adapter.type";
pub const KEY_LORA_ALPHA: &str = "adapter.lora.alpha";
pub const KEY_BASE_FINGERPRINT: &str = "fam.adapter.base_fingerprint";
pub const KEY_LORA_SCOPE: &str = "fam.adapter.lora_scope";
pub const KEY_FAM_ATTN_BIAS: &str = "fam.adapter.fam_attn_bias";

/// Which rows an adapter's low-rank terms apply to (`fam.adapter.lora_scope`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum LoraScope {
    /// Every row of every graph (a plain LoRA adapter).
    #[default]
    All,
    /// The FAM's rows only: the FAM update graph and the FAM rows' K/V; tokens run the base
    /// model.
    Fam,
}

impl LoraScope {
    pub fn name(self) -> &'static str {
        match self {
            LoraScope::All => "all",
            LoraScope::Fam => "fam",
        }
    }
}
pub const SUFFIX_A: &str = ".lora_a";
pub const SUFFIX_B: &str = ".lora_b";

/// Bytes of `token_embd.weight` that [`base_fingerprint`] reads.
pub const FINGERPRINT_EMBD_BYTES: usize = 65536;

/// The linear layers an adapter may adapt, by their GGUF name within a block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];
    /// The name between `blk.{l}.` and `.weight`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }
}

/// `blk.{l}.{target}.weight` -> (l, target), for `l < n_layer`.
fn parse_base_name(name: &str, n_layer: usize) -> Option<(usize, Target)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (l, t) = rest.split_once('.')?;
    if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || (l.len() > 1 && l.starts_with('0'))
    {
        return None;
    }
    let l: usize = l.parse().ok()?;
    let target = Target::ALL.into_iter().find(|x| x.name() == t)?;
    (l < n_layer).then_some((l, target))
}

/// The fingerprint of a base model file that an adapter records (`fam.adapter.base_fingerprint`,
/// written as `format!("{:016x}")`): FNV-1a 64 ([`Fnv64`]) over, for each tensor in the file's
/// tensor-table order, the name's UTF-8 bytes, the ggml type id as u32 little-endian, and each
/// of its dimensions (ggml order `ne`, only the dimensions the file stores) as u64
/// little-endian; then the first `min(65536, len)` bytes of `token_embd.weight`'s data.
///
/// With gguf-py (`r = gguf.GGUFReader(path)`), the same bytes are: for `t in r.tensors`:
/// `t.name.encode()`, `struct.pack("<I", int(t.tensor_type))`, `struct.pack("<Q", d)` for `d`
/// in `list(t.shape)`; then `emb.data.tobytes()[:65536]` of the `token_embd.weight` tensor.
pub fn base_fingerprint(g: &GgufFile) -> u64 {
    let mut h = Fnv64::new();
    for t in g.tensors() {
        h.write(t.name.as_bytes());
        h.write(&t.ty.0.to_le_bytes());
        for d in &t.ne {
            h.write(&d.to_le_bytes());
        }
    }
    if let Some(t) = g.tensor("token_embd.weight") {
        if let Ok(d) = g.tensor_data(t) {
            h.write(&d[..d.len().min(FINGERPRINT_EMBD_BYTES)]);
        }
    }
    h.finish()
}

/// Parse a fingerprint as written in `fam.adapter.base_fingerprint`.
pub fn parse_fingerprint(s: &str) -> Option<u64> {
    let ok = s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| u64::from_str_radix(s, 16).ok()).flatten()
}

/// One validated A/B pair.
#[derive(Clone, Debug)]
pub struct LoraPair {
    pub layer: usize,
    pub target: Target,
    /// `[n_in, r]`.
    pub a: TensorInfo,
    /// `[r, n_out]`.
    pub b: TensorInfo,
    pub rank: usize,
}

impl LoraPair {
    /// The adapted base weight's name.
    pub fn base_name(&self) -> String {
        format!("blk.{}.{}.weight", self.layer, self.target.name())
    }
}

/// An adapter file, checked against a base model file. Holds no device memory.
pub struct AdapterFile {
    pub alpha: f32,
    /// In the adapter's tensor-table order.
    pub pairs: Vec<LoraPair>,
    /// The recorded base fingerprint (`None`: the file records none; nothing was checked).
    pub base_fingerprint: Option<u64>,
    /// F of `fam.init_memory`, checked to be f32 `[n_embd, F, n_layer]`, if the adapter has one.
    pub init_fam_len: Option<usize>,
    /// The rows the LoRA terms apply to.
    pub scope: LoraScope,
    /// Added to tokens' attention logits at the FAM's slots (`fam.adapter.fam_attn_bias`).
    pub fam_attn_bias: f32,
    pub gguf: GgufFile,
}

/// A LoRA tensor's ggml dims, as exactly two (a stored trailing 1 is dropped, a missing second
/// dimension is 1); `None` for more.
fn dims2(ne: &[u64]) -> Option<[u64; 2]> {
    let mut v = ne.to_vec();
    while v.len() > 2 && v.last() == Some(&1) {
        v.pop();
    }
    match v[..] {
        [a] => Some([a, 1]),
        [a, b] => Some([a, b]),
        _ => None,
    }
}

impl AdapterFile {
    /// Open `path` and check it against the base model file `base` (with hyperparameters `hp`).
    pub fn open(path: impl AsRef<Path>, base: &GgufFile, hp: &HParams) -> Result<AdapterFile> {
        Self::check(GgufFile::open(path)?, base, hp)
    }

    /// Check an adapter against a base model file; every refusal names the file and the key or
    /// tensor at fault.
    pub fn check(gguf: GgufFile, base: &GgufFile, hp: &HParams) -> Result<AdapterFile> {
        let path = gguf.path().to_path_buf();
        let bad = |what: String| Error::adapter(&path, what);
        let meta = |e: Error| bad(e.to_string());
        match gguf.opt_str(KEY_GENERAL_TYPE).map_err(meta)? {
            Some("adapter") => {}
            Some(t) => {
                return Err(bad(format!(
                    "not an adapter: `{KEY_GENERAL_TYPE}` is `{t}`, expected `adapter`"
                )))
            }
            None => {
                return Err(bad(format!(
                    "not an adapter: no `{KEY_GENERAL_TYPE}` key (expected `adapter`)"
                )))
            }
        }
        match gguf.opt_str(KEY_ADAPTER_TYPE).map_err(meta)? {
            Some("lora") => {}
            other => {
                return Err(bad(format!(
                    "`{KEY_ADAPTER_TYPE}` is {}, famstream applies `lora` adapters only",
                    other.map_or("missing".to_string(), |t| format!("`{t}`"))
                )))
            }
        }
        let arch = gguf.opt_str("general.architecture").map_err(meta)?;
        if arch != Some(hp.arch.name()) {
            return Err(bad(format!(
                "`general.architecture` is {}, but the base model {} is `{}`",
                arch.map_or("missing".to_string(), |a| format!("`{a}`")),
                base.path().display(),
                hp.arch.name()
            )));
        }
        let alpha = gguf.opt_f32(KEY_LORA_ALPHA).map_err(meta)?.unwrap_or(0.0);
        if !alpha.is_finite() {
            return Err(bad(format!("`{KEY_LORA_ALPHA}` is {alpha}")));
        }
        let base_fingerprint = match gguf.opt_str(KEY_BASE_FINGERPRINT).map_err(meta)? {
            None => None,
            Some(s) => {
                let want = parse_fingerprint(s).ok_or_else(|| {
                    bad(format!(
                        "`{KEY_BASE_FINGERPRINT}` is `{s}`, expected 16 lowercase hex digits"
                    ))
                })?;
                let got = base_fingerprint(base);
                if want != got {
                    return Err(bad(format!(
                        "it was made for a base model with fingerprint {want:016x} \
                         (`{KEY_BASE_FINGERPRINT}`), but {} has fingerprint {got:016x}",
                        base.path().display()
                    )));
                }
                Some(want)
            }
        };
        let scope = match gguf.opt_str(KEY_LORA_SCOPE).map_err(meta)? {
            None | Some("all") => LoraScope::All,
            Some("fam") => LoraScope::Fam,
            Some(s) => {
                return Err(bad(format!(
                    "`{KEY_LORA_SCOPE}` is `{s}`, expected `all` or `fam`"
                )))
            }
        };
        let fam_attn_bias = gguf
            .opt_f32(KEY_FAM_ATTN_BIAS)
            .map_err(meta)?
            .unwrap_or(0.0);
        if !fam_attn_bias.is_finite() {
            return Err(bad(format!("`{KEY_FAM_ATTN_BIAS}` is {fam_attn_bias}")));
        }
        // The settings keys must parse (their combination is validated with the model's).
        FamSettings::default().override_from(&gguf).map_err(meta)?;

        // Pair up A and B by base name, in file order.
        let mut found: Vec<(String, Option<TensorInfo>, Option<TensorInfo>)> = Vec::new();
        for t in gguf.tensors() {
            if t.name == LEARNED_FAM_TENSOR {
                continue; // checked below
            }
            let (base_name, is_a) = if let Some(b) = t.name.strip_suffix(SUFFIX_A) {
                (b, true)
            } else if let Some(b) = t.name.strip_suffix(SUFFIX_B) {
                (b, false)
            } else {
                return Err(bad(format!(
                    "tensor `{}`: neither a LoRA tensor (`<base weight>{SUFFIX_A}` or \
                     `{SUFFIX_B}`) nor `{LEARNED_FAM_TENSOR}`",
                    t.name
                )));
            };
            if parse_base_name(base_name, hp.n_layer).is_none() {
                let targets: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                return Err(bad(format!(
                    "tensor `{}`: `{base_name}` is not a weight famstream adapts \
                     (blk.N.{{{}}}.weight with N < {})",
                    t.name,
                    targets.join("|"),
                    hp.n_layer
                )));
            }
            if !matches!(t.ty, GgmlType::F32 | GgmlType::F16) {
                return Err(bad(format!(
                    "tensor `{}`: type {}, LoRA tensors must be f32 or f16",
                    t.name, t.ty
                )));
            }
            let slot = match found.iter().position(|(n, _, _)| n == base_name) {
                Some(i) => i,
                None => {
                    found.push((base_name.to_string(), None, None));
                    found.len() - 1
                }
            };
            let entry = if is_a {
                &mut found[slot].1
            } else {
                &mut found[slot].2
            };
            *entry = Some(t.clone());
        }
        let mut pairs = Vec::with_capacity(found.len());
        for (base_name, a, b) in found {
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (a, _) => {
                    let (has, lacks) = if a.is_some() {
                        (SUFFIX_A, SUFFIX_B)
                    } else {
                        (SUFFIX_B, SUFFIX_A)
                    };
                    return Err(bad(format!(
                        "tensor `{base_name}{has}` has no partner `{base_name}{lacks}`"
                    )));
                }
            };
            let (Some(ad), Some(bd)) = (dims2(&a.ne), dims2(&b.ne)) else {
                return Err(bad(format!(
                    "tensors `{}` {:?} and `{}` {:?}: LoRA tensors are 2-D",
                    a.name, a.ne, b.name, b.ne
                )));
            };
            let rank = ad[1];
            if rank != bd[0] {
                return Err(bad(format!(
                    "rank mismatch: `{}` has rank {rank} (ne {:?}) but `{}` has rank {} (ne {:?})",
                    a.name, a.ne, b.name, bd[0], b.ne
                )));
            }
            if rank == 0 {
                return Err(bad(format!("tensor `{}`: rank 0", a.name)));
            }
            let w = base.tensor(&base_name).ok_or_else(|| {
                bad(format!(
                    "the base model {} has no tensor `{base_name}`",
                    base.path().display()
                ))
            })?;
            let (n_in, n_out) = (w.ne[0], w.ne.get(1).copied().unwrap_or(1));
            if ad[0] != n_in {
                return Err(bad(format!(
                    "tensor `{}` takes inputs of {} (ne {:?}), but the base weight `{base_name}` \
                     takes {n_in} (ne {:?})",
                    a.name, ad[0], a.ne, w.ne
                )));
            }
            if bd[1] != n_out {
                return Err(bad(format!(
                    "tensor `{}` gives outputs of {} (ne {:?}), but the base weight \
                     `{base_name}` gives {n_out} (ne {:?})",
                    b.name, bd[1], b.ne, w.ne
                )));
            }
            let (layer, target) = parse_base_name(&base_name, hp.n_layer).expect("checked above");
            pairs.push(LoraPair {
                layer,
                target,
                a,
                b,
                rank: rank as usize,
            });
        }
        let init_fam_len = crate::init_memory::find(&gguf, hp.n_embd, hp.n_layer)
            .map_err(|e| bad(e.to_string()))?
            .map(|l| l.fam_len);
        if let Some(f) = init_fam_len {
            if let Some(k) = gguf
                .opt_u32(crate::settings::KEY_FAM_LEN)
                .map_err(meta)?
                .filter(|&k| k as usize != f)
            {
                return Err(bad(format!(
                    "`{LEARNED_FAM_TENSOR}` has F = {f} rows per layer, but the adapter's `{}` \
                     is {k}",
                    crate::settings::KEY_FAM_LEN
                )));
            }
        }
        Ok(AdapterFile {
            alpha,
            pairs,
            base_fingerprint,
            init_fam_len,
            scope,
            fam_attn_bias,
            gguf,
        })
    }

    pub fn path(&self) -> &Path {
        self.gguf.path()
    }

    /// The factor of `B (A x)` for a pair of rank `r`: alpha / r, or 1 when alpha is 0 or
    /// missing (llama.cpp's rule).
    pub fn scale(&self, rank: usize) -> f32 {
        if self.alpha == 0.0 {
            1.0
        } else {
            self.alpha / rank as f32
        }
    }

    /// F of the learned initial FAM, if the adapter has one.
    pub fn init_fam_len(&self) -> Option<usize> {
        self.init_fam_len
    }

    /// A summary for `inspect`: alpha, ranks, targets and layers, FAM extras, fingerprint.
    pub fn summary(&self) -> serde_json::Value {
        adapter_summary(&self.gguf)
    }
}

/// What `inspect` shows of an adapter file (works without a base model, so nothing here is
/// checked against one).
pub fn adapter_summary(g: &GgufFile) -> serde_json::Value {
    use serde_json::json;
    let mut ranks: Vec<u64> = Vec::new();
    let mut targets: Vec<&str> = Vec::new();
    let mut layers: Vec<usize> = Vec::new();
    let mut pairs = 0;
    for t in g.tensors() {
        let Some(base) = t.name.strip_suffix(SUFFIX_A) else {
            continue;
        };
        pairs += 1;
        if let Some(r) = dims2(&t.ne).map(|d| d[1]) {
            if !ranks.contains(&r) {
                ranks.push(r);
            }
        }
        if let Some((l, target)) = parse_base_name(base, usize::MAX) {
            if !targets.contains(&target.name()) {
                targets.push(target.name());
            }
            if !layers.contains(&l) {
                layers.push(l);
            }
        }
    }
    ranks.sort_unstable();
    layers.sort_unstable();
    let init = crate::init_memory::describe(g);
    let settings: serde_json::Map<String, serde_json::Value> = crate::settings::SETTINGS_KEYS
        .iter()
        .filter_map(|k| g.get(k).map(|v| (k.to_string(), json!(v.to_string()))))
        .collect();
    json!({
        "adapter_type": g.opt_str(KEY_ADAPTER_TYPE).ok().flatten(),
        "alpha": g.opt_f32(KEY_LORA_ALPHA).ok().flatten(),
        "pairs": pairs, "ranks": ranks, "targets": targets, "layers": layers,
        "base_fingerprint": g.opt_str(KEY_BASE_FINGERPRINT).ok().flatten(),
        "lora_scope": g.opt_str(KEY_LORA_SCOPE).ok().flatten().unwrap_or("all"),
        "fam_attn_bias": g.opt_f32(KEY_FAM_ATTN_BIAS).ok().flatten().unwrap_or(0.0),
        "init_memory": init,
        "fam_settings": settings,
        // (layer, head) pairs that see kept tokens (crate::kept_heads); null: every head
        "kept_heads": match g.get(crate::kept_heads::KEY) {
            Some(crate::gguf::Value::Array(a)) => json!(a.len()),
            _ => serde_json::Value::Null,
        },
    })
}

/// Indices of one pair in [`Adapter`]'s tensor set, and its scale.
#[derive(Clone, Copy, Debug)]
struct PairIdx {
    a: usize,
    b: usize,
    scale: f32,
}

/// The low-rank term of one linear layer: `scale * B (A x)`.
#[derive(Clone, Copy)]
pub struct Lora<'a> {
    /// `[n_in, r]`.
    pub a: Tensor<'a>,
    /// `[r, n_out]`.
    pub b: Tensor<'a>,
    pub scale: f32,
}

/// An adapter on a model's device: its LoRA tensors in their own backend buffer, looked up by
/// the index of the base weight they adapt.
pub struct Adapter {
    tensors: TensorSet,
    /// By base weight index (the model's weight set); `None` for weights it does not adapt.
    by_weight: Vec<Option<PairIdx>>,
    /// FNV-1a of the whole adapter file: part of the model's fingerprint (snapshots made with
    /// an adapter are refused without it, or with another).
    file_hash: u64,
    pub file: AdapterFile,
}

impl Adapter {
    /// Copy `file`'s LoRA tensors to `backend`. `weight_index(layer, target)` is the index of
    /// the adapted base weight among the model's `n_weights`.
    pub fn upload(
        file: AdapterFile,
        backend: &Backend,
        n_weights: usize,
        weight_index: impl Fn(usize, Target) -> usize,
    ) -> Result<Adapter> {
        let mut tensors = TensorSet::new(2 * file.pairs.len() + 1)?;
        let mut by_weight = vec![None; n_weights];
        let ne = |t: &TensorInfo| -> Vec<i64> {
            dims2(&t.ne)
                .expect("checked")
                .iter()
                .map(|&d| d as i64)
                .collect()
        };
        for p in &file.pairs {
            let a = tensors.add(&p.a.name, p.a.ty, &ne(&p.a));
            let b = tensors.add(&p.b.name, p.b.ty, &ne(&p.b));
            by_weight[weight_index(p.layer, p.target)] = Some(PairIdx {
                a,
                b,
                scale: file.scale(p.rank),
            });
        }
        if !file.pairs.is_empty() {
            tensors.alloc_all(backend)?;
            for (i, p) in file.pairs.iter().enumerate() {
                tensors
                    .get(2 * i)
                    .write_bytes(0, file.gguf.tensor_data(&p.a)?)?;
                tensors
                    .get(2 * i + 1)
                    .write_bytes(0, file.gguf.tensor_data(&p.b)?)?;
            }
        }
        let mut h = Fnv64::new();
        h.write(file.gguf.bytes());
        Ok(Adapter {
            tensors,
            by_weight,
            file_hash: h.finish(),
            file,
        })
    }

    /// The low-rank term of base weight `w` for a graph of FAM rows (`fam_rows`) or of tokens,
    /// if the adapter adapts `w` there (see [`LoraScope`]).
    pub fn lora(&self, w: usize, fam_rows: bool) -> Option<Lora<'_>> {
        if self.file.scope == LoraScope::Fam && !fam_rows {
            return None;
        }
        let p = self.by_weight.get(w).copied().flatten()?;
        Some(Lora {
            a: self.tensors.get(p.a),
            b: self.tensors.get(p.b),
            scale: p.scale,
        })
    }

    pub fn file_hash(&self) -> u64 {
        self.file_hash
    }

    /// Bytes of device memory the LoRA tensors take.
    pub fn bytes(&self) -> usize {
        self.tensors.buffer_bytes()
    }
}

//! A loaded model: hyperparameters and weight tensors that view the memory-mapped GGUF.
//!
//! On the CPU backend the mapped bytes are used in place (no copy, no repacking): ggml reads
//! weights straight from the page cache. Other backends get a device copy.

use super::HParams;
use crate::adapter::{Adapter, AdapterFile, Lora, Target};
use crate::error::{Error, Result};
use crate::ggml::{Backend, Tensor, TensorSet};
use crate::gguf::{GgufFile, TensorInfo};
use crate::init_memory::{self, LearnedFam};
use crate::settings::FamSettings;
use std::path::Path;

/// Indices into the weight set for one transformer layer.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: usize,
    pub wq: usize,
    pub wk: usize,
    pub wv: usize,
    pub bq: Option<usize>,
    pub bk: Option<usize>,
    pub bv: Option<usize>,
    pub wo: usize,
    pub ffn_norm: usize,
    pub ffn_gate: usize,
    pub ffn_up: usize,
    pub ffn_down: usize,
    /// Per-head RMSNorm weights of Q and K (QK-norm architectures).
    pub q_norm: Option<usize>,
    pub k_norm: Option<usize>,
    /// RMSNorm weights applied to the attention and MLP outputs before their residual adds.
    pub post_attn_norm: Option<usize>,
    pub post_ffn_norm: Option<usize>,
    /// `wq` is one Q|K|V projection (`wk`, `wv` name it too) and `ffn_up` one gate|up
    /// projection (`ffn_gate` names it too): phi3.
    pub fused: bool,
}

impl LayerWeights {
    /// The weight an adapter target names.
    pub fn target(&self, t: Target) -> usize {
        match t {
            Target::Q => self.wq,
            Target::K => self.wk,
            Target::V => self.wv,
            Target::O => self.wo,
            Target::Gate => self.ffn_gate,
            Target::Up => self.ffn_up,
            Target::Down => self.ffn_down,
        }
    }
}

/// Immutable model: shared by every stream that runs on it.
pub struct Model {
    pub hp: HParams,
    // Field order is drop order: the weight tensors point into `gguf`'s map, so they go first.
    weights: TensorSet,
    token_embd: usize,
    output_norm: usize,
    /// `None` when the LM head is tied to the token embedding.
    output: Option<usize>,
    /// Llama 3 RoPE frequency factors, f32 [rope_dims / 2] (`rope_freqs.weight`).
    rope_freqs: Option<usize>,
    layers: Vec<LayerWeights>,
    device: String,
    /// Weights are read in place from the file's memory map (no copy).
    zero_copy: bool,
    /// A LoRA adapter applied in the graphs (see [`Model::attach_adapter`]).
    adapter: Option<Adapter>,
    pub gguf: GgufFile,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("hp", &self.hp)
            .field("device", &self.device)
            .finish()
    }
}

/// Collects the weight tensors and checks each one's shape against the hyperparameters.
struct Loader<'g> {
    g: &'g GgufFile,
    set: TensorSet,
    infos: Vec<&'g TensorInfo>,
}

impl<'g> Loader<'g> {
    /// A required tensor with shape `ne` (ggml order).
    fn tensor(&mut self, name: &str, ne: &[usize]) -> Result<usize> {
        self.opt_tensor(name, ne)?
            .ok_or_else(|| Error::tensor(name, "missing from the model file"))
    }
    fn opt_tensor(&mut self, name: &str, ne: &[usize]) -> Result<Option<usize>> {
        let Some(info) = self.g.tensor(name) else {
            return Ok(None);
        };
        let want: Vec<u64> = ne.iter().map(|&d| d as u64).collect();
        let mut got = info.ne.clone();
        while got.len() > want.len() && got.last() == Some(&1) {
            got.pop();
        }
        if got != want {
            return Err(Error::tensor(
                name,
                format!(
                    "shape {:?}, expected {:?} for these hyperparameters",
                    info.ne, want
                ),
            ));
        }
        let supported = matches!(info.ty.0, 0 | 1 | 2 | 3 | 6 | 7 | 8 | 10..=14 | 16..=23 | 29 | 30 | 34 | 35 | 39);
        if !supported {
            return Err(Error::tensor(
                name,
                format!("type {} cannot be used as a weight", info.ty),
            ));
        }
        let ne_i: Vec<i64> = info.ne.iter().map(|&d| d as i64).collect();
        let i = self.set.add(name, info.ty, &ne_i);
        self.infos.push(info);
        Ok(Some(i))
    }
}

impl Model {
    /// Open a GGUF file and load its weights for `backend`'s device (with ggml's CPU
    /// repacking where it has one, like llama.cpp).
    pub fn load(path: impl AsRef<Path>, backend: &Backend) -> Result<Model> {
        Self::load_with(path, backend, true)
    }

    /// [`Model::load`], choosing whether matmul weights may be repacked for ggml's CPU kernels
    /// (`repack`: faster Q4_0/Q4_K/IQ4_NL matmuls, at the cost of a copy of those weights in
    /// memory) or all stay zero-copy in the file's map.
    pub fn load_with(path: impl AsRef<Path>, backend: &Backend, repack: bool) -> Result<Model> {
        let gguf = GgufFile::open(path)?;
        Self::from_gguf(gguf, backend, repack)
    }

    pub fn from_gguf(gguf: GgufFile, backend: &Backend, repack: bool) -> Result<Model> {
        let hp = HParams::from_gguf(&gguf)?;
        if hp.rope_dims != hp.head_dim {
            return Err(Error::Unsupported(format!(
                "partial RoPE ({} of {} head dims)",
                hp.rope_dims, hp.head_dim
            )));
        }
        let (e, q, kv, ff, nv) = (
            hp.n_embd,
            hp.n_head * hp.head_dim,
            hp.n_head_kv * hp.head_dim,
            hp.n_ff,
            hp.n_vocab,
        );
        let mut ld = Loader {
            g: &gguf,
            set: TensorSet::new(16 + 16 * hp.n_layer)?,
            infos: Vec::new(),
        };
        let token_embd = ld.tensor("token_embd.weight", &[e, nv])?;
        let output_norm = ld.tensor("output_norm.weight", &[e])?;
        let output = ld.opt_tensor("output.weight", &[e, nv])?;
        // Llama 3.x's "llama3" RoPE scaling: each rotated pair's angle is divided by its factor.
        let rope_freqs = ld.opt_tensor("rope_freqs.weight", &[hp.rope_dims / 2])?;
        if let Some(i) = rope_freqs {
            if hp.arch != crate::model::Arch::Llama {
                return Err(Error::Unsupported(format!(
                    "RoPE frequency factors (`rope_freqs.weight`) in a `{}` model",
                    hp.arch.name()
                )));
            }
            if ld.infos[i].ty.0 != 0 {
                return Err(Error::tensor(
                    "rope_freqs.weight",
                    format!("type {}, expected f32", ld.infos[i].ty),
                ));
            }
        }
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let bias = hp.arch.qkv_bias();
            let hd = hp.head_dim;
            // Weights an architecture requires, and that no other architecture may carry
            // (a llama file with `attn_q_norm` would otherwise run without it).
            let arch_only =
                |ld: &mut Loader, s: &str, d: usize, on: bool| -> Result<Option<usize>> {
                    if on {
                        ld.tensor(&n(s), &[d]).map(Some)
                    } else if ld.g.tensor(&n(s)).is_some() {
                        Err(Error::Unsupported(format!(
                        "tensor `{}` in a `{}` model (famstream's `{}` layer has no such weight)",
                        n(s),
                        hp.arch.name(),
                        hp.arch.name()
                    )))
                    } else {
                        Ok(None)
                    }
                };
            let opt_bias = |ld: &mut Loader, s: &str, d: usize| -> Result<Option<usize>> {
                if bias {
                    ld.tensor(&n(s), &[d]).map(Some)
                } else {
                    ld.opt_tensor(&n(s), &[d])
                }
            };
            let fused = hp.arch.fused_projections();
            let (wq, wk, wv, ffn_gate, ffn_up) = if fused {
                let qkv = ld.tensor(&n("attn_qkv.weight"), &[e, q + 2 * kv])?;
                let up = ld.tensor(&n("ffn_up.weight"), &[e, 2 * ff])?;
                (qkv, qkv, qkv, up, up)
            } else {
                (
                    ld.tensor(&n("attn_q.weight"), &[e, q])?,
                    ld.tensor(&n("attn_k.weight"), &[e, kv])?,
                    ld.tensor(&n("attn_v.weight"), &[e, kv])?,
                    ld.tensor(&n("ffn_gate.weight"), &[e, ff])?,
                    ld.tensor(&n("ffn_up.weight"), &[e, ff])?,
                )
            };
            layers.push(LayerWeights {
                attn_norm: ld.tensor(&n("attn_norm.weight"), &[e])?,
                wq,
                wk,
                wv,
                bq: opt_bias(&mut ld, "attn_q.bias", q)?,
                bk: opt_bias(&mut ld, "attn_k.bias", kv)?,
                bv: opt_bias(&mut ld, "attn_v.bias", kv)?,
                wo: ld.tensor(&n("attn_output.weight"), &[q, e])?,
                ffn_norm: ld.tensor(&n("ffn_norm.weight"), &[e])?,
                ffn_gate,
                ffn_up,
                ffn_down: ld.tensor(&n("ffn_down.weight"), &[ff, e])?,
                q_norm: arch_only(&mut ld, "attn_q_norm.weight", hd, hp.arch.qk_norm())?,
                k_norm: arch_only(&mut ld, "attn_k_norm.weight", hd, hp.arch.qk_norm())?,
                post_attn_norm: arch_only(
                    &mut ld,
                    "post_attention_norm.weight",
                    e,
                    hp.arch.post_norms(),
                )?,
                post_ffn_norm: arch_only(&mut ld, "post_ffw_norm.weight", e, hp.arch.post_norms())?,
                fused,
            });
        }
        let Loader { mut set, infos, .. } = ld;
        // ggml's CPU kernels are faster on some types (Q4_0 on AVX2/AVX-512) with the weights
        // interleaved; those matmul weights are copied into a repack buffer, the rest stay in
        // the map.
        let mut repacked = Vec::new();
        if repack && backend.is_cpu() {
            let mut mm: Vec<usize> = layers
                .iter()
                .flat_map(|l| [l.wq, l.wk, l.wv, l.wo, l.ffn_gate, l.ffn_up, l.ffn_down])
                .collect();
            mm.extend(output);
            mm.sort_unstable();
            mm.dedup(); // fused projections appear under several names
            let (take, _) = set.alloc_repacked(&mm, &|i| gguf.tensor_data(infos[i]))?;
            for &i in &take {
                gguf.release(infos[i]);
            }
            repacked = take;
        }
        let placements: Vec<(usize, usize)> = infos
            .iter()
            .enumerate()
            .filter(|(i, _)| !repacked.contains(i))
            .map(|(i, t)| (i, gguf.tensor_file_offset(t) as usize))
            .collect();
        let max_tensor = infos.iter().map(|t| t.size as usize).max().unwrap_or(0);
        // Zero-copy where the device can compute on the map (CPU; Metal on unified memory): the
        // weight tensors point into the page cache.
        // SAFETY: the map lives in `gguf`, which this Model owns and drops after `weights`
        // (field order); it is read-only and page-aligned (so 32-byte aligned), and every
        // tensor offset is a multiple of the file's alignment (validated by the reader).
        // Graphs only read weight tensors.
        let mapped = unsafe { backend.buffer_from_host(gguf.bytes(), max_tensor) };
        let zero_copy = mapped.is_some() && repacked.is_empty();
        if let Some(buf) = mapped {
            set.place_in_buffer(buf, &placements)?;
        } else {
            // Discrete devices (Vulkan, CUDA): one device copy of the weights.
            set.alloc_all(backend)?;
            for (i, t) in infos.iter().enumerate() {
                if repacked.contains(&i) {
                    continue;
                }
                set.get(i).write_bytes(0, gguf.tensor_data(t)?)?;
            }
        }
        Ok(Model {
            hp,
            weights: set,
            token_embd,
            output_norm,
            output,
            rope_freqs,
            layers,
            device: backend.name().to_string(),
            zero_copy,
            adapter: None,
            gguf,
        })
    }

    /// Apply the LoRA adapter at `path` (checked against this model's file, see
    /// [`AdapterFile::check`]) in every graph from now on; its tensors go to `backend`, the
    /// device the model was loaded for. The base weights stay as they are (zero-copy where they
    /// were). One adapter per model.
    pub fn attach_adapter(&mut self, path: impl AsRef<Path>, backend: &Backend) -> Result<()> {
        let path = path.as_ref();
        if self.adapter.is_some() {
            return Err(Error::adapter(
                path,
                "the model already has an adapter (one at a time)",
            ));
        }
        if backend.name() != self.device {
            return Err(Error::Invalid(format!(
                "model loaded for device {} but the adapter is loaded for {}",
                self.device,
                backend.name()
            )));
        }
        if self.hp.arch.fused_projections() {
            return Err(Error::adapter(
                path,
                format!(
                    "adapters for `{}` models (fused Q|K|V and gate|up projections) are not \
                     supported",
                    self.hp.arch.name()
                ),
            ));
        }
        let file = AdapterFile::open(path, &self.gguf, &self.hp)?;
        let layers = &self.layers;
        let adapter = Adapter::upload(file, backend, self.weights.len(), |il, t| {
            layers[il].target(t)
        })?;
        // The stream defaults must still make sense with the adapter's keys.
        self.adapter = Some(adapter);
        if let Err(e) = self.fam_settings() {
            self.adapter = None;
            return Err(Error::adapter(path, e.to_string()));
        }
        Ok(())
    }

    /// The attached adapter, if any.
    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }

    /// The low-rank term the adapter adds to base weight `w`, if any.
    pub fn lora(&self, w: usize) -> Option<Lora<'_>> {
        self.adapter.as_ref()?.lora(w)
    }

    /// The stream defaults: built-in, overridden by the model file's `fam.*` keys, overridden
    /// by the adapter's (command-line flags override these in turn).
    pub fn fam_settings(&self) -> Result<FamSettings> {
        let mut s = FamSettings::default();
        s.override_from(&self.gguf)?;
        if let Some(a) = &self.adapter {
            s.override_from(&a.file.gguf)?;
        }
        s.validate()?;
        Ok(s)
    }

    /// The learned initial FAM (`fam.init_memory`, [`crate::init_memory`]) and the file
    /// holding it: the adapter's if it has one, else the model file's, if any.
    pub fn learned_fam(&self) -> Result<Option<LearnedFam<'_>>> {
        let (n_embd, n_layer) = (self.hp.n_embd, self.hp.n_layer);
        if let Some(a) = &self.adapter {
            if let Some(l) = init_memory::find(&a.file.gguf, n_embd, n_layer)? {
                return Ok(Some(l));
            }
        }
        init_memory::find(&self.gguf, n_embd, n_layer)
    }

    /// True when all weights are computed on in place from the memory map (CPU, Metal), none
    /// copied to a device or repacked.
    pub fn weights_zero_copy(&self) -> bool {
        self.zero_copy
    }

    pub fn device(&self) -> &str {
        &self.device
    }
    pub fn w(&self, i: usize) -> Tensor<'_> {
        self.weights.get(i)
    }
    pub fn token_embd(&self) -> Tensor<'_> {
        self.w(self.token_embd)
    }
    pub fn output_norm(&self) -> Tensor<'_> {
        self.w(self.output_norm)
    }
    /// RoPE frequency factors (Llama 3), if the model has them.
    pub fn rope_freqs(&self) -> Option<Tensor<'_>> {
        self.rope_freqs.map(|i| self.w(i))
    }
    /// The LM head (the token embedding when tied).
    pub fn output(&self) -> Tensor<'_> {
        self.w(self.output.unwrap_or(self.token_embd))
    }
    pub fn layer(&self, il: usize) -> &LayerWeights {
        &self.layers[il]
    }
}

impl Model {
    /// A 64-bit fingerprint of the model file: architecture, hyperparameters, the tensor table,
    /// and the first 64 KiB of the token embedding, and the whole adapter file if one is
    /// attached. Snapshots record it to refuse other models.
    pub fn fingerprint(&self) -> u64 {
        let mut h = crate::util::Fnv64::new();
        h.write(format!("{:?}", self.hp).as_bytes());
        for t in self.gguf.tensors() {
            h.write(t.name.as_bytes());
            h.write(&t.ty.0.to_le_bytes());
            for d in &t.ne {
                h.write(&d.to_le_bytes());
            }
            h.write(&t.offset.to_le_bytes());
        }
        if let Some(t) = self.gguf.tensor("token_embd.weight") {
            if let Ok(d) = self.gguf.tensor_data(t) {
                h.write(&d[..d.len().min(64 * 1024)]);
            }
        }
        if let Some(a) = &self.adapter {
            h.write(b"adapter");
            h.write(&a.file_hash().to_le_bytes());
        }
        h.finish()
    }
}

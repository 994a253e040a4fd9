//! A loaded model: hyperparameters and weight tensors that view the memory-mapped GGUF.
//!
//! On the CPU backend the mapped bytes are used in place (no copy, no repacking): ggml reads
//! weights straight from the page cache. Other backends get a device copy.

use super::arch::{known_layer_tensor, Dims, Slot};
use super::HParams;
use crate::adapter::{Adapter, AdapterFile, Lora, Target};
use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use crate::ggml::{Backend, Tensor, TensorSet};
use crate::gguf::{GgufFile, TensorInfo};
use crate::init_memory::{self, LearnedFam};
use crate::kept_heads::KeptHeads;
use crate::settings::FamSettings;
use std::path::Path;

/// Indices into the weight set for one transformer layer, by what each weight is for (the
/// architecture's table, [`crate::model::arch::ArchSpec::tensors`], says which it has).
#[derive(Clone, Debug, Default)]
pub struct LayerWeights {
    w: [Option<usize>; Slot::COUNT],
}

impl LayerWeights {
    /// The weight in `s`. The layer functions ask only for weights their table requires, which
    /// the loader checked.
    pub fn get(&self, s: Slot) -> usize {
        self.w[s as usize].unwrap_or_else(|| {
            panic!("layer weight {s:?} asked for but not in the architecture's table")
        })
    }
    /// The weight in `s` if the file has it (optional biases).
    pub fn opt(&self, s: Slot) -> Option<usize> {
        self.w[s as usize]
    }
    /// The weight an adapter target names, if the layer has it unfused.
    pub fn target(&self, t: Target) -> Option<usize> {
        self.opt(match t {
            Target::Q => Slot::Q,
            Target::K => Slot::K,
            Target::V => Slot::V,
            Target::O => Slot::O,
            Target::Gate => Slot::Gate,
            Target::Up => Slot::Up,
            Target::Down => Slot::Down,
        })
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
    /// Matmul weights loaded as Q8_0 copies of the file's Q4_1 (see [`Model::load_opts`]).
    q8_copies: usize,
    /// A LoRA adapter applied in the graphs (see [`Model::attach_adapter`]).
    adapter: Option<Adapter>,
    /// The heads that see kept tokens (`fam.kept_heads`: the adapter's, else the file's).
    kept_heads: Option<KeptHeads>,
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
        Self::load_opts(path, backend, repack, false)
    }

    /// [`Model::load_with`], and with `q8_copy` on the CPU, Q4_1 matmul weights (those ggml
    /// cannot repack) become Q8_0 copies: each block dequantized and requantized by ggml, the
    /// bytes `famstream convert --type q8_0` writes. ggml's Q8_0 GEMM reads prompts faster
    /// (the default SmolLM2 file, 2 threads, x86-64: pp512 271 -> 578 tokens/s), for a second
    /// copy of those weights and a small change in the numbers (perplexity +0.3% over 4k tokens
    /// of Moby-Dick; results/README.md).
    pub fn load_opts(
        path: impl AsRef<Path>,
        backend: &Backend,
        repack: bool,
        q8_copy: bool,
    ) -> Result<Model> {
        let gguf = GgufFile::open(path)?;
        Self::from_gguf_opts(gguf, backend, repack, q8_copy)
    }

    pub fn from_gguf(gguf: GgufFile, backend: &Backend, repack: bool) -> Result<Model> {
        Self::from_gguf_opts(gguf, backend, repack, false)
    }

    fn from_gguf_opts(
        gguf: GgufFile,
        backend: &Backend,
        repack: bool,
        q8_copy: bool,
    ) -> Result<Model> {
        let hp = HParams::from_gguf(&gguf)?;
        if hp.rope_dims != hp.head_dim {
            return Err(Error::Unsupported(format!(
                "partial RoPE ({} of {} head dims)",
                hp.rope_dims, hp.head_dim
            )));
        }
        let (e, nv) = (hp.n_embd, hp.n_vocab);
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
        let spec = hp.arch.spec();
        let dims = Dims {
            n_embd: hp.n_embd,
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hp.head_dim,
            n_ff: hp.n_ff,
        };
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let mut l = LayerWeights::default();
            for t in spec.tensors {
                let name = format!("blk.{il}.{}", t.gguf);
                let ne: Vec<usize> = t.ne.iter().map(|&d| dims.get(d)).collect();
                l.w[t.slot as usize] = if t.required {
                    Some(ld.tensor(&name, &ne)?)
                } else {
                    ld.opt_tensor(&name, &ne)?
                };
            }
            layers.push(l);
        }
        // A weight another architecture's layer has and this one's does not (a llama file with
        // `attn_q_norm`) is refused: run without it, the model would be silently wrong.
        for info in gguf.tensors() {
            let Some((_, suffix)) = info
                .name
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
            else {
                continue;
            };
            if known_layer_tensor(suffix) && !spec.tensors.iter().any(|t| t.gguf == suffix) {
                return Err(Error::Unsupported(format!(
                    "tensor `{}` in a `{}` model (famstream's `{}` layer has no such weight)",
                    info.name,
                    hp.arch.name(),
                    hp.arch.name()
                )));
            }
        }
        let Loader { mut set, infos, .. } = ld;
        // ggml's CPU kernels are faster on some types (Q4_0 on AVX2/AVX-512) with the weights
        // interleaved; those matmul weights are copied into a repack buffer, the rest stay in
        // the map.
        let matmul_slots = spec
            .tensors
            .iter()
            .map(|t| t.slot)
            .filter(|s| s.is_matmul());
        let mut mm: Vec<usize> = layers
            .iter()
            .flat_map(|l| matmul_slots.clone().filter_map(|s| l.opt(s)))
            .collect();
        mm.extend(output);
        mm.sort_unstable();
        mm.dedup(); // fused projections appear under several names
        let mut repacked = Vec::new();
        if repack && backend.is_cpu() {
            let (take, _) = set.alloc_repacked(&mm, &|i| gguf.tensor_data(infos[i]))?;
            for &i in &take {
                gguf.release(infos[i]);
            }
            repacked = take;
        }
        // The Q8_0 copies (see `load_opts`), made before anything is placed.
        let mut copies: Vec<(usize, Vec<u8>)> = Vec::new();
        if q8_copy && backend.is_cpu() {
            for &i in mm.iter().filter(|i| !repacked.contains(i)) {
                let t = infos[i];
                if t.ty != GgmlType::Q4_1 {
                    continue;
                }
                let n = t.n_elements() as usize;
                let values = crate::ggml::dequantize(t.ty, gguf.tensor_data(t)?, n)?;
                let q8 = crate::ggml::quantize(GgmlType::Q8_0, &values, t.ne[0] as usize)?;
                set.retype(i, GgmlType::Q8_0)?;
                copies.push((i, q8));
            }
        }
        let copied = |i: usize| copies.iter().any(|(j, _)| *j == i);
        let placements: Vec<(usize, usize)> = infos
            .iter()
            .enumerate()
            .filter(|(i, _)| !repacked.contains(i) && !copied(*i))
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
        let zero_copy = mapped.is_some() && repacked.is_empty() && copies.is_empty();
        if let Some(buf) = mapped {
            set.place_in_buffer(buf, &placements)?;
            if !copies.is_empty() {
                set.alloc_all(backend)?; // only the copies are left without data
            }
        } else {
            // Discrete devices (Vulkan, CUDA): one device copy of the weights.
            set.alloc_all(backend)?;
            for (i, t) in infos.iter().enumerate() {
                if repacked.contains(&i) || copied(i) {
                    continue;
                }
                set.get(i).write_bytes(0, gguf.tensor_data(t)?)?;
            }
        }
        for (i, bytes) in &copies {
            set.get(*i).write_bytes(0, bytes)?;
            gguf.release(infos[*i]);
        }
        let kept_heads = KeptHeads::from_gguf(&gguf, hp.n_layer, hp.n_head)?;
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
            q8_copies: copies.len(),
            adapter: None,
            kept_heads,
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
        // Adapters name the seven unfused linears; an architecture with fused ones has no place
        // for them.
        let unfused = [
            Slot::Q,
            Slot::K,
            Slot::V,
            Slot::O,
            Slot::Gate,
            Slot::Up,
            Slot::Down,
        ];
        if let Some(s) = unfused.iter().find(|&&s| self.hp.arch.tensor(s).is_none()) {
            return Err(Error::adapter(
                path,
                format!(
                    "adapters for `{}` models are not supported (its layers have no separate \
                     {s:?} projection: fused Q|K|V and gate|up)",
                    self.hp.arch.name()
                ),
            ));
        }
        let file = AdapterFile::open(path, &self.gguf, &self.hp)?;
        let layers = &self.layers;
        let adapter = Adapter::upload(file, backend, self.weights.len(), |il, t| {
            layers[il]
                .target(t)
                .expect("checked above: every target has its weight")
        })?;
        if let Some(k) = KeptHeads::from_gguf(&adapter.file.gguf, self.hp.n_layer, self.hp.n_head)
            .map_err(|e| Error::adapter(path, e.to_string()))?
        {
            self.kept_heads = Some(k);
        }
        // The stream defaults must still make sense with the adapter's keys.
        self.adapter = Some(adapter);
        if let Err(e) = self.fam_settings() {
            self.adapter = None;
            return Err(Error::adapter(path, e.to_string()));
        }
        Ok(())
    }

    /// The (layer, head) pairs whose attention sees kept tokens ([`crate::kept_heads`]); `None`:
    /// every head.
    pub fn kept_heads(&self) -> Option<&KeptHeads> {
        self.kept_heads.as_ref()
    }

    /// Show kept tokens to every head, whatever `fam.kept_heads` says (`--kept-heads-all`).
    pub fn clear_kept_heads(&mut self) {
        self.kept_heads = None;
    }

    /// The attached adapter, if any.
    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }

    /// The low-rank term the adapter adds to base weight `w` in a graph of FAM rows
    /// (`fam_rows`) or of tokens, if any.
    pub fn lora(&self, w: usize, fam_rows: bool) -> Option<Lora<'_>> {
        self.adapter.as_ref()?.lora(w, fam_rows)
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

    /// How many matmul weights were loaded as Q8_0 copies of the file's Q4_1 (`q8_copy` of
    /// [`Model::load_opts`]; 0 off the CPU, or when the file has none).
    pub fn q8_copies(&self) -> usize {
        self.q8_copies
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

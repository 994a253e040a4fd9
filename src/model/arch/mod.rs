//! The architecture table: one row per architecture ([`ArchSpec`]: GGUF name, HF classes, RoPE
//! layout, the per-layer tensors with their shapes and HF names, the layer function), and one
//! file per architecture with its row and its layer, next to each other (as llama.cpp keeps
//! `src/models/<arch>.cpp`). Shared graph pieces (norm, linear, attention projections, RoPE,
//! gated MLPs) are in [`ops`].
//!
//! The layer is written once per architecture and called by every graph that runs a layer: the
//! token graph, and the FAM update (whose queries are the FAM rows). What differs between those
//! graphs, where K/V go and what a query may see, is the `attend` callback the graph passes in.
//!
//! Adding an architecture: a file here with its `SPEC` (tensors, HF names) and its layer, a
//! variant of [`Arch`] with its GGUF name (`hparams.rs`), and its row in [`ARCHS`]. Its hyperparameters come from the standard
//! `{arch}.*` keys ([`crate::hparams`]); what the converter writes beyond them is in
//! `convert/hf.rs`.

pub mod ops;

mod gemma3;
mod llama;
mod phi3;
mod qwen2;
mod qwen3;

use crate::ggml::{Context, Tensor};
pub use crate::hparams::{Arch, RopeLayout};
use crate::model::{LayerWeights, Model};

/// A dimension of a layer tensor, in terms of the hyperparameters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dim {
    /// `n_embd`
    Embd,
    /// `n_head * head_dim`
    Q,
    /// `n_head_kv * head_dim`
    Kv,
    /// `n_head * head_dim + 2 * n_head_kv * head_dim` (fused Q|K|V)
    Qkv,
    /// `n_ff`
    Ff,
    /// `2 * n_ff` (fused gate|up)
    Ff2,
    /// `head_dim`
    Head,
}

/// The sizes [`Dim`]s stand for.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
}

impl Dims {
    pub fn get(&self, d: Dim) -> usize {
        let (q, kv) = (self.n_head * self.head_dim, self.n_head_kv * self.head_dim);
        match d {
            Dim::Embd => self.n_embd,
            Dim::Q => q,
            Dim::Kv => kv,
            Dim::Qkv => q + 2 * kv,
            Dim::Ff => self.n_ff,
            Dim::Ff2 => 2 * self.n_ff,
            Dim::Head => self.head_dim,
        }
    }
}

/// What a layer tensor is for: its place in [`LayerWeights`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Slot {
    AttnNorm,
    Q,
    K,
    V,
    /// Fused Q|K|V projection.
    Qkv,
    BiasQ,
    BiasK,
    BiasV,
    /// Per-head RMSNorm weights of Q and K (QK-norm).
    QNorm,
    KNorm,
    O,
    /// RMSNorm of the attention output before its residual add.
    PostAttnNorm,
    FfnNorm,
    Gate,
    Up,
    /// Fused gate|up projection.
    GateUp,
    Down,
    /// RMSNorm of the MLP output before its residual add.
    PostFfnNorm,
}

impl Slot {
    pub const COUNT: usize = Slot::PostFfnNorm as usize + 1;
    /// A matrix that multiplies activations (repacked by ggml on the CPU where it can be).
    pub fn is_matmul(self) -> bool {
        use Slot::*;
        matches!(self, Q | K | V | Qkv | O | Gate | Up | GateUp | Down)
    }
}

/// One tensor of every layer: `blk.{il}.{gguf}` in the GGUF, `model.layers.{il}.{hf}` in an
/// HF checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct LayerTensor {
    pub slot: Slot,
    pub gguf: &'static str,
    pub hf: &'static str,
    /// ggml order.
    pub ne: &'static [Dim],
    /// A file without it is refused; an optional one is used when present.
    pub required: bool,
}

const fn t(slot: Slot, gguf: &'static str, hf: &'static str, ne: &'static [Dim]) -> LayerTensor {
    LayerTensor {
        slot,
        gguf,
        hf,
        ne,
        required: true,
    }
}

const fn opt(slot: Slot, gguf: &'static str, hf: &'static str, ne: &'static [Dim]) -> LayerTensor {
    LayerTensor {
        slot,
        gguf,
        hf,
        ne,
        required: false,
    }
}

/// Everything the graphs need to run layer `il`.
pub struct Block<'a> {
    pub ctx: &'a Context,
    pub m: &'a Model,
    pub l: &'a LayerWeights,
    pub il: usize,
    /// The graph's rows are FAM rows (the FAM update, the FAM's K/V), not tokens: selects the
    /// adapter terms of a FAM-rows adapter ([`crate::adapter::LoraScope`]).
    pub fam_rows: bool,
}

/// Q, K, V of a batch of rows, as a layer hands them to its graph's attention.
pub struct Qkv<'a> {
    /// [hd, n_head, n], rotated.
    pub q: Tensor<'a>,
    /// [hd, n_head_kv, n], rotated.
    pub k: Tensor<'a>,
    /// [hd, n_head_kv, n], not rotated (attention sinks keep these to re-rotate later).
    pub k_raw: Tensor<'a>,
    /// [hd * n_head_kv, n].
    pub v: Tensor<'a>,
}

/// The graph's attention for one layer: stores what it keeps of `Qkv` and returns the attention
/// output [n_head * hd, n].
pub type Attend<'r, 'a> = &'r mut dyn FnMut(Qkv<'a>) -> Tensor<'a>;

/// The attention inputs of rows `x` [n_embd, n] at positions `pos`: the pre-attention norm, the
/// projections, and RoPE.
pub type AttnInFn = for<'a> fn(&Block<'a>, Tensor<'a>, Tensor<'a>) -> Qkv<'a>;

/// A whole layer on rows `x` at `pos`: attention through `attend`, the residual add (skipped
/// when `residual` is false: the FAM's zero first residual), the MLP and its residual.
pub type LayerFn =
    for<'a, 'r> fn(&Block<'a>, Tensor<'a>, Tensor<'a>, bool, Attend<'r, 'a>) -> Tensor<'a>;

/// A row of the architecture table.
pub struct ArchSpec {
    /// The architecture, and with it its GGUF name (`general.architecture`).
    pub arch: Arch,
    /// `architectures[0]` of an HF `config.json` this architecture converts from.
    pub hf_classes: &'static [&'static str],
    pub rope: RopeLayout,
    /// The tensors of each layer.
    pub tensors: &'static [LayerTensor],
    /// Added to every HF norm weight on conversion (Gemma computes `x * (1 + w)`).
    pub hf_norm_offset: f32,
    pub attn_in: AttnInFn,
    pub layer: LayerFn,
}

/// The architecture table.
pub static ARCHS: [&ArchSpec; 5] = [
    &llama::SPEC,
    &qwen2::SPEC,
    &qwen3::SPEC,
    &phi3::SPEC,
    &gemma3::SPEC,
];

impl Arch {
    /// The architecture's row.
    pub fn spec(self) -> &'static ArchSpec {
        ARCHS
            .iter()
            .find(|s| s.arch == self)
            .expect("every architecture has a row")
    }
    /// The architecture of an HF checkpoint's `architectures[0]`.
    pub fn from_hf_class(class: &str) -> Option<Arch> {
        ARCHS
            .iter()
            .find(|s| s.hf_classes.contains(&class))
            .map(|s| s.arch)
    }
    /// Every HF class famstream converts, for messages.
    pub fn hf_class_list() -> String {
        let all: Vec<&str> = ARCHS
            .iter()
            .flat_map(|s| s.hf_classes.iter().copied())
            .collect();
        all.join(", ")
    }
    pub fn rope_layout(self) -> RopeLayout {
        self.spec().rope
    }
    /// The layer tensor in `slot`, if this architecture has one.
    pub fn tensor(self, slot: Slot) -> Option<&'static LayerTensor> {
        self.spec().tensors.iter().find(|t| t.slot == slot)
    }
}

/// Every layer-tensor name (`attn_q.weight`, ...) some architecture has: a file of another
/// architecture that carries one is refused rather than run without it.
pub fn known_layer_tensor(gguf: &str) -> bool {
    ARCHS
        .iter()
        .any(|s| s.tensors.iter().any(|t| t.gguf == gguf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent() {
        for s in ARCHS {
            let name = s.arch.name();
            assert_eq!(Arch::from_name(name).unwrap(), s.arch);
            assert!(std::ptr::eq(s.arch.spec(), s), "{name}: two rows");
            for c in s.hf_classes {
                assert_eq!(Arch::from_hf_class(c), Some(s.arch));
            }
            let mut slots: Vec<Slot> = s.tensors.iter().map(|t| t.slot).collect();
            let n = slots.len();
            slots.sort_by_key(|s| *s as usize);
            slots.dedup();
            assert_eq!(slots.len(), n, "{name}: a slot twice");
            // Every layer has its norms, an output projection and a down projection.
            for need in [Slot::AttnNorm, Slot::O, Slot::FfnNorm, Slot::Down] {
                assert!(
                    s.arch.tensor(need).is_some_and(|t| t.required),
                    "{name}: {need:?}"
                );
            }
        }
        assert!(Arch::from_name("mamba").is_err());
        assert!(known_layer_tensor("attn_q_norm.weight"));
        assert!(!known_layer_tensor("attn_rot_embd"));
    }
}

//! Which attention heads see the kept tokens (`fam.kept_heads`).
//!
//! A FAM with kept tokens (`fam.keep_len`) shows their K/V to the token rows of every layer.
//! On the CPU that is what they cost in decoding: ggml's flash attention visits every visible
//! key once per head, and a kept key costs what a key of the window costs (results/README.md,
//! sessions 32-34), while a key hidden from a head costs it one mask test. Few heads read them:
//! `tools/kept_heads.py` measures, per layer and query head, the attention the answer rows of
//! recall cases (the trainer's training split, not the benchmark's cases) put on the kept
//! tokens, and the B = 256 adapter answered as many of its cases with the kept tokens shown to
//! the 34 (layer, head) pairs of 270 with the most of it as with all of them.
//!
//! `fam.kept_heads` (u32 array, in an adapter or a model file; an adapter's replaces the
//! file's, and `convert --adapter` carries it into a merged file): the pairs, each as
//! `layer * n_head + head`, whose attention sees the kept slots. Absent: every head. The graph
//! then gives each layer one of three masks ([`LayerKept`]): the stream's own (every head of
//! the layer sees them), one with the kept slots hidden (no head does), or a per-head mask, one
//! per distinct set of heads ([`KeptHeads::sets`]). Sinks and the FAM are not affected.

use crate::error::{Error, Result};
use crate::gguf::{Array, GgufFile, Value};

/// The metadata key.
pub const KEY: &str = "fam.kept_heads";

/// What one layer's token rows see of the kept slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKept {
    /// Every head sees them: the stream's mask.
    All,
    /// No head does: the mask with the kept slots hidden.
    None,
    /// The heads of [`KeptHeads::sets`]`[j]`: a per-head mask.
    Set(usize),
}

/// The (layer, head) pairs that see the kept slots, grouped for the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptHeads {
    layers: Vec<LayerKept>,
    /// Distinct head sets of the layers that are neither all nor none: per set, n_head flags.
    sets: Vec<Vec<bool>>,
    n_pairs: usize,
}

impl KeptHeads {
    /// From the pairs `layer * n_head + head` (in any order; repeats are an error).
    pub fn from_pairs(pairs: &[u32], n_layer: usize, n_head: usize) -> Result<KeptHeads> {
        let mut on = vec![false; n_layer * n_head];
        for &p in pairs {
            let slot = on.get_mut(p as usize).ok_or_else(|| {
                Error::metadata(
                    KEY,
                    format!(
                        "pair {p} is beyond this model's {n_layer} layers x {n_head} heads \
                         (an adapter made for another model?)"
                    ),
                )
            })?;
            if *slot {
                return Err(Error::metadata(KEY, format!("pair {p} is listed twice")));
            }
            *slot = true;
        }
        let mut sets: Vec<Vec<bool>> = Vec::new();
        let layers = on
            .chunks(n_head)
            .map(|heads| {
                if heads.iter().all(|&h| h) {
                    LayerKept::All
                } else if !heads.iter().any(|&h| h) {
                    LayerKept::None
                } else if let Some(j) = sets.iter().position(|s| s == heads) {
                    LayerKept::Set(j)
                } else {
                    sets.push(heads.to_vec());
                    LayerKept::Set(sets.len() - 1)
                }
            })
            .collect();
        Ok(KeptHeads {
            layers,
            sets,
            n_pairs: pairs.len(),
        })
    }

    /// The file's `fam.kept_heads`, if it has one.
    pub fn from_gguf(g: &GgufFile, n_layer: usize, n_head: usize) -> Result<Option<KeptHeads>> {
        match g.get(KEY) {
            None => Ok(None),
            Some(Value::Array(Array::U32(v))) => Self::from_pairs(v, n_layer, n_head).map(Some),
            Some(Value::Array(Array::I32(v))) => {
                let v: Vec<u32> = v
                    .iter()
                    .map(|&x| u32::try_from(x))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| Error::metadata(KEY, "a negative pair"))?;
                Self::from_pairs(&v, n_layer, n_head).map(Some)
            }
            Some(_) => Err(Error::metadata(KEY, "not an array of u32")),
        }
    }

    pub fn layer(&self, il: usize) -> LayerKept {
        self.layers[il]
    }
    /// The per-head sets: per set, whether each head sees the kept slots.
    pub fn sets(&self) -> &[Vec<bool>] {
        &self.sets
    }
    /// Whether some layer hides the kept slots from all its heads.
    pub fn any_none(&self) -> bool {
        self.layers.contains(&LayerKept::None)
    }
    /// (layer, head) pairs that see the kept slots.
    pub fn n_pairs(&self) -> usize {
        self.n_pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_grouped_by_their_head_sets() {
        // 4 layers x 3 heads: layer 0 all, layer 1 none, layers 2 and 3 the same one head
        let k = KeptHeads::from_pairs(&[0, 1, 2, 7, 10], 4, 3).unwrap();
        assert_eq!(
            (0..4).map(|l| k.layer(l)).collect::<Vec<_>>(),
            vec![
                LayerKept::All,
                LayerKept::None,
                LayerKept::Set(0),
                LayerKept::Set(0)
            ]
        );
        assert_eq!(k.sets(), &[vec![false, true, false]]);
        assert!(k.any_none());
        assert_eq!(k.n_pairs(), 5);
        // a pair beyond the model, or twice, is refused by name
        let e = KeptHeads::from_pairs(&[12], 4, 3).unwrap_err().to_string();
        assert!(e.contains(KEY) && e.contains("12"), "{e}");
        let e = KeptHeads::from_pairs(&[1, 1], 4, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }
}

//! Per-layer key/value storage: `n_slots` rows of K and V per layer, in f16 (as llama.cpp).
//!
//! Slots are plain storage; which slot holds which position, and who may see it, is decided by
//! the memory policy (the stream state), which passes slot indices and an attention mask to each
//! graph. K is stored already rotated by RoPE at its absolute position.

use crate::dtype::GgmlType;
use crate::error::Result;
use crate::ggml::{Backend, Tensor, TensorSet};
use crate::model::HParams;

/// Identities of K/V stores, unique in the process (an engine's cached graph names the store
/// it writes to by this id, never by an address that a later store could reuse).
static NEXT_KV_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct KvStore {
    set: TensorSet,
    id: u64,
    n_layer: usize,
    n_slots: usize,
    /// Row width: n_head_kv * head_dim.
    n_embd_kv: usize,
}

impl KvStore {
    pub fn new(hp: &HParams, n_slots: usize, backend: &Backend) -> Result<KvStore> {
        let n_embd_kv = hp.n_head_kv * hp.head_dim;
        let mut set = TensorSet::new(2 * hp.n_layer)?;
        for il in 0..hp.n_layer {
            set.add(
                &format!("cache_k_l{il}"),
                GgmlType::F16,
                &[n_embd_kv as i64, n_slots as i64],
            );
            set.add(
                &format!("cache_v_l{il}"),
                GgmlType::F16,
                &[n_embd_kv as i64, n_slots as i64],
            );
        }
        set.alloc_all(backend)?;
        Ok(KvStore {
            set,
            id: NEXT_KV_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            n_layer: hp.n_layer,
            n_slots,
            n_embd_kv,
        })
    }
    pub fn k(&self, il: usize) -> Tensor<'_> {
        self.set.get(2 * il)
    }
    pub fn v(&self, il: usize) -> Tensor<'_> {
        self.set.get(2 * il + 1)
    }
    /// This store's identity, unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn n_slots(&self) -> usize {
        self.n_slots
    }
    pub fn n_layer(&self) -> usize {
        self.n_layer
    }
    pub fn n_embd_kv(&self) -> usize {
        self.n_embd_kv
    }
    /// Bytes of device memory held.
    pub fn bytes(&self) -> usize {
        self.set.buffer_bytes()
    }
}

//! The learned initial FAM (`fam.init_memory`): each layer's F initial memory rows, f32,
//! `[n_embd, F, n_layer]` in ggml order (n_embd fastest, then the row, then the layer).
//!
//! Two ways to store it in a GGUF, both read:
//! - **a metadata array** `fam.init_memory` of `n_embd * F * n_layer` f32 values (F follows from
//!   its length): what famstream writes. llama.cpp ignores metadata it does not know, so an
//!   adapter or a merged model carrying it stays loadable by llama.cpp (its adapter loader
//!   refuses any tensor that is not a `.lora_a`/`.lora_b`, and its model loader refuses a model
//!   file with more tensors than the architecture has).
//! - **a tensor** `fam.init_memory`, f32 `[n_embd, F, n_layer]`: the older form, still read.
//!
//! A file holding both is refused (which one is meant is not clear).

use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use crate::gguf::{Array, GgufFile};
use std::path::Path;

/// The metadata key and tensor name of the learned initial FAM.
pub const KEY: &str = "fam.init_memory";

/// A learned initial FAM found in a file, shape checked against the model's n_embd and n_layer.
pub struct LearnedFam<'a> {
    /// The file holding it.
    pub path: &'a Path,
    /// F, rows per layer.
    pub fam_len: usize,
    /// `n_embd * F * n_layer` f32 values in native byte order (ggml's).
    pub data: &'a [u8],
    n_layer: usize,
}

impl LearnedFam<'_> {
    /// One layer's `F * n_embd` values as bytes.
    pub fn layer(&self, il: usize) -> &[u8] {
        // data.len() = 4 * n_embd * F * n_layer, checked in `find`
        let per_layer = self.data.len() / self.n_layer;
        &self.data[il * per_layer..(il + 1) * per_layer]
    }
}

/// The learned initial FAM in `g`, if any, checked to be `[n_embd, F, n_layer]` f32 with F > 0.
pub fn find(g: &GgufFile, n_embd: usize, n_layer: usize) -> Result<Option<LearnedFam<'_>>> {
    let bad = |msg: String| Error::tensor(KEY, format!("in {}: {msg}", g.path().display()));
    let array = g.get(KEY);
    let tensor = g.tensor(KEY);
    if array.is_some() && tensor.is_some() {
        return Err(bad(
            "stored both as a metadata array and as a tensor; keep one".to_string(),
        ));
    }
    let per_row = (n_embd * n_layer) as u64;
    if let Some(v) = array {
        let values = match v {
            crate::gguf::Value::Array(Array::F32(values)) => values,
            other => {
                return Err(bad(format!(
                    "the metadata value must be an array of f32, is {other}"
                )))
            }
        };
        let n = values.len() as u64;
        if n == 0 || n % per_row != 0 {
            return Err(bad(format!(
                "{n} values are not n_embd ({n_embd}) x F x n_layer ({n_layer}) for any F > 0"
            )));
        }
        // SAFETY: f32 has no invalid bit patterns and u8 no alignment; the byte view covers
        // exactly the vector's initialised elements and borrows it (it lives as long as `g`).
        let data =
            unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, values.len() * 4) };
        return Ok(Some(LearnedFam {
            path: g.path(),
            fam_len: (n / per_row) as usize,
            data,
            n_layer,
        }));
    }
    let Some(t) = tensor else {
        return Ok(None);
    };
    let ok = t.ty == GgmlType::F32
        && t.ne.len() == 3
        && t.ne[0] == n_embd as u64
        && t.ne[1] > 0
        && t.ne[2] == n_layer as u64;
    if !ok {
        return Err(bad(format!(
            "tensor is {} {:?}, expected f32 [n_embd = {n_embd}, F, n_layer = {n_layer}]",
            t.ty, t.ne
        )));
    }
    Ok(Some(LearnedFam {
        path: g.path(),
        fam_len: t.ne[1] as usize,
        data: g.tensor_data(t)?,
        n_layer,
    }))
}

/// How it is stored, for `inspect` (no model to check it against): `metadata, N f32 values`
/// or `tensor, f32 [n_embd, F, n_layer]`.
pub fn describe(g: &GgufFile) -> Option<String> {
    if let Some(t) = g.tensor(KEY) {
        return Some(format!("tensor, {} {:?}", t.ty, t.ne));
    }
    match g.get(KEY) {
        Some(crate::gguf::Value::Array(a)) => Some(format!(
            "metadata, {} {} values",
            a.len(),
            a.elem_type().name()
        )),
        Some(v) => Some(format!("metadata, {v}")),
        None => None,
    }
}

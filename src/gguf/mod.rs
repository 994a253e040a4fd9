//! GGUF: our own reader and writer for the file format of ggml/llama.cpp (spec: ggml
//! `docs/gguf.md`).
//!
//! Layout: magic `GGUF`, version (3; 2 is read too), tensor count and metadata count (u64),
//! typed key/value pairs, tensor infos (name, dims, ggml type, offset relative to the data
//! section), then tensor data aligned to `general.alignment` (default 32).
//!
//! This module knows the format only: nothing about transformers. Model-specific meaning of keys
//! lives in `model` and `settings`.

mod reader;
mod value;
mod writer;

pub use reader::{
    GgufFile, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_KEY_LEN, MAX_KV_COUNT, MAX_TENSOR_COUNT,
};
pub use value::{Array, Value, ValueType};
pub use writer::{AtomicFile, GgufWriter};

use crate::dtype::GgmlType;
use crate::error::{Error, Result};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const GGUF_VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;
pub const KEY_ALIGNMENT: &str = "general.alignment";

/// One tensor's entry in the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Shape in ggml order: `ne[0]` is the length of a row (the fastest-moving dimension).
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the first byte, relative to the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// Typed metadata getters. Integers are accepted from any GGUF integer type that holds the value
/// (converters differ on u32 vs i32 vs u64); floats from f32 or f64.
impl GgufFile {
    fn typed<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                Error::metadata(
                    key,
                    format!("expected {want}, found {} = {v}", v.type_description()),
                )
            }),
        }
    }
    fn required<T>(&self, key: &str, v: Result<Option<T>>) -> Result<T> {
        v?.ok_or_else(|| Error::metadata(key, "missing"))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "an unsigned integer", |v| {
            v.as_int().and_then(|i| u64::try_from(i).ok())
        })
    }
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "an unsigned 32-bit integer", |v| {
            v.as_int().and_then(|i| u32::try_from(i).ok())
        })
    }
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "a float", |v| v.as_float().map(|f| f as f32))
    }
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }
    pub fn opt_array(&self, key: &str) -> Result<Option<&Array>> {
        self.typed(key, "an array", |v| match v {
            Value::Array(a) => Some(a),
            _ => None,
        })
    }
    pub fn u32(&self, key: &str) -> Result<u32> {
        self.required(key, self.opt_u32(key))
    }
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.required(key, self.opt_u64(key))
    }
    pub fn f32(&self, key: &str) -> Result<f32> {
        self.required(key, self.opt_f32(key))
    }
    pub fn str(&self, key: &str) -> Result<&str> {
        self.required(key, self.opt_str(key))
    }
    pub fn array(&self, key: &str) -> Result<&Array> {
        self.required(key, self.opt_array(key))
    }
    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.str("general.architecture")
    }
    /// `{arch}.{suffix}` for this file's architecture.
    pub fn arch_key(&self, suffix: &str) -> Result<String> {
        Ok(format!("{}.{suffix}", self.architecture()?))
    }
    /// Total bytes of tensor data and total elements.
    pub fn tensor_totals(&self) -> (u64, u64) {
        self.tensors()
            .iter()
            .fold((0, 0), |(b, n), t| (b + t.size, n + t.n_elements()))
    }
}

//! Our safetensors reader: memory-mapped, zero-copy, and as strict as the GGUF reader.
//!
//! Format: u64 LE header length, a JSON header `{name: {dtype, shape, data_offsets: [begin,
//! end]}, "__metadata__": {...}}`, then the data; offsets are relative to the end of the header.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest JSON header accepted (real headers are tens of KiB).
pub const MAX_HEADER_LEN: u64 = 100 << 20;
/// Most dimensions accepted.
pub const MAX_DIMS: usize = 8;

/// Element types we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        match s {
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            _ => None,
        }
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
}

#[derive(Clone, Debug)]
pub struct StTensor {
    pub dtype: Dtype,
    /// Row-major (PyTorch order: shape[0] is the slowest dimension).
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

pub struct SafeTensors {
    path: PathBuf,
    map: memmap2::Mmap,
    pub tensors: BTreeMap<String, StTensor>,
}

impl SafeTensors {
    pub fn open(path: impl AsRef<Path>) -> Result<SafeTensors> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        let bad = |what: String| {
            Error::Invalid(format!(
                "{}: invalid safetensors file: {what}",
                path.display()
            ))
        };
        if len < 8 {
            return Err(bad(format!("{len} bytes, too short for a header")));
        }
        // SAFETY: read-only map owned by the returned value; like the GGUF reader, we document
        // that input files must not be modified while being converted.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, "map", e))?;
        let hlen = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
        if hlen > MAX_HEADER_LEN || hlen > len - 8 {
            return Err(bad(format!(
                "header length {hlen} exceeds the file ({len} bytes) or the limit"
            )));
        }
        let data_start = 8 + hlen as usize;
        let header: serde_json::Value = serde_json::from_slice(&map[8..data_start])
            .map_err(|e| bad(format!("header is not JSON: {e}")))?;
        let obj = header
            .as_object()
            .ok_or_else(|| bad("header is not a JSON object".into()))?;
        let data_len = map.len() - data_start;
        let mut tensors = BTreeMap::new();
        let mut ranges = Vec::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                continue;
            }
            let dt = v["dtype"].as_str().unwrap_or("?");
            let dtype = Dtype::parse(dt).ok_or_else(|| {
                bad(format!(
                    "tensor `{name}`: unsupported dtype {dt} (F32, F16, BF16)"
                ))
            })?;
            let shape: Vec<usize> = v["shape"]
                .as_array()
                .filter(|a| a.len() <= MAX_DIMS)
                .and_then(|a| {
                    a.iter()
                        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                        .collect()
                })
                .ok_or_else(|| bad(format!("tensor `{name}`: bad shape")))?;
            let offs: Vec<usize> = v["data_offsets"]
                .as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| {
                    a.iter()
                        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                        .collect()
                })
                .ok_or_else(|| bad(format!("tensor `{name}`: bad data_offsets")))?;
            let (b, e) = (offs[0], offs[1]);
            let n = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .and_then(|n| n.checked_mul(dtype.size()));
            if b > e || e > data_len || n != Some(e - b) {
                return Err(bad(format!("tensor `{name}`: data [{b}, {e}) does not fit shape {shape:?} of {dt} within {data_len} data bytes")));
            }
            ranges.push((b, e, name.clone()));
            tensors.insert(
                name.clone(),
                StTensor {
                    dtype,
                    shape,
                    start: data_start + b,
                    end: data_start + e,
                },
            );
        }
        ranges.sort();
        for w in ranges.windows(2) {
            if w[0].1 > w[1].0 {
                return Err(bad(format!(
                    "tensors `{}` and `{}` overlap",
                    w[0].2, w[1].2
                )));
            }
        }
        Ok(SafeTensors {
            path: path.to_path_buf(),
            map,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drop a converted tensor's pages from this process's resident set (they stay in the page
    /// cache), so the converter's RSS stays near one tensor instead of the whole input.
    pub fn release(&self, t: &StTensor) {
        crate::util::release_pages(&self.map, t.start, t.end);
    }

    /// A tensor's values as f32.
    pub fn f32(&self, t: &StTensor) -> Vec<f32> {
        let b = &self.map[t.start..t.end];
        match t.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

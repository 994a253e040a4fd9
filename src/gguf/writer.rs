//! The GGUF writer. Writes header, then tensor data one tensor at a time (so converters can
//! stream), into a temporary file that is renamed over the target only when complete.

use super::value::{Array, Value};
use super::{TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, KEY_ALIGNMENT};
use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file written under a temporary name in the target's directory and renamed into place by
/// [`AtomicFile::commit`]. Dropped without commit, the temporary file is removed: a failed or
/// interrupted write never leaves a partial output.
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(target: impl AsRef<Path>) -> Result<AtomicFile> {
        let target = target.as_ref().to_path_buf();
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, "create", e))?;
        Ok(AtomicFile {
            target,
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.file.as_mut().expect("AtomicFile used after commit")
    }
    /// Flush, sync and rename over the target.
    pub fn commit(mut self) -> Result<()> {
        let w = self.file.take().expect("AtomicFile committed twice");
        let f = w
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, "write", e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&self.tmp, "sync", e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.target)
            .map_err(|e| Error::io(&self.target, "rename onto", e))
    }
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Builds a GGUF file: set metadata, declare tensors, then [`GgufWriter::write`] streams the data.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn put_array(w: &mut impl Write, a: &Array) -> std::io::Result<()> {
    w.write_all(&(a.elem_type() as u32).to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    match a {
        Array::U8(v) => w.write_all(v),
        Array::I8(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        Array::U16(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        Array::I16(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        Array::U32(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        Array::I32(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        Array::F32(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        Array::Bool(v) => v.iter().try_for_each(|&x| w.write_all(&[x as u8])),
        Array::String(v) => v.iter().try_for_each(|x| put_str(w, x)),
        Array::Array(v) => v.iter().try_for_each(|x| put_array(w, x)),
        Array::U64(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        Array::I64(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        Array::F64(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
    }
}

fn put_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    w.write_all(&(v.value_type() as u32).to_le_bytes())?;
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => put_str(w, s),
        Value::Array(a) => put_array(w, a),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

/// Counts bytes written through it.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}
impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }
    /// Set a key, replacing an existing value in place (so file order is stable).
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }
    fn alignment(&self) -> Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, Value::U32(a))) if a.is_power_of_two() => Ok(u64::from(*a)),
            Some((_, v)) => Err(Error::metadata(
                KEY_ALIGNMENT,
                format!("must be a u32 power of two, got {v}"),
            )),
        }
    }
    /// Declare a tensor; its data is produced later, in declaration order, by `write`.
    pub fn add_tensor(&mut self, name: &str, ty: GgmlType, ne: &[u64]) -> Result<&TensorInfo> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::tensor(name, "declared twice"));
        }
        if ne.is_empty() || ne.len() > super::MAX_DIMS as usize {
            return Err(Error::tensor(
                name,
                format!("{} dimensions (1 to 4)", ne.len()),
            ));
        }
        let size = ty.tensor_size(ne).ok_or_else(|| {
            Error::tensor(
                name,
                format!(
                    "shape {ne:?} does not fit type {ty} (block size {})",
                    ty.block_size()
                ),
            )
        })?;
        let align = self.alignment()?;
        let offset = match self.tensors.last() {
            Some(t) => (t.offset + t.size).div_ceil(align) * align,
            None => 0,
        };
        self.tensors.push(TensorInfo {
            name: name.to_string(),
            ne: ne.to_vec(),
            ty,
            offset,
            size,
        });
        Ok(self.tensors.last().expect("just pushed"))
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Write the file atomically. `data(i, info, out)` must write exactly `info.size` bytes of
    /// tensor `i`; it is called once per tensor, in order.
    pub fn write(
        &self,
        path: impl AsRef<Path>,
        mut data: impl FnMut(usize, &TensorInfo, &mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let path = path.as_ref();
        let align = self.alignment()?;
        let mut out = AtomicFile::create(path)?;
        let tmp = out.tmp_path().to_path_buf();
        let io = |e| Error::io(&tmp, "write", e);
        let w = out.writer();
        let mut c = Counting { inner: w, n: 0 };
        c.write_all(GGUF_MAGIC).map_err(io)?;
        c.write_all(&GGUF_VERSION.to_le_bytes()).map_err(io)?;
        c.write_all(&(self.tensors.len() as u64).to_le_bytes())
            .map_err(io)?;
        c.write_all(&(self.metadata.len() as u64).to_le_bytes())
            .map_err(io)?;
        for (k, v) in &self.metadata {
            put_str(&mut c, k).map_err(io)?;
            put_value(&mut c, v).map_err(io)?;
        }
        for t in &self.tensors {
            put_str(&mut c, &t.name).map_err(io)?;
            c.write_all(&(t.ne.len() as u32).to_le_bytes())
                .map_err(io)?;
            for d in &t.ne {
                c.write_all(&d.to_le_bytes()).map_err(io)?;
            }
            c.write_all(&t.ty.0.to_le_bytes()).map_err(io)?;
            c.write_all(&t.offset.to_le_bytes()).map_err(io)?;
        }
        let data_start = c.n.div_ceil(align) * align;
        pad_to(&mut c, data_start).map_err(io)?;
        for (i, t) in self.tensors.iter().enumerate() {
            pad_to(&mut c, data_start + t.offset).map_err(io)?;
            let before = c.n;
            data(i, t, &mut c)?;
            let wrote = c.n - before;
            if wrote != t.size {
                return Err(Error::tensor(
                    &t.name,
                    format!("wrote {wrote} bytes, expected {}", t.size),
                ));
            }
        }
        if let Some(t) = self.tensors.last() {
            // Pad the end too, as ggml's writer does, so concatenated readers stay aligned.
            let end = (data_start + t.offset + t.size).div_ceil(align) * align;
            pad_to(&mut c, end).map_err(io)?;
        }
        out.commit()
    }

    /// Write with all tensor data given up front as byte slices (one per declared tensor).
    pub fn write_with_data(&self, path: impl AsRef<Path>, data: &[&[u8]]) -> Result<()> {
        if data.len() != self.tensors.len() {
            return Err(Error::Invalid(format!(
                "{} tensors declared but {} data buffers given",
                self.tensors.len(),
                data.len()
            )));
        }
        self.write(path, |i, _, out| {
            out.write_all(data[i])
                .map_err(|e| Error::io("<gguf output>", "write", e))
        })
    }
}

fn pad_to<W: Write>(c: &mut Counting<W>, target: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 64] = [0; 64];
    while c.n < target {
        let k = ((target - c.n) as usize).min(ZEROS.len());
        c.write_all(&ZEROS[..k])?;
    }
    Ok(())
}

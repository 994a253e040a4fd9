//! The GGUF reader: memory-maps a file and validates everything before use.
//!
//! Hostile input never panics and never makes us allocate more than a small multiple of the file
//! size: every count is checked against the bytes that remain (each element needs at least its
//! minimum encoded size) and against a named cap before anything is reserved, and every offset and
//! size uses checked arithmetic against the file length.

use super::value::{Array, Value, ValueType};
use super::{TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, KEY_ALIGNMENT};
use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Longest metadata key or tensor name accepted (the spec allows 65535 bytes).
pub const MAX_KEY_LEN: u64 = 65_535;
/// Most metadata pairs accepted.
pub const MAX_KV_COUNT: u64 = 1 << 20;
/// Most tensors accepted.
pub const MAX_TENSOR_COUNT: u64 = 1 << 20;
/// Deepest array nesting accepted (arrays of arrays of ...).
pub const MAX_ARRAY_DEPTH: u32 = 4;
/// Most dimensions of a tensor (ggml's GGML_MAX_DIMS).
pub const MAX_DIMS: u32 = 4;
/// Largest alignment accepted.
pub const MAX_ALIGNMENT: u64 = 1 << 16;

/// Where the bytes live: a read-only memory map, or (for tests and fuzzing) a heap buffer.
enum Source {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Source::Map(m) => m,
            Source::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the map and is handed out as borrowed slices.
pub struct GgufFile {
    path: PathBuf,
    source: Source,
    pub version: u32,
    metadata: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute file offset of the tensor data section.
    pub data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

/// A parse failure before the path is attached.
struct ParseError {
    at: u64,
    what: String,
}

type PResult<T> = std::result::Result<T, ParseError>;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err<T>(&self, what: impl Into<String>) -> PResult<T> {
        Err(ParseError {
            at: self.pos as u64,
            what: what.into(),
        })
    }
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    fn take(&mut self, n: u64, what: &str) -> PResult<&'a [u8]> {
        if n > self.remaining() {
            return self.err(format!(
                "{what}: needs {n} bytes but only {} remain (truncated file?)",
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> PResult<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> PResult<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> PResult<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count of elements that each need at least `min_size` bytes, capped at `cap`.
    fn count(&mut self, min_size: u64, cap: u64, what: &str) -> PResult<usize> {
        let at = self.pos as u64;
        let n = self.u64(what)?;
        if n > cap {
            return Err(ParseError {
                at,
                what: format!("{what} {n} exceeds the limit of {cap}"),
            });
        }
        match n.checked_mul(min_size) {
            Some(need) if need <= self.remaining() => Ok(n as usize),
            _ => Err(ParseError {
                at,
                what: format!(
                    "{what} {n} cannot fit in the {} bytes that remain",
                    self.remaining()
                ),
            }),
        }
    }
    fn string(&mut self, cap: u64, what: &str) -> PResult<String> {
        let at = self.pos as u64;
        let n = self.u64(what)?;
        if n > cap {
            return Err(ParseError {
                at,
                what: format!("{what}: length {n} exceeds the limit of {cap}"),
            });
        }
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ParseError {
            at,
            what: format!("{what}: not valid UTF-8"),
        })
    }
}

fn read_vec<T>(
    c: &mut Cursor,
    elem: ValueType,
    what: &str,
    mut f: impl FnMut(&mut Cursor) -> PResult<T>,
) -> PResult<Vec<T>> {
    let n = c.count(elem.min_encoded_size(), u64::MAX, what)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(f(c)?);
    }
    Ok(v)
}

fn read_array(c: &mut Cursor, key: &str, depth: u32) -> PResult<Array> {
    if depth > MAX_ARRAY_DEPTH {
        return c.err(format!(
            "key `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"
        ));
    }
    let at = c.pos as u64;
    let t = c.u32("array element type")?;
    let Some(elem) = ValueType::from_u32(t) else {
        return Err(ParseError {
            at,
            what: format!("key `{key}`: unknown array element type {t}"),
        });
    };
    let what = format!("key `{key}`: array count");
    Ok(match elem {
        ValueType::U8 => Array::U8(read_vec(c, elem, &what, |c| c.u8(key))?),
        ValueType::I8 => Array::I8(read_vec(c, elem, &what, |c| Ok(c.u8(key)? as i8))?),
        ValueType::U16 => Array::U16(read_vec(c, elem, &what, |c| c.u16(key))?),
        ValueType::I16 => Array::I16(read_vec(c, elem, &what, |c| Ok(c.u16(key)? as i16))?),
        ValueType::U32 => Array::U32(read_vec(c, elem, &what, |c| c.u32(key))?),
        ValueType::I32 => Array::I32(read_vec(c, elem, &what, |c| Ok(c.u32(key)? as i32))?),
        ValueType::F32 => Array::F32(read_vec(c, elem, &what, |c| {
            Ok(f32::from_bits(c.u32(key)?))
        })?),
        ValueType::Bool => Array::Bool(read_vec(c, elem, &what, |c| read_bool(c, key))?),
        ValueType::String => Array::String(read_vec(c, elem, &what, |c| c.string(u64::MAX, key))?),
        ValueType::Array => {
            Array::Array(read_vec(c, elem, &what, |c| read_array(c, key, depth + 1))?)
        }
        ValueType::U64 => Array::U64(read_vec(c, elem, &what, |c| c.u64(key))?),
        ValueType::I64 => Array::I64(read_vec(c, elem, &what, |c| Ok(c.u64(key)? as i64))?),
        ValueType::F64 => Array::F64(read_vec(c, elem, &what, |c| {
            Ok(f64::from_bits(c.u64(key)?))
        })?),
    })
}

fn read_bool(c: &mut Cursor, key: &str) -> PResult<bool> {
    let at = c.pos as u64;
    match c.u8(key)? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(ParseError {
            at,
            what: format!("key `{key}`: bool byte {b} is neither 0 nor 1"),
        }),
    }
}

fn read_value(c: &mut Cursor, key: &str) -> PResult<Value> {
    let at = c.pos as u64;
    let t = c.u32("value type")?;
    let Some(ty) = ValueType::from_u32(t) else {
        return Err(ParseError {
            at,
            what: format!("key `{key}`: unknown value type {t}"),
        });
    };
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8(key)?),
        ValueType::I8 => Value::I8(c.u8(key)? as i8),
        ValueType::U16 => Value::U16(c.u16(key)?),
        ValueType::I16 => Value::I16(c.u16(key)? as i16),
        ValueType::U32 => Value::U32(c.u32(key)?),
        ValueType::I32 => Value::I32(c.u32(key)? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(c.u32(key)?)),
        ValueType::Bool => Value::Bool(read_bool(c, key)?),
        ValueType::String => Value::String(c.string(u64::MAX, key)?),
        ValueType::Array => Value::Array(read_array(c, key, 1)?),
        ValueType::U64 => Value::U64(c.u64(key)?),
        ValueType::I64 => Value::I64(c.u64(key)? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(c.u64(key)?)),
    })
}

/// Everything but the tensor data, parsed from `buf`.
struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

fn parse(buf: &[u8]) -> PResult<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.array::<4>("magic")?;
    if &magic != GGUF_MAGIC {
        return Err(ParseError {
            at: 0,
            what: format!(
                "bad magic {:?}, expected \"GGUF\"",
                String::from_utf8_lossy(&magic)
            ),
        });
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        return Err(ParseError {
            at: 4,
            what: format!("unsupported version {version} (2 or 3)"),
        });
    }
    // Minimum bytes of one tensor info: name length, n_dims, one dim, type, offset.
    let n_tensors = c.count(8 + 4 + 8 + 4 + 8, MAX_TENSOR_COUNT, "tensor count")?;
    // Minimum bytes of one key/value pair: key length, value type, a one-byte value.
    let n_kv = c.count(8 + 4 + 1, MAX_KV_COUNT, "metadata count")?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut kv_index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let at = c.pos as u64;
        let key = c.string(MAX_KEY_LEN, &format!("metadata key #{i}"))?;
        if kv_index.contains_key(&key) {
            return Err(ParseError {
                at,
                what: format!("duplicate metadata key `{key}`"),
            });
        }
        let value = read_value(&mut c, &key)?;
        kv_index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }

    let alignment = match kv_index.get(KEY_ALIGNMENT).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() && u64::from(*a) <= MAX_ALIGNMENT => {
            u64::from(*a)
        }
        Some(v) => {
            return Err(ParseError {
                at: 0,
                what: format!(
                "`{KEY_ALIGNMENT}` must be a u32 power of two up to {MAX_ALIGNMENT}, got {v} ({})",
                v.type_description()
            ),
            })
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut tensor_index = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let at = c.pos as u64;
        let name = c.string(MAX_KEY_LEN, &format!("tensor #{i} name"))?;
        let n_dims = c.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return c.err(format!(
                "tensor `{name}`: {n_dims} dimensions (1 to {MAX_DIMS})"
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.u64("tensor dimension")?;
            if d > i64::MAX as u64 {
                return c.err(format!("tensor `{name}`: dimension {d} is out of range"));
            }
            ne.push(d);
        }
        let type_at = c.pos as u64;
        let ty = GgmlType(c.u32("tensor type")?);
        if !ty.is_known() {
            return Err(ParseError {
                at: type_at,
                what: format!("tensor `{name}`: unknown ggml type id {}", ty.0),
            });
        }
        let offset = c.u64("tensor offset")?;
        let Some(size) = ty.tensor_size(&ne) else {
            return Err(ParseError {
                at,
                what: format!(
                    "tensor `{name}`: shape {ne:?} does not fit type {ty} (row length must be a \
                     multiple of {} and the size must fit in 64 bits)",
                    ty.block_size()
                ),
            });
        };
        if offset % alignment != 0 {
            return Err(ParseError {
                at,
                what: format!(
                    "tensor `{name}`: data offset {offset} is not aligned to {alignment}"
                ),
            });
        }
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            return Err(ParseError {
                at,
                what: format!("duplicate tensor name `{name}`"),
            });
        }
        tensors.push(TensorInfo {
            name,
            ne,
            ty,
            offset,
            size,
        });
    }

    let header_end = c.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    if !tensors.is_empty() && data_offset > file_len {
        return Err(ParseError {
            at: header_end,
            what: format!(
                "data section starts at {data_offset}, past the end of the file ({file_len})"
            ),
        });
    }
    let data_len = file_len.saturating_sub(data_offset);
    for t in &tensors {
        match t.offset.checked_add(t.size) {
            Some(end) if end <= data_len => {}
            _ => {
                return Err(ParseError {
                    at: header_end,
                    what: format!(
                    "tensor `{}`: data [{}, +{}) runs past the end of the data section ({} bytes)",
                    t.name, t.offset, t.size, data_len
                ),
                })
            }
        }
    }
    // No two tensors may share bytes.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.size > b.offset {
            return Err(ParseError {
                at: header_end,
                what: format!("tensors `{}` and `{}` overlap", a.name, b.name),
            });
        }
    }
    Ok(Header {
        version,
        metadata,
        kv_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

impl GgufFile {
    /// Open and memory-map a GGUF file, validating its header and tensor table.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        if len == 0 {
            return Err(Error::Gguf {
                path: path.into(),
                at: 0,
                what: "empty file".into(),
            });
        }
        // SAFETY: the map is read-only and lives as long as this GgufFile. Memory-mapped files
        // can change underneath us if another process truncates or rewrites them; like every
        // mmap-based model runtime (llama.cpp, ripgrep for search files) we accept that risk and
        // document it: do not modify a model file while famstream is using it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, "map", e))?;
        Self::from_source(path.into(), Source::Map(map))
    }

    /// Parse a GGUF image held in memory (tests, fuzzing, files received over the network).
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<GgufFile> {
        Self::from_source(PathBuf::from(name), Source::Owned(bytes))
    }

    fn from_source(path: PathBuf, source: Source) -> Result<GgufFile> {
        let h = parse(source.bytes()).map_err(|e| Error::Gguf {
            path: path.clone(),
            at: e.at,
            what: e.what,
        })?;
        Ok(GgufFile {
            path,
            source,
            version: h.version,
            metadata: h.metadata,
            kv_index: h.kv_index,
            tensors: h.tensors,
            tensor_index: h.tensor_index,
            alignment: h.alignment,
            data_offset: h.data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The whole file image (the map).
    pub fn bytes(&self) -> &[u8] {
        self.source.bytes()
    }
    /// Whether the bytes are a memory map of the file (as opposed to a heap copy).
    pub fn is_mapped(&self) -> bool {
        matches!(self.source, Source::Map(_))
    }
    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv_index.get(key).map(|&i| &self.metadata[i].1)
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    /// Absolute file offset of a tensor's first byte.
    pub fn tensor_file_offset(&self, t: &TensorInfo) -> u64 {
        self.data_offset + t.offset
    }
    /// Drop the pages lying wholly inside tensor `t`'s data from this process's resident set
    /// (they stay in the page cache and are read again if touched). For weights that were
    /// copied elsewhere (repacked), so the file's pages are not counted twice.
    pub fn release(&self, t: &TensorInfo) {
        let Source::Map(map) = &self.source else {
            return;
        };
        let (Ok(s), Ok(n)) = (
            usize::try_from(self.data_offset + t.offset),
            usize::try_from(t.size),
        ) else {
            return;
        };
        crate::util::release_pages(map, s, s.saturating_add(n));
    }

    /// Zero-copy view of a tensor's bytes. Infos of this file were validated at open time to lie
    /// inside it; an info from elsewhere that does not is an error, not a panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> Result<&[u8]> {
        let range = self
            .data_offset
            .checked_add(t.offset)
            .and_then(|s| Some((s, s.checked_add(t.size)?)))
            .and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        range
            .and_then(|r| self.bytes().get(r))
            .ok_or_else(|| Error::tensor(&t.name, "data lies outside this file"))
    }
}

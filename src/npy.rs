//! Minimal `.npy` (NumPy format 1.0) writer and reader for little-endian f32 arrays, used for
//! `famstream logits --out` and golden files.

use crate::error::{Error, Result};
use crate::gguf::AtomicFile;
use std::io::Write;
use std::path::Path;

/// Write `data` (row-major, `shape`) as a `<f4` array, atomically.
pub fn write_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    if shape.iter().product::<usize>() != data.len() {
        return Err(Error::Invalid(format!(
            "npy: shape {shape:?} does not hold {} values",
            data.len()
        )));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = AtomicFile::create(path)?;
    let io = |e| Error::io(path, "write", e);
    let w = f.writer();
    w.write_all(b"\x93NUMPY\x01\x00").map_err(io)?;
    w.write_all(&(header.len() as u16).to_le_bytes())
        .map_err(io)?;
    w.write_all(header.as_bytes()).map_err(io)?;
    for x in data {
        w.write_all(&x.to_le_bytes()).map_err(io)?;
    }
    f.commit()
}

/// Read a `<f4` (or `<f8`, converted) C-order array: (shape, data).
pub fn read_f32(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f32>)> {
    let path = path.as_ref();
    let b = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
    let bad = |what: &str| {
        Error::Invalid(format!(
            "{}: not a supported .npy file: {what}",
            path.display()
        ))
    };
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("bad magic"));
    }
    let (hlen, hstart) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        _ => return Err(bad("unknown version")),
    };
    let header = b
        .get(hstart..hstart + hlen)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header not UTF-8"))?;
    let f8 = header.contains("'<f8'");
    if !(header.contains("'<f4'") || f8) || header.contains("'fortran_order': True") {
        return Err(bad("only little-endian f4/f8 in C order"));
    }
    let s = header.find("'shape': (").ok_or_else(|| bad("no shape"))? + 10;
    let e = header[s..].find(')').ok_or_else(|| bad("no shape"))? + s;
    let shape: Vec<usize> = header[s..e]
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let body = &b[hstart + hlen..];
    let data: Vec<f32> = if f8 {
        if body.len() != n * 8 {
            return Err(bad("data length does not match the shape"));
        }
        body.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect()
    } else {
        if body.len() != n * 4 {
            return Err(bad("data length does not match the shape"));
        }
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    Ok((shape, data))
}

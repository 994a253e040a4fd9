//! Snapshots of a stream's state: save after N tokens, load, and continue as if never stopped.
//!
//! Layout (little-endian):
//! ```text
//! "FAMSNAP\0" | version u32 | header length u32 | header (JSON) | body | FNV-1a-64 of all before
//! body = slot positions (i64 x n_slots) | per layer: K, V (f16 rows) | per layer FAM (f32) |
//!        per layer sink keys (f16)
//! ```
//! The header records the model fingerprint, the memory settings, the state's counters and the
//! caller's extra data (e.g. the tokenizer's pending UTF-8 bytes). The size depends on the model
//! and the settings only, never on how many tokens were read.

use crate::error::{Error, Result};
use crate::gguf::AtomicFile;
use crate::util::Fnv64;
use serde_json::Value as Json;
use std::io::Write;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"FAMSNAP\0";
pub const VERSION: u32 = 1;
/// Largest header accepted (the JSON header is a few KiB).
const MAX_HEADER: usize = 1 << 20;

/// Write header + body atomically. The body comes in `parts` (one tensor's bytes each), so a
/// snapshot never needs a second copy of the whole state in memory.
pub fn write(
    path: &Path,
    header: &Json,
    parts: impl IntoIterator<Item = Result<Vec<u8>>>,
) -> Result<()> {
    let header = serde_json::to_vec(header).expect("JSON values serialize");
    let mut f = AtomicFile::create(path)?;
    let mut h = Fnv64::new();
    let io = |e| Error::io(path, "write", e);
    let w = f.writer();
    for part in [
        &MAGIC[..],
        &VERSION.to_le_bytes(),
        &(header.len() as u32).to_le_bytes(),
        &header,
    ] {
        h.write(part);
        w.write_all(part).map_err(io)?;
    }
    for part in parts {
        let part = part?;
        h.write(&part);
        w.write_all(&part).map_err(io)?;
    }
    w.write_all(&h.finish().to_le_bytes()).map_err(io)?;
    f.commit()
}

/// A snapshot being read. [`Reader::open`] verifies the whole file's checksum in a streaming
/// pass before it parses anything, then the body is read part by part ([`Reader::take`]);
/// [`Reader::finish`] checks that all of it was taken.
pub struct Reader {
    path: std::path::PathBuf,
    file: std::io::BufReader<std::fs::File>,
    pub header: Json,
    /// Bytes of the body not yet taken.
    remaining: u64,
}

impl Reader {
    /// Open `path`: check its magic and length, its checksum (one pass over the file, nothing
    /// kept in memory), then its version and header.
    pub fn open(path: &Path) -> Result<Reader> {
        use std::io::{Read, Seek};
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, "read", e))?;
        let len = f.metadata().map_err(|e| Error::io(path, "read", e))?.len();
        let mut r = Reader {
            path: path.to_path_buf(),
            file: std::io::BufReader::with_capacity(1 << 20, f),
            header: Json::Null,
            remaining: 0,
        };
        let fixed = 8 + 4 + 4;
        if len < fixed + 8 {
            return Err(r.bad("bad magic or truncated".into()));
        }
        if &r.read(8)?[..] != MAGIC {
            return Err(r.bad("bad magic or truncated".into()));
        }
        // Checksum over everything before the last 8 bytes.
        let mut h = Fnv64::new();
        h.write(MAGIC);
        let mut left = len - 8 - 8;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            r.file
                .read_exact(&mut buf[..n])
                .map_err(|e| Error::io(path, "read", e))?;
            h.write(&buf[..n]);
            left -= n as u64;
        }
        drop(buf);
        let stored = r.read(8)?;
        if h.finish().to_le_bytes()[..] != stored[..] {
            return Err(r.bad("checksum mismatch (truncated or corrupted)".into()));
        }
        r.file
            .seek(std::io::SeekFrom::Start(8))
            .map_err(|e| Error::io(path, "read", e))?;
        let start = r.read(8)?;
        let version = u32::from_le_bytes(start[..4].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(r.bad(format!(
                "version {version}, this famstream reads version {VERSION}"
            )));
        }
        let hlen = u32::from_le_bytes(start[4..8].try_into().expect("4 bytes")) as u64;
        if hlen as usize > MAX_HEADER || fixed + hlen + 8 > len {
            return Err(r.bad(format!("header length {hlen}")));
        }
        let header = r.read(hlen as usize)?;
        r.header = serde_json::from_slice(&header).map_err(|e| r.bad(format!("header: {e}")))?;
        r.remaining = len - fixed - hlen - 8;
        Ok(r)
    }

    fn bad(&self, what: String) -> Error {
        Error::file(&self.path, format!("not a usable snapshot: {what}"))
    }

    fn read(&mut self, n: usize) -> Result<Vec<u8>> {
        use std::io::Read;
        let mut b = vec![0u8; n];
        self.file
            .read_exact(&mut b)
            .map_err(|e| Error::io(&self.path, "read", e))?;
        Ok(b)
    }

    /// Bytes of body in the file (to compare with the size the header implies before reading).
    pub fn body_len(&self) -> u64 {
        self.remaining
    }

    /// The next `n` bytes of the body.
    pub fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        if n as u64 > self.remaining {
            return Err(self.bad("body shorter than its header says".into()));
        }
        self.remaining -= n as u64;
        self.read(n)
    }

    /// Check that the whole body was taken.
    pub fn finish(self) -> Result<()> {
        if self.remaining != 0 {
            return Err(self.bad(format!("{} bytes of body left over", self.remaining)));
        }
        Ok(())
    }
}

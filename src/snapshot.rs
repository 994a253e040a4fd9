//! Snapshots of a stream's state: save after N tokens, load, and continue as if never stopped.
//!
//! Layout (little-endian):
//! ```text
//! "FAMSNAP\0" | version u32 | header length u32 | header (JSON) | body | FNV-1a-64 of all before
//! body = slot positions (i64 x n_slots) | per layer: K, V (f16 rows) | per layer FAM (f32) |
//!        per layer sink and kept keys (f16) | `keep` salience scores (crate::keep)
//! ```
//! The header records the model fingerprint, the memory settings, the state's counters and the
//! caller's extra data (e.g. the tokenizer's pending UTF-8 bytes). The size depends on the model
//! and the settings only, never on how many tokens were read.

use crate::error::{Error, Result};
use crate::ggml::Backend;
use crate::gguf::AtomicFile;
use crate::model::Model;
use crate::settings::FamSettings;
use crate::state::FamState;
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

// ---- the stream state's codec ----------------------------------------------------------------
//
// Header: the model's fingerprint, the settings and every host-side field of the state; body:
// the slot positions (i64 each), then per layer K and V, then per layer FAM rows, then per layer
// sink keys.

impl FamState {
    /// The state's tensors in snapshot order: per layer K, V; then per layer FAM rows; then
    /// per layer sink keys.
    fn snapshot_tensors(&self) -> Vec<crate::ggml::Tensor<'_>> {
        let mut out = Vec::new();
        for il in 0..self.n_layer {
            out.push(self.kv.k(il));
            out.push(self.kv.v(il));
        }
        let fam = self.fam.as_ref().map(|f| &f.rows);
        for set in [fam, self.sinks.as_ref()].into_iter().flatten() {
            for il in 0..self.n_layer {
                out.push(set.get(il));
            }
        }
        out
    }

    /// Save the whole stream state (and the caller's `extra` JSON) to `path`, atomically.
    pub fn save(
        &self,
        path: impl AsRef<std::path::Path>,
        model: &Model,
        extra: serde_json::Value,
    ) -> Result<()> {
        let fam = self.fam.as_ref();
        let header = serde_json::json!({
            "model_fingerprint": format!("{:016x}", model.fingerprint()),
            "settings": self.settings.to_json(),
            "n_ctx": self.n_ctx, "n_slots": self.slots.n_slots(), "n_layer": self.n_layer,
            "n_embd": self.n_embd, "n_embd_kv": self.kv.n_embd_kv(),
            "n_past": self.n_past, "start_position": self.start_position, "origin": self.origin,
            "fam_pos": fam.map_or(&[][..], |f| &f.pos[..]), "fam_valid": self.fam_valid(),
            "fam_updates": fam.map_or(0, |f| f.updates), "initialised": self.initialised,
            "seed_tokens": fam.map_or(&[][..], |f| &f.seed_tokens[..]),
            "bos": fam.map_or(0, |f| f.bos),
            "extra": extra,
        });
        let positions: Vec<u8> = self
            .slots
            .positions()
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        let tensors = self.snapshot_tensors();
        let salience = self.salience.as_ref().map(|s| Ok(s.to_bytes()));
        let parts = std::iter::once(Ok(positions))
            .chain(tensors.into_iter().map(|t| t.read_bytes()))
            .chain(salience);
        write(path.as_ref(), &header, parts)
    }

    /// Load a snapshot for `model`. Refuses snapshots of another model, or (when `expected` is
    /// given) of other memory settings. Returns the state and the caller's extra JSON.
    pub fn load(
        path: impl AsRef<std::path::Path>,
        model: &Model,
        backend: &Backend,
        expected: Option<&FamSettings>,
    ) -> Result<(FamState, serde_json::Value)> {
        let path = path.as_ref();
        let mut snap = Reader::open(path)?;
        let h = &snap.header.clone();
        let bad = |what: String| Error::file(path, what);
        let fp = format!("{:016x}", model.fingerprint());
        if h["model_fingerprint"].as_str() != Some(fp.as_str()) {
            return Err(bad("the snapshot was made with a different model".into()));
        }
        // malformed settings make the snapshot unusable: a bad file, like its other fields
        let settings = FamSettings::from_json(&h["settings"]).map_err(|e| bad(e.to_string()))?;
        if let Some(e) = expected {
            if *e != settings {
                // the file is fine; the command line asks for something else
                return Err(Error::Invalid(format!(
                    "{}: the snapshot was made with other memory settings ({settings:?}), not \
                     {e:?}",
                    path.display()
                )));
            }
        }
        let num = |k: &str| {
            h[k].as_i64()
                .ok_or_else(|| bad(format!("header field `{k}` missing")))
        };
        let seed_tokens: Vec<u32> = h["seed_tokens"]
            .as_array()
            .ok_or_else(|| bad("seed tokens".into()))?
            .iter()
            .map(|v| v.as_u64().map(|x| x as u32))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("seed tokens".into()))?;
        let mut st = FamState::new(
            model,
            backend,
            settings,
            num("n_ctx")? as usize,
            seed_tokens,
            num("bos")? as u32,
        )?;
        if num("n_slots")? as usize != st.slots.n_slots() || num("n_layer")? as usize != st.n_layer
        {
            return Err(bad("state shape does not match".into()));
        }
        st.n_past = num("n_past")? as u64;
        st.start_position = num("start_position")?;
        st.origin = num("origin")?;
        let fam_valid = h["fam_valid"]
            .as_bool()
            .ok_or_else(|| bad("fam_valid".into()))?;
        st.initialised = h["initialised"]
            .as_bool()
            .ok_or_else(|| bad("initialised".into()))?;
        let fam_updates = num("fam_updates")? as u64;
        let fam_pos: Vec<i64> = h["fam_pos"]
            .as_array()
            .ok_or_else(|| bad("fam_pos".into()))?
            .iter()
            .map(|v| v.as_i64())
            .collect::<Option<_>>()
            .ok_or_else(|| bad("fam_pos".into()))?;
        if fam_pos.len() != st.slots.n_fam() || (fam_valid && st.fam.is_none()) {
            return Err(bad("fam_pos length".into()));
        }
        if let Some(f) = st.fam.as_mut() {
            (f.pos, f.valid, f.updates) = (fam_pos, fam_valid, fam_updates);
        }
        // Body: exact size check first, then copy tensor by tensor; the checksum is verified
        // at the end (a corrupted file's state is dropped, never returned).
        let n_slots = st.slots.n_slots();
        let tensors = st.snapshot_tensors();
        let salience_bytes = st.salience.as_ref().map_or(0, |s| s.n_bytes());
        let expect =
            8 * n_slots + tensors.iter().map(|t| t.nbytes()).sum::<usize>() + salience_bytes;
        if snap.body_len() != expect as u64 {
            return Err(bad(format!(
                "body of {} bytes, expected {expect}",
                snap.body_len()
            )));
        }
        let positions = snap.take(8 * n_slots)?;
        for t in tensors {
            t.write_bytes(0, &snap.take(t.nbytes())?)?;
        }
        let salience = snap.take(salience_bytes)?;
        snap.finish()?;
        if let Some(s) = st.salience.as_mut() {
            s.load_bytes(&salience).map_err(|e| bad(e.to_string()))?;
        }
        let positions: Vec<i64> = positions
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        st.slots.set_positions(&positions)?;
        Ok((st, h["extra"].clone()))
    }
}

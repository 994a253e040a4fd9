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
use crate::settings::FamSettings;
use crate::util::Fnv64;
use serde_json::{json, Value as Json};
use std::io::Write;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"FAMSNAP\0";
pub const VERSION: u32 = 1;
/// Largest header accepted (the JSON header is a few KiB).
const MAX_HEADER: usize = 1 << 20;

/// The parts of a snapshot, as saved and loaded by `FamState`.
pub struct Snapshot {
    pub header: Json,
    pub body: Vec<u8>,
}

pub fn settings_json(s: &FamSettings) -> Json {
    json!({
        "policy": s.policy.as_str(), "block_size": s.block_size, "mem_blocks": s.mem_blocks,
        "fam_len": s.fam_len, "sinks": s.sinks, "init": s.init.as_str(),
        "query_pos": s.query_pos.as_str(), "zero_first_residual": s.zero_first_residual,
        "renorm": s.renorm, "feedback": s.feedback.as_str(),
    })
}

pub fn settings_from_json(j: &Json) -> Result<FamSettings> {
    let bad = || Error::Invalid("snapshot: malformed settings".into());
    let u = |k: &str| {
        j[k].as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(bad)
    };
    let st = |k: &str| j[k].as_str().ok_or_else(bad);
    Ok(FamSettings {
        policy: st("policy")?.parse()?,
        block_size: u("block_size")?,
        mem_blocks: u("mem_blocks")?,
        fam_len: u("fam_len")?,
        sinks: u("sinks")?,
        init: st("init")?.parse()?,
        query_pos: st("query_pos")?.parse()?,
        zero_first_residual: j["zero_first_residual"].as_bool().ok_or_else(bad)?,
        renorm: j["renorm"].as_bool().ok_or_else(bad)?,
        feedback: st("feedback")?.parse()?,
    })
}

/// Write header + body atomically.
pub fn write(path: &Path, snap: &Snapshot) -> Result<()> {
    let header = serde_json::to_vec(&snap.header).expect("JSON values serialize");
    let mut f = AtomicFile::create(path)?;
    let mut h = Fnv64::new();
    let io = |e| Error::io(path, "write", e);
    let w = f.writer();
    for part in [
        &MAGIC[..],
        &VERSION.to_le_bytes(),
        &(header.len() as u32).to_le_bytes(),
        &header,
        &snap.body,
    ] {
        h.write(part);
        w.write_all(part).map_err(io)?;
    }
    w.write_all(&h.finish().to_le_bytes()).map_err(io)?;
    f.commit()
}

/// Read and verify a snapshot file (magic, version, checksum).
pub fn read(path: &Path) -> Result<Snapshot> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
    let bad =
        |what: String| Error::Invalid(format!("{}: not a usable snapshot: {what}", path.display()));
    if b.len() < 8 + 4 + 4 + 8 || &b[..8] != MAGIC {
        return Err(bad("bad magic or truncated".into()));
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(format!(
            "version {version}, this famstream reads version {VERSION}"
        )));
    }
    let (payload, sum) = b.split_at(b.len() - 8);
    let mut h = Fnv64::new();
    h.write(payload);
    if h.finish().to_le_bytes() != sum {
        return Err(bad("checksum mismatch (truncated or corrupted)".into()));
    }
    let hlen = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) as usize;
    if hlen > MAX_HEADER || 16 + hlen > payload.len() {
        return Err(bad(format!("header length {hlen}")));
    }
    let header: Json =
        serde_json::from_slice(&b[16..16 + hlen]).map_err(|e| bad(format!("header: {e}")))?;
    Ok(Snapshot {
        header,
        body: payload[16 + hlen..].to_vec(),
    })
}

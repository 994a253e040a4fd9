//! Property test: random and mutated bytes never make the GGUF reader panic, and it never
//! allocates more than a small multiple of the input size while parsing.
//!
//! This test binary installs a counting global allocator (per thread), so it holds only this
//! test.

mod common;

use common::Rng;
use famstream::dtype::GgmlType;
use famstream::gguf::{Array, GgufFile, GgufWriter, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;
thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = CURRENT.try_with(|c| {
            let n = c.get() + l.size();
            c.set(n);
            let _ = PEAK.try_with(|p| p.set(p.get().max(n)));
        });
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = CURRENT.try_with(|c| c.set(c.get().saturating_sub(l.size())));
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static ALLOC: Counting = Counting;

/// Parsed metadata is stored compactly (typed vectors), so it can exceed the file bytes only by
/// per-element overhead: a `String` (24 bytes) per 8-byte empty string, an `Array` (32 bytes) per
/// 12-byte nested array header, plus hash-map entries per key. 8x the input bounds all of these.
const MAX_ALLOC_FACTOR: usize = 8;
/// Fixed overhead independent of input size (hash maps' first buckets, the error message).
const ALLOC_SLACK: usize = 64 * 1024;

fn seed_file() -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("famstream-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("seed.gguf");
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("llama.block_count", Value::U32(2));
    w.set(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(vec!["a".into(), "bc".into(), "<s>".into()])),
    );
    w.set(
        "tokenizer.ggml.scores",
        Value::Array(Array::F32(vec![0.0, -1.0, -2.0])),
    );
    w.set(
        "x.nested",
        Value::Array(Array::Array(vec![
            Array::U8(vec![1, 2]),
            Array::Array(vec![]),
        ])),
    );
    w.set("x.f64", Value::F64(1.0));
    w.add_tensor("t0", GgmlType::F32, &[8, 2]).unwrap();
    w.add_tensor("t1", GgmlType::Q8_0, &[32]).unwrap();
    w.write(&path, |_, t, out| {
        out.write_all(&vec![1u8; t.size as usize])
            .map_err(|e| famstream::Error::io("x", "write", e))
    })
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

fn check(bytes: Vec<u8>) {
    let len = bytes.len();
    PEAK.with(|p| p.set(0));
    let base = CURRENT.with(|c| c.get());
    PEAK.with(|p| p.set(base));
    let r = std::panic::catch_unwind(|| {
        GgufFile::from_bytes(bytes, "fuzz.gguf").map(|g| g.tensors().len())
    });
    assert!(r.is_ok(), "reader panicked on a {len}-byte input");
    let peak = PEAK.with(|p| p.get()) - base;
    // The input buffer itself (moved in) is not counted: it was allocated before `base`.
    assert!(
        peak <= MAX_ALLOC_FACTOR * len + ALLOC_SLACK,
        "parsing {len} bytes allocated {peak} bytes"
    );
}

#[test]
fn random_and_mutated_inputs_never_panic_or_over_allocate() {
    let seed = seed_file();
    assert!(
        GgufFile::from_bytes(seed.clone(), "seed").is_ok(),
        "the seed file is valid"
    );
    let mut rng = Rng(0x5eed_f00d);
    let mut accepted = 0;
    for i in 0..20_000 {
        let mut b = seed.clone();
        match i % 4 {
            // flip random bytes
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let k = rng.below(b.len() as u64) as usize;
                    b[k] = rng.next_u64() as u8;
                }
            }
            // overwrite an aligned u64 with an extreme value (counts, lengths, offsets)
            1 => {
                let k = (rng.below(b.len() as u64 / 8) * 8) as usize;
                let v = [u64::MAX, u64::MAX / 2, 1 << 32, 1 << 20, 0, 7][rng.below(6) as usize];
                let end = (k + 8).min(b.len());
                b[k..end].copy_from_slice(&v.to_le_bytes()[..end - k]);
            }
            // truncate
            2 => b.truncate(rng.below(b.len() as u64) as usize),
            // pure random bytes behind a valid magic
            _ => {
                let n = rng.below(512) as usize;
                b = b"GGUF\x03\0\0\0".to_vec();
                b.extend((0..n).map(|_| rng.next_u64() as u8));
            }
        }
        if GgufFile::from_bytes(b.clone(), "m").is_ok() {
            accepted += 1;
        }
        check(b);
    }
    // Byte flips in tensor data leave valid files: the mutations reach past the header.
    assert!(accepted > 0);
}

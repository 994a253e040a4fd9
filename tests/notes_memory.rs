//! `summarize`'s notes use the same memory for an input of any length: the heap the program
//! allocates while reading a 16 times longer transcript grows by no more than its list of
//! chunk positions and the tokenizer's bounded caches. Counted by a counting global allocator (this test binary only), so the
//! measure is exact and not blurred by the system's page accounting; ggml's fixed buffers (the
//! K/V store, the compute buffer) are allocated once per stream whatever the input.
//!
//! Tiny random llama checkpoint (the pipeline, not the notes' quality, is under test).

mod common;

use famstream::notes::{self, NotesOptions, Source};
use famstream::settings::{FamSettings, MemoryPolicy};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), SeqCst) + l.size();
            PEAK.fetch_max(now, SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        CURRENT.fetch_sub(l.size(), SeqCst);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            CURRENT.fetch_sub(l.size(), SeqCst);
            let now = CURRENT.fetch_add(new, SeqCst) + new;
            PEAK.fetch_max(now, SeqCst);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What the long run may allocate beyond the short one: its longer list of chunk positions
/// (80 bytes a chunk, ~750 more chunks, up to twice that while the list grows) and the lazy DFA
/// cache of the tokenizer's regex, which grows as it meets new text (the model's notes too) up
/// to the regex crate's limit (+68 kB measured between runs of 300 and 3,000 lines). Holding
/// the input would cost ~1.3 MB here (the text, its lines and the chunks' text).
const SLACK_BYTES: usize = 256 * 1024;

/// `n` lines of varied speaker turns (~70 bytes each).
fn transcript(n: usize) -> String {
    let words = [
        "river", "mill", "lantern", "harvest", "council", "bridge", "orchard",
    ];
    (0..n)
        .map(|i| {
            format!(
                "Speaker{}: the {} and the {} were spoken of on day {i}.\n",
                i % 3,
                words[i % 7],
                words[(i * 3 + 1) % 7]
            )
        })
        .collect()
}

/// Peak heap bytes above the start while `notes::read` summarizes `n_lines` lines.
fn peak_heap_reading(n_lines: usize) -> (usize, usize) {
    let dir = common::scratch_dir(&format!("notes-memory-{n_lines}"));
    let path = dir.join("t.txt");
    std::fs::write(&path, transcript(n_lines)).unwrap();
    let rt = common::runtime(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/tiny/llama/model.f32.gguf"
    ));
    let mut eng = rt.engine().unwrap();
    let settings = FamSettings {
        policy: MemoryPolicy::Bswa,
        block_size: 256,
        mem_blocks: 1,
        ..FamSettings::default()
    };
    let mut state = rt.new_state(&eng, settings, 0).unwrap();
    let opts = NotesOptions {
        note_tokens: 16,
        notes_budget: 64,
        ..NotesOptions::default()
    };
    let source = Source::open(&path).unwrap();
    let base = CURRENT.load(SeqCst);
    PEAK.store(base, SeqCst);
    let reading = notes::read(
        &rt,
        &mut eng,
        &mut state,
        &source,
        &opts,
        Some("What was said of the harvest?"),
        None,
        |_, _, _| {},
    )
    .unwrap();
    let peak = PEAK.load(SeqCst) - base;
    (peak, reading.chunks.len())
}

#[test]
fn reading_a_much_longer_input_takes_no_more_memory() {
    let (short, short_chunks) = peak_heap_reading(300);
    let (long, long_chunks) = peak_heap_reading(5000);
    assert!(
        long_chunks >= 15 * short_chunks,
        "{short_chunks} vs {long_chunks} chunks"
    );
    assert!(
        long <= short + SLACK_BYTES,
        "peak heap while reading: {short} bytes for 300 lines ({short_chunks} chunks), {long} \
         for 5000 ({long_chunks} chunks)"
    );
}

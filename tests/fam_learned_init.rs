//! The `learned` FAM init: a `fam.init_memory` tensor in the model file becomes each layer's
//! initial FAM rows, and a tensor of the wrong shape is refused with an error naming it.

mod common;

use famstream::dtype::GgmlType;
use famstream::engine::Engine;
use famstream::ggml::Backend;
use famstream::gguf::GgufFile;
use famstream::model::{HParams, Model};
use famstream::settings::{FamSettings, MemoryPolicy};
use famstream::state::{FamState, Logits};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const F: usize = 4;

/// A copy of the tiny llama checkpoint with a f32 `fam.init_memory` tensor of shape
/// [n_embd, rows, n_layer] whose layer `il` is filled with `value(il)`. Returns the path and
/// the model's layer count.
fn with_learned(tag: &str, rows: u64, value: impl Fn(usize) -> f32) -> (PathBuf, usize) {
    let src = format!(
        "{}/tests/golden/tiny/llama/model.f32.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let hp = HParams::from_gguf(&GgufFile::open(&src).unwrap()).unwrap();
    let ne = vec![hp.n_embd as u64, rows, hp.n_layer as u64];
    let per_layer = hp.n_embd * rows as usize;
    let fam: Vec<u8> = (0..hp.n_layer)
        .flat_map(|il| std::iter::repeat_n(value(il), per_layer))
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let path = common::scratch_dir(tag).join("learned.gguf");
    let extra = [("fam.init_memory".to_string(), GgmlType::F32, ne, fam)];
    common::gguf_copy(Path::new(&src), &path, &[], &extra);
    (path, hp.n_layer)
}

fn fam_state(path: &Path) -> (Arc<Model>, Engine, FamState) {
    let m = Arc::new(Model::load(path, &Backend::cpu(1).unwrap()).unwrap());
    let eng = Engine::new(m.clone(), Backend::cpu(1).unwrap()).unwrap();
    let s = FamSettings {
        policy: MemoryPolicy::Fam,
        block_size: 16,
        mem_blocks: 1,
        fam_len: F as u32,
        sinks: 0,
        ..FamSettings::default()
    };
    let st = FamState::new(&m, eng.backend(), s, 512, vec![1, 17, 42, 99], 1).unwrap();
    (m, eng, st)
}

#[test]
fn a_learned_fam_tensor_is_the_initial_memory() {
    let value = |il: usize| 0.25 + il as f32;
    let (path, n_layer) = with_learned("learned-ok", F as u64, value);
    let (_m, mut eng, mut st) = fam_state(&path);
    // Fewer tokens than a block: the FAM rows are the initial ones, not yet updated.
    st.feed(&mut eng, &[1, 5, 9], Logits::Last).unwrap();
    let rms = st.fam_rms().unwrap();
    assert!(n_layer > 0);
    assert_eq!(rms.len(), n_layer);
    for (il, r) in rms.iter().enumerate() {
        // Every element of layer il is value(il), so its RMS is value(il) up to f32 rounding.
        assert!(
            (r - value(il)).abs() < 1e-5,
            "layer {il}: rms {r}, want {}",
            value(il)
        );
    }
}

#[test]
fn a_learned_fam_tensor_of_the_wrong_shape_is_refused() {
    let (path, _) = with_learned("learned-bad", F as u64 + 1, |_| 1.0);
    let m = Arc::new(Model::load(&path, &Backend::cpu(1).unwrap()).unwrap());
    let eng = Engine::new(m.clone(), Backend::cpu(1).unwrap()).unwrap();
    let s = FamSettings {
        policy: MemoryPolicy::Fam,
        block_size: 16,
        mem_blocks: 1,
        fam_len: F as u32,
        sinks: 0,
        ..FamSettings::default()
    };
    // Refused when the stream is made, before any token.
    let err = FamState::new(&m, eng.backend(), s, 512, vec![1, 17, 42, 99], 1)
        .err()
        .expect("a learned FAM of F + 1 rows for a stream of F")
        .to_string();
    assert!(err.contains("fam.init_memory"), "{err}");
    assert!(err.contains(&format!("--fam-len {}", F + 1)), "{err}");
}

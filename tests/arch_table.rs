//! The architecture table decides what a file must and must not carry (`src/model/arch`): a
//! weight another architecture's layer has is refused rather than run without, a required one
//! that is missing is named, and adapters need the unfused linears they name.

mod common;

use famstream::dtype::GgmlType;
use famstream::error::ErrorKind;
use famstream::ggml::Backend;
use famstream::gguf::GgufFile;
use famstream::model::Model;
use std::path::PathBuf;

fn tiny(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/golden/tiny/{arch}/model.f32.gguf"))
}

fn load_err(path: &std::path::Path) -> famstream::error::Error {
    let backend = Backend::cpu(1).unwrap();
    Model::load(path, &backend).expect_err("must be refused")
}

#[test]
fn a_weight_of_another_architecture_is_refused_by_name() {
    let dir = common::scratch_dir("arch-foreign");
    let hd = Model::load(tiny("llama"), &Backend::cpu(1).unwrap())
        .unwrap()
        .hp
        .head_dim;
    // QK-norm weights belong to qwen3 and gemma3; a llama layer would ignore them.
    let out = dir.join("llama-with-qk-norm.gguf");
    let ones: Vec<u8> = (0..hd).flat_map(|_| 1f32.to_le_bytes()).collect();
    let extra = [(
        "blk.0.attn_q_norm.weight".to_string(),
        GgmlType::F32,
        vec![hd as u64],
        ones,
    )];
    common::gguf_copy(&tiny("llama"), &out, &[], &extra);
    let e = load_err(&out);
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("blk.0.attn_q_norm.weight") && msg.contains("`llama`"),
        "{msg}"
    );
    // The same tensor in a qwen3 file is its own (the tiny qwen3 loads).
    Model::load(tiny("qwen3"), &Backend::cpu(1).unwrap()).unwrap();
}

#[test]
fn a_missing_required_weight_is_named() {
    // qwen2's Q/K/V biases are required; llama's are optional.
    let dir = common::scratch_dir("arch-missing");
    let src = GgufFile::open(tiny("qwen2")).unwrap();
    let mut w = famstream::gguf::GgufWriter::new();
    for (k, v) in src.metadata() {
        w.set(k, v.clone());
    }
    let mut data: Vec<&[u8]> = Vec::new();
    for t in src
        .tensors()
        .iter()
        .filter(|t| t.name != "blk.1.attn_k.bias")
    {
        w.add_tensor(&t.name, t.ty, &t.ne).unwrap();
        data.push(src.tensor_data(t).unwrap());
    }
    let out = dir.join("qwen2-without-bias.gguf");
    w.write_with_data(&out, &data).unwrap();
    let msg = load_err(&out).to_string();
    assert!(
        msg.contains("blk.1.attn_k.bias") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn adapters_need_unfused_linears() {
    let backend = Backend::cpu(1).unwrap();
    let mut m = Model::load(tiny("phi3"), &backend).unwrap();
    let adapter = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/adapter/llama.gguf");
    let msg = m
        .attach_adapter(&adapter, &backend)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`phi3`") && msg.contains("fused"), "{msg}");
    assert!(m.adapter().is_none());
}

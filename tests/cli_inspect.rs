//! `famstream inspect` as a user runs it, and model files that must be refused rather than run
//! wrongly.

mod common;

use std::process::Command;

fn famstream(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_famstream"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn inspect_prints_the_real_models_facts() {
    let m = common::model_path();
    let out = famstream(&["inspect", m.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for expect in [
        "architecture  llama",
        "layers        30",
        "n_embd        576",
        "heads         9 (KV heads 3, head dim 64)",
        "context       8192",
        "vocab         49152",
        "blk.29.ffn_down.weight",
        "tensors       272",
    ] {
        assert!(text.contains(expect), "missing `{expect}` in:\n{text}");
    }

    let out = famstream(&["inspect", "--json", m.to_str().unwrap()]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["hparams"]["n_layer"], 30);
    assert_eq!(j["hparams"]["n_embd"], 576);
    assert_eq!(j["hparams"]["n_head"], 9);
    assert_eq!(j["hparams"]["n_head_kv"], 3);
    assert_eq!(j["hparams"]["n_vocab"], 49152);
    assert_eq!(j["hparams"]["n_ctx_train"], 8192);
    assert_eq!(j["n_tensors"], 272);
    assert_eq!(j["tensors"].as_array().unwrap().len(), 272);
    // Sum of tensor bytes equals the reported total.
    let sum: u64 = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(j["tensor_bytes"].as_u64().unwrap(), sum);
}

#[test]
fn inspect_of_a_bad_file_fails_cleanly() {
    let dir = common::scratch_dir("cli-bad");
    let p = dir.join("bad.gguf");
    std::fs::write(
        &p,
        b"GGUF\x03\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff\0\0\0\0\0\0\0\0",
    )
    .unwrap();
    let out = famstream(&["inspect", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.gguf") && err.contains("tensor count"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    let out = famstream(&["inspect", dir.join("missing.gguf").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("missing.gguf"));
}

/// A copy of the tiny llama checkpoint with extra metadata and, optionally, a `rope_freqs.weight`
/// tensor of `n` f32 factors.
fn tiny_llama_with(
    tag: &str,
    meta: &[(&str, famstream::gguf::Value)],
    freqs: Option<u64>,
) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny/llama/model.f32.gguf");
    let extra: Vec<common::ExtraTensor> = freqs
        .map(|n| {
            let bytes = (0..n)
                .flat_map(|i| (1.0 + i as f32).to_le_bytes())
                .collect();
            let ty = famstream::dtype::GgmlType::F32;
            ("rope_freqs.weight".to_string(), ty, vec![n], bytes)
        })
        .into_iter()
        .collect();
    let path = common::scratch_dir(tag).join("model.gguf");
    common::gguf_copy(&src, &path, meta, &extra);
    path
}

#[test]
fn rope_scaling_is_applied_or_refused_not_ignored() {
    use famstream::gguf::Value;
    // Refused, naming what the file holds: kinds famstream does not implement, a factor without
    // a kind, frequency factors of the wrong length.
    let cases = [
        (
            tiny_llama_with(
                "rope-yarn",
                &[
                    ("llama.rope.scaling.type", Value::String("yarn".into())),
                    ("llama.rope.scaling.factor", Value::F32(4.0)),
                ],
                None,
            ),
            4,
            vec!["`yarn`", "llama.rope.scaling.type", "factor 4"],
        ),
        (
            tiny_llama_with(
                "rope-factor",
                &[("llama.rope.scaling.factor", Value::F32(2.0))],
                None,
            ),
            4,
            vec!["llama.rope.scaling.factor", "factor 2"],
        ),
        (
            tiny_llama_with("rope-short", &[], Some(5)),
            3,
            vec!["rope_freqs.weight", "[5]"],
        ),
    ];
    for (path, code, words) in cases {
        let out = famstream(&["run", "-m", path.to_str().unwrap(), "-p", "hi", "-n", "1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        for w in words {
            assert!(err.contains(w), "`{w}` missing from: {err}");
        }
    }
    // Applied: Llama 3 frequency factors (head_dim 16: 8 of them) and linear scaling run, and
    // change the result (tests/hf_goldens.rs checks the llama3 kind against transformers).
    let run = |path: &std::path::Path| {
        let out = famstream(&[
            "perplexity",
            "-m",
            path.to_str().unwrap(),
            "-f",
            "README.md",
            "--max-tokens",
            "64",
            "--ctx",
            "64",
            "--json",
            "-t",
            "1",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["perplexity"].as_f64().unwrap()
    };
    let plain = run(&tiny_llama_with("rope-none-ppl", &[], None));
    let llama3 = run(&tiny_llama_with("rope-llama3", &[], Some(8)));
    let linear = run(&tiny_llama_with(
        "rope-linear",
        &[
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.factor", Value::F32(4.0)),
        ],
        None,
    ));
    assert!(
        plain != llama3 && plain != linear,
        "{plain} {llama3} {linear}"
    );
    // a setting that names nothing is a usage error (exit code 2), after the file checks passed
    let plain = tiny_llama_with("rope-plain", &[], None);
    let out = famstream(&[
        "run",
        "-m",
        plain.to_str().unwrap(),
        "-p",
        "hi",
        "--memory",
        "lots",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--memory") && err.contains("lots"), "{err}");
    // an explicit `none` is no scaling: the file runs
    let none = tiny_llama_with(
        "rope-none",
        &[
            ("llama.rope.scaling.type", Value::String("none".into())),
            ("llama.rope.scaling.factor", Value::F32(1.0)),
        ],
        None,
    );
    let out = famstream(&[
        "run",
        "-m",
        none.to_str().unwrap(),
        "-p",
        "hi",
        "-n",
        "1",
        "-t",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

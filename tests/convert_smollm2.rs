//! The converter on the real model: an HF-format SmolLM2 (made from the Q4_1 GGUF by
//! tools/make_hf_smollm2.py with the `gguf` Python package) converts to q8_0 and q4_0; the q8_0
//! file's perplexity stays within 1% of the source model's, llama.cpp loads both files and agrees
//! with famstream on them, and the tokenizer round-trips.

mod common;

use common::llama::{kl_divergence, LlamaOracle};
use famstream::convert::{convert, ConvertOptions, Target};
use famstream::gguf::GgufFile;
use std::path::Path;

/// The brief's bound for q8_0.
const PPL_REL_TOL_Q8: f64 = 0.01;
/// Our q4_0 against llama.cpp's own quantizer run on our (HF-verified) f16 conversion: the same
/// ggml quantization routines and the same recipe (LM head q6_k -> q8_0 for rows of 576), so
/// the perplexities should agree closely; 2% allows for small recipe differences.
const PPL_REL_TOL_VS_LLAMA_QUANTIZE: f64 = 0.02;
/// Same file, two engines. On q8_0 they agree exactly (measured 0). llama.cpp repacks Q4_0
/// weights for its AVX-512 GEMM, a kernel we do not call, which moves its distributions by a
/// mean KL of 4.4e-3 on this model; a misread tensor gives KL > 1.
const ENGINES_MEAN_KL: f64 = 1e-2;

fn ppl(path: &Path, tokens: &[u32]) -> f64 {
    let rt = common::runtime(path);
    let mut eng = rt.engine().unwrap();
    famstream::perplexity::windowed(&rt.model, &mut eng, tokens, 512, None, |_, _| {})
        .unwrap()
        .perplexity
}

#[test]
fn smollm2_from_hugging_face_format_converts_and_keeps_its_quality() {
    let hf = common::hf_smollm2();
    let src = common::model_path();
    let dir = common::scratch_dir("convert-smollm2");
    let text = common::shared_text("moby_dick.txt");
    let rt = common::runtime(&src);
    let mut tokens = rt.tokenizer.encode(&text[..40_000], false, false);
    tokens.truncate(4 * 512);
    let base = ppl(&src, &tokens);

    // llama.cpp's own q4_0 of the same weights, for reference.
    let f16 = dir.join("f16.gguf");
    let o = ConvertOptions {
        target: Some(Target::parse("f16").unwrap()),
        fam: None,
        name: None,
    };
    convert(&hf, &f16, &o, &mut |_, _, _| {}).unwrap();
    let llama_q4 = dir.join("llama-q4_0.gguf");
    common::llama::llama_quantize(&f16, &llama_q4, 2);
    let llama_q4_ppl = ppl(&llama_q4, &tokens);
    for ty in ["q8_0", "q4_0"] {
        let out = dir.join(format!("{ty}.gguf"));
        let opts = ConvertOptions {
            target: Some(Target::parse(ty).unwrap()),
            fam: None,
            name: None,
        };
        let r = convert(&hf, &out, &opts, &mut |_, _, _| {}).unwrap();
        assert_eq!(r.n_tensors, 272);
        // Tokenizer metadata survives HF -> GGUF.
        let (a, b) = (GgufFile::open(&src).unwrap(), GgufFile::open(&out).unwrap());
        for k in [
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.chat_template",
        ] {
            assert_eq!(a.get(k), b.get(k), "{k}");
        }
        assert_eq!(b.opt_str("tokenizer.ggml.pre").unwrap(), Some("smollm"));
        let p = ppl(&out, &tokens);
        eprintln!(
            "{ty}: perplexity {p:.4} vs source {base:.4} ({:.2} bpw)",
            r.bits_per_weight
        );
        if ty == "q8_0" {
            assert!(
                (p / base - 1.0).abs() < PPL_REL_TOL_Q8,
                "q8_0 perplexity {p} vs {base}"
            );
        } else {
            eprintln!("q4_0: llama.cpp's own q4_0 of the same weights: {llama_q4_ppl:.4}");
            assert!(
                (p / llama_q4_ppl - 1.0).abs() < PPL_REL_TOL_VS_LLAMA_QUANTIZE,
                "q4_0 perplexity {p} vs llama.cpp's {llama_q4_ppl}"
            );
        }
        // llama.cpp loads our file and computes the same distributions.
        let rt2 = common::runtime(&out);
        let mut eng = rt2.engine().unwrap();
        let sample = &tokens[..128];
        let mut st = rt2.new_stream(&eng, 256).unwrap();
        let ours = st
            .feed(&mut eng, sample, famstream::state::Logits::All)
            .unwrap();
        let theirs = LlamaOracle::new(&out, 256, 2).logits_all(sample);
        let nv = rt2.model.hp.n_vocab;
        let kl = theirs
            .iter()
            .enumerate()
            .map(|(i, t)| kl_divergence(t, &ours[i * nv..(i + 1) * nv]))
            .sum::<f64>()
            / sample.len() as f64;
        eprintln!("{ty}: mean KL(llama.cpp || famstream) {kl:.2e}");
        assert!(kl < ENGINES_MEAN_KL, "{ty}: {kl}");
    }
}

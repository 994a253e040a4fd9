//! Our tokenizer against Hugging Face `tokenizers`/`transformers` goldens (made by
//! tools/gen_tokenizer_goldens.py) for SmolLM2's byte-level BPE and a SentencePiece BPE
//! vocabulary, and against llama.cpp's tokenizer in-process.

mod common;

use famstream::gguf::GgufFile;
use famstream::tokenizer::{SpacePrefix, StreamDecoder, Tokenizer, TokenizerOptions, Vocab};
use serde_json::Value;
use std::path::PathBuf;

fn golden_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tokenizer").to_string()
}

fn vocab(path: &PathBuf) -> Vocab {
    famstream::runtime::vocab_from_gguf(&GgufFile::open(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn short(s: &str) -> String {
    let c: String = s.chars().take(40).collect();
    format!("{c:?}")
}

/// Returns (lines, failures).
fn check(name: &str, tok: &Tokenizer, sp_tok: Option<&Tokenizer>) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(format!("{}/{name}.jsonl", golden_dir())).unwrap();
    let mut fails = Vec::new();
    let mut n = 0;
    for line in text.lines() {
        n += 1;
        let row: Value = serde_json::from_str(line).unwrap();
        let t = row["text"].as_str().unwrap();
        let mut check =
            |what: &str, ours: &dyn std::fmt::Debug, want: &dyn std::fmt::Debug, ok: bool| {
                if !ok {
                    fails.push(format!(
                        "{name} {} {what}: ours {ours:?} want {want:?}",
                        short(t)
                    ));
                }
            };
        let e = tok.encode(t, false, true);
        check("ids", &e, &ids(&row["ids"]), e == ids(&row["ids"]));
        let e = tok.encode(t, true, true);
        check(
            "ids_special",
            &e,
            &ids(&row["ids_special"]),
            e == ids(&row["ids_special"]),
        );
        let raw = tok.encode(t, false, false);
        check(
            "ids_raw",
            &raw,
            &ids(&row["ids_raw"]),
            raw == ids(&row["ids_raw"]),
        );
        let golden_ids = ids(&row["ids"]);
        let d = tok.decode_with_special(&golden_ids);
        let want = row["decoded"].as_str().unwrap();
        check("decoded", &d, &want, d == want);
        let d = tok.decode(&golden_ids);
        let want = row["decoded_skip"].as_str().unwrap();
        check("decoded_skip", &d, &want, d == want);
        // Round trip of the raw encoding, where Hugging Face's own round trip holds.
        let rt = tok.decode(&raw);
        let hf_rt = row["decoded"].as_str().unwrap() == t;
        if hf_rt {
            check("roundtrip", &rt, &t, rt == t);
        } else {
            eprintln!(
                "{name} {}: HF's own decode is not the text; round trip exempt (ours gives {:?})",
                short(t),
                short(&rt)
            );
        }
        // Streaming decode gives the same text as decode (without the SPM leading-space strip).
        let mut sd = StreamDecoder::new();
        let mut streamed: String = raw.iter().map(|&id| sd.push(tok, id)).collect();
        streamed.push_str(&sd.finish());
        let joined: Vec<u8> = raw
            .iter()
            .flat_map(|&id| tok.token_bytes(id).to_vec())
            .collect();
        let want = String::from_utf8_lossy(&joined).into_owned();
        check("stream", &streamed, &want, streamed == want);
        if let (Some(sp), Some(want)) = (sp_tok, row.get("ids_sentencepiece")) {
            let e = sp.encode(t, false, false);
            check("ids_sentencepiece", &e, &ids(want), e == ids(want));
            // In sentencepiece mode the round trip always holds.
            let rt = sp.decode(&e);
            check("sp_roundtrip", &rt, &t, rt == t || t.contains('\u{2581}'));
        }
    }
    (n, fails)
}

#[test]
fn smollm2_matches_hf() {
    let tok = Tokenizer::from_vocab(vocab(&common::model_path())).unwrap();
    let (n, fails) = check("smollm2", &tok, None);
    for f in &fails {
        eprintln!("{f}");
    }
    eprintln!("smollm2: {n} lines, {} failures", fails.len());
    assert!(fails.is_empty());
}

#[test]
fn spm_bpe_matches_hf_and_sentencepiece() {
    let v = vocab(&format!("{}/spm_bpe.gguf", golden_dir()).into());
    let tok = Tokenizer::from_vocab(v.clone()).unwrap();
    let sp = Tokenizer::from_vocab_with(
        v,
        TokenizerOptions {
            space_prefix: SpacePrefix::SentencePiece,
        },
    )
    .unwrap();
    let (n, fails) = check("spm_bpe", &tok, Some(&sp));
    for f in &fails {
        eprintln!("{f}");
    }
    eprintln!("spm_bpe: {n} lines, {} failures", fails.len());
    assert!(fails.is_empty());
}

#[test]
fn smollm2_matches_llama_cpp_tokenizer_on_the_corpus() {
    let path = common::model_path();
    let tok = Tokenizer::from_vocab(vocab(&path)).unwrap();
    let oracle = common::llama::LlamaOracle::new(&path, 64, 1);
    common::llama::assert_tokenizer_matches(&tok, &oracle);
}

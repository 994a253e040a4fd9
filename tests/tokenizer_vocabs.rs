//! Our tokenizer on real vocabularies of the models people deploy, against the token ids that
//! Hugging Face tokenizers produced for llama.cpp's tokenizer tests: llama.cpp keeps, for each
//! vocabulary, a GGUF of it (`models/ggml-vocab-NAME.gguf`), test texts (`.inp`) and the ids
//! transformers gave for them (`.out`, from its `convert_hf_to_gguf_update.py`). They come from
//! the llama-cpp-python 0.3.36 sdist on PyPI, fetched into the model cache by
//! `tools/fetch_model.sh vocabs` (the test runs it).

mod common;

use common::vocab_dir;
use famstream::gguf::GgufFile;
use famstream::tokenizer::{SpacePrefix, Tokenizer, TokenizerOptions};

/// Every test text of vocabulary `name`: (text, transformers' ids, ours). The separator is
/// llama.cpp's (`tests/test-tokenizer-0.py` writes the files).
fn cases(name: &str, space_prefix: SpacePrefix) -> Vec<(String, Vec<u32>, Vec<u32>)> {
    let dir = vocab_dir();
    let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
    let vocab = famstream::runtime::vocab_from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap();
    let tok = Tokenizer::from_vocab_with(vocab, TokenizerOptions { space_prefix })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    // each text ends with the separator
    let texts: Vec<&str> = inp
        .strip_suffix("\n__ggml_vocab_test__\n")
        .expect("the .inp file ends with its separator")
        .split("\n__ggml_vocab_test__\n")
        .collect();
    let want: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), want.len(), "{name}: inputs and outputs");
    texts
        .iter()
        .zip(want)
        .map(|(t, w)| {
            // as transformers' encode(add_special_tokens=False) and llama.cpp's test
            let t = t.to_string();
            let ours = tok.encode(&t, false, false);
            (t, w, ours)
        })
        .collect()
}

fn assert_all_equal(name: &str, space_prefix: SpacePrefix) -> usize {
    let cases = cases(name, space_prefix);
    assert!(cases.len() >= 30, "{name}: {} cases", cases.len());
    let bad: Vec<String> = cases
        .iter()
        .filter(|(_, w, o)| w != o)
        .map(|(t, w, o)| format!("{t:?}: transformers {w:?}, famstream {o:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{name}: {} of {} differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
    cases.len()
}

#[test]
fn llama3_vocabulary_tokenizes_like_transformers() {
    assert_all_equal("llama-bpe", SpacePrefix::default());
}

#[test]
fn qwen2_and_qwen3_vocabulary_tokenizes_like_transformers() {
    // Qwen2, Qwen2.5 and Qwen3 share this vocabulary and pre-tokenizer
    assert_all_equal("qwen2", SpacePrefix::default());
}

/// Llama 2 and Phi-3 (SentencePiece): their Hugging Face tokenizers prefix `▁` to every text,
/// also one that starts with a space (the `legacy` behaviour their tokenizer.json has), as
/// sentencepiece and llama.cpp do: famstream's `SentencePiece` prefix mode, the default for
/// such vocabularies read from a GGUF. The other mode (`legacy=False` tokenizers) differs on
/// exactly the texts that start with a space.
#[test]
fn llama2_and_phi3_sentencepiece_vocabularies_tokenize_like_transformers() {
    for name in ["llama-spm", "phi-3"] {
        assert_all_equal(name, SpacePrefix::SentencePiece);
        // and that is what a model file of such a vocabulary gets
        let gguf = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
        let tok = famstream::runtime::tokenizer_from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap();
        for (t, want, _) in cases(name, SpacePrefix::SentencePiece) {
            assert_eq!(tok.encode(&t, false, false), want, "{name}: {t:?}");
        }
        let other = cases(name, SpacePrefix::HuggingFace);
        let differ: Vec<&String> = other
            .iter()
            .filter(|(_, w, o)| w != o)
            .map(|(t, _, _)| t)
            .collect();
        assert!(
            !differ.is_empty() && differ.iter().all(|t| t.starts_with(' ')),
            "{name}: {differ:?}"
        );
    }
}

#[test]
fn gpt2_vocabulary_tokenizes_like_transformers() {
    assert_all_equal("gpt-2", SpacePrefix::default());
}

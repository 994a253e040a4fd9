#!/usr/bin/env python3
"""Regenerate the tokenizer golden files in tests/golden/tokenizer/ from Hugging Face references.

How to run (from the repository root; needs no network once the model is cached):

    pip install -r tools/requirements.txt
    python3 tools/gen_tokenizer_goldens.py

Made with Python 3.11.7 and the versions pinned in tools/requirements.txt: transformers 5.23.0,
tokenizers 0.23.3, sentencepiece 0.2.3, gguf 0.19.0, protobuf 7.36.2 (needed by transformers to read
a SentencePiece .model). torch is NOT needed and not used. The output is deterministic: running the
script twice gives byte-identical files.

What it writes
--------------
* smollm2.jsonl  -- the SmolLM2-135M-Instruct vocabulary (tokenizer.ggml.* metadata of the real GGUF
  printed by tools/fetch_model.sh), tokenized by Hugging Face.
* spm_bpe.model  -- a small SentencePiece BPE model (byte_fallback) trained here on austen_emma.txt.
* spm_bpe.gguf   -- that model's vocabulary as a tokenizer-only GGUF (no tensors), llama.cpp keys.
* spm_bpe.jsonl  -- the same corpus tokenized by Hugging Face's LlamaTokenizerFast built from the .model.

Each .jsonl line is one corpus text:
    {"text": ..., "ids": [...], "ids_special": [...], "ids_raw": [...], "decoded": ..., "decoded_skip": ...
     [, "ids_sentencepiece": [...]  (spm_bpe only)]}
  ids           HF encode(text, add_special_tokens=False). Special tokens written in the text
                (e.g. "<|im_start|>") are parsed into their ids, as HF always does.
  ids_special   HF encode(text) with its default add_special_tokens=True (adds BOS where the tokenizer does).
  ids_raw       like ids, but special tokens in the text are NOT parsed (HF split_special_tokens=True):
                "<|im_start|>" is tokenized as ordinary text. Non-special added tokens (SentencePiece
                user-defined symbols) are still matched whole, in HF as in llama.cpp.
  decoded       HF decode(ids, skip_special_tokens=False).
  decoded_skip  HF decode(ids, skip_special_tokens=True).
  ids_sentencepiece  the sentencepiece library's own encode(text) (no BOS, no special-token parsing).

Reference details and deviations (read these before trusting a mismatch)
-----------------------------------------------------------------------
SmolLM2: the reference is `transformers.AutoTokenizer.from_pretrained(dir, gguf_file=name)`, i.e.
transformers' own GGUF -> fast-tokenizer converter. Two things had to be worked around:
  1. transformers 5.23's GGUF file reader (transformers/integrations/gguf/reader.py) imports torch at
     module import time (it also loads tensors). We do not install torch, so before importing
     transformers this script registers a replacement module that provides only
     `read_gguf_metadata(path, string_arrays)`, implemented with the `gguf` package and returning the
     same (metadata dict, tensor names) shape. Everything else -- AutoTokenizer, the converter in
     gguf_tokenizer_mapping.py, special-token handling -- is transformers' unmodified code.
  2. transformers' converter does NOT reproduce SmolLM2's real pre-tokenizer. It has no entry for
     tokenizer.ggml.pre = "smollm" and falls back to GPT2Tokenizer's plain ByteLevel regex, while
     SmolLM2's tokenizer.json uses Sequence[Digits(individual_digits=True), ByteLevel(...)]
     (the digits-first split is exactly what llama.cpp's "smollm" pre-type encodes). The two differ
     e.g. on "x  1" (two spaces before a digit). So the script replaces the converted tokenizer's
     pre_tokenizer with that Sequence (vocabulary, merges, added tokens and decoder stay as
     transformers built them) and prints how many corpus lines the unfixed conversion gets different.

SentencePiece BPE: the reference is transformers' LlamaTokenizerFast built from the .model file
(SentencePieceExtractor; legacy=False, add_bos_token=True, add_eos_token=False). Its Metaspace
pre-tokenizer uses prepend_scheme="first": the "\u2581" prefix is added only to the text fragment that
starts the input (not after a special token) and only if that fragment does not already start with a
space. The real sentencepiece library (and llama.cpp) always adds the prefix, so for texts that
start with a space, or continue after a special token, `ids` and `ids_sentencepiece` legitimately
differ; both are recorded. HF's decode strips one leading space, so HF's own round trip is lossy for
texts that start with a space. As a consistency check of the GGUF written here, the script also
builds HF's tokenizer from spm_bpe.gguf (transformers' GGUF converter) and asserts it agrees with
the .model-based reference on every line.
"""

import json
import os
import sys
import tempfile
import types

import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(ROOT, "tests", "golden", "tokenizer")
DATA_DIR = os.environ.get("FAMSTREAM_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))


# --------------------------------------------------------------------------------------------------
# torch-free stand-in for transformers.integrations.gguf.reader (see the module docstring, point 1)
# --------------------------------------------------------------------------------------------------
def _read_gguf_metadata(gguf_path, string_arrays=()):
    """Same contract as transformers' reader: scalars as values, numeric arrays as lists, string
    arrays as lists only when named in `string_arrays` (else their length); plus tensor names."""
    reader = gguf.GGUFReader(gguf_path)
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the reader's pseudo-fields (version, counts)
            continue
        kinds = field.types
        if kinds and kinds[0] == gguf.GGUFValueType.ARRAY:
            if kinds[-1] == gguf.GGUFValueType.STRING and key not in string_arrays:
                metadata[key] = len(field.data)
            else:
                metadata[key] = list(field.contents())
        else:
            metadata[key] = field.contents()
    return metadata, tuple(t.name for t in reader.tensors)


_reader = types.ModuleType("transformers.integrations.gguf.reader")
_reader.read_gguf_metadata = _read_gguf_metadata
sys.modules["transformers.integrations.gguf.reader"] = _reader

import sentencepiece as spm  # noqa: E402
import transformers  # noqa: E402
from sentencepiece import sentencepiece_model_pb2  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402

transformers.logging.set_verbosity_error()


# --------------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------------
def corpus():
    texts = [
        # empty and single characters
        "",
        "a",
        " ",
        "\n",
        "\t",
        "0",
        "'",
        "<",
        "é",
        "日",
        "🙂",
        "\u2581",  # SentencePiece's meta space, as literal text
        "Ġ",  # GPT-2 byte-level's space stand-in, as literal text
        # English prose
        "Hello world",
        "Hello, world! This is a test of the tokenizer.",
        "The quick brown fox jumps over the lazy dog.",
        "I'm sure you'll see they've done it; isn't it? We'd rather not. She's here, it's fine.",
        "I'M SHOUTING, DON'T YOU SEE? WE'LL GO. 'tis the season; 'quoted' words.",
        "Curly quotes: \u201cHello,\u201d she said \u2014 it\u2019s \u2018fine\u2019\u2026",
        "Mr. Knightley, a sensible man about seven or eight-and-thirty, was not only a very old and "
        "intimate friend of the family, but particularly connected with it.",
        # code with indentation
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n\tprintln!(\"{:?}\", v);\n}\n",
        "for (int i = 0; i < n; ++i) {\n        sum += a[i] * b[i];   // dot\n    }\n",
        '{"key": [1, 2.5, -3e10], "nested": {"a": null, "b": true}}',
        "<div class=\"x\">&amp; &lt;tag&gt;</div>",
        "https://example.com/path/to?q=1&r=two#frag user@example.org",
        "## Heading\n\n- item one\n- item two\n  * nested [x] done\n\n> quote\n",
        # numbers
        "1234567890123456789012345678901234567890",
        "3.14159 2.718e-10 -42 +7 0.5 .5 5. 1e6",
        "1,000,000.00 and 12:30:45 on 2024-01-15, v2.0.1-rc3",
        "x  1  2   3\t4\n5",
        "0x1F 0b1010 0o777 1_000_000 \u00bd \u2153 \u00b2 \u2166 \u0663\u0664\u0665",
        "Call 555-0123 or +1 (800) 555-0199.",
        # emoji incl. ZWJ sequences, skin tones, flags, variation selectors
        "👋🏽 hi 👨\u200d👩\u200d👧\u200d👦 family 🏳️\u200d🌈 flag 🇯🇵🇫🇷 ❤️ ✔︎ 🧑🏿\u200d💻",
        "😀😃😄😁😆😅😂🤣",
        # CJK, Korean, Arabic, accents, other scripts
        "日本語のテキストです。中文测试，你好世界！한국어 텍스트",
        "مرحبا بالعالم، كَيْفَ حَالُكَ؟",
        "Café naïve résumé Ångström façade coöperate Zürich",
        "decomposed e\u0301 a\u0308 n\u0303",
        "नमस्ते दुनिया हिन्दी",
        "Привет, мир! Ελληνικά γράμματα. ภาษาไทย",
        # whitespace runs
        "a  b   c    d",
        "\t\ttabbed\tline\t",
        "line1\nline2\n\nline4\n\n\n",
        "trailing spaces   ",
        "   leading spaces",
        "\r\nwindows\r\nline\r\n",
        " \n \n  x  \n\n   y",
        "\u00a0nbsp\u00a0 and\u3000ideographic\u3000space",
        "zero\u200bwidth\ufeffbom",
        # control characters and planes whose bytes SmolLM2 has no byte token for (0x04 0x06 0x13
        # 0x14 0x16 0x1d, lead bytes 0xf1 0xf2): Hugging Face drops those bytes
        "ctrl\x04\x06\x13\x14\x16\x1d bytes \U00040000\U00080000 end\x7f\x00",
        "    ",
        "\n\n\n\n",
        # special tokens in text
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
        "<|endoftext|>",
        "text<|im_end|>text <|im_start|> spaced <|im_end|>",
        "<|im_start|><|im_end|><|im_start|>",
        "partial <|im_start and <|im_end| and <|im_start|",
        "<s>hello</s> <unk> a<sep>b <sep> c",
        "<sep>starts with a user-defined token<sep>",
        # punctuation and symbols
        "!!!!!!?????......,,,,;;;;::::",
        "---- ==== ____ **** ~~~~ ^^^^ |||| \\\\\\\\",
        "$100 \u20ac50 \u00a330 \u00a51000 50% #hashtag @mention",
        # longer repetitive strings
        "a" * 300,
        " " * 100,
        "=" * 120,
        "ab" * 150,
        "9" * 200,
        "\u263a" * 50,
    ]
    with open(os.path.join(DATA_DIR, "moby_dick.txt"), encoding="utf-8") as f:
        moby = f.read()
    start = moby.index("Call me Ishmael")
    texts.append(moby[start : start + 2500])
    return texts


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def hf_rows(tok, texts):
    """One golden row per text, from a transformers tokenizer."""
    rows = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        rows.append(
            {
                "text": text,
                "ids": ids,
                "ids_special": tok.encode(text),
                "ids_raw": tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"],
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip": tok.decode(ids, skip_special_tokens=True),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# SmolLM2 (byte-level BPE, pre-tokenizer "smollm")
# --------------------------------------------------------------------------------------------------
def smollm2(texts):
    sys.path.insert(0, ROOT)  # the `tools` package
    from tools.common import default_model

    path = default_model()
    model_dir, name = os.path.split(path)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir, gguf_file=name)
    backend = tok.backend_tokenizer
    converted_pre = str(backend.pre_tokenizer)
    print(f"smollm2: transformers' converted pre_tokenizer: {converted_pre}")
    plain = [tok.encode(t, add_special_tokens=False) for t in texts]
    if "Digits" not in converted_pre:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
        print(f"smollm2: replaced it with SmolLM2's own: {backend.pre_tokenizer}")
    rows = hf_rows(tok, texts)
    differ = sum(1 for row, ids in zip(rows, plain) if row["ids"] != ids)
    print(f"smollm2: {differ}/{len(texts)} lines tokenize differently with the unfixed conversion")
    write_jsonl(os.path.join(OUT_DIR, "smollm2.jsonl"), rows)


# --------------------------------------------------------------------------------------------------
# SentencePiece BPE with byte fallback
# --------------------------------------------------------------------------------------------------
def train_spm(prefix):
    spm.SentencePieceTrainer.train(
        input=os.path.join(DATA_DIR, "austen_emma.txt"),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=1500,
        byte_fallback=True,
        character_coverage=1.0,
        # Llama-2-like settings: no normalization, keep whitespace, split digits.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        # determinism: one thread, every sentence, no shuffling (BPE training has no sampling)
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        max_sentence_length=16384,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=["<|im_start|>", "<|im_end|>"],
        user_defined_symbols=["<sep>"],
        minloglevel=2,
    )


def write_spm_gguf(model_path, gguf_path):
    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    tokens = [p.piece for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    # sentencepiece's piece types use llama.cpp's numbering: 1 normal, 2 unknown, 3 control,
    # 4 user-defined, 5 unused, 6 byte.
    types_ = [int(p.type) for p in proto.pieces]
    spec = proto.trainer_spec
    writer = gguf.GGUFWriter(gguf_path, "llama")
    writer.add_name("spm-bpe-emma-1500 (tokenizer only)")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types_)
    writer.add_bos_token_id(spec.bos_id)
    writer.add_eos_token_id(spec.eos_id)
    writer.add_unk_token_id(spec.unk_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tokens, types_


def spm_bpe(texts):
    model_path = os.path.join(OUT_DIR, "spm_bpe.model")
    gguf_path = os.path.join(OUT_DIR, "spm_bpe.gguf")
    with tempfile.TemporaryDirectory() as tmp:
        train_spm(os.path.join(tmp, "tokenizer"))
        # The model records the paths it was trained with; make them machine-independent so the
        # file is byte-identical on every run.
        proto = sentencepiece_model_pb2.ModelProto()
        with open(os.path.join(tmp, "tokenizer.model"), "rb") as f:
            proto.ParseFromString(f.read())
        proto.trainer_spec.model_prefix = "spm_bpe"
        del proto.trainer_spec.input[:]
        proto.trainer_spec.input.append("austen_emma.txt")
        data = proto.SerializeToString(deterministic=True)
        for path in (model_path, os.path.join(tmp, "tokenizer.model")):
            with open(path, "wb") as f:
                f.write(data)
        # LlamaTokenizerFast looks for the file under its canonical name.
        tok = transformers.LlamaTokenizerFast.from_pretrained(
            tmp, legacy=False, add_bos_token=True, add_eos_token=False
        )
    tokens, types_ = write_spm_gguf(model_path, gguf_path)
    print(f"spm_bpe: {len(tokens)} pieces, types {sorted(set(types_))}")
    print(f"spm_bpe: reference {type(tok).__name__}: pre_tokenizer {tok.backend_tokenizer.pre_tokenizer}")

    sp = spm.SentencePieceProcessor(model_file=model_path)
    rows = hf_rows(tok, texts)
    for row in rows:
        row["ids_sentencepiece"] = sp.encode(row["text"])
    differ = sum(1 for row in rows if row["ids_raw"] != row["ids_sentencepiece"])
    print(f"spm_bpe: {differ}/{len(texts)} lines where HF ids_raw != sentencepiece ids (prefix scheme)")

    # Consistency check of the GGUF we wrote: transformers' GGUF converter must agree with the
    # .model-based reference.
    from_gguf = transformers.LlamaTokenizerFast.from_pretrained(OUT_DIR, gguf_file="spm_bpe.gguf")
    bad = [r["text"] for r in rows if from_gguf.encode(r["text"], add_special_tokens=False) != r["ids"]]
    assert not bad, f"HF tokenizer from spm_bpe.gguf disagrees with the .model on {len(bad)} lines: {bad[:3]}"
    write_jsonl(os.path.join(OUT_DIR, "spm_bpe.jsonl"), rows)


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    texts = corpus()
    smollm2(texts)
    spm_bpe(texts)
    total = sum(os.path.getsize(os.path.join(OUT_DIR, f)) for f in os.listdir(OUT_DIR))
    print(f"wrote {OUT_DIR} ({total} bytes, {len(texts)} texts)")


if __name__ == "__main__":
    main()

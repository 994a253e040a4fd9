#!/usr/bin/env python3
"""Make the tiny random reference models and golden logits under tests/golden/tiny/.

What it writes (deterministically: fixed seeds, float32, eager attention):

    tests/golden/tiny/<arch>/hf/           tiny random HF checkpoint (config.json,
                                           model.safetensors, generation_config.json,
                                           tokenizer.json, tokenizer_config.json)
    tests/golden/tiny/<arch>/model.f32.gguf  converted by llama.cpp's convert_hf_to_gguf.py
    tests/golden/tiny/<arch>/model.f16.gguf
    tests/golden/tiny/<arch>/logits_<i>.npy  HF transformers logits, float32 [n_tokens, n_vocab],
                                           little-endian, .npy format version 1.0
    tests/golden/tiny/<arch>/golden.json   {"sequences", "logits_files", "top2_margin",
                                           "greedy": {"prompt", "continuation", "top2_margin"}, ...}

The 3 logit sequences are [BOS], BOS + 6 tokens of Emma, BOS + 39 random ids. The greedy prompt
(7 tokens) is the first candidate whose 16-token greedy path keeps a top-2 logit margin >= 0.05
at every step, so that f16 rounding cannot flip it; the margins are recorded for the Rust tests.

for <arch> in {llama, llama3, qwen2, qwen3, gemma3, phi3}:
  * llama: LlamaForCausalLM, hidden 64, ffn 128, 2 layers, 4 heads / 2 KV heads, head_dim 16,
    rope_theta 1e4, rms_norm_eps 1e-5, untied output. llama.cpp's converter permutes the Q/K
    rows, so the GGUF uses llama.cpp's "normal" RoPE (rotate adjacent pairs (2i, 2i+1)).
  * llama3: the same with Llama 3's "llama3" RoPE scaling (rope_theta 5e5, factor 8, low/high
    frequency factors 1/4, original context 16, so that most of the 8 rotated pairs are
    scaled); the converter writes it as rope_freqs.weight.
  * qwen2: Qwen2ForCausalLM, same sizes, nonzero q/k/v biases, tied embeddings, rope_theta 1e6.
    No permutation: the GGUF uses NEOX RoPE (rotate pairs (i, i + head_dim/2)).
  * qwen3: Qwen3ForCausalLM, same sizes, no biases, QK-norm, tied embeddings, rope_theta 1e6.
  * phi3: Phi3ForCausalLM, same sizes, fused QKV and gate/up projections, untied; its
    tokenizer_config names GPT2Tokenizer so that llama.cpp's converter reads tokenizer.json.
  * gemma3: Gemma3ForCausalLM (text), 6 layers (layers 0-4 local with a sliding window of 8
    tokens and rope_theta 1e4, layer 5 global with rope_theta 1e6 and linear RoPE scaling x2),
    QK-norm, post-norms, GeGLU, scaled embeddings, query_pre_attn_scalar = head_dim, tied.
    Gemma's norms are (1 + w): their w is drawn around 0; the converter adds the 1.
Archs other than llama use NEOX RoPE. All share one byte-level BPE tokenizer (512 tokens, trained here on the start of
/work/shared/data/austen_emma.txt) whose first ids are <unk>=0 <s>=1 </s>=2 <|im_start|>=3
<|im_end|>=4.

How to run (no GPU needed; about 30 s on 2 cores, plus a one-time 77 MB download, see below):

    python3 -m pip install -r tools/requirements.txt
    python3 tools/make_tiny_models.py                # writes tests/golden/tiny/
    python3 tools/make_tiny_models.py --out DIR      # somewhere else

Versions used to make the committed files: Python 3.11.7, torch 2.15.0 (PyPI wheel, run on
CPU), transformers 5.23.0, tokenizers 0.23.3, safetensors 0.8.0, numpy 2.4.6, gguf 0.19.0
(used only to read the result back), and llama.cpp's converter as described below.

The GGUF converter, and the two work-arounds it needs
-----------------------------------------------------
The entry script is the one vendored in the cargo registry by the crate we link,
~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp/convert_hf_to_gguf.py (found by
globbing; override with --converter). It is run from there, never copied. But:

1. That crate packages only convert_hf_to_gguf.py, not the `conversion/` package it imports
   (upstream split the converter into that package), nor the `gguf-py/` tree it puts on
   sys.path; and the PyPI `gguf` 0.19.0 is too old for that `conversion/` package (e.g.
   conversion/qwen.py needs gguf.MODEL_ARCH.DFLASH). A PyPI package that carries them is
   the llama-cpp-python sdist: llama-cpp-python==0.3.36 vendors a llama.cpp whose
   convert_hf_to_gguf.py is byte-identical to the crate's (checked by this script; a warning is
   printed if not) and ships `conversion/` and `gguf-py/`. So this script `pip download`s that
   sdist (77 MB) once, without building or installing it (pip only prepares its metadata in a
   throw-away build env with scikit-build-core), into $FAMSTREAM_CACHE (else
   $XDG_CACHE_HOME/famstream, else ~/.cache/famstream), extracts just vendor/llama.cpp/{conversion,gguf-py}, and runs the
   crate's entry script with those two on sys.path (--llama-cpp-tree DIR uses an existing
   llama.cpp checkout instead). That llama.cpp is a little older than the crate's C++ sources;
   the llama/qwen2 conversion code paths are unaffected.
2. The converter identifies BPE pre-tokenizers by hashing the token ids of a fixed test
   string, and refuses unknown hashes. Our tokenizer is new, so the converter is run with
   TextModel.get_vocab_base_pre wrapped: an unrecognized hash gives "gpt-2" (ByteLevel
   pre-tokenizer with the GPT-2 regex, which is what this tokenizer uses) instead of raising.
   Nothing else is patched. The GGUF therefore has tokenizer.ggml.model = "gpt2" and
   tokenizer.ggml.pre = "gpt-2" (llama.cpp's name).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "golden" / "tiny"
EMMA = Path("/work/shared/data/austen_emma.txt")
LCP_VERSION = "0.3.36"  # llama-cpp-python sdist that carries llama.cpp's conversion/ + gguf-py/

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 512
TRAIN_BYTES = 24_000  # "a few KB" of Emma; enough for the trainer to reach 512 tokens
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    max_position_embeddings=4096,
    bos_token_id=1,
    eos_token_id=2,
    hidden_act="silu",
)
ARCHS = {
    "llama": dict(seed=1001, rope_theta=10000.0, tie=False, layers=2, bos=True),
    "llama3": dict(seed=1003, rope_theta=500000.0, tie=False, layers=2, bos=True),
    "qwen2": dict(seed=2002, rope_theta=1000000.0, tie=True, layers=2, bos=False),
    "qwen3": dict(seed=2003, rope_theta=1000000.0, tie=True, layers=2, bos=False),
    "gemma3": dict(seed=3003, rope_theta=1000000.0, tie=True, layers=6, bos=True),
    "phi3": dict(seed=4004, rope_theta=10000.0, tie=False, layers=2, bos=True),
}
GEMMA3_WINDOW = 8
GREEDY_NEW_TOKENS = 16
GREEDY_MIN_MARGIN = 0.05


# --------------------------------------------------------------------------- tokenizer
def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = EMMA.read_bytes()[:TRAIN_BYTES].decode("utf-8", errors="ignore")
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    # one "document" per paragraph keeps the training deterministic and cheap
    tok.train_from_iterator([p for p in text.split("\n\n") if p.strip()], trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def save_tokenizer(tok, hf_dir: Path, add_bos: bool):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = tok.__class__.from_str(tok.to_str())  # copy
    if add_bos:  # llama-style: the tokenizer prepends <s>
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", 1)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=COMMON["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(hf_dir))
    # make the config explicit and stable (save_pretrained's output varies between versions)
    cfg_path = hf_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": add_bos,
            "add_eos_token": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "chat_template": CHAT_TEMPLATE,
        }
    )
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    jinja = hf_dir / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()  # keep the template in one place (tokenizer_config.json)


# --------------------------------------------------------------------------- models
def build_model(arch: str, vocab_size: int):
    import torch
    from transformers import (GenerationConfig, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM,
                              Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)

    spec = ARCHS[arch]
    rope = {"rope_type": "default", "rope_theta": spec["rope_theta"]}
    kw = dict(COMMON, vocab_size=vocab_size, tie_word_embeddings=spec["tie"], rope_parameters=rope,
              num_hidden_layers=spec["layers"])
    if arch == "llama":
        cfg = LlamaConfig(attention_bias=False, mlp_bias=False, **kw)
        cls = LlamaForCausalLM
    elif arch == "llama3":
        kw["rope_parameters"] = {"rope_type": "llama3", "rope_theta": spec["rope_theta"], "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 16}
        cfg = LlamaConfig(attention_bias=False, mlp_bias=False, **kw)
        cls = LlamaForCausalLM
    elif arch == "qwen2":
        cfg = Qwen2Config(use_sliding_window=False, sliding_window=None, max_window_layers=spec["layers"], **kw)
        cls = Qwen2ForCausalLM
    elif arch == "phi3":
        kw.pop("head_dim")
        kw["rope_parameters"] = dict(rope, partial_rotary_factor=1.0, original_max_position_embeddings=4096)
        cfg = Phi3Config(sliding_window=None, pad_token_id=0, original_max_position_embeddings=4096, **kw)
        cls = Phi3ForCausalLM
    elif arch == "qwen3":
        cfg = Qwen3Config(attention_bias=False, use_sliding_window=False, sliding_window=None,
                          max_window_layers=spec["layers"], **kw)
        cls = Qwen3ForCausalLM
    else:
        kw.pop("hidden_act")
        kw["rope_parameters"] = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": spec["rope_theta"], "factor": 2.0},
        }
        cfg = Gemma3TextConfig(hidden_activation="gelu_pytorch_tanh", sliding_window=GEMMA3_WINDOW,
                               query_pre_attn_scalar=COMMON["head_dim"], final_logit_softcapping=None,
                               attn_logit_softcapping=None, layer_types=["sliding_attention"] * 5 + ["full_attention"],
                               attention_bias=False, **kw)
        cls = Gemma3ForCausalLM
    cfg.dtype = torch.float32

    torch.manual_seed(spec["seed"])
    model = cls(cfg).to(torch.float32).eval()
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                centre = 0.0 if arch == "gemma3" else 1.0  # Gemma3RMSNorm scales by (1 + w)
                p.copy_(centre + 0.2 * (2 * torch.rand(p.shape, generator=g) - 1))  # U(c-0.2, c+0.2)
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:  # attention / MLP projections
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    if spec["tie"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, do_sample=False, max_new_tokens=GREEDY_NEW_TOKENS
    )
    return model


def golden_sequences(tok, vocab_size: int):
    import numpy as np

    text = "Emma Woodhouse, handsome, clever, and rich"
    ids = tok.encode(text).ids  # the raw BPE model adds no BOS
    seq7 = [1] + ids[:6]
    assert len(seq7) == 7
    rng = np.random.default_rng(424242)
    seq40 = [1] + [int(x) for x in rng.integers(0, vocab_size, size=39)]
    # candidates for the greedy prompt: seq7 first, then BOS + 6-token windows of Emma's text
    more = tok.encode(EMMA.read_bytes()[TRAIN_BYTES:TRAIN_BYTES + 4000].decode("utf-8", errors="ignore")).ids
    candidates = [seq7] + [[1] + more[i:i + 6] for i in range(0, len(more) - 6, 6)][:100]
    return [[1], seq7, seq40], candidates, text


def write_npy_f32(path: Path, arr):
    import numpy as np

    arr = np.ascontiguousarray(arr, dtype="<f4")
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=(1, 0), allow_pickle=False)


def make_goldens(model, seqs, greedy_candidates, out_dir: Path, arch: str, text: str):
    import numpy as np
    import torch

    files = []
    with torch.no_grad():
        for i, s in enumerate(seqs):
            out = model(input_ids=torch.tensor([s]), use_cache=False)
            lg = out.logits[0].to(torch.float32).numpy()
            assert lg.shape == (len(s), model.config.vocab_size)
            name = f"logits_{i}.npy"
            write_npy_f32(out_dir / name, lg)
            files.append(name)

        # Greedy prompt: the first candidate (sequences[1], then further 7-token BOS + Emma windows)
        # whose 16-step greedy path has every top-2 logit margin >= GREEDY_MIN_MARGIN, so that the
        # path survives f16 rounding (f16 weights or KV cache move these logits by up to ~1e-2).
        best = None
        for prompt in greedy_candidates:
            cur, greedy_margins = list(prompt), []
            for _ in range(GREEDY_NEW_TOKENS):  # cache-free argmax loop
                lg = model(input_ids=torch.tensor([cur]), use_cache=False).logits[0, -1]
                cur.append(int(torch.argmax(lg)))
                top2 = torch.topk(lg, 2).values
                greedy_margins.append(round(float(top2[0] - top2[1]), 5))
            if best is None or min(greedy_margins) > min(best[2]):
                best = (list(prompt), cur[len(prompt):], greedy_margins)
            if min(greedy_margins) >= GREEDY_MIN_MARGIN:
                break
        prompt, manual, greedy_margins = best
        gc = model.generation_config.__class__(
            do_sample=False, max_new_tokens=GREEDY_NEW_TOKENS, min_new_tokens=0,
            bos_token_id=1, eos_token_id=None, pad_token_id=0,
        )
        gen = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            generation_config=gc,
        )
        cont = [int(x) for x in gen[0, len(prompt):]]
        assert len(cont) == GREEDY_NEW_TOKENS, cont
        assert manual == cont, (manual, cont)  # HF generate (KV cache) == cache-free argmax loop

    # top-2 margins tell the Rust tests how safe an argmax comparison is
    margins = []
    for name in files:
        lg = np.load(out_dir / name)
        top = np.sort(lg, axis=-1)[:, -2:]
        margins.append([round(float(m), 5) for m in top[:, 1] - top[:, 0]])
    golden = {
        "arch": arch,
        "vocab_size": model.config.vocab_size,
        "sequences": seqs,
        "sequence_1_text": text + " (first 6 BPE tokens, after BOS)",
        "logits_files": files,
        "logits_dtype": "<f4",
        "logits_layout": "[n_tokens, vocab] row-major, one row per input position",
        "top2_margin": margins,
        "top2_margin_note": "per row: logit of the argmax minus the runner-up; compare argmax only where this is "
                            "well above your logit tolerance",
        "greedy": {"prompt": prompt, "continuation": cont, "n_new": GREEDY_NEW_TOKENS,
                   "top2_margin": greedy_margins,
                   "note": "HF generate, do_sample=False, eos disabled (always 16 new tokens); prompt chosen "
                           "so that every step's top-2 margin >= %g" % GREEDY_MIN_MARGIN},
        "reference": "transformers %s, torch %s, float32, attn_implementation=eager"
        % (__import__("transformers").__version__, torch.__version__.split("+")[0]),
    }
    # one key per line, values compact: easy to read and to diff
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}" for k, v in golden.items())
    (out_dir / "golden.json").write_text("{\n" + body + "\n}\n")
    return golden


# --------------------------------------------------------------------------- conversion
def cache_dir() -> Path:
    if os.environ.get("FAMSTREAM_CACHE"):
        return Path(os.environ["FAMSTREAM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "famstream"


def find_converter(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    hits = sorted(glob.glob(os.path.expanduser(
        "~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp/convert_hf_to_gguf.py")))
    if not hits:
        sys.exit("convert_hf_to_gguf.py of llama-cpp-sys-2 0.1.161 not found in ~/.cargo/registry/src "
                 "(fetch the crate, e.g. build the project once, or pass --converter)")
    return Path(hits[-1])


def find_llama_cpp_tree(explicit: str | None) -> Path:
    """A directory holding llama.cpp's conversion/ and gguf-py/ (see the docstring, point 1)."""
    if explicit:
        return Path(explicit)
    tree = cache_dir() / f"llama-cpp-python-{LCP_VERSION}" / "llama.cpp"
    if (tree / "conversion" / "__init__.py").is_file() and (tree / "gguf-py" / "gguf" / "__init__.py").is_file():
        return tree
    tree.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tree.parent) as tmp:
        print(f"downloading the llama-cpp-python=={LCP_VERSION} sdist from PyPI (converter sources only) ...",
              file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--disable-pip-version-check", f"llama-cpp-python=={LCP_VERSION}", "-d", tmp], check=True)
        sdist = Path(tmp) / f"llama_cpp_python-{LCP_VERSION}.tar.gz"
        prefix = f"llama_cpp_python-{LCP_VERSION}/vendor/llama.cpp/"
        staging = Path(tmp) / "llama.cpp"
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                if not m.name.startswith(prefix):
                    continue
                rel = m.name[len(prefix):]
                if not (rel.startswith("conversion/") or rel.startswith("gguf-py/") or rel == "convert_hf_to_gguf.py"):
                    continue
                if m.isfile():
                    dst = staging / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with tf.extractfile(m) as src, open(dst, "wb") as f:
                        shutil.copyfileobj(src, f)
        if tree.exists():
            shutil.rmtree(tree)
        staging.rename(tree)
    return tree


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def convert(hf_dir: Path, outfile: Path, outtype: str, model_name: str, converter: Path, tree: Path):
    ref = tree / "convert_hf_to_gguf.py"
    if ref.is_file() and sha256(ref) != sha256(converter):
        print(f"WARNING: {converter} differs from {ref}; the conversion/ package may not match it", file=sys.stderr)
    env = dict(os.environ, NO_LOCAL_GGUF="1", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_convert-worker", str(converter), str(tree), "--",
           str(hf_dir), "--outfile", str(outfile), "--outtype", outtype, "--model-name", model_name]
    subprocess.run(cmd, check=True, env=env, cwd=str(hf_dir))


def convert_worker(converter: str, tree: str, argv: list[str]):
    """Runs in a child process: llama.cpp's converter as __main__, with the pre-tokenizer fallback."""
    import runpy

    sys.path.insert(0, tree)                      # conversion/
    sys.path.insert(1, os.path.join(tree, "gguf-py"))  # the gguf-py that conversion/ was written for
    import conversion.base as cb

    orig = cb.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return orig(self, tokenizer)
        except NotImplementedError:
            cb.logger.warning("make_tiny_models: unrecognized BPE pre-tokenizer hash -> using 'gpt-2'")
            return "gpt-2"  # llama.cpp's name for the GPT-2 pre-tokenizer

    cb.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [converter] + argv
    runpy.run_path(converter, run_name="__main__")


# --------------------------------------------------------------------------- checks
EXPECTED_TENSORS = {
    # GGUF name -> ne (ggml order: fastest dimension first)
    "token_embd.weight": ("E", "V"),
    "output_norm.weight": ("E",),
    "blk.{i}.attn_norm.weight": ("E",),
    "blk.{i}.attn_q.weight": ("E", "Q"),
    "blk.{i}.attn_k.weight": ("E", "KV"),
    "blk.{i}.attn_v.weight": ("E", "KV"),
    "blk.{i}.attn_output.weight": ("Q", "E"),
    "blk.{i}.ffn_norm.weight": ("E",),
    "blk.{i}.ffn_gate.weight": ("E", "F"),
    "blk.{i}.ffn_up.weight": ("E", "F"),
    "blk.{i}.ffn_down.weight": ("F", "E"),
}


def check_gguf(path: Path, arch: str, vocab: int, want_f16: bool):
    import gguf
    import numpy as np

    name_arch = arch
    r = gguf.GGUFReader(str(path))
    dims = {"E": 64, "V": vocab, "Q": 64, "KV": 32, "F": 128}
    n_layer = ARCHS[arch]["layers"]
    exp = {}
    for name, shape in EXPECTED_TENSORS.items():
        for i in (range(n_layer) if "{i}" in name else [None]):
            exp[name.format(i=i)] = tuple(dims[d] for d in shape)
    if arch in ("llama", "llama3", "phi3"):
        exp["output.weight"] = (64, vocab)
    if arch == "phi3":  # fused: attn_qkv = q|k|v rows, ffn_up = gate|up rows
        for i in range(n_layer):
            for t in ("attn_q", "attn_k", "attn_v", "ffn_gate"):
                del exp[f"blk.{i}.{t}.weight"]
            exp[f"blk.{i}.attn_qkv.weight"] = (64, 128)
            exp[f"blk.{i}.ffn_up.weight"] = (64, 256)
    if arch == "llama3":
        exp["rope_freqs.weight"] = (8,)
    for i in range(n_layer):
        if arch == "qwen2":
            exp[f"blk.{i}.attn_q.bias"] = (64,)
            exp[f"blk.{i}.attn_k.bias"] = (32,)
            exp[f"blk.{i}.attn_v.bias"] = (32,)
        if arch in ("qwen3", "gemma3"):
            exp[f"blk.{i}.attn_q_norm.weight"] = (16,)
            exp[f"blk.{i}.attn_k_norm.weight"] = (16,)
        if arch == "gemma3":
            exp[f"blk.{i}.post_attention_norm.weight"] = (64,)
            exp[f"blk.{i}.post_ffw_norm.weight"] = (64,)
    got = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type.name) for t in r.tensors}
    assert set(got) == set(exp), (sorted(set(got) ^ set(exp)))
    for n, (ne, ty) in got.items():
        assert ne == exp[n], (n, ne, exp[n])
        want = "F16" if (want_f16 and len(ne) == 2) else "F32"
        assert ty == want, (n, ty, want)
    f = {k: v for k, v in r.fields.items()}
    arch = {"llama3": "llama"}.get(name_arch, name_arch)  # llama3 is a llama file with rope_freqs
    assert f["general.architecture"].contents() == arch
    assert int(f[f"{arch}.block_count"].contents()) == n_layer
    assert int(f[f"{arch}.context_length"].contents()) == 4096
    assert int(f[f"{arch}.embedding_length"].contents()) == 64
    assert int(f[f"{arch}.attention.head_count_kv"].contents()) == 2
    assert np.isclose(f[f"{arch}.rope.freq_base"].contents(), ARCHS[name_arch]["rope_theta"])
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert len(f["tokenizer.ggml.tokens"].contents()) == vocab
    return r


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--_convert-worker":
        i = sys.argv.index("--")
        return convert_worker(sys.argv[2], sys.argv[3], sys.argv[i + 1:])

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--converter", help="path to convert_hf_to_gguf.py (default: glob the cargo registry)")
    ap.add_argument("--llama-cpp-tree", help="llama.cpp dir with conversion/ and gguf-py/ (default: from the sdist)")
    ap.add_argument("--arch", choices=sorted(ARCHS), action="append", help="only these (default: all)")
    args = ap.parse_args()

    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    out = Path(args.out)
    converter = find_converter(args.converter)
    tree = find_llama_cpp_tree(args.llama_cpp_tree)
    tok = train_tokenizer()
    vocab = tok.get_vocab_size()

    for arch in args.arch or sorted(ARCHS):
        d = out / arch
        hf = d / "hf"
        if d.exists():
            shutil.rmtree(d)
        hf.mkdir(parents=True)
        save_tokenizer(tok, hf, add_bos=ARCHS[arch]["bos"])
        if arch == "phi3":  # llama.cpp's Phi3 converter takes the GPT-2 path only for this class
            cfg_path = hf / "tokenizer_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["tokenizer_class"] = "GPT2Tokenizer"
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        model = build_model(arch, vocab)
        model.config._attn_implementation = "eager"
        model.save_pretrained(str(hf), safe_serialization=True)
        # save_pretrained records the attention implementation only when asked; keep config clean
        seqs, candidates, text = golden_sequences(tok, vocab)
        # reload from disk so the goldens come from exactly the saved checkpoint
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32, attn_implementation="eager").eval()
        g = make_goldens(model, seqs, candidates, d, arch, text)
        for ot in ("f32", "f16"):
            p = d / f"model.{ot}.gguf"
            convert(hf, p, ot, f"famstream-tiny-{arch}", converter, tree)
            check_gguf(p, arch, vocab, want_f16=(ot == "f16"))
        print(f"{arch}: ok; greedy {g['greedy']['continuation']}; min top-2 margins {[min(m) for m in g['top2_margin']]}, greedy {min(g['greedy']['top2_margin'])}")

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total size under {out}: {total} bytes")
    assert total < 10 * 1024 * 1024, total  # five archs, f32 + f16 GGUFs and the HF checkpoints


if __name__ == "__main__":
    main()

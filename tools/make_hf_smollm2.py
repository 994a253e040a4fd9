#!/usr/bin/env python3
"""Make a Hugging Face-format SmolLM2-135M-Instruct checkpoint from the real Q4_1 GGUF.

How to run (from the repository root; no network once tools/fetch_model.sh has cached the model):

    python3 tools/make_hf_smollm2.py OUT_DIR [--dtype f32|bf16|f16] [--shards N]   # bf16, 2 shards

It is the input of the HF -> GGUF converter test (`famstream convert OUT_DIR ...`). What it writes:

* model-0000i-of-0000N.safetensors + model.safetensors.index.json: every GGUF tensor, dequantized
  with gguf.quants.dequantize, renamed to HF names, and cast to --dtype. The Q/K rows are put
  back in HF's rotate_half order (llama.cpp's converter interleaves them for its "normal" RoPE).
  Embeddings are tied: there is no lm_head.weight.
* config.json (LlamaForCausalLM) and generation_config.json, from the GGUF metadata.
* tokenizer.json: byte-level BPE from tokenizer.ggml.tokens/merges with SmolLM2's real
  pre-tokenizer (Digits(individual_digits) then ByteLevel, as in tools/gen_tokenizer_goldens.py);
  control tokens (token_type 3) are special added tokens. tokenizer_config.json carries the
  bos/eos/pad/unk texts of the GGUF's ids, add_bos_token false and the GGUF's chat template.

The values are the Q4_1 model's (not the original bf16 weights). The output is deterministic.
Made with Python 3.11.7, numpy 2.4.6, gguf 0.19.0, safetensors 0.8.0, tokenizers 0.23.3
(torch/transformers are not used).
"""

import argparse
import json
import os
import sys

import gguf
import numpy as np
from safetensors import TensorSpec, serialize_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the `tools` package
from tools.common import default_model  # noqa: E402
TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(name):
    """GGUF tensor name -> HF name, e.g. blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight."""
    base, suffix = name.rsplit(".", 1)
    if base.startswith("blk."):
        _, il, part = base.split(".", 2)
        return f"model.layers.{il}.{LAYER[part]}.{suffix}"
    return f"{TOP[base]}.{suffix}"


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf.py's permute(): per head, row (b, a) -> (a, b), i.e. the
    interleaved pairs (2i, 2i+1) go back to the halves (i, i + head_dim/2) of rotate_half."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def cast(w, dtype):
    """float32 array -> (safetensors dtype name, contiguous array holding the bytes)."""
    if dtype == "f32":
        return "float32", np.ascontiguousarray(w, dtype="<f4")
    if dtype == "f16":
        return "float16", np.ascontiguousarray(w, dtype="<f2")
    u = np.ascontiguousarray(w, dtype="<f4").view("<u4")  # bf16, round to nearest even (as torch)
    return "bfloat16", ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def build_tokenizer(tokens, types, merges):
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ")) for m in merges],
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    return tok


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="bf16")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--gguf", help="source GGUF (default: the path tools/fetch_model.sh prints)")
    args = ap.parse_args()
    path = args.gguf or default_model()
    reader = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert kv["general.architecture"] == "llama", kv["general.architecture"]
    a = lambda key: kv["llama." + key]  # noqa: E731
    n_embd, n_head, n_head_kv = a("embedding_length"), a("attention.head_count"), a("attention.head_count_kv")
    os.makedirs(args.out_dir, exist_ok=True)

    # weights: dequantize, rename, undo the Q/K permutation, cast; HF order (layers numerically)
    tensors = []
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)  # numpy shape [out, in]
        if ".attn_q." in t.name:
            w = unpermute(w, n_head)
        elif ".attn_k." in t.name:
            w = unpermute(w, n_head_kv)
        tensors.append((hf_name(t.name), *cast(w, args.dtype)))
    tied = not any(name == "lm_head.weight" for name, _, _ in tensors)
    key = lambda n: [int(p) if p.isdigit() else p for p in n.split(".")]  # noqa: E731
    order = {"model.embed_tokens.weight": 0, "model.norm.weight": 2, "lm_head.weight": 3}
    tensors.sort(key=lambda t: (order.get(t[0], 1), key(t[0])))

    # shards: contiguous runs of about total/N bytes each
    total = sum(arr.nbytes for _, _, arr in tensors)
    n = args.shards
    groups, done = [[] for _ in range(n)], 0
    for t in tensors:
        groups[min(done * n // total, n - 1)].append(t)  # by start offset
        done += t[2].nbytes
    if any(not g for g in groups):
        raise SystemExit(f"--shards {n}: too many shards for {len(tensors)} tensors")
    weight_map = {}
    for i, g in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        specs = {name: TensorSpec(dtype=dt, shape=list(arr.shape), data_ptr=arr.ctypes.data, data_len=arr.nbytes)
                 for name, dt, arr in g}
        serialize_file(specs, os.path.join(args.out_dir, fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name, _, _ in g})
    write_json(os.path.join(args.out_dir, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})

    # config.json / generation_config.json
    bos, eos = kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"]
    pad = kv.get("tokenizer.ggml.padding_token_id", eos)
    write_json(os.path.join(args.out_dir, "config.json"), {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": n_embd, "intermediate_size": a("feed_forward_length"),
        "num_hidden_layers": a("block_count"), "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv, "head_dim": a("rope.dimension_count"),
        "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "rms_norm_eps": float(str(np.float32(a("attention.layer_norm_rms_epsilon")))),  # 1e-05, not 9.99..e-06
        "rope_theta": float(a("rope.freq_base")), "rope_scaling": None,
        "max_position_embeddings": a("context_length"), "vocab_size": a("vocab_size"),
        "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad,
        "tie_word_embeddings": tied, "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
        "torch_dtype": {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[args.dtype],
    })
    write_json(os.path.join(args.out_dir, "generation_config.json"),
               {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad})

    # tokenizer.json / tokenizer_config.json
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "smollm"
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    build_tokenizer(tokens, types, kv["tokenizer.ggml.merges"]).save(os.path.join(args.out_dir, "tokenizer.json"))
    write_json(os.path.join(args.out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
        "bos_token": tokens[bos], "eos_token": tokens[eos], "pad_token": tokens[pad],
        "unk_token": tokens[kv.get("tokenizer.ggml.unknown_token_id", 0)],
        "clean_up_tokenization_spaces": False, "model_max_length": a("context_length"),
        "chat_template": kv["tokenizer.chat_template"],
    })
    for f in sorted(os.listdir(args.out_dir)):
        print(f"{os.path.getsize(os.path.join(args.out_dir, f)):>12}  {f}")


if __name__ == "__main__":
    main()

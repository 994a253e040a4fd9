#!/usr/bin/env python3
"""Which attention heads read the kept tokens? (issue 18: what kept tokens cost in decoding is
ggml's attention per visible key and head; a key a head may not see costs a mask test.)

Runs the trainer's independent forward (tools/fam_train.py, PyTorch) of a FAM adapter with kept
tokens over recall cases of the *training* split of tools/fam_data.py (so choosing heads from it
does not look at the benchmark's held-out cases), and records, for every layer and query head,
the attention probability the answer rows (the row before each answer token and the answer's
own rows but the last) put on the kept columns in the question's block. Writes a JSON with the
per-(layer, head) mean mass and prints the heads ranked, with the share of all kept mass the top
N carry.

    python3 tools/kept_heads.py results/adapters/smollm2-135m-fam-b256-keep64-d05.gguf \
        --model ~/.cache/famstream/hf/smollm2-135m-f32 --cases 24 --k 4 --out results/kept_heads/fam-kp64b256-mass.json

`--visible-top N...` instead measures recall (teacher-forced, as `fam_train.py eval`) with the kept tokens
shown only to the top N pairs; `--write OUT.gguf --top N` copies the adapter with `fam.kept_heads` set to
them (src/kept_heads.rs; famstream then hides the kept slots from the other heads):

    python3 tools/kept_heads.py ADAPTER --mass results/kept_heads/fam-kp64b256-mass.json --top 34 --write OUT.gguf
"""
import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `tools` package


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter")
    ap.add_argument("--model", help="HF directory of the base (tools/make_hf_smollm2.py); not for --write")
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--k", type=int, nargs="+", default=[4], help="distances in windows")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--visible-top", type=int, nargs="+",
                    help="instead of measuring: recall (teacher-forced exact match, as fam_train.py eval) with the "
                         "kept columns visible only to the N (layer, head) pairs of --mass with the most mass, for "
                         "each N given (0: no head sees them; 270 for SmolLM2: all)")
    ap.add_argument("--mass", type=Path, help="a JSON this script wrote (--out)")
    ap.add_argument("--write", type=Path, metavar="ADAPTER_OUT",
                    help="instead of measuring: copy the adapter to ADAPTER_OUT with `fam.kept_heads` = the --top "
                         "(layer, head) pairs of --mass with the most mass (src/kept_heads.rs)")
    ap.add_argument("--top", type=int, help="with --write: how many pairs")
    a = ap.parse_args()

    if a.write:
        return write_adapter(a)
    if not a.model:
        ap.error("--model is needed (except with --write)")
    import torch
    from tokenizers import Tokenizer
    from tools.fam_data import RecallData
    from tools.fam_train import adapter_model

    torch.set_num_threads(a.threads)
    model, s = adapter_model(a.adapter, a.model)
    if not s.get("keep_len"):
        raise SystemExit(f"{a.adapter}: no kept tokens (fam.keep_len)")
    if s["mem_blocks"] != 0:
        raise SystemExit("M > 0: the kept columns are not the leading masked-for-FAM ones this script assumes")
    L, H = model.L, model.H
    mass = torch.zeros(L, H, dtype=torch.float64)
    rows_seen = 0
    state = {}

    def attend(q, k, v, visible):
        """The trainer's attention, with the probabilities kept: records the kept columns' mass."""
        if visible.dim() != 4:  # not a block of the stream (the learned initial FAM's own pass)
            return plain_attend(q, k, v, visible)
        rep = model.H // model.KV
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        vis = visible.to(q.device)
        bias = torch.zeros(vis.shape, device=q.device).masked_fill(~vis, float("-inf")) \
            if vis.dtype == torch.bool else vis
        p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias, -1)  # [N, H, R, C]
        o = p @ v
        l = state["calls"] % L
        state["calls"] += 1
        if state.get("rows") is not None and state["calls"] > state["last_block_from"]:
            # pinned columns (sinks, kept): visible to token rows, never to FAM row 0
            hid = ~vis[:, 0, 0, :] if vis.dtype == torch.bool else torch.isinf(vis[:, 0, 0, :])
            for i, rows in enumerate(state["rows"]):
                ns = int(hid[i].long().cumprod(0).sum())  # leading columns FAM row 0 cannot see
                for r in rows:
                    mass[l] += p[i, :, r, :ns].sum(-1).double().cpu()
        N, _, R, _ = o.shape
        return o.transpose(1, 2).reshape(N, R, model.H * model.hd)

    plain_attend = model.attend
    model.attend = attend
    tok = Tokenizer.from_file(str(Path(a.model) / "tokenizer.json"))
    data = RecallData(tok, s["block_size"], "train")
    B, F = s["block_size"], s["fam_len"]
    if a.visible_top is not None:
        from tools.fam_train import recall_batch
        if not a.mass:
            raise SystemExit("--visible-top needs --mass")
        m = json.loads(a.mass.read_text())["mass"]
        ranked = ranked_pairs(m)
        model.attend = plain_attend  # the trainer's forward hides them itself (s["kept_heads"])
        for n_top in a.visible_top:
            s_top = dict(s, kept_heads=[l * H + h for _, l, h in ranked[:n_top]])
            for k in a.k:
                rng = random.Random(a.seed + k)
                hits = []
                while len(hits) < a.cases:
                    ids, ans, _ = data.batch(rng, min(a.batch, a.cases - len(hits)), k)
                    hits += recall_batch(model, s_top, ids, ans)
                print(f"kept visible to the top {n_top} of {L * H} (layer, head) pairs: k={k}: "
                      f"{sum(hits)}/{len(hits)}", flush=True)
        return
    for k in a.k:
        rng = random.Random(a.seed + k)
        done = 0
        while done < a.cases:
            ids, ans, _ = data.batch(rng, min(a.batch, a.cases - done), k)
            n = len(ids[0])
            n_blocks = -(-n // B)
            last_lo = (n_blocks - 1) * B
            # rows of the last block (FAM rows first) that predict an answer token
            state["rows"] = [[F + p - last_lo for p in ps if p >= last_lo] for ps in ans]
            state["calls"] = 0
            state["last_block_from"] = (n_blocks - 1) * L
            with torch.no_grad():
                model.forward_fam(ids, s, out_pos=[n - 1])
            rows_seen += sum(len(r) for r in state["rows"])
            done += len(ids)
            print(f"k={k}: {done}/{a.cases} cases", file=sys.stderr)
    mean = (mass / rows_seen).tolist()
    flat = ranked_pairs(mean)
    total = sum(m for m, _, _ in flat)
    print(f"kept-column attention mass per answer row, summed over heads and layers: {total:.2f}")
    acc = 0.0
    for i, (m, l, h) in enumerate(flat[:40]):
        acc += m
        print(f"{i + 1:3d}. layer {l:2d} head {h}: {m:.3f} (top {i + 1}: {acc / total:.0%} of all)")
    if a.out:
        a.out.write_text(json.dumps(dict(adapter=a.adapter, settings=s, cases=a.cases, k=a.k, seed=a.seed,
                                         split="train", answer_rows=rows_seen, mass=mean), indent=1) + "\n")


def ranked_pairs(mass):
    """(mass, layer, head), most first."""
    return sorted(((mass[l][h], l, h) for l in range(len(mass)) for h in range(len(mass[0]))), reverse=True)


def write_adapter(a):
    import os
    import gguf
    import numpy as np
    if not a.mass or a.top is None:
        raise SystemExit("--write needs --mass and --top")
    if a.top < 1:
        raise SystemExit("--top must be at least 1 (kept tokens seen by no head: famstream's --keep-len 0)")
    m = json.loads(a.mass.read_text())["mass"]
    n_head = len(m[0])
    pairs = sorted(l * n_head + h for _, l, h in ranked_pairs(m)[:a.top])
    r = gguf.GGUFReader(a.adapter)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    tmp = str(a.write) + ".tmp"
    w = gguf.GGUFWriter(tmp, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "fam.kept_heads"):
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_array(name, list(f.contents()))
        else:
            w.add_key_value(name, f.contents(), f.types[0])
    w.add_array("fam.kept_heads", pairs)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    os.replace(tmp, a.write)
    print(f"wrote {a.write}: fam.kept_heads = {len(pairs)} (layer, head) pairs: "
          + ", ".join(f"{p // n_head}.{p % n_head}" for p in pairs))


if __name__ == "__main__":
    main()

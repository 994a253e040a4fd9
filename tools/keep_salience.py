#!/usr/bin/env python3
"""How well each salience rule of the `keep` policy keeps a planted fact's value (tuning aid).

Makes recall cases from the *training* split of tools/fam_data.py (training templates, values
and filler: the held-out cases of tools/recall_bench.py stay for the benchmark), scores every
token by its surprisal under the HF copy of the default model (full attention: an approximation
of what famstream scores inside its window), then replays keep's selection at B = 64, M = 0, S = 4
for each rule and F, and prints the share of cases whose whole value (the answer's tokens in the
fact) is among the kept tokens. Whether a value is kept decides recall: on the held-out
benchmark a case was answered only when its value was kept.

    python3 tools/keep_salience.py [--cases 80] [--model ~/.cache/famstream/hf/smollm2-135m-f32]

Rules: `fade D` (a token's score carried to the next tokens, fading by D nats per token: the
rule before session 21), `window R` (the largest surprisal within R tokens, before or after, in
the same block: famstream's rule, R = keep::SALIENCE_RADIUS). Surprisals are cached next to the
script's output (--cache).
"""
import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `tools` package
from tools.fam_data import RecallData  # noqa: E402

BLOCK, SINKS = 64, 4


def make_cases(model_dir, n, ks):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    data = RecallData(tok, BLOCK, "train")
    out = []
    for k in ks:
        rng = random.Random(777 + k)
        for _ in range(n):
            ids, ans, meta = data.batch(rng, 1, k)
            a0 = ans[0][0] + 1
            prompt, answer = ids[0][:a0], ids[0][a0:]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), -1)
            s = [0.0] + [float(-lp[i, prompt[i + 1]]) for i in range(len(prompt) - 1)]
            out.append(dict(k=k, prompt=prompt, answer=answer, s=s, fact_pos=meta[0]["fact_pos"],
                            q_pos=meta[0]["q_pos"]))
    return out


def scores(s, rule, p):
    s = np.asarray(s)
    out = np.zeros(len(s))
    if rule == "fade":
        c = 0.0
        for i, x in enumerate(s):
            c = max(x, c - p)
            out[i] = c
    else:  # window
        for i in range(len(s)):
            b0 = i // BLOCK * BLOCK
            out[i] = s[max(b0, SINKS, i - p):min(b0 + BLOCK, i + p + 1)].max(initial=0.0)
    return out


def kept(case, sc, f):
    """Replay keep's selection block by block (ties: the later token): the kept positions."""
    keep = []
    for b in range((len(case["prompt"]) - 1) // BLOCK):
        leaving = [(sc[i], i) for i in range(b * BLOCK, (b + 1) * BLOCK) if i >= SINKS]
        keep = sorted(keep + leaving, key=lambda x: (-x[0], -x[1]))[:f]
    return {i for _, i in keep}


def value_positions(case):
    ans = set(case["answer"]) - {30}  # not the full stop
    f0 = case["fact_pos"]
    return [i for i in range(f0, min(f0 + 40, case["q_pos"])) if case["prompt"][i] in ans]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=80, help="cases per distance")
    ap.add_argument("--k", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--f", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--model", default=str(Path.home() / ".cache/famstream/hf/smollm2-135m-f32"))
    ap.add_argument("--cache", default="/tmp/famstream-keep-salience.json")
    a = ap.parse_args()
    cache = Path(a.cache)
    cases = json.loads(cache.read_text()) if cache.exists() else None
    if cases is None or len(cases) != a.cases * len(a.k):
        cases = make_cases(Path(a.model), a.cases, a.k)
        cache.write_text(json.dumps(cases))
    rules = [("fade", 0.1), ("window", 0), ("window", 6), ("window", 8), ("window", 10), ("window", 16)]
    print("| F | rule | " + " | ".join(f"k={k}" for k in a.k) + " |")
    print("|---|---|" + "---|" * len(a.k))
    for f in a.f:
        for rule, p in rules:
            hits = {k: 0 for k in a.k}
            for c in cases:
                vp = value_positions(c)
                kp = kept(c, scores(c["s"], rule, p), f)
                hits[c["k"]] += bool(vp) and all(v in kp for v in vp)
            print(f"| {f} | {rule} {p} | " + " | ".join(f"{hits[k]}/{a.cases}" for k in a.k) + " |", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How well each salience rule of the `keep` policy keeps a planted fact's value (tuning aid).

Makes recall cases from the *training* split of tools/fam_data.py (training templates, values
and filler: the held-out cases of tools/recall_bench.py stay for the benchmark), scores every
token by its surprisal under the HF copy of the default model (full attention: an approximation
of what famstream scores inside its window), then replays keep's selection (B = --block,
M = --mem-blocks, S = 4) for each rule and F, and prints the share of cases whose whole value
(the answer's tokens in the fact) is among the kept tokens. Whether a value is kept decides recall: on the held-out
benchmark a case was answered only when its value was kept.

    python3 tools/keep_salience.py [--cases 80] [--model ~/.cache/famstream/hf/smollm2-135m-f32]
    python3 tools/keep_salience.py --block 1024 --mem-blocks 3 --k 1 2 --f 256   # default window

With M memory blocks a window is M + 1 blocks and k counts windows (as tools/recall_bench.py):
the question is k * (M + 1) blocks after the fact's block, and a block leaves the window when
the block M + 1 after it starts. Texts longer than --context tokens are scored in windows of
--context tokens that advance by half of it (each token scored once, with at least half a
window of context), as famstream scores a token inside its own window.

Rules: `fade D` (a token's score carried to the next tokens, fading by D nats per token: the
rule before session 21), `window R` (the largest surprisal within R tokens, before or after, in
the same block: famstream's rule in sessions 21-23), `after R` (the largest surprisal of
the token and the R before it: a surprise scores only what follows it), `sum R` (the sum of the
surprisals within R tokens: dense surprise, as a fact dropped into a novel, over a lone rare
word), `sumwin R` (the largest `sum R` within R tokens: `window`'s flat spans, ranked by density;
famstream's rule since session 24, R = keep::SALIENCE_RADIUS).
Surprisals are cached (--cache; one file per window layout).
"""
import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `tools` package
from tools.fam_data import RecallData  # noqa: E402

SINKS = 4


def surprisals(model, ids, context):
    """-ln p of each token given what came before (0 for the first), in windows of `context`
    tokens advancing by half of one (a token's context is at least half a window)."""
    import torch
    s = [0.0] * len(ids)
    half = context // 2
    start = 0
    while True:
        w = ids[start:start + context]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([w])).logits[0].float(), -1)
        first = 0 if start == 0 else half  # positions of w scored here (the rest were before)
        for i in range(max(first, 1), len(w)):
            s[start + i] = float(-lp[i - 1, w[i]])
        if start + context >= len(ids):
            return s
        start += half


def load_model(model_dir):
    """The HF copy of the default model, f32 on 2 threads, for scoring."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def evicted_surprisals(model, prompt, block, mem_blocks, context):
    """Surprisals of the blocks that have left the window when the question is read (the
    blocks before the question's block and its M memory blocks); 0 for the rest, never kept."""
    n_left = ((len(prompt) - 1) // block - mem_blocks) * block
    return surprisals(model, prompt[:n_left], context) + [0.0] * (len(prompt) - n_left)


def make_cases(model_dir, n, ks, block, mem_blocks, context, known):
    """`n` cases per distance; `known` maps (k, prompt) to surprisals a smaller run scored."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = None  # loaded only if a case is not in `known`
    data = RecallData(tok, block, "train")
    out = []
    for k in ks:
        rng = random.Random(777 + k)
        for c in range(n):
            ids, ans, meta = data.batch(rng, 1, k * (mem_blocks + 1))
            a0 = ans[0][0] + 1
            prompt, answer = ids[0][:a0], ids[0][a0:]
            s = known.get((k, tuple(prompt)))
            if s is None:
                model = model or load_model(model_dir)
                s = evicted_surprisals(model, prompt, block, mem_blocks, context)
            out.append(dict(k=k, prompt=prompt, answer=answer, s=s,
                            fact_pos=meta[0]["fact_pos"], q_pos=meta[0]["q_pos"]))
            print(f"\rk={k}: case {c + 1}/{n}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    return out


def scores(s, rule, p, block):
    s = np.asarray(s)
    out = np.zeros(len(s))
    if rule == "fade":
        c = 0.0
        for i, x in enumerate(s):
            c = max(x, c - p)
            out[i] = c
        return out
    if rule == "sumwin":
        d = scores(s, "sum", p, block)
        for i in range(len(s)):
            b0 = i // block * block
            out[i] = d[max(b0, SINKS, i - p):min(b0 + block, i + p + 1)].max(initial=0.0)
        return out
    for i in range(len(s)):  # window, after, sum: over the same block, sinks excluded
        b0 = i // block * block
        w = s[max(b0, SINKS, i - p):min(b0 + block, (i if rule == "after" else i + p) + 1)]
        out[i] = w.sum() if rule == "sum" else w.max(initial=0.0)
    return out


def kept(case, sc, f, block, mem_blocks):
    """Replay keep's selection block by block (ties: the later token): the kept positions when
    the question is read (the blocks before the question's block and its M memory blocks)."""
    keep = []
    for b in range((len(case["prompt"]) - 1) // block - mem_blocks):
        leaving = [(sc[i], i) for i in range(b * block, (b + 1) * block) if i >= SINKS]
        keep = sorted(keep + leaving, key=lambda x: (-x[0], -x[1]))[:f]
    return {i for _, i in keep}


def from_file(model_dir, path, block, mem_blocks, context):
    """Cases of tools/recall_bench.py (held-out: to check this replay against what famstream
    kept, not to choose a rule); the fact is where the value's tokens first occur."""
    model = load_model(model_dir)
    out = []
    for line in Path(path).read_text().splitlines():
        c = json.loads(line)
        prompt, v = c["prompt"], [t for t in c["answer"] if t != 30]
        f0 = next(i for i in range(len(prompt)) if prompt[i:i + len(v)] == v)
        s = evicted_surprisals(model, prompt, block, mem_blocks, context)
        out.append(dict(k=c["k"], prompt=prompt, answer=c["answer"], s=s, value_pos=list(range(f0, f0 + len(v)))))
        print(f"\rcase {len(out)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def value_positions(case):
    if "value_pos" in case:
        return case["value_pos"]
    ans = set(case["answer"]) - {30}  # not the full stop
    f0 = case["fact_pos"]
    return [i for i in range(f0, min(f0 + 40, case["q_pos"])) if case["prompt"][i] in ans]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=80, help="cases per distance")
    ap.add_argument("--k", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--f", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--mem-blocks", type=int, default=0)
    ap.add_argument("--context", type=int, default=4096, help="tokens the HF model scores at once")
    ap.add_argument("--rules", nargs="+", default=["fade:0.1", "window:8", "sum:8", "sumwin:8"],
                    help="rule:parameter pairs (see above)")
    ap.add_argument("--model", default=str(Path.home() / ".cache/famstream/hf/smollm2-135m-f32"))
    ap.add_argument("--cache", default="/tmp/famstream-keep-salience")
    ap.add_argument("--cases-file", help="replay tools/recall_bench.py's cases (held-out) instead")
    a = ap.parse_args()
    cache = Path(f"{a.cache}-b{a.block}-m{a.mem_blocks}-k{'_'.join(map(str, a.k))}-n{a.cases}.json")
    if a.cases_file:
        cache = Path(f"{a.cache}-{Path(a.cases_file).stem}.json")
    cases = json.loads(cache.read_text()) if cache.exists() else None
    if cases is None and a.cases_file:
        cases = from_file(Path(a.model), a.cases_file, a.block, a.mem_blocks, a.context)
        cache.write_text(json.dumps(cases))
    if cases is None:
        # a smaller run's cases are the first ones of this run (same seeds): reuse their scores
        known = {(c["k"], tuple(c["prompt"])): c["s"]
                 for f in cache.parent.glob(cache.name.split("-n")[0] + "-n*.json")
                 for c in json.loads(f.read_text())}
        cases = make_cases(Path(a.model), a.cases, a.k, a.block, a.mem_blocks, a.context, known)
        cache.write_text(json.dumps(cases))
    if a.cases_file:
        a.k = sorted({c["k"] for c in cases})
        a.cases = len(cases) // len(a.k)  # recall_bench writes the same number per distance
    rules = [(r.split(":")[0], float(r.split(":")[1])) for r in a.rules]
    rules = [(r, int(p) if r != "fade" else p) for r, p in rules]
    print("| F | rule | " + " | ".join(f"k={k}" for k in a.k) + " |")
    print("|---|---|" + "---|" * len(a.k))
    for f in a.f:
        for rule, p in rules:
            hits = {k: 0 for k in a.k}
            for c in cases:
                vp = value_positions(c)
                kp = kept(c, scores(c["s"], rule, p, a.block), f, a.block, a.mem_blocks)
                hits[c["k"]] += bool(vp) and all(v in kp for v in vp)
            print(f"| {f} | {rule} {p} | " + " | ".join(f"{hits[k]}/{a.cases}" for k in a.k) + " |", flush=True)


if __name__ == "__main__":
    main()

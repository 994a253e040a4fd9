#!/usr/bin/env python3
"""Perplexity per 8k segment of the memory policies at one window, as a Markdown table, from
results/ppl/<policy>-b64-segments.jsonl (written by `famstream perplexity --segment-log`), put
into results/README.md between the `ppl-b64` markers.

    python3 tools/ppl_table.py [--splice]

The runs (session 13; Moby-Dick is held out from the trainer's data):
    famstream perplexity -t 1 -f ../shared/data/moby_dick.txt --max-tokens 106496 --segment 8192 \\
        --block 64 --mem-blocks 0 --json --segment-log results/ppl/NAME-b64-segments.jsonl \\
        {--memory sink --sinks 4 | --memory keep --fam-len 16 --sinks 4 |
         --adapter results/adapters/smollm2-135m-fam-b64.gguf --memory fam |
         --adapter results/adapters/smollm2-135m-fam-b64-kl.gguf --memory fam (session 19) |
         the same with --fam-decay 0.1 (session 20, fam-kl-d01) |
         --adapter results/adapters/smollm2-135m-fam-b64-gpu.gguf --memory fam (session 26, fam-gpu, -t 2) |
         --adapter results/adapters/smollm2-135m-fam-b64-k16-gpu.gguf --memory fam (session 27, fam-k16, -t 2) |
         --adapter results/adapters/smollm2-135m-fam-b64-keep64-cpu.gguf --memory fam (session 29, fam-kp64, -t 2:
         the adapter's fam.keep_len = 64 keeps 64 tokens next to the FAM) |
         --adapter results/adapters/smollm2-135m-fam-b64-keep64-cpu.gguf --memory fam --fam-decay 0.5 (session 30,
         fam-kp64-d05, -t 2: the settings of smollm2-135m-fam-b64-keep64-d05.gguf, its weights exported with
         fam.decay 0.5)}
keep-win, keep-f64-win, keep-f256-win: `--memory keep --fam-len 16|64|256 --sinks 4` after keep's window
rule (session 21), first 32k.

    python3 tools/ppl_table.py --block 128 [--splice]

the same at B = 128 (`ppl-b128` markers; session 31): `--block 128` and `--memory sink --sinks 4` |
`--adapter results/adapters/smollm2-135m-fam-b128-keep64-d05.gguf --memory fam` (fam-kp64b128, trained at
B = 128) | the B = 64 adapter's settings as for fam-kp64-d05 above (session 30, first 32k).

    python3 tools/ppl_table.py --block 256 [--splice]

at B = 256 (`ppl-b256` markers; session 32): `--block 256` and `--memory sink --sinks 4` |
`--adapter results/adapters/smollm2-135m-fam-b256-keep64-d05.gguf --memory fam` (fam-kp64b256) |
`--adapter A --memory fam` with A the same file with `fam.kept_heads` = the top 68 pairs (session 35,
fam-kp64b256kh68; A written by `tools/kept_heads.py results/adapters/smollm2-135m-fam-b256-keep64-d05.gguf
--mass results/kept_heads/fam-kp64b256-mass.json --top 68 --write A`) |
`--adapter results/adapters/smollm2-135m-fam-b256-keep64-d05-kh34-trained.gguf --memory fam` (session 36,
fam-kp64b256kh34t: trained with its kept tokens shown to the top 34 pairs, `fam_train.py --kept-heads`) |
`--adapter results/adapters/smollm2-135m-fam-b256-keep64-d05-kh68-k16.gguf --memory fam` (session 37,
fam-kp64b256kh68k16: the kh68 file trained on with its 68 pairs at 1-16 blocks) |
`--adapter results/adapters/smollm2-135m-fam-b256-keep64-d05-kh34-k16.gguf --memory fam` (session 38,
fam-kp64b256kh34k16: the kh68k16 file trained on with only the top 34 pairs seeing the kept tokens, 1-16 blocks).

    python3 tools/ppl_table.py --block 512 [--splice]

at B = 512 (`ppl-b512` markers; session 35): `--block 512` and `--memory sink --sinks 4` | the kh68 file
above with `--block 512` (fam-kp64b256kh68).
"""
import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `tools` package
from tools.common import ROOT, splice  # noqa: E402

RUNS = [("sink (S = 4)", "sink"), ("keep (F = 16, S = 4), fading carry (session 13)", "keep"),
        ("keep (F = 16, S = 4), window rule (session 21)", "keep-win"),
        ("keep (F = 64, S = 4), window rule", "keep-f64-win"), ("keep (F = 256, S = 4), window rule", "keep-f256-win"),
        ("fam-trained (step 660)", "fam-trained"),
        ("fam-kl (session 19, step 605)", "fam-kl"),
        ("fam-kl + `--fam-decay 0.1` (session 20, no retraining)", "fam-kl-d01"),
        ("fam-gpu (session 26: decay 0.1 and state passing, 10.9M tokens on a GPU)", "fam-gpu"),
        ("fam-k16 (session 27: fam-gpu trained on at 1-16 windows without state passing)", "fam-k16"),
        ("fam-kp64 (session 29: fam-k16 trained on with 64 kept tokens next to it, used with them)", "fam-kp64"),
        ("fam-kp64-d05 (session 30: the same adapter with decay 0.5, no retraining: the best at B = 64)", "fam-kp64-d05")]
RUNS_B128 = [("sink (S = 4)", "sink"),
             ("fam-kp64-d05 (session 30: trained at B = 64, read at 128)", "fam-kp64-d05"),
             ("fam-kp64b128 (session 31: the same trained on at B = 128)", "fam-kp64b128")]
RUNS_B256 = [("sink (S = 4)", "sink"),
             ("fam-kp64b256 (session 32: the B = 128 memory trained on at B = 256)", "fam-kp64b256"),
             ("fam-kp64b256kh68 (session 35: the same, kept tokens seen by 68 (layer, head) pairs)",
              "fam-kp64b256kh68"),
             ("fam-kp64b256kh34t (session 36: trained on with kept tokens seen by 34 pairs only)", "fam-kp64b256kh34t"),
             ("fam-kp64b256kh68k16 (session 37: the kh68 file trained on with its 68 pairs at 1-16 blocks)",
              "fam-kp64b256kh68k16"),
             ("fam-kp64b256kh34k16 (session 38: that file trained on with the top 34 pairs only, 1-16 blocks)",
              "fam-kp64b256kh34k16")]
RUNS_B512 = [("sink (S = 4)", "sink"),
             ("fam-kp64b256kh68 (session 35: the B = 256 file, kept tokens seen by 68 pairs, read at B = 512)",
              "fam-kp64b256kh68")]
TOTAL = 106496


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block", type=int, choices=[64, 128, 256, 512], default=64)
    ap.add_argument("--splice", action="store_true")
    a = ap.parse_args()
    rows = []
    for label, name in {64: RUNS, 128: RUNS_B128, 256: RUNS_B256, 512: RUNS_B512}[a.block]:
        path = ROOT / f"results/ppl/{name}-b{a.block}-segments.jsonl"
        segs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        n = sum(s["tokens"] for s in segs)
        # the whole run's perplexity from the segments' (token-weighted mean NLL)
        nll = sum(s["tokens"] * math.log(s["perplexity"]) for s in segs) / max(n, 1)
        cells = [f"{s['perplexity']:,.1f}" for s in segs]
        whole = f"**{math.exp(nll):,.1f}** over {n:,} tokens" + ("" if n >= TOTAL - 1 else " (not run further)")
        rows.append((label, cells, whole))
    width = max(len(c) for _, c, _ in rows)
    head = "| policy | " + " | ".join(f"{8 * i}k-{8 * (i + 1)}k" for i in range(width)) + " | whole run |"
    lines = [head, "|---|" + "---|" * (width + 1)]
    for label, cells, whole in rows:
        lines.append(f"| {label} | " + " | ".join(cells + ["-"] * (width - len(cells))) + f" | {whole} |")
    flag = "" if a.block == 64 else f" --block {a.block}"
    text = "\n".join(lines) + (f"\n\n(`tools/ppl_table.py{flag}`; B = {a.block}, M = 0, 8,192-token segments of "
                               "Moby-Dick)")
    print(text)
    if a.splice:
        splice(ROOT / "results/README.md", f"ppl-b{a.block}", text)


if __name__ == "__main__":
    main()

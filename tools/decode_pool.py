#!/usr/bin/env python3
"""Pool the decode ratios against `sink` of one graph over several `--against` runs (issue 18).

`famstream bench --against` (through `tools/bench_adapter.py --against N`) writes each repetition's
tg ratio against `sink` measured in the same process. On a VM whose speed drifts between runs, one
run's median moves by a point or more, so the claim is the median of every repetition of the same
graph over all runs, with a bootstrap 95% interval of that median (resampling within each run, so
every run keeps its weight).

usage: tools/decode_pool.py FILE[:LABEL] ... [--seed 0] [--resamples 20000]
FILE is a results/speed/*-against.json; LABEL (a substring, e.g. "kh34") picks the runs of a
bench_adapter file whose label contains it; a single-run file (`famstream bench --against
--json`) needs none. Prints each run's median and the pooled median, quartiles and interval."""
import argparse
import json
import random
import statistics
import sys
from pathlib import Path


def runs_of(spec):
    """[(name, ratios)] of the runs FILE[:LABEL] names; an error naming the file or label."""
    file, _, label = spec.partition(":")
    try:
        d = json.loads(Path(file).read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"decode_pool: cannot read {file}: {e}")
    if not isinstance(d, dict):
        sys.exit(f"decode_pool: {file} is not an --against result (a JSON object)")
    if "tg_ratios" in d:  # one `famstream bench --against --json`
        if label:
            sys.exit(f"decode_pool: {file} holds one run; drop ':{label}'")
        return [(file, d["tg_ratios"])]
    runs = d.get("runs")
    if not isinstance(runs, dict):
        sys.exit(f"decode_pool: {file} has neither `tg_ratios` nor `runs`: not an --against result")
    picked = [(f"{file}: {k}", v["tg_ratios"]) for k, v in runs.items() if label in k]
    if not label or not picked:
        names = "\n  ".join(runs)
        sys.exit(f"decode_pool: {file}: give one of its runs by a LABEL substring"
                 f"{f' ({label!r} matches none)' if label else ''}:\n  {names}")
    return picked


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="FILE[:LABEL]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resamples", type=int, default=20000)
    a = ap.parse_args()
    runs = [r for spec in a.runs for r in runs_of(spec)]
    for name, ratios in runs:
        print(f"{statistics.median(ratios):.3f}  ({len(ratios)} repetitions)  {name}")
    pooled = [x for _, r in runs for x in r]
    rng = random.Random(a.seed)
    meds = sorted(statistics.median([x for _, r in runs for x in rng.choices(r, k=len(r))])
                  for _ in range(a.resamples))
    lo, hi = meds[int(0.025 * len(meds))], meds[int(0.975 * len(meds)) - 1]
    q = statistics.quantiles(pooled, n=4)
    print(f"pooled: {len(pooled)} repetitions in {len(runs)} runs: median {statistics.median(pooled):.3f}, "
          f"quartiles {q[0]:.3f}-{q[2]:.3f}, bootstrap 95% interval of the median {lo:.3f}-{hi:.3f}")


if __name__ == "__main__":
    main()

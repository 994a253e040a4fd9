#!/usr/bin/env python3
"""The constant-memory / constant-time summary of one long streaming-perplexity run (its
`--json` report or its `--segment-log` lines): peak RSS after ~20k tokens vs at the end (goal:
within 2%), CPU and wall time per token at ~10k vs ~500k (goal: within 10%). Used by
tools/bench_constant_memory.sh and tools/results_table.py.

usage: tools/longrun.py RUN.json|RUN.segments.jsonl"""
import json, sys
from pathlib import Path


def load(path):
    """(segments, finished) of a run's report, or of its segment log if the run has not ended."""
    p = Path(path)
    if p.suffix == ".jsonl":
        # A resumed run (perplexity --checkpoint) logs again the segments after its checkpoint:
        # keep the last record of each segment.
        segs = {}
        for l in p.read_text().splitlines():
            if l.strip():
                s = json.loads(l)
                segs[s["start"]] = s
        return [segs[k] for k in sorted(segs)], False
    # A finished run's segment log is its complete record (the report of a run resumed from a
    # checkpoint of an older famstream covers only the part after it).
    log = p.with_name(p.name[: -len(".json")] + ".segments.jsonl")
    if log.exists():
        return load(log)[0], True
    return json.loads(p.read_text())["segments"], True


def runs(directory):
    """{policy: (segments, finished)} of every run in `directory`: finished runs (<policy>.json)
    and runs still going or stopped (only <policy>.segments.jsonl)."""
    out = {}
    for f in sorted(Path(directory).glob("*.json")):
        out[f.stem] = load(f)
    for f in sorted(Path(directory).glob("*.segments.jsonl")):
        p = f.name[: -len(".segments.jsonl")]
        if p not in out:
            segs, finished = load(f)
            if segs:
                out[p] = (segs, finished)
    return out


def summary(name, seg, finished=True, k=5):
    """One line: peak RSS after ~20k tokens and at the end, and time per token at ~10k, ~500k
    and (for a stream past 600k) at its end. A time is the median over the k segments nearest
    the point (the first segment, while the window fills, left out): one segment can be slowed by
    another process on the machine, and with two compute threads ggml's spin-waiting then also
    inflates CPU time."""
    dist = lambda pos: lambda s: abs(s["start"] + s["tokens"] / 2 - pos)  # to the segment's middle
    a, b = min(seg, key=dist(20000)), seg[-1]
    full = [s for s in seg if s["start"] > 0] or seg

    def around(pos):
        group = sorted(full, key=dist(pos))[:k]
        return sorted(group, key=lambda s: s["start"])

    def med(group, f):
        v = sorted(f(s) for s in group)
        return v[len(v) // 2]

    cpu = lambda s: s["cpu_seconds"] / s["tokens"] * 1e3
    wall = lambda s: 1e3 / s["tokens_per_second"]
    span = lambda g: f"{g[0]['start'] // 1024}k-{(g[-1]['start'] + g[-1]['tokens']) // 1024}k"
    end = b["start"] + b["tokens"]
    g0, g1 = around(10000), around(500000)
    c0, c1 = med(g0, cpu), med(g1, cpu)
    far = ""
    if end > 600000:  # a 1M stream: also its end
        g2 = around(end)
        far = f", {med(g2, cpu):.2f} over {span(g2)} (ratio {med(g2, cpu) / c0:.3f})"
    return (f"{name}: {end} tokens streamed{'' if finished else ' (run not finished)'}; "
            f"peak RSS {a['peak_rss_bytes'] / 2**20:.1f} MiB after {a['start'] + a['tokens']} tokens, "
            f"{b['peak_rss_bytes'] / 2**20:.1f} MiB after {end} (ratio {b['peak_rss_bytes'] / a['peak_rss_bytes']:.4f}); "
            f"CPU ms/token (median of {k} segments) {c0:.2f} over {span(g0)}, {c1:.2f} over {span(g1)} "
            f"(ratio {c1 / c0:.3f}){far}; wall ms/token {med(g0, wall):.2f} -> {med(g1, wall):.2f} "
            f"(ratio {med(g1, wall) / med(g0, wall):.3f})")


if __name__ == "__main__":
    p = Path(sys.argv[1])
    name = p.name.split(".")[0]
    print(summary(name, *load(p)))

#!/usr/bin/env python3
"""Render results/<scale>/*.json (from tools/eval_policies.sh) as Markdown tables and put them in
results/README.md between the markers <!-- results:begin --> and <!-- results:end --> (quick scale), or
<!-- results-<scale>:begin/end --> (another scale), then the long-stream tables.

usage: tools/results_table.py RESULTS_DIR results/README.md"""
import json, sys, re
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `tools` package
from tools.common import splice

d, readme = Path(sys.argv[1]), Path(sys.argv[2])
def load(pat):
    return {f.stem: json.loads(f.read_text()) for f in sorted(d.glob(pat))}

ppl = load("ppl-*.json")
order = ["full", "bswa", "sink", "fam-seed", "fam-bos", "fam-tail", "fam-seed-zero", "fam-reread", "fam-reread-sinks"]
lines = [f"Measured on SmolLM2-135M-Instruct Q4_1, {d.name} scale, Moby-Dick (`tools/eval_policies.sh {d.name}`).", ""]
# One row per policy (the whole run), then one row per 8192-token segment with a column per
# policy: every segment of the stream is shown (the full scale has 25).
present = [n for n in order if f"ppl-{n}" in ppl]
hdr = "| policy | tokens scored | ppl all | ppl 0k-8k | mean KL vs full (0-8k) | state MiB | peak RSS MiB | tok/s |"
lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
for name in present:
    r = ppl[f"ppl-{name}"]
    first = next((s["perplexity"] for s in r["segments"] if s["start"] == 0), None)
    kl = r.get("kl_vs_full")
    # The run's peak RSS: a run resumed from a checkpoint reported only its own process's peak
    # before famstream took its earlier segments' into account; the segments carry them.
    rss = max([r["peak_rss_bytes"]] + [s["peak_rss_bytes"] for s in r["segments"] if s.get("peak_rss_bytes")])
    lines.append(f"| {name} | {r['tokens_scored']} | {r['perplexity']:.2f} | {'-' if first is None else f'{first:.2f}'} | "
                 f"{'-' if kl is None else f'{kl:.4f}'} | {r['state_bytes']/2**20:.0f} | {rss/2**20:.0f} | "
                 f"{r['tokens_per_second']:.0f} |")
segs = sorted({s["start"] for r in ppl.values() for s in r["segments"]})
ends = {s["start"]: s["start"] + s["tokens"] for r in ppl.values() for s in r["segments"]}
lines += ["", "Perplexity per 8192-token segment of the stream (`-`: not measured; full attention "
          "stops at its 8k context):", ""]
hdr = "| tokens | " + " | ".join(present) + " |"
lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
by = {n: {s["start"]: s["perplexity"] for s in ppl[f"ppl-{n}"]["segments"]} for n in present}
for s in segs:
    cells = [f"{by[n][s]:.2f}" if s in by[n] else "-" for n in present]
    lines.append(f"| {s // 1024}k-{round(ends[s] / 1024)}k | " + " | ".join(cells) + " |")
pk = load("passkey-*.json")
fillers = sorted({res["filler_tokens"] for r in pk.values() for res in r["results"]})
rows, gaps = [], False
for name in order:
    cells = []
    for n in fillers:
        r = pk.get(f"passkey-{name}-{n}")
        cells.append(f"{r['results'][0]['found']}/{r['results'][0]['trials']}" if r else "-")
    if any(c != "-" for c in cells):
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        gaps |= "-" in cells
# full attention is not run past its 8k context (it refuses rather than truncating).
legend = "; `-`: not measured, full attention only within its 8k context" if gaps else ""
lines += ["", f"Passkey retrieval (found / trials{legend}):" if pk else "Passkey retrieval: not measured yet at this scale.", ""]
hdr = "| policy | " + " | ".join(f"{n//1000}k filler" for n in fillers) + " |"
lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)] if pk else []
lines += rows
table = "\n".join(lines)
# Each scale has its own block: <!-- results:begin/end --> (quick), <!-- results-full:... --> (full);
# a missing block goes after the last results block there is.
tag = "results" if d.name == "quick" else f"results-{d.name}"
begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
text = readme.read_text()
if begin in text:
    splice(readme, tag, table)
else:
    block = f"{begin}\n{table}\n{end}"
    ends = [m.end() for m in re.finditer(r"<!-- results(-[a-z]+)?:end -->", text)]
    new = text[:ends[-1]] + "\n\n" + block + text[ends[-1]:] if ends else text + "\n" + block + "\n"
    readme.write_text(new)
print(table)

# Long streams (tools/bench_constant_memory.sh): Moby-Dick, then the Shakespeare plays, one
# compute thread; perplexity per 8192-token segment (every 4th shown), peak RSS and CPU time.
# A run still going (or stopped) has only its per-segment log, <policy>.segments.jsonl.
mdir = d.parent / "memory"
from tools.longrun import runs as runs_in, summary
mem = runs_in(mdir)
if mem:
    lines = ["Long streams, one compute thread, B=1024, M=3, S=4 (`tools/bench_constant_memory.sh`): "
             "Moby-Dick (~290k tokens) then the Shakespeare plays. `fam-reread` is fam (F=64) with "
             "the reread feedback, plus the 4 sinks.", ""]
    for p, (segs, finished) in mem.items():
        lines.append("- " + summary(p, segs, finished))
    lines.append("")
    hdr = "| tokens | " + " | ".join(f"{p} ppl | {p} CPU ms/token | {p} peak RSS MiB" for p in mem) + " |"
    lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    runs = [segs for segs, _ in mem.values()]
    n = max(len(segs) for segs in runs)
    for i in sorted(set(range(0, n, 4)) | {n - 1}):
        cells = []
        for segs in runs:
            s = segs[i] if i < len(segs) else None
            cells += ([f"{s['perplexity']:.2f}", f"{s['cpu_seconds'] / s['tokens'] * 1e3:.2f}", f"{s['peak_rss_bytes'] / 2**20:.0f}"]
                      if s else ["-", "-", "-"])
        start = max(segs[min(i, len(segs) - 1)]["start"] for segs in runs)
        lines.append(f"| {start // 1024}k | " + " | ".join(cells) + " |")
    long_table = "\n".join(lines)
    splice(readme, "longrun", long_table, missing="append")
    print(long_table)

# Pure-ingestion streams (STREAM=1 tools/bench_constant_memory.sh, `perplexity --no-scores`):
# peak RSS and time per token along up to 1M tokens, against llama.cpp's peak RSS with an 8k
# context (results/speed/rss-llama-8k.json, tools/bench_targets.sh).
sdir = d.parent / "stream"
streams = runs_in(sdir)
if streams:
    lines = ["Streams without scoring (`STREAM=1 tools/bench_constant_memory.sh`: `perplexity "
             "--no-scores`, defaults B=1024, M=3, S=4), Moby-Dick then the plays:", ""]

    def threads(p):
        # Final reports record their compute threads (a run still going has no report yet); the
        # first (fam-reread) predates the field and ran with the script's STREAM default, 2.
        f = sdir / f"{p}.json"
        if not f.exists():
            return None
        t = json.loads(f.read_text()).get("threads")
        return f"{t} compute thread{'s' if t != 1 else ''}" if t else "2 compute threads, the script's default; not recorded then"
    llama = d.parent / "speed" / "rss-llama-8k.json"
    l_rss = json.loads(llama.read_text())["peak_rss_bytes"] if llama.exists() else None
    for p, (segs, finished) in streams.items():
        line, t = "- " + summary(p, segs, finished), threads(p)
        if t:
            line = line.replace(":", f" ({t}):", 1)
        if l_rss:
            end_rss = segs[-1]["peak_rss_bytes"]
            line += (f"; peak RSS at the end vs llama.cpp with an 8k context: "
                     f"{end_rss / 2**20:.0f} / {l_rss / 2**20:.0f} MiB = {end_rss / l_rss:.2f}")
        lines.append(line)
    # Along each stream: every 128k tokens (and the last segment), one segment each.
    for p, (segs, finished) in streams.items():
        lines += ["", f"{p}, one 8k segment every 128k tokens:", "",
                  "| tokens | CPU ms/token | wall tok/s | peak RSS MiB |", "|---|---|---|---|"]
        pick = [s for s in segs if s["start"] % (128 * 1024) == 0] + [segs[-1]]
        for s in sorted({s["start"]: s for s in pick}.values(), key=lambda s: s["start"]):
            lines.append(f"| {s['start'] // 1024}k | {s['cpu_seconds'] / s['tokens'] * 1e3:.2f} | "
                         f"{s['tokens_per_second']:.0f} | {s['peak_rss_bytes'] / 2**20:.1f} |")
    stream_text = "\n".join(lines)
    splice(readme, "stream", stream_text, missing="skip")
    print(stream_text)

#!/usr/bin/env python3
"""Recall benchmark: does a memory policy answer a fact planted k windows before the question?

Makes held-out cases with tools/fam_data.py (Moby-Dick filler, held-out fact templates and
values; a fact in block 0, the question k blocks later, so with M = 0 memory blocks only a memory
can carry it), then runs `famstream recall` on them for each policy, all at the same window
(B tokens, M = 0 unless --mem-blocks) on the default model, writes
results/recall/<policy>-<window>-n<trials>-k<distances>.json, and prints a Markdown table
(hits/trials, recall, 95% Wilson interval; --splice puts it into results/README.md).

    python3 tools/recall_bench.py [--trials 100] [--k 1 2 4 8 16 64] [--policies ...]
        [--adapter results/adapters/...gguf] [--threads 2]

Needs the release binary (cargo build --release), the default model (tools/fetch_model.sh) and
the HF tokenizer.json of the default model (tools/make_hf_smollm2.py writes it; --tokenizer).
Cases are cached in results/recall/cases-b<B>-s<seed>.jsonl (token ids, so the block layout is
exactly the one intended). A run with more --trials begins with the same cases (per k), so the
cases an earlier, smaller run measured are reused, not rerun (its settings and model fingerprint
must match), and famstream runs --chunk cases at a time, each saved to results/recall/parts/: a
run that was stopped resumes where it stopped. The merged file lists its sources (merged_from).
"""
import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `tools` package
from tools.common import FAMSTREAM, ROOT, default_model, splice, wilson95  # noqa: E402
OUT = ROOT / "results/recall"
PARTS = OUT / "parts"  # chunks of a run not finished yet


def policies(block, adapter, adapter_name="fam-trained", adapter_args=(), wanted=(), mem_blocks=0):
    w = ["--block", str(block), "--mem-blocks", str(mem_blocks)]

    def keep(f):
        # training-free salience memory: the F most salient evicted tokens (plus 4 sinks)
        return ["--memory", "keep", *w, "--fam-len", str(f), "--sinks", "4"]

    p = {
        "full": ["--memory", "full"],
        "bswa": ["--memory", "bswa", *w],
        "sink": ["--memory", "sink", *w, "--sinks", "4"],
        "fam-untuned": ["--memory", "fam", *w, "--fam-len", "16"],
        "keep": keep(16),
    }
    # `keep` with more kept tokens: keep-f64, keep-f256, ... The salience rule is the binary's:
    # keep-dense-fN are the same flags, naming runs of the density rule (session 24) apart from
    # the keep-fN files measured before it with the largest-surprisal rule
    for name in wanted:
        m = re.fullmatch(r"keep-(?:dense-)?f(\d+)", name)
        if m:
            p[name] = keep(int(m.group(1)))
    if adapter:
        p[adapter_name] = ["--adapter", str(adapter), "--memory", "fam", *w, *adapter_args]
        p[f"{adapter_name}-no-fam"] = ["--adapter", str(adapter), "--memory", "bswa", *w]
        # the FAM with N salient evicted tokens kept next to it (`--keep-len N`; -sS: S sinks)
        for name in wanted:
            m = re.fullmatch(re.escape(adapter_name) + r"-keep(\d+)(?:-s(\d+))?", name)
            if m:
                p[name] = [*p[adapter_name], "--keep-len", m.group(1),
                           *(["--sinks", m.group(2)] if m.group(2) else [])]
            # the adapter's LoRA under `keep` (no FAM): does the LoRA still read kept tokens?
            m = re.fullmatch(re.escape(adapter_name) + r"-lora-keep(\d+)", name)
            if m:
                p[name] = ["--adapter", str(adapter), *keep(int(m.group(1)))]
    return p


def layout(block, mem_blocks):
    """The window's part of a file name: b<B>, and -m<M> when the window keeps M memory blocks."""
    return f"b{block}" + (f"-m{mem_blocks}" if mem_blocks else "")


def make_cases(tokenizer, block, ks, trials, seed, mem_blocks=0):
    """Cases with the fact in block 0 and the question k windows (k * (M + 1) blocks) later, so
    the fact has left the window (the question's block and M memory blocks) by k blocks' worth."""
    from tokenizers import Tokenizer
    from tools.fam_data import RecallData
    path = OUT / f"cases-{layout(block, mem_blocks)}-s{seed}-n{trials}-k{'_'.join(map(str, ks))}.jsonl"
    if path.exists():
        return path
    data = RecallData(Tokenizer.from_file(str(tokenizer)), block, "eval")
    lines = []
    for k in ks:
        rng = random.Random(seed * 1000 + k)
        for _ in range(trials):
            ids, ans, meta = data.batch(rng, 1, k * (mem_blocks + 1))
            a0 = ans[0][0] + 1  # the first answer token's index
            lines.append(json.dumps(dict(k=k, kind=meta[0]["kind"], value=meta[0]["value"],
                                         prompt=ids[0][:a0], answer=ids[0][a0:])))
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def summarize(cases):
    """famstream recall's summary (per k: hits, trials, interval, mean answer log-likelihood),
    recomputed over cases measured by several runs."""
    out = []
    for k in sorted({c["k"] for c in cases}):
        ran = [c for c in cases if c["k"] == k and not c.get("beyond_context")]
        hits = sum(c["hit"] for c in ran)
        out.append(dict(k=k, hits=hits, trials=len(ran),
                        beyond_context=sum(c["k"] == k for c in cases) - len(ran),
                        recall=hits / max(len(ran), 1), ci95=wilson95(hits, len(ran)),
                        mean_answer_logprob=sum(c["answer_logprob"] for c in ran) / max(len(ran), 1)))
    return out


def sha1(line):
    return hashlib.sha1(line.encode()).hexdigest()


def measured(name, lay, lines, stem, cases_name, args):
    """Cases of `lines` this policy has already run with the same flags: {index: (case result,
    source run)}, from finished runs on other case files holding the same cases (a run with
    fewer --trials made the first cases of each k), then from the parts of an unfinished run
    (PARTS/<stem>-part*.json) made from this very cases file (name and each case's hash)."""
    index = {line: i for i, line in enumerate(lines)}
    found = {}
    for f in sorted(OUT.glob(f"{name}-{lay}-n*-k*.json")):
        r = json.loads(f.read_text())
        src = OUT / r.get("cases_file", "")
        if r.get("args") != args or "provenance" not in r or not src.is_file():
            continue
        src_lines = src.read_text().splitlines()
        if len(r["cases"]) != len(src_lines):
            continue
        for line, c in zip(src_lines, r["cases"]):
            if line in index:
                found[index[line]] = (c, dict(r, file=f.name))
    for f in sorted(PARTS.glob(f"{stem}-part*.json")):
        r = json.loads(f.read_text())
        if r.get("cases_file") != cases_name or r.get("args") != args:
            continue
        for i, h, c in zip(r["indices"], r.get("case_sha1", [None] * len(r["indices"])), r["cases"]):
            if i < len(lines) and h in (None, sha1(lines[i])):
                found[i] = (c, dict(r, file=f.name))
    return found


def run_policy(a, model, name, args, cases, out, commit, lay):
    """Runs famstream on the cases this policy has not measured yet, --chunk cases at a time;
    each chunk is saved as a part, so an interrupted run resumes where it stopped. When every
    case is measured, the parts and earlier runs are merged into `out` (same settings and model
    fingerprint checked) and the parts are removed."""
    lines = cases.read_text().splitlines()
    stem = out.stem
    found = measured(name, lay, lines, stem, cases.name, args)
    todo = [i for i in range(len(lines)) if i not in found]
    if found:
        print(f"{name}: {len(found)} of {len(lines)} cases measured before, {len(todo)} to run",
              file=sys.stderr, flush=True)
    PARTS.mkdir(parents=True, exist_ok=True)
    for c0 in range(0, len(todo), a.chunk):
        chunk = todo[c0:c0 + a.chunk]
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as tmp:
            tmp.write("\n".join(lines[i] for i in chunk) + "\n")
            tmp.flush()
            cmd = [a.bin, "recall", "-m", model, "-t", str(a.threads), "--cases", tmp.name, "--json", *args]
            print(f"running cases {chunk[0]}..{chunk[-1]}:", " ".join(cmd), file=sys.stderr, flush=True)
            r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{name}: famstream failed: {r.stderr.strip()}")
        res = json.loads(r.stdout)
        res.update(policy_name=name, commit=commit, cases_file=cases.name, args=args, indices=chunk,
                   case_sha1=[sha1(lines[i]) for i in chunk])
        part = PARTS / f"{stem}-part{chunk[0]:05d}.json"
        part.with_suffix(".tmp").write_text(json.dumps(res) + "\n")
        part.with_suffix(".tmp").replace(part)
        for i, c in zip(chunk, res["cases"]):
            found[i] = (c, dict(res, file=part.name))
    sources = {}
    for _, src in found.values():
        sources.setdefault(src["file"], src)
    first = next(iter(sources.values()))
    for f, src in sources.items():
        for key, get in (("settings", lambda r: r.get("settings")),
                         ("model", lambda r: r.get("provenance", {}).get("model_fingerprint"))):
            if get(src) != get(first):
                raise SystemExit(f"{name}: {f} was run with another {key} ({get(src)}, not {get(first)}) "
                                 f"than {first['file']}; not merged")
    each = [found[i][0] for i in range(len(lines))]
    res = dict(settings=first["settings"], summary=summarize(each), cases=each,
               provenance=first["provenance"], policy_name=name, commit=commit, cases_file=cases.name,
               args=args)
    if len(sources) > 1 or not first["file"].startswith(f"{stem}-part"):
        res["merged_from"] = [dict(file=f, commit=s.get("commit", "?"), cases=sum(v[1]["file"] == f for v in found.values()),
                                   **({"note": s["note"]} if "note" in s else {})) for f, s in sources.items()]
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(out)
    for f in PARTS.glob(f"{stem}-part*.json"):
        f.unlink()


def table(results, ks):
    head = "| policy | " + " | ".join(f"k={k}" for k in ks) + " |"
    rows = [head, "|---|" + "---|" * len(ks)]
    for name, r in results.items():
        by_k = {s["k"]: s for s in r["summary"]}
        cells = []
        for k in ks:
            s = by_k.get(k)
            if s is None:
                cells.append("-")
            else:
                lo, hi = s["ci95"]
                cells.append(f"{s['hits']}/{s['trials']} ({s['recall']:.2f}, {lo:.2f}-{hi:.2f})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--mem-blocks", type=int, default=0,
                    help="memory blocks M in the window (a window is M + 1 blocks; k counts windows)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--policies", nargs="+",
                    help="rows to run (default: all but keep-fN, which names keep with F = N tokens)")
    ap.add_argument("--adapter")
    ap.add_argument("--adapter-name", default="fam-trained",
                    help="the policy name of the adapter's rows (another adapter: another name)")
    ap.add_argument("--adapter-args", default="",
                    help="more famstream flags for the adapter's FAM row, e.g. '--fam-decay 0.1' (give the row its "
                         "own --adapter-name)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=10,
                    help="cases per famstream run; each is saved, so a stopped run resumes (results/recall/parts)")
    ap.add_argument("--splice", action="store_true", help="write the table into results/README.md")
    ap.add_argument("--splice-name", default="recall",
                    help="the results/README.md block to write (<!-- NAME:begin -->)")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: the table of what earlier runs measured for these policies (with --splice, "
                         "rows measured with different --k lists side by side)")
    ap.add_argument("--model")
    ap.add_argument("--bin", default=str(FAMSTREAM),
                    help="the famstream binary (e.g. a copy, so that a rebuild does not change a long run)")
    ap.add_argument("--tokenizer", default=str(Path.home() / ".cache/famstream/hf/smollm2-135m-f32/tokenizer.json"))
    a = ap.parse_args()
    if a.chunk < 1:
        ap.error("--chunk must be at least 1")
    model = a.model or default_model()
    cases = None if a.table_only else make_cases(a.tokenizer, a.block, a.k, a.trials, a.seed, a.mem_blocks)
    lay = layout(a.block, a.mem_blocks)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    pols = policies(a.block, a.adapter, a.adapter_name, a.adapter_args.split(), a.policies or (), a.mem_blocks)
    results = {}
    for name in a.policies or list(pols):
        out = OUT / f"{name}-{lay}-n{a.trials}-k{'_'.join(map(str, a.k))}.json"
        if not out.exists() and not a.table_only:
            if name not in pols:
                raise SystemExit(f"{name}: no such policy, and no results in {out.name}")
            run_policy(a, model, name, pols[name], cases, out, commit, lay)
    # every distance measured for these policies at this block and trial count, also by
    # earlier runs with other --k lists (the cases of one k do not depend on the list)
    runs = {}
    for name in a.policies or list(pols):
        merged = {}
        for f in sorted(OUT.glob(f"{name}-{lay}-n{a.trials}-k*.json")):
            r = json.loads(f.read_text())
            runs.setdefault(name, []).extend([r.get("commit", "?")] + [m["commit"] for m in r.get("merged_from", [])])
            for s in r["summary"]:
                merged[s["k"]] = s
        if not merged:
            raise SystemExit(f"{name}: nothing measured at {lay} with {a.trials} trials")
        results[name] = {"summary": [merged[k] for k in sorted(merged)]}
    ks = sorted({s["k"] for r in results.values() for s in r["summary"]})
    t = table(results, ks)
    print(t)
    if a.splice:
        pol = f" --policies {' '.join(a.policies)}" if a.policies else ""
        adapter = f" --adapter {a.adapter}" if a.adapter else ""
        adapter += f" --adapter-args '{a.adapter_args}'" if a.adapter_args else ""
        mem = f" --mem-blocks {a.mem_blocks}" if a.mem_blocks else ""
        commits = sorted({c for v in runs.values() for c in v})
        splice(ROOT / "results/README.md", a.splice_name, t + f"\n\n(`tools/recall_bench.py --block {a.block}{mem} --trials "
               f"{a.trials} --k ...{adapter}{pol}`, one run per list of distances, merged; commits "
               f"{', '.join(commits)})")


if __name__ == "__main__":
    main()

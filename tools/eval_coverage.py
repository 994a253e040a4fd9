#!/usr/bin/env python3
"""Coverage by position (issue 19): does an answer about a long transcript see every part of it?

Five facts are planted at 5%, 25%, 50%, 75% and 95% of a meeting-style transcript (speaker turns
from ../shared/data, as tools/make_transcript.py makes them). For each summarize method
(`stream`: the whole text through one stream, then the question; `notes`: notes on every
chunk, then the question over the notes, the quotes that match it and the last chunk;
`notes-noquotes`: the same with `--quotes 0`, notes alone) and each fact, famstream is asked
the fact's question: greedy recall (the answer contains the fact's key string) and the mean
log-probability of the reference answer (`--score-answer`), with and without the fact planted
(the gain is what the fact itself contributes). Writes results/summarize/coverage-*.json and
prints a table; `--table` renders every measured run (results/summarize/coverage-*.json) into
results/README.md between <!-- coverage:begin/end -->. Each cell: greedy recall, then the gain.

    python3 tools/eval_coverage.py [--chars 36000] [--methods stream notes notes-noquotes]
                                   [--memory sink] [--out results/summarize/F.json]

Runs the release binary on the default model with 2 threads; ~10k tokens (36k characters) take
~15 minutes for both methods on 2 cores, the issue's ~40k tokens about four times that.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the `tools` package
from tools.common import splice  # noqa: E402
FACTS = [
    (0.05, "TREASURER: For the record, the bridge fund now holds exactly 4217 gold crowns.",
     "How many gold crowns does the bridge fund hold?", "4217", "The bridge fund holds 4217 gold crowns."),
    (0.25, "CLERK: The harvest festival will be held in the village of Marrowby this year.",
     "Where will the harvest festival be held?", "Marrowby", "The harvest festival will be held in Marrowby."),
    (0.50, "STEWARD: The new keeper of the northern lighthouse will be a woman named Rosalind Vane.",
     "Who will be the new keeper of the northern lighthouse?", "Rosalind", "Rosalind Vane will be the new keeper."),
    (0.75, "MASTER: The old mill wheel needs 38 new oak paddles before winter.",
     "How many oak paddles does the mill wheel need?", "38", "The mill wheel needs 38 new oak paddles."),
    (0.95, "CHAIR: We have decided: the council will move to Ravenna on the ninth of June.",
     "Where will the council move?", "Ravenna", "The council will move to Ravenna."),
]


# each method's summarize flags
METHODS = {
    "stream": ["--method", "stream"],
    "notes": ["--method", "notes"],
    # the control: the same chunks as `notes` at the default window (4096 - 768 notes - 96 note
    # - 512 quotes - 160 prompt), no quotes, so that only the quotes differ
    "notes-noquotes": ["--method", "notes", "--quotes", "0", "--chunk-tokens", "2560"],
    # each chunk read in a 512-token band (`--prefill-band 512`, the default since session 28)
    # or with every token seeing the whole step (`--prefill-band 0`, before): what the band costs
    "notes-band512": ["--method", "notes", "--prefill-band", "512"],
    "notes-noband": ["--method", "notes", "--prefill-band", "0"],
    "notes-noquotes-band512": ["--method", "notes", "--quotes", "0", "--chunk-tokens", "2560",
                               "--prefill-band", "512"],
}


# The same facts asked in other words, sharing fewer words with the planted line (what a user
# who does not remember the wording would ask): `--paraphrase`.
PARAPHRASES = [
    "What is the balance of the money set aside for the bridge?",
    "In which village is the autumn celebration taking place?",
    "Who is going to look after the light on the northern coast?",
    "How many wooden blades must be fitted to the mill?",
    "To which city is the council relocating?",
]

# how the table names each method; `notes-quotes-mid`: measured once (session 15) with the quotes
# before the last part instead of next to the request
LABELS = {"notes": "notes + quotes", "notes-noquotes": "notes, `--quotes 0`",
          "notes-band512": "notes + quotes, `--prefill-band 512`",
          "notes-noband": "notes + quotes, `--prefill-band 0`",
          "notes-noquotes-band512": "notes, `--quotes 0 --prefill-band 512`",
          "notes-quotes-mid": "notes + quotes before the last part"}


def transcript(chars: int, with_facts: bool, skip: int = 0) -> str:
    from tools.make_transcript import speaker_lines  # the same speaker turns as the other evaluations

    return "\n".join(speaker_lines(chars, FACTS if with_facts else (), skip)) + "\n"


def run(bin_: str, threads: str, args: list[str]) -> str:
    r = subprocess.run([bin_, "summarize", "-t", threads, "--quiet"] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"famstream summarize {' '.join(args)} failed: {r.stderr[-500:]}")
    return r.stdout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chars", type=int, default=36_000)
    ap.add_argument("--methods", nargs="+", default=["stream", "notes"], choices=list(METHODS))
    ap.add_argument("--memory", default="sink")
    ap.add_argument("--bin", default=str(REPO / "target/release/famstream"))
    ap.add_argument("--threads", default="2")
    ap.add_argument("--skip", type=int, default=0,
                    help="start the transcript this many characters into the plays (another transcript)")
    ap.add_argument("--paraphrase", action="store_true", help="ask each fact in other words (PARAPHRASES)")
    ap.add_argument("--table", action="store_true", help="only render the measured runs into results/README.md")
    ap.add_argument("--out", help="the JSON to write (default: results/summarize/coverage-MEMORY-CHARS.json)")
    a = ap.parse_args()
    if a.table:
        rendered = table()
        print(rendered)
        splice(REPO / "results/README.md", "coverage", rendered)
        return 0
    out_dir = REPO / "results/summarize"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    rows = []
    tag = (f"-skip{a.skip}" if a.skip else "") + ("-paraphrase" if a.paraphrase else "")
    out = Path(a.out) if a.out else out_dir / f"coverage-{a.memory}-{a.chars}{tag}.json"
    partial = out.with_suffix(".partial.jsonl")  # one line per row as it is measured
    partial.write_text("")
    for method in a.methods:
        for planted in (True, False):
            text = work / f"t-{planted}.txt"
            text.write_text(transcript(a.chars, planted, a.skip))
            flags = METHODS[method]
            base = flags + ["--memory", a.memory]
            if method == "stream":
                snap = work / f"{method}-{planted}.snap"
                run(a.bin, a.threads, base + ["--ingest-only", "--save-state", str(snap), str(text)])
                src = ["--load-state", str(snap)]
            else:
                # notes are kept in the checkpoint: every question after the first resumes there
                src = ["--checkpoint", str(work / f"{method}-{planted}.ckpt"), str(text)]
            for (frac, _, q, key, ref), para in zip(FACTS, PARAPHRASES, strict=True):
                q = para if a.paraphrase else q
                score = json.loads(run(a.bin, a.threads, base + ["--ask", q, "--score-answer", ref] + src))
                row = {"method": method, "memory": a.memory, "position": frac, "planted": planted,
                       "skip": a.skip, "paraphrase": a.paraphrase, "question": q,
                       "mean_logprob": score["mean_logprob"], "tokens_read": score["tokens_read"],
                       "quotes": score.get("quotes")}
                if planted:
                    ans = run(a.bin, a.threads, base + ["--ask", q, "-n", "24", "--temp", "0"] + src).strip()
                    row.update(answer=ans, recalled=key.lower() in ans.lower())
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
                with open(partial, "a") as f:
                    f.write(json.dumps(row) + "\n")
    out.write_text(json.dumps({"chars": a.chars, "skip": a.skip, "paraphrase": a.paraphrase, "rows": rows},
                              indent=1) + "\n")
    partial.unlink()
    rendered = table()
    print(rendered)
    splice(REPO / "results/README.md", "coverage", rendered, missing="skip")
    return 0


def table() -> str:
    """Every results/summarize/coverage-*.json as one Markdown table: per run and method, greedy
    recall and the answer's log-probability gain at each position. Rows measured before quotes
    existed (no `quotes` field) are marked so."""
    out = ["| transcript (tokens) | questions | memory | method | " + " | ".join(f"{int(f * 100)}%" for f, *_ in FACTS) + " | file |",
           "|---|---|---|---|" + "---|" * len(FACTS) + "---|"]
    runs = [(p, json.loads(p.read_text())) for p in sorted((REPO / "results/summarize").glob("coverage-*.json"))]
    runs = [(p, r) for p, r in runs if r.get("rows")]
    for path, measured in sorted(runs, key=lambda pr: pr[1]["rows"][0]["tokens_read"]):
        rows = measured["rows"]
        source = f"plays from char {measured.get('skip', 0):,}"
        asked = "paraphrased" if measured.get("paraphrase") else "as planted"
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            label = LABELS.get(method, method) if method != "notes" or "quotes" in mine[0] else "notes (before quotes)"
            cells = []
            for frac, *_ in FACTS:
                p = next(r for r in mine if r["position"] == frac and r["planted"])
                c = next(r for r in mine if r["position"] == frac and not r["planted"])
                cells.append(f"{'**yes**' if p['recalled'] else 'no'}, {p['mean_logprob'] - c['mean_logprob']:+.2f}")
            out.append(f"| {source} ({mine[0]['tokens_read']:,}) | {asked} | {mine[0]['memory']} | {label} | "
                       + " | ".join(cells)
                       + f" | `{path.name}` |")
    return "\n".join(out)

if __name__ == "__main__":
    sys.exit(main())

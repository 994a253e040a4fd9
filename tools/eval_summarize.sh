#!/usr/bin/env bash
# Summarization of a long transcript with planted facts (tools/make_transcript.py), per memory
# policy: the transcript is read once into a state snapshot, then each fact is asked about
# (--ask, greedy) and a summary is generated; we count the facts recovered. Writes
# results/summarize/*.json and the results/README.md table between <!-- summarize:begin/end -->.
# Usage: tools/eval_summarize.sh   (about 2 minutes per policy on 2 cores)
source "$(dirname "$0")/lib.sh"
out=results/summarize
mkdir -p "$out"
python3 tools/make_transcript.py "$out/transcript.txt" "$out/facts.json"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for spec in "sink:--memory sink" "bswa:--memory bswa" "fam-seed:--memory fam --sinks 0" "fam-reread:--memory fam --fam-feedback reread"; do
  name=${spec%%:*}; flags=${spec#*:}
  [ -s "$out/$name.json" ] && { echo "have $name"; continue; }
  $BIN summarize --method stream -m "$M" -t 2 $flags --ingest-only --save-state "$work/$name.snap" "$out/transcript.txt"
  python3 - "$BIN" "$M" "$work/$name.snap" "$out/facts.json" "$name" "$flags" > "$out/$name.json" <<'PY'
import json, subprocess, sys
bin_, model, snap, facts_path, name, flags = sys.argv[1:]
facts = json.load(open(facts_path))
def ask(q=None, n=60):
    cmd = [bin_, "summarize", "--method", "stream", "-m", model, "-t", "2", "--load-state", snap, "--temp", "0", "-n", str(n)]
    if q: cmd += ["--ask", q]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
answers = [{"question": f["question"], "answer": ask(f["question"], 40), "expect": f["expect"]} for f in facts]
for a in answers:
    a["found"] = all(e.lower() in a["answer"].lower() for e in a["expect"])
summary = ask(None, 200)
in_summary = [all(e.lower() in summary.lower() for e in f["expect"]) for f in facts]
print(json.dumps({"policy": name, "flags": flags, "answers": answers, "summary": summary,
                  "facts_in_summary": in_summary}, indent=1))
PY
done
python3 - "$out" results/README.md <<'PY'
import json, re, sys
from pathlib import Path
d, readme = Path(sys.argv[1]), Path(sys.argv[2])
facts = json.load(open(d / "facts.json"))
pos = ["early", "middle", "late"]
lines = ["Planted facts recovered from a ~39k-token transcript (`tools/eval_summarize.sh`; greedy):", "",
         "| policy | " + " | ".join(f"--ask {p} ({f['expect'][0]})" for p, f in zip(pos, facts)) + " | in the summary |",
         "|---|" + "---|" * (len(facts) + 1)]
for name in ["sink", "bswa", "fam-seed", "fam-reread"]:
    p = d / f"{name}.json"
    if not p.exists():
        continue
    r = json.load(open(p))
    cells = ["yes" if a["found"] else "no" for a in r["answers"]]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(r['facts_in_summary'])}/{len(facts)} |")
table = "\n".join(lines)
sys.path.insert(0, ".")
from tools.common import splice
splice(readme, "summarize", table, missing="append")
print(table)
PY

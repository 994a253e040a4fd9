#!/usr/bin/env bash
# Which summarize layout lets an un-tuned model use facts from early in a long input?
# A greedy 135M model answers none of the planted-fact questions (tools/eval_summarize.sh), so
# this measures something continuous instead: the log-likelihood the model gives each fact's
# reference answer after reading the transcript WITH the planted fact, minus after reading the
# same transcript WITHOUT it (tools/make_transcript.py --no-facts). A gain near 0 means the fact
# did not reach the answer; the late fact (inside the attention window) shows what "reached"
# looks like. Layouts:
#   plain  - text, then the question (the default layout)
#   focus  - the questions stated before the text too (--focus), then the text, then the question
#   notes  - plain + running notes the model writes every 1024 tokens (--notes-every 1024)
# Writes results/layouts/*.json and the results/README.md table between <!-- layouts:begin/end -->.
# ~12k-token transcript (the early and middle facts are 11k and 6k tokens before the question,
# outside the 4k-token window). About 3 minutes per policy and layout on 2 cores. Policies:
# sink, bswa, fam (the paper's rule), fam-reread (fam with the reread feedback).
#   POLICIES="sink fam-reread" LAYOUTS="plain notes" THREADS=1 tools/eval_layouts.sh
source "$(dirname "$0")/lib.sh"
out=results/layouts
mkdir -p "$out"
python3 tools/make_transcript.py "$out/with.txt" "$out/facts.json" --chars 44000
python3 tools/make_transcript.py "$out/without.txt" /dev/null --chars 44000 --no-facts
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for policy in ${POLICIES:-sink fam}; do
  for layout in ${LAYOUTS:-plain focus notes}; do
    name=$policy-$layout
    [ -s "$out/$name.json" ] && { echo "have $name"; continue; }
    case $policy in
      fam-reread) flags=(--memory fam --fam-feedback reread) ;;
      *) flags=(--memory "$policy") ;;
    esac
    flags+=(-t "${THREADS:-2}")
    case $layout in
      focus) while read -r q; do flags+=(--focus "$q"); done < <(python3 -c "import json; [print(f['question']) for f in json.load(open('$out/facts.json'))]") ;;
      notes) flags+=(--notes-every 1024) ;;
    esac
    for v in with without; do
      $BIN summarize --method stream -m "$M" "${flags[@]}" --ingest-only --save-state "$work/$name-$v.snap" "$out/$v.txt" 2>/dev/null
    done
    python3 - "$BIN" "$M" "$work/$name" "$out/facts.json" "$policy" "$layout" > "$out/$name.json.tmp" <<'PY'
import json, subprocess, sys
bin_, model, snap, facts_path, policy, layout = sys.argv[1:]
facts = json.load(open(facts_path))
def score(v, f):
    r = subprocess.run([bin_, "summarize", "--method", "stream", "-m", model, "--load-state", f"{snap}-{v}.snap", "--ask", f["question"],
                        "--score-answer", f["answer"]], capture_output=True, text=True, check=True)
    j = json.loads(r.stdout)
    return j["mean_logprob"] * j["answer_tokens"]
rows = []
for f in facts:
    w, wo = score("with", f), score("without", f)
    rows.append({"position": f["position"], "answer": f["answer"], "logprob_with": w, "logprob_without": wo, "gain": w - wo})
print(json.dumps({"policy": policy, "layout": layout, "facts": rows}, indent=1))
PY
    mv "$out/$name.json.tmp" "$out/$name.json"
  done
done
python3 - "$out" results/README.md <<'PY'
import json, re, sys
from pathlib import Path
d, readme = Path(sys.argv[1]), Path(sys.argv[2])
rows = [json.loads(p.read_text()) for p in sorted(d.glob("*.json")) if p.name != "facts.json"]
lines = ["Answer log-likelihood gain (nats, whole answer) from the planted fact being in a ~12k-token transcript "
         "(`tools/eval_layouts.sh`; higher = the fact reached the answer):", "",
         "| policy | layout | early (5%) | middle (50%) | late (95%, in the window) |", "|---|---|---|---|---|"]
for r in rows:
    g = {f["position"]: f["gain"] for f in r["facts"]}
    lines.append(f"| {r['policy']} | {r['layout']} | " + " | ".join(f"{g[p]:+.2f}" for p in sorted(g)) + " |")
table = "\n".join(lines)
sys.path.insert(0, ".")
from tools.common import splice
splice(readme, "layouts", table, missing="append")
print(table)
PY

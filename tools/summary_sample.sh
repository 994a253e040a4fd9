#!/usr/bin/env bash
# Side by side (issue 19): the summary of one long transcript from the old design (`--method
# stream`: the whole text through one `sink` stream, then the request) and the new one (the
# default, `--method notes`), with the default model, greedy, 2 threads. The transcript is
# tools/make_transcript.py's (Shakespeare speaker turns, three planted facts at 5%, 50% and 95%).
# Writes results/summarize/sample-{stream,notes}.txt (the summary, then famstream's stderr
# statistics) and the results/README.md block between <!-- summary-sample:begin/end -->.
# Usage: tools/summary_sample.sh [CHARS]   (default 36000 characters, ~10k tokens: ~10 minutes)
source "$(dirname "$0")/lib.sh"
chars=${1:-36000}
out=results/summarize
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 tools/make_transcript.py "$work/t.txt" "$work/facts.json" --chars "$chars"
for method in stream notes; do
  "$BIN" summarize -m "$M" -t 2 --temp 0 -n 200 --method "$method" "$work/t.txt" \
    > "$work/$method.out" 2> "$work/$method.err"
  { cat "$work/$method.out"; echo; echo "---"; grep -v '^\s*$' "$work/$method.err" | tail -3; } > "$out/sample-$method.txt"
done
python3 - "$work/facts.json" "$out" "$chars" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, ".")
from tools.common import splice
facts, out, chars = json.load(open(sys.argv[1])), Path(sys.argv[2]), sys.argv[3]
lines = [f"`tools/summary_sample.sh {chars}`: one transcript ({chars} characters of speaker turns, "
         "facts planted at 5%, 50% and 95%: " + ", ".join(f["expect"][0] for f in facts) + "), "
         "summarized by each design with the default model (`sink`, greedy, 200 tokens at most).", ""]
for method, what in [("stream", "old: `--method stream`"), ("notes", "new: `--method notes` (the default)")]:
    body, _, stats = (out / f"sample-{method}.txt").read_text().rpartition("\n---\n")
    found = [f["expect"][0] for f in facts if all(e.lower() in body.lower() for e in f["expect"])]
    lines += [f"**{what}** (planted facts in the summary: {', '.join(found) or 'none'}):", "", "```text",
              body.strip(), "```", "", "```text", stats.strip(), "```", ""]
splice("results/README.md", "summary-sample", "\n".join(lines).rstrip())
print("\n".join(lines))
PY

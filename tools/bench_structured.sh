#!/usr/bin/env bash
# Decode speed with and without constrained decoding (--json-schema), on the default model,
# alternated in one run (results/speed/structured.txt): a schema with one long string, so both
# runs decode about the same number of tokens. Run on a quiet machine.
#   tools/bench_structured.sh [REPS]
source "$(dirname "$0")/lib.sh"
reps=${1:-5}
schema=$(mktemp --suffix .json)
trap 'rm -f "$schema"' EXIT
echo '{"type":"object","properties":{"story":{"type":"string","minLength":300,"maxLength":2000}},"required":["story"],"additionalProperties":false}' > "$schema"
tg() {  # decode tokens/s from run's stderr line
  "$BIN" run -m "$M" -t 2 --chat -p "Tell me a long story about a lighthouse." -n 128 --temp 0.8 --seed "$1" "${@:2}" 2>&1 >/dev/null |
    sed -n 's/.*generated: \([0-9]*\) tokens, \([0-9.]*\) tok\/s.*/\1 \2/p'
}
for r in $(seq 1 "$reps"); do
  if [ $((r % 2)) = 1 ]; then
    echo "free $(tg "$r")"; echo "json $(tg "$r" --json-schema "$schema")"
  else
    echo "json $(tg "$r" --json-schema "$schema")"; echo "free $(tg "$r")"
  fi
done | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if len(l.split()) == 3]
for kind in ("free", "json"):
    v = [float(r[2]) for r in rows if r[0] == kind]
    n = [int(r[1]) for r in rows if r[0] == kind]
    print(f"{kind}: median {statistics.median(v):.1f} tok/s over {len(v)} runs (tokens {min(n)}-{max(n)})")
f = statistics.median(float(r[2]) for r in rows if r[0] == "free")
j = statistics.median(float(r[2]) for r in rows if r[0] == "json")
print(f"constrained / free: {j / f:.3f}")
'

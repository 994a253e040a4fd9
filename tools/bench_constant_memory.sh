#!/usr/bin/env bash
# Constant memory and constant speed along a long stream, on the real model: stream ~520k tokens
# of the Shakespeare plays through fam, sink and bswa (B=1024, M=3) with streaming perplexity,
# and compare peak RSS after ~20k tokens with peak RSS at the end, and tokens/s of the segment
# at ~10k with the segment at ~500k. Prints one line per policy and writes results/memory/*.json.
# Takes about an hour per policy on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
M=$(tools/fetch_model.sh)
cargo build --release --quiet
mkdir -p results/memory
for p in ${POLICIES:-fam sink bswa}; do
  f=results/memory/$p.json
  [ -s "$f" ] || target/release/famstream perplexity -m "$M" -f ../shared/data/shakespeare_37_plays.txt \
      --memory $p --max-tokens 520000 --segment 10000 --json > "$f.tmp" && mv "$f.tmp" "$f"
  python3 - "$f" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
seg = r["segments"]
near = lambda pos: min(seg, key=lambda s: abs(s["start"] - pos))
a, b = near(20000), seg[-1]
t0, t1 = near(10000), near(500000)
print(f'{r["memory"]}: peak RSS after {a["start"]+a["tokens"]} tokens {a["peak_rss_bytes"]/2**20:.1f} MiB, '
      f'after {b["start"]+b["tokens"]} tokens {b["peak_rss_bytes"]/2**20:.1f} MiB (ratio {b["peak_rss_bytes"]/a["peak_rss_bytes"]:.4f}); '
      f'tok/s at {t0["start"]} {t0["tokens_per_second"]:.1f}, at {t1["start"]} {t1["tokens_per_second"]:.1f} '
      f'(ratio {t1["tokens_per_second"]/t0["tokens_per_second"]:.3f})')
PY
done

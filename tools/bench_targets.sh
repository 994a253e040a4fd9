#!/usr/bin/env bash
# The speed and memory targets of issue #7, side by side with llama.cpp, in one run on an
# otherwise idle machine (results/speed/*.txt|json; README "Speed" quotes them):
#  1. pp512 / tg128, q8_0 and q4_0, 1 and 2 threads, famstream full attention vs llama.cpp;
#     decode at stream position 32768: famstream fam and sink vs llama.cpp full attention there
#     (cargo bench --bench vs_llama).
#  2. decode time per token at position 10k vs 1M, fam and sink (famstream bench --at-position).
#  3. peak RSS: famstream at position 1M (sink, Q4_1) vs llama.cpp with an 8k context filled
#     with 8k tokens (each its own process).
source "$(dirname "$0")/lib.sh"
out=results/speed
mkdir -p "$out"
cargo bench --bench vs_llama -- --at 32768 | tee "$out/vs_llama.txt"
Q8=$(dirname "$M")/SmolLM2-135M-Instruct.q8_0.gguf
for p in fam sink; do
  for at in 10000 1000000; do
    $BIN bench -m "$Q8" -t 2 -p 16 -n 128 --repetitions 3 --memory $p --at-position $at --json > "$out/tg-$p-$at.json"
  done
done
$BIN bench -m "$M" -t 2 -p 512 -n 128 --memory sink --at-position 1000000 --json > "$out/rss-famstream-1M.json"
cargo bench --bench vs_llama -- --llama-rss 8192 > "$out/rss-llama-8k.json"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
print("| policy | tg t/s at 10k | tg t/s at 1M | ratio 1M/10k |\n|---|---|---|---|")
for p in ["fam", "sink"]:
    a = json.loads((d / f"tg-{p}-10000.json").read_text())["tg_tokens_per_s"]
    b = json.loads((d / f"tg-{p}-1000000.json").read_text())["tg_tokens_per_s"]
    print(f"| {p} | {a:.1f} | {b:.1f} | {b/a:.3f} |")
f = json.loads((d / "rss-famstream-1M.json").read_text())["peak_rss_bytes"]
l = json.loads((d / "rss-llama-8k.json").read_text())["peak_rss_bytes"]
print(f"\npeak RSS: famstream sink at position 1M {f/2**20:.0f} MiB, llama.cpp at 8k context {l/2**20:.0f} MiB (ratio {f/l:.2f})")
PY

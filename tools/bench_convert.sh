#!/usr/bin/env bash
# Conversion benchmark: time and peak RSS of `famstream convert` for the real SmolLM2-135M, per
# output type, from an HF checkpoint made by tools/make_hf_smollm2.py (bf16 safetensors).
# Usage: tools/bench_convert.sh [HF_DIR]   (default: $CACHE/smollm2-hf, made if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${FAMSTREAM_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/famstream/models}"
hf=${1:-$cache/smollm2-hf}
[ -f "$hf/config.json" ] || python3 tools/make_hf_smollm2.py "$hf" >&2
cargo build --release --quiet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '| type | seconds | peak RSS MiB | output MiB | bits/weight | fallbacks |\n|---|---|---|---|---|---|\n'
for t in f16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k q4_k_m; do
  /usr/bin/time -f '%e %M' -o "$out/time" target/release/famstream convert "$hf" -o "$out/m.gguf" --type $t > "$out/log" 2>/dev/null
  read -r secs kb < "$out/time"
  bpw=$(grep -o '[0-9.]* bits/weight' "$out/log" | cut -d' ' -f1)
  fb=$(grep -o '[0-9]* fallbacks' "$out/log" | cut -d' ' -f1)
  printf '| %s | %s | %d | %d | %s | %s |\n' $t "$secs" $((kb / 1024)) $(($(stat -c %s "$out/m.gguf") / 1048576)) "$bpw" "$fb"
done

#!/usr/bin/env bash
# Measure every memory policy on the real model: streaming perplexity per 8k-token segment of
# Moby-Dick (with the KL divergence from full attention over the first 8k positions), and
# passkey retrieval at several filler lengths. Writes JSON to results/ and regenerates the
# README table with tools/results_table.py.
#
# Usage: tools/eval_policies.sh [quick|full]
#   full  : 204,800 tokens of perplexity, passkey at 2k/8k/32k/128k (hours on 2 cores)
#   quick : 32,768 tokens, passkey at 2k/8k (1 trial each)
scale=${1:-quick}
source "$(dirname "$0")/lib.sh"
TEXT=../shared/data/moby_dick.txt
T=${THREADS:-2}
out=results/$scale
mkdir -p "$out"
if [ "$scale" = full ]; then
  PPL_TOKENS=204800; FILLERS=(2000 8000 32000 128000); TRIALS=(3 3 2 1)
else
  PPL_TOKENS=32768; FILLERS=(2000 8000); TRIALS=(1 1)
fi
# name:flags. The paper's FAM (within-layer feedback) is run without sinks, as specified.
policies=(
  "bswa:--memory bswa"
  "sink:--memory sink"
  "fam-seed:--memory fam --sinks 0 --fam-init seed"
  "fam-bos:--memory fam --sinks 0 --fam-init bos"
  "fam-tail:--memory fam --sinks 0 --fam-init tail"
  "fam-reread:--memory fam --sinks 0 --fam-feedback reread"
)
if [ "$scale" = full ]; then
  policies+=("fam-seed-zero:--memory fam --sinks 0 --fam-init seed --fam-zero-first-residual true" "fam-reread-sinks:--memory fam --fam-feedback reread")
fi
name() { echo "${1%%:*}"; }
flags() { echo "${1#*:}"; }

run() { # file, command...
  local f=$1; shift
  if [ -s "$f" ]; then echo "have $f"; return; fi
  echo "+ $*" >&2
  "$@" > "$f.tmp" && mv "$f.tmp" "$f"
}

# Full attention: up to its context limit.
run "$out/ppl-full.json" $BIN perplexity -m "$M" -f $TEXT -t $T --memory full --max-tokens 8192 --segment 8192 --json
for p in "${policies[@]}"; do
  run "$out/ppl-$(name "$p").json" $BIN perplexity -m "$M" -f $TEXT -t $T $(flags "$p") --max-tokens $PPL_TOKENS --segment 8192 --kl-vs-full 8192 --json
done
for i in "${!FILLERS[@]}"; do
  n=${FILLERS[$i]}; tr=${TRIALS[$i]}
  if [ "$n" -le 8000 ]; then
    run "$out/passkey-full-$n.json" $BIN passkey -m "$M" -t $T --memory full --filler-tokens $n --trials $tr --json
  fi
  for p in "${policies[@]}"; do
    run "$out/passkey-$(name "$p")-$n.json" $BIN passkey -m "$M" -t $T $(flags "$p") --filler-tokens $n --trials $tr --json
  done
done
python3 tools/results_table.py "$out" README.md

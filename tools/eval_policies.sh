#!/usr/bin/env bash
# Measure every memory policy on the real model: streaming perplexity per 8k-token segment of
# Moby-Dick (with the KL divergence from full attention over the first 8k positions), and
# passkey retrieval at several filler lengths. Writes JSON to results/ and regenerates the
# results/README.md table with tools/results_table.py.
#
# Usage: [JOBS=2] [THREADS=N] tools/eval_policies.sh [quick|full]
#   full  : 204,800 tokens of perplexity, passkey at 2k/8k/32k/128k (~6 hours on 2 cores)
#   quick : 32,768 tokens, passkey at 2k/8k (1 trial each)
# JOBS=2 runs two measurements at a time, one compute thread each (THREADS defaults to 1 then,
# else 2): on 2 cores that is more tokens/s in all than one job on two threads. Every result is
# its own JSON file, and a file that exists is not measured again; the perplexity runs also
# checkpoint their stream every 64k tokens (target/checkpoints/), so running the script again
# after it was stopped continues where it was. Two runs of the script at once share the work:
# each task is locked while it is measured. DRY=1 lists what is left to measure.
scale=${1:-quick}
source "$(dirname "$0")/lib.sh"
TEXT=../shared/data/moby_dick.txt
JOBS=${JOBS:-1}
if [ "$JOBS" -gt 1 ]; then T=${THREADS:-1}; else T=${THREADS:-2}; fi
out=results/$scale
mkdir -p "$out" target/checkpoints
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
  policies+=("fam-reread-sinks:--memory fam --fam-feedback reread")
fi
name() { echo "${1%%:*}"; }
flags() { echo "${1#*:}"; }

# The measurements, perplexity first, then passkey from the shortest filler (so the full-attention
# ceiling and the fillers inside the window come before the hours at 128k): "output
# file<TAB>checkpoint or -<TAB>command" each (the command quoted for eval).
tasks=()
task() { local f=$1 ck=$2; shift 2; tasks+=("$f"$'\t'"$ck"$'\t'"$(printf '%q ' "$@")"); }
# Full attention: up to its context limit.
task "$out/ppl-full.json" - $BIN perplexity -m "$M" -f $TEXT -t $T --memory full --max-tokens 8192 --segment 8192 --json
for p in "${policies[@]}"; do
  ck=target/checkpoints/$scale-ppl-$(name "$p").snap
  task "$out/ppl-$(name "$p").json" $ck $BIN perplexity -m "$M" -f $TEXT -t $T $(flags "$p") \
    --max-tokens $PPL_TOKENS --segment 8192 --kl-vs-full 8192 --checkpoint $ck --json
done
for i in "${!FILLERS[@]}"; do
  n=${FILLERS[$i]}; tr=${TRIALS[$i]}
  if [ "$n" -le 8000 ]; then
    task "$out/passkey-full-$n.json" - $BIN passkey -m "$M" -t $T --memory full --filler-tokens $n --trials $tr --json
  fi
  for p in "${policies[@]}"; do
    task "$out/passkey-$(name "$p")-$n.json" - $BIN passkey -m "$M" -t $T $(flags "$p") --filler-tokens $n --trials $tr --json
  done
done

# DRY=1: list what would be measured (those not measured yet), measure nothing (the binary is
# still built and the model fetched, by lib.sh).
if [ "${DRY:-0}" = 1 ]; then
  for t in "${tasks[@]}"; do [ -s "${t%%$'\t'*}" ] || echo "${t##*$'\t'}"; done
  exit 0
fi
run_task() { # "file<TAB>checkpoint<TAB>command"
  local f=${1%%$'\t'*} cmd=${1##*$'\t'} ck=${1#*$'\t'}
  ck=${ck%%$'\t'*}
  if [ -s "$f" ]; then echo "have $f"; return 0; fi
  # A task is measured by one queue at a time: if another run of this script holds its lock,
  # it is skipped here (fd 9 stays open, so the lock is held, until this task's shell exits).
  exec 9> "target/checkpoints/${f//\//_}.lock"
  flock -n 9 || { echo "running in another queue: $f"; return 0; }
  echo "+ $cmd" >&2
  # A finished run's checkpoint goes: measuring again (after deleting the result) starts over.
  eval "nice -n 10 $cmd" > "$f.tmp" && mv "$f.tmp" "$f" && { [ "$ck" = - ] || rm -f "$ck"; }
}
export -f run_task
status=0
printf '%s\0' "${tasks[@]}" | xargs -0 -n 1 -P "$JOBS" bash -c 'run_task "$1"' _ || status=$?
python3 tools/results_table.py "$out" results/README.md
exit $status

#!/usr/bin/env bash
# Constant memory and constant speed along a long stream, on the real model. Streams
# Moby-Dick followed by the Shakespeare plays (~290k + ~1.1M tokens) through each policy
# (defaults: B=1024, M=3, F=64, S=4) with streaming perplexity per 8192-token segment, on ONE
# compute thread, and compares
#   - peak RSS after ~20k tokens with peak RSS at the end (goal: within 2%),
#   - time per token of the segment at ~10k with the segment at ~500k (goal: within 10%), both as
#     process CPU time per token (not stretched by other processes on the machine; one thread
#     means no spin-waiting) and as wall time (only meaningful on an otherwise idle machine).
# The per-segment perplexities over the Moby-Dick part are the long rows of the results table
# (tools/results_table.py reads results/memory/*.json too).
# About 2 hours per policy for 520k tokens on one core of this machine (~70 tok/s at a full window).
# Each segment is also appended to results/memory/<policy>.segments.jsonl as soon as it is done,
# so a stopped run still leaves its measurements, and the state is checkpointed every 64k
# tokens (target/checkpoints/), so running the script again resumes a stopped run.
# `fam-reread` is fam with the training-free reread feedback (the paper's rule diverges on an
# un-tuned model; see the README).
#   POLICIES="fam-reread sink bswa" TOKENS=520000 tools/bench_constant_memory.sh
# STREAM=1: pure ingestion instead (`perplexity --no-scores`: no per-token logits, as summarize
# and chat read their input), THREADS=2 and TOKENS=1000001 by default, into results/stream/: the
# "peak RSS for 1M streamed tokens" of the speed targets (~2 hours per policy at 2 threads).
source "$(dirname "$0")/lib.sh"
text=target/moby_then_shakespeare.txt
[ -s $text ] || cat ../shared/data/moby_dick.txt ../shared/data/shakespeare_37_plays.txt > $text
if [ "${STREAM:-0}" = 1 ]; then
  dir=results/stream extra=--no-scores threads=${THREADS:-2} tokens=${TOKENS:-1000001}
else
  dir=results/memory extra= threads=${THREADS:-1} tokens=${TOKENS:-520000}
fi
mkdir -p $dir
for p in ${POLICIES:-fam-reread sink bswa}; do
  case $p in
    fam-reread) args="--memory fam --fam-feedback reread" ;;
    *) args="--memory $p" ;;
  esac
  f=$dir/$p.json
  # A stopped run resumes from its checkpoint (every 64k tokens) when started again; its
  # segment log keeps growing (the segments after the checkpoint are logged again), and the
  # final JSON covers the whole run (checkpoints hold the run so far).
  ck=target/checkpoints/$(basename $dir)-$p.snap
  mkdir -p target/checkpoints
  if [ ! -s "$f" ]; then
    [ -e "$ck" ] || rm -f "$dir/$p.segments.jsonl"
    nice -n 10 $BIN perplexity -m "$M" -t $threads -f $text $args $extra \
      --max-tokens $tokens --segment 8192 --segment-log "$dir/$p.segments.jsonl" \
      --checkpoint "$ck" --json > "$f.tmp" && mv "$f.tmp" "$f" && rm -f "$ck"
  fi
  python3 tools/longrun.py "$f"
done

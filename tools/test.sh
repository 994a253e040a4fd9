#!/usr/bin/env bash
# The README's test command: get what the tests need (tools/setup.sh --tests), then run every
# test that a CPU machine runs: the Rust suite, the FAM trainer's smoke test and the benches'
# build. CI (.ci/run) runs exactly this. Each step prints how long it took (stderr), so a slow
# step shows in CI's log. The Vulkan backend's test is tools/test_vulkan.sh: a second ggml build
# and a software Vulkan device (lavapipe) that decodes ~2 tokens/s: CI timed out in it, and here
# its first FAM test alone ran over 20 minutes; it does not fit in CI's 90 minutes with the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
step() {
  local t0=$SECONDS
  "$@"
  echo "test.sh: '$*' took $((SECONDS - t0)) s" >&2
}
step tools/setup.sh --tests
step cargo test --release
# the trainer on the tiny checkpoint: steps, resume, export, the goldens regenerate as committed
step python3 -W ignore tools/fam_train.py smoke
# the benches are not built by `cargo test`; compile them so they cannot rot unnoticed
step cargo bench --no-run

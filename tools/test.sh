#!/usr/bin/env bash
# The README's test command: get what the tests need (tools/setup.sh --tests), then run every
# test: the Rust suite, the FAM trainer's smoke test, the benches' build, and the Vulkan backend
# against the CPU and llama.cpp on Mesa's software device. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --tests
cargo test --release
# the trainer on the tiny checkpoint: steps, resume, export, the goldens regenerate as committed
python3 -W ignore tools/fam_train.py smoke
# the benches are not built by `cargo test`; compile them so they cannot rot unnoticed
cargo bench --no-run
# a second build of ggml, with Vulkan (Debian 12's headers are too old for it; tools/vulkan_sdk.sh
# unpacks Debian 13's header packages under target/)
VULKAN_SDK=$(tools/vulkan_sdk.sh) cargo test --release --features vulkan --test backend_vulkan

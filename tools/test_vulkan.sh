#!/usr/bin/env bash
# The Vulkan backend against the CPU backend and llama.cpp-on-Vulkan, on the real model
# (tests/backend_vulkan.rs): Debian's Vulkan packages (tools/setup.sh --vulkan), a second build
# of ggml with Vulkan (Debian 12's headers are too old for it; tools/vulkan_sdk.sh unpacks Debian
# 13's header packages under target/), and the tests on the first Vulkan device, which on a
# machine without a GPU is Mesa's software device (lavapipe): slow (~2 tokens/s decode; on 2
# cores the build takes ~8 min and the tests over 20 min), so it is not part of tools/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --vulkan
VULKAN_SDK=$(tools/vulkan_sdk.sh) cargo test --release --features vulkan --test backend_vulkan

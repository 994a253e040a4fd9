#!/usr/bin/env bash
# Cross-build famstream for aarch64 Linux (Raspberry Pi 4/5, Graviton, ...) on a Debian x86_64
# machine and run tests under qemu-user.
#
# Needs: gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static (Debian packages) and the
# Rust standard library for the target (`rustup target add aarch64-unknown-linux-gnu`).
# ggml's CPU backend is compiled for ARMv8 with NEON; GGML_CPU_ARM_ARCH picks a newer baseline
# (e.g. armv8.2-a+dotprod+fp16 for a Pi 5; qemu emulates those instructions too).
#   tools/cross_aarch64.sh build                # target/aarch64-unknown-linux-gnu/release/famstream
#   tools/cross_aarch64.sh test [cargo test args]   # e.g. --test ggml_smoke --test vs_llama_cpp
set -euo pipefail
cd "$(dirname "$0")/.."
T=aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
# Replaces .cargo/config.toml's `target-cpu=native` (the build machine's CPU) for this target;
# NEON is part of the aarch64 baseline.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+neon"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# bindgen parses ggml's headers for the target.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu -I/usr/aarch64-linux-gnu/include"
cmd=${1:-build}
shift || true
case $cmd in
  build) cargo build --release --target $T "$@" ;;
  test) cargo test --release --target $T "$@" ;;
  *) echo "usage: $0 build|test [cargo args]" >&2; exit 2 ;;
esac

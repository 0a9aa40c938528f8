#!/usr/bin/env bash
# Installs what building and testing gatematch needs on a Debian machine, skipping what is
# already there. Safe to run again.
set -euo pipefail

# mesa-vulkan-drivers brings lavapipe, a software Vulkan driver, so that the GPU tests run on
# machines without a GPU; libvulkan1 is the loader wgpu opens at run time.
packages=(libhdf5-dev pkg-config mesa-vulkan-drivers libvulkan1)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install a Rust toolchain (1.92 or newer) first" >&2
  exit 1
fi

# The face models (MODEL.md): npm pack of @vladmandic/face-api, SHA-256 checked, into models/.
# Does nothing when they are already there and verified.
if ! command -v npm >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing npm (the face models come from the npm registry)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm
fi
"$(dirname "$0")/fetch-model.sh"

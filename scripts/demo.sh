#!/usr/bin/env bash
# Sets up, builds and runs the demo: an appliance on a fresh embedded registry, simulated gates
# that enrol travellers and then verify and identify them, and a report of what happened.
# Extra arguments go to `gatematch demo` (see `gatematch demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
# The GPU probe opens Vulkan; Mesa complains on every open without a private runtime folder.
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "$XDG_RUNTIME_DIR" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  chmod 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
  trap 'rm -rf "$XDG_RUNTIME_DIR"' EXIT
fi
# The face model file (descriptor network, detector, landmarks), converted from the weights
# setup fetched; made again each time, so that an older file without the detector is replaced.
target/release/gatematch model import --out models/face.h5
target/release/gatematch demo --face-model models/face.h5 "$@"

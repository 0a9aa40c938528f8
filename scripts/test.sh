#!/usr/bin/env bash
# Sets up and runs every test: unit, integration (QUIC on loopback, crash recovery with the
# real binary, snapshots), the CPU engine against its reference, and the GPU engine against
# the CPU on lavapipe (or a real GPU). GPU tests fail rather than skip here when no adapter
# opens; set GATEMATCH_REQUIRE_GPU=0 to let them skip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export GATEMATCH_REQUIRE_GPU="${GATEMATCH_REQUIRE_GPU:-1}"
# Mesa warns on every device it opens unless XDG_RUNTIME_DIR is a private folder.
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "$XDG_RUNTIME_DIR" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  chmod 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
  trap 'rm -rf "$XDG_RUNTIME_DIR"' EXIT
fi
log="$(mktemp)"
cargo test --release --locked 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
rm -f "$log"

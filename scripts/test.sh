#!/usr/bin/env bash
# Sets up and runs every test: unit, integration (QUIC on loopback, crash recovery with the
# real binary, snapshots) and the CPU engine against its reference.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --release --locked

#!/usr/bin/env bash
# Sets up, builds and runs the demo: an appliance on a fresh embedded registry, simulated gates
# that enrol travellers and then verify and identify them, and a report of what happened.
# Extra arguments go to `gatematch demo` (see `gatematch demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
exec target/release/gatematch demo "$@"

#!/usr/bin/env bash
# Throughput of 1:N scoring on the GPU: builds the release binary, then prints one line per
# (gallery size, format, batch) with the adapter, comparisons/s and gallery GB/s; then the face
# descriptor network's faces/s on the GPU at batches 1, 16 and 64, beside the CPU network's on
# every core, and the face detector and landmark network's ms per frame on both (needs
# models/face.h5: scripts/fetch-model.sh, then gatematch model import).
#
#   benches/gpu.sh                  1,000,000 and 10,000,000 templates of 128 values
#   benches/gpu.sh 100000           other gallery sizes (lavapipe: keep them small)
#   SECONDS_PER_RUN=1 benches/gpu.sh
#   SKIP_EMBED=1 benches/gpu.sh     scoring only
#   EMBED_SECONDS=5 benches/gpu.sh  timed seconds per embed or detect line (default 10)
#
# gallery_gb_per_s counts one pass over the gallery per call, in the scan format, so at batch
# 1 it is the memory bandwidth the scan reached: compare it with the card's (an H200 has
# about 4800 GB/s, an H100 SXM 3350, an L4 300). Times are whole calls: probe upload, scan,
# merge, read-back and host re-score. The 10M gallery takes about 10 GiB of host memory and
# 5 GiB of device memory in f32; building it takes most of a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 10000000)
seconds="${SECONDS_PER_RUN:-3}"
embed_seconds="${EMBED_SECONDS:-10}"

if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  chmod 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
  trap 'rm -rf "$XDG_RUNTIME_DIR"' EXIT
fi
cargo build --release --locked --bin gatematch
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader || true
fi
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
for n in "${sizes[@]}"; do
  target/release/gatematch bench score --backend gpu --format f32,f16,int8 \
    --gallery "$n" --dim 128 --batch 1,64,1024 --k 10 --seconds "$seconds"
done

if [ -z "${SKIP_EMBED:-}" ]; then
  # Embed times are whole calls: upload of the crops, the 35 dispatches, read-back.
  if [ ! -f models/face.h5 ]; then
    target/release/gatematch model import
  fi
  target/release/gatematch bench embed --backend gpu --batch 1,16,64 --seconds "$embed_seconds"
  target/release/gatematch bench embed --backend cpu --batch 1,16,64 --seconds "$embed_seconds"
  # One frame a pass (tests/fixtures/face/obama2.jpg, 1200 x 626): the latency a gate sees.
  target/release/gatematch bench detect --backend gpu --seconds "$embed_seconds"
  target/release/gatematch bench detect --backend cpu --seconds "$embed_seconds"
fi

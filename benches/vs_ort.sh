#!/usr/bin/env bash
# gatematch's CPU face network beside ONNX Runtime on the same network and weights, same batch,
# same thread count, one run.
#
#   benches/vs_ort.sh [THREADS] [SECONDS] [BATCHES]
#
# Needs the peer environment of ../shared/bench/README.md (a venv with numpy, onnx and
# onnxruntime): set PEERS_PYTHON to its python (default ~/.venvs/peers/bin/python). Builds the
# peer's ONNX model from the fetched package once, into target/frnet.onnx.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
seconds=${2:-10}
batches=${3:-1 16}
python=${PEERS_PYTHON:-$HOME/.venvs/peers/bin/python}
peers=${PEERS_DIR:-../shared/bench}
manifest=models/face-api-1.7.15/face_recognition_model-weights_manifest.json
cargo build --release --locked -q
[ -f models/face.h5 ] || target/release/gatematch model import
[ -f target/frnet.onnx ] || "$python" "$peers/face_onnx_peer_build.py" --manifest "$manifest" \
  --out target/frnet.onnx
for batch in $batches; do
  ours=$(target/release/gatematch bench embed --backend cpu --batch "$batch" --seconds "$seconds" \
    --threads "$threads")
  # Both take the median of five timed runs; ours splits SECONDS among them, the peer's takes
  # SECONDS for each unless told less.
  theirs=$("$python" "$peers/ort_peer.py" --model target/frnet.onnx --batch "$batch" \
    --seconds "$(awk -v s="$seconds" 'BEGIN { print s / 5 }')" --threads "$threads" --runs 5)
  echo "$ours"
  echo "$theirs"
  a=$(echo "$ours" | grep -o 'faces_per_s=[^ ]*' | cut -d= -f2)
  b=$(echo "$theirs" | grep -o 'faces_per_s=[^ ]*' | cut -d= -f2)
  awk -v a="$a" -v b="$b" -v n="$batch" \
    'BEGIN { printf "ratio batch=%d gatematch/ort=%.2f\n", n, a / b }'
done

#!/usr/bin/env bash
# gatematch's CPU scan beside FAISS's exact index, same shapes, same thread count, one run.
#
#   benches/vs_faiss.sh [THREADS] [SECONDS]
#
# Needs the peer environment of ../shared/bench/README.md (a venv with numpy and faiss-cpu):
# set PEERS_PYTHON to its python (default ~/.venvs/peers/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
seconds=${2:-5}
python=${PEERS_PYTHON:-$HOME/.venvs/peers/bin/python}
peer=${FAISS_PEER:-../shared/bench/faiss_peer.py}
cargo build --release --locked -q
for dim in 128 512; do
  for batch in 1 64; do
    ours=$(target/release/gatematch bench score --gallery 1000000 --dim $dim --batch $batch --k 10 \
      --seconds "$seconds" --threads "$threads")
    theirs=$(OMP_NUM_THREADS=$threads "$python" "$peer" --n 1000000 --dim $dim --batch $batch --k 10 \
      --threads "$threads" --seconds "$seconds")
    echo "$ours"
    echo "$theirs"
    a=$(echo "$ours" | grep -o 'comparisons_per_s=[^ ]*' | cut -d= -f2)
    b=$(echo "$theirs" | grep -o 'comparisons_per_s=[^ ]*' | cut -d= -f2)
    awk -v a="$a" -v b="$b" -v d=$dim -v n=$batch \
      'BEGIN { printf "ratio dim=%d batch=%d gatematch/faiss=%.2f\n", d, n, a / b }'
  done
done

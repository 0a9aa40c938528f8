#!/usr/bin/env bash
# Loopback capacity: the highest verify rate at which p99 stays under a bound, with a large
# gallery in the registry. Everything runs on this machine (appliance and simulated gates share
# its cores, as they would not in a rack: the figure is a floor).
#
#   benches/capacity.sh [PERSONS] [GATES] [SECONDS] [RATE...]
#
# Prints one line per offered rate and the verdict for the p99 bound (P99_BOUND_MS, default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
persons=${1:-1000000}
gates=${2:-16}
seconds=${3:-10}
shift $(( $# > 3 ? 3 : $# ))
rates=("${@:-500 1000 2000 4000 8000}")
read -r -a rates <<<"${rates[*]}"
bound=${P99_BOUND_MS:-20}

cargo build --release --locked -q
bin=target/release/gatematch
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
# Mesa (probed by backend = "auto") wants a private runtime folder.
mkdir -m 700 "$work/xdg"
export XDG_RUNTIME_DIR="$work/xdg"

$bin certs --out "$work/certs" --gates "$gates" >/dev/null
$bin gallery synth "$work/gallery.h5" --persons "$persons" >/dev/null
t0=$(date +%s%N)
$bin gallery import "$work/gallery.h5" --registry "$work/registry.db" >/dev/null
echo "imported $persons persons in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
sed -e "s#\.\./certs#$work/certs#g" -e "s#\.\./gatematch.db#$work/registry.db#" \
    -e 's#^enabled = true#enabled = false#' deploy/gatematch.toml >"$work/gatematch.toml"
port=$((20000 + RANDOM % 20000))
RUST_LOG=warn $bin serve --config "$work/gatematch.toml" --listen "127.0.0.1:$port" &
server=$!
# Wait until the gallery is loaded and the endpoint answers.
for _ in $(seq 1 120); do
  if $bin gate --server "127.0.0.1:$port" --certs "$work/certs" --gates 1 --rate 5 --duration 0.5 \
      --mix 0:1:0 --enrolled "$persons" >/dev/null 2>&1; then break; fi
  sleep 1
done

best=0
for rate in "${rates[@]}"; do
  report=$($bin gate --server "127.0.0.1:$port" --certs "$work/certs" --gates "$gates" \
    --rate "$rate" --duration "$seconds" --mix 0:1:0 --enrolled "$persons" 2>/dev/null)
  line=$(echo "$report" | awk '$1 == "verify"')
  p99=$(echo "$line" | awk '{print $7}')
  answered=$(echo "$report" | head -1 | grep -o 'answered [0-9.]*/s')
  echo "offered=$rate/s $answered verify: $line"
  if awk -v p="$p99" -v b="$bound" 'BEGIN { exit !(p < b) }'; then best=$rate; fi
done
echo "capacity persons=$persons gates=$gates highest_rate_with_p99_under_${bound}ms=$best"

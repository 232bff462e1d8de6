#!/usr/bin/env bash
# Cold starts: the time from a call to a function at zero replicas to its answer (the gateway
# starts a replica, waits until it is ready, then proxies), N times (default 20), for the echo
# example behind `fgateway up` with the local provider. Prints each time and the p50 and p90,
# beside a warm call's time from the same run.
#
#   bash benches/cold_start.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
source benches/common.sh
cargo build --release --quiet --bin fwatchdog --bin fgateway

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(free_port)
cat >"$work/stack.yml" <<YAML
functions:
  echo:
    handler: $PWD/examples/echo
    fprocess: sh handler.sh
YAML
RUST_LOG=warn ./target/release/fgateway up -f "$work/stack.yml" --port "$port" \
  --data-dir "$work/gw" --autoscale false 2>"$work/gw.log" &
pids+=($!)
gw="http://127.0.0.1:$port"
wait_for "$gw/function/echo"

scale() {
  curl -fs -o /dev/null -d "{\"serviceName\":\"echo\",\"replicas\":$1}" "$gw/system/scale-function/echo"
}
available() {
  curl -fs "$gw/system/function/echo" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("availableReplicas", 0))'
}

warm=$(curl -fs -o /dev/null -w '%{time_total}' -d hi "$gw/function/echo")
times=()
for i in $(seq 1 "$n"); do
  scale 0
  while [[ "$(available)" != 0 ]]; do sleep 0.05; done
  t=$(curl -fs -o /dev/null -w '%{time_total}' -d hi "$gw/function/echo")
  times+=("$t")
  printf 'cold call %2d: %.1f ms\n' "$i" "$(awk -v t="$t" 'BEGIN {print t*1000}')"
done
printf '%s\n' "${times[@]}" | sort -n | awk -v warm="$warm" '
  { v[NR] = $1 }
  END {
    p50 = v[int((NR + 1) / 2)]; p90 = v[int(NR * 0.9 + 0.5)]
    printf "cold start over %d calls: p50 %.1f ms, p90 %.1f ms (a warm call: %.1f ms)\n", NR, p50*1000, p90*1000, warm*1000
  }'

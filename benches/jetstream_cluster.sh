#!/usr/bin/env bash
# The JetStream queue on one nats-server (streams with one replica) against a three-node
# cluster (three nats-server processes on this machine, streams with three replicas), in one
# run, with a fast upstream (examples/fast-upstream) behind `fgateway up --provider static`:
#   (b) async enqueues, 202s/s (wrk, 64 connections, gateway with --no-worker);
#   (c) end to end (benches/async_client.rs, 64 connections, CALLS calls with X-Callback-Url to
#       the client's own receiver, every call called back exactly once), worker inside the
#       gateway with --max-inflight 64 --max-inflight-per-function 64.
# Each row: the rate, the gateway's CPU time per call and nats-server's (every node's, from
# /proc), and the R3 rate as a share of the R1 rate. Three nodes on one machine share its cores:
# on three machines each node has its own, so the share here is a floor.
#
#   bash benches/jetstream_cluster.sh [SECONDS] [CALLS]
#
# FGATEWAY=/path/to/fgateway measures another build.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
calls="${2:-20000}"
source benches/common.sh
ensure_wrk
find_nats_server
cargo build --release --quiet --bin fgateway --example fast-upstream --example async-client
prepare_fast_stack
hz=$(getconf CLK_TCK)

# Starts NODES nats-servers clustered with each other (one alone when NODES is 1); sets
# nats_pids and queue_url (the comma-separated list).
start_nats() {
  local nodes=$1 i routes="" ports=() routes_list=()
  nats_pids=()
  for i in $(seq 1 "$nodes"); do
    ports+=("$(free_port) $(free_port) $(free_port)")
  done
  for p in "${ports[@]}"; do routes_list+=("nats://127.0.0.1:${p##* }"); done
  routes=$(IFS=,; echo "${routes_list[*]}")
  queue_url=""
  for i in $(seq 0 $((nodes - 1))); do
    read -r port mon route <<<"${ports[$i]}"
    local cluster=()
    if [ "$nodes" -gt 1 ]; then
      cluster=(--cluster_name bench --cluster "nats://127.0.0.1:$route" --routes "$routes" -n "n$i")
    fi
    "$nats_bin" -js -a 127.0.0.1 -p "$port" -m "$mon" -sd "$work/nats-$nodes-$i" "${cluster[@]}" 2>/dev/null &
    nats_pids+=($!)
    pids+=($!)
    queue_url+="${queue_url:+,}nats://127.0.0.1:$port"
  done
  for p in "${ports[@]}"; do
    read -r port mon route <<<"$p"
    for _ in $(seq 1 400); do
      curl -fs -o /dev/null "http://127.0.0.1:$mon/healthz" && break
      sleep 0.05
    done
  done
}
stop_nats() {
  kill "${nats_pids[@]}" 2>/dev/null || true
  wait "${nats_pids[@]}" 2>/dev/null || true
}
nats_ticks() {
  local t=0 p
  for p in "${nats_pids[@]}"; do t=$((t + $(ticks "$p"))); done
  echo "$t"
}

# Runs one phase and prints "rate calls gateway_us_per_call nats_us_per_call".
# $1: "enqueue" (wrk) or "e2e" (async-client).
phase() {
  local g0 g1 n0 n1 out rate n url="http://127.0.0.1:$gw_port/async-function/fast"
  g0=$(ticks "$gw")
  n0=$(nats_ticks)
  if [ "$1" = enqueue ]; then
    wrk -t2 -c64 -d"${secs}s" -s "$work/post.lua" "$url" >"$work/wrk.txt"
    grep -E 'Non-2xx|Socket errors' "$work/wrk.txt" >&2 || true
    rate=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.txt")
    n=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  else
    out=$(./target/release/examples/async-client "$url" "$calls" 64)
    echo "$out" >>"$work/client.log"
    rate=$(awk -F'[ =]' '/^RESULT/ {print $5}' <<<"$out")
    n=$calls
  fi
  g1=$(ticks "$gw")
  n1=$(nats_ticks)
  awk -v r="$rate" -v n="$n" -v hz="$hz" -v g="$((g1 - g0))" -v c="$((n1 - n0))" \
    'BEGIN {printf "%s %d %.0f %.0f\n", r, n, g*1e6/hz/n, c*1e6/hz/n}'
}

flags=(--max-inflight 64 --max-inflight-per-function 64)
# Both phases of one form: $1 nodes, $2 replicas.
run_form() {
  start_nats "$1"
  start_gateway --no-worker --queue "$queue_url" --nats-replicas "$2" --nats-stream enq
  phase enqueue
  stop_gateway
  start_gateway "${flags[@]}" --queue "$queue_url" --nats-replicas "$2" --nats-stream e2e
  phase e2e
  stop_gateway
  stop_nats
}

r1=$(run_form 1 1)
r3=$(run_form 3 3)
printf '%s\n' $r1 $r3 | paste -d' ' - - - - | awk -v calls="$calls" '
  { r[NR]=$1; g[NR]=$3; c[NR]=$4 }
  END {
    name[1]="R1, one node: enqueue, wrk 64 conns"
    name[2]="R1, one node: end to end, " calls " calls"
    name[3]="R3, three nodes: enqueue, wrk 64 conns"
    name[4]="R3, three nodes: end to end, " calls " calls"
    printf "%-46s %8s %8s %9s  %s\n", "", "per s", "gw us", "nats us", "share"
    for (k = 1; k <= 4; k++) {
      share = (k >= 3) ? sprintf("%.2f of R1", r[k] / r[k - 2]) : ""
      printf "%-46s %8.0f %8d %9d  %s\n", name[k], r[k], g[k], c[k], share
    }
  }'

#!/usr/bin/env bash
# The async path with a fast upstream (examples/fast-upstream), so the queue's own cost shows,
# in one run, through `fgateway up --provider static`:
#   (a) sync calls through the gateway (wrk, 16 connections): the baseline;
#   (b) async enqueues, 202s/s (wrk, 64 connections, gateway with --no-worker): embedded queue,
#       then JetStream;
#   (c) end to end (benches/async_client.rs, 64 connections, CALLS calls with X-Callback-Url to
#       the client's own receiver, every call called back exactly once), worker inside the
#       gateway with --max-inflight 64 --max-inflight-per-function 64: embedded, then JetStream.
# For JetStream it also prints what nats-server did per call: messages in and out (from its
# /varz; a request and its answer are one of each, a one-way ack one in) and CPU time (from
# /proc), so round trips per call can be compared before and after a change.
#
#   bash benches/async_fast.sh [SECONDS] [CALLS]
#
# FAST_UPSTREAM=/path/to/server swaps in another upstream (reads LISTEN_PORT, answers POST 2xx);
# FGATEWAY=/path/to/fgateway measures another build (an earlier commit's, for a before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
calls="${2:-20000}"
source benches/common.sh
ensure_wrk
nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$nats_bin" ] || { echo "nats-server is required (apt-get install nats-server)" >&2; exit 1; }
cargo build --release --quiet --bin fgateway --example fast-upstream --example async-client

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
upstream_bin=${FAST_UPSTREAM:-$PWD/target/release/examples/fast-upstream}
fgateway=${FGATEWAY:-$PWD/target/release/fgateway}
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "hello world"
LUA

up_port=$(free_port)
LISTEN_PORT=$up_port "$upstream_bin" 2>/dev/null &
pids+=($!)
wait_for "http://127.0.0.1:$up_port/"
cat >"$work/stack.yml" <<YAML
functions:
  fast:
    upstream: http://127.0.0.1:$up_port
YAML

# Starts a gateway (extra flags in "$@") and sets gw (its pid) and gw_port.
start_gateway() {
  gw_port=$(free_port)
  RUST_LOG=warn "$fgateway" up --provider static -f "$work/stack.yml" \
    --port "$gw_port" --data-dir "$work/data-$gw_port" "$@" 2>>"$work/gateway.log" &
  gw=$!
  pids+=("$gw")
  wait_for "http://127.0.0.1:$gw_port/healthz"
}
stop_gateway() {
  kill "$gw" && wait "$gw" 2>/dev/null || true
}
rate() { load "$1" "$2" -s "$work/post.lua" | awk '{print $1}'; }
e2e() {
  ./target/release/examples/async-client "http://127.0.0.1:$gw_port/async-function/fast" "$calls" 64 |
    tee -a "$work/client.log" | awk -F'[ =]' '/^RESULT/ {print $5}'
}
# nats-server's counters: "in_msgs out_msgs cpu_ticks".
nats_counters() {
  local v
  v=$(curl -fs "http://127.0.0.1:$mon_port/varz")
  python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(v["in_msgs"], v["out_msgs"], end=" ")' "$v"
  awk '{print $14 + $15}' "/proc/$nats/stat"
}
# Per-call figures between two nats_counters readings: "in out cpu_us".
per_call() {
  local n=$1
  shift
  awk -v n="$n" -v hz="$(getconf CLK_TCK)" \
    '{printf "%.1f %.1f %.0f", ($4-$1)/n, ($5-$2)/n, ($6-$3)*1e6/hz/n}' <<<"$*"
}

flags=(--max-inflight 64 --max-inflight-per-function 64)

# Embedded queue.
start_gateway --no-worker
sync_rate=$(rate "http://127.0.0.1:$gw_port/function/fast" 16)
emb_enqueue=$(rate "http://127.0.0.1:$gw_port/async-function/fast" 64)
stop_gateway
start_gateway "${flags[@]}"
emb_e2e=$(e2e)
stop_gateway

# JetStream.
nats_port=$(free_port)
mon_port=$(free_port)
"$nats_bin" -js -a 127.0.0.1 -p "$nats_port" -m "$mon_port" -sd "$work/nats" 2>/dev/null &
nats=$!
pids+=("$nats")
wait_for "http://127.0.0.1:$mon_port/healthz"
queue=(--queue "nats://127.0.0.1:$nats_port")

start_gateway --no-worker "${queue[@]}" --nats-stream enq
before=$(nats_counters)
wrk -t2 -c64 -d"${secs}s" -s "$work/post.lua" "http://127.0.0.1:$gw_port/async-function/fast" >"$work/wrk-js.txt"
after=$(nats_counters)
js_enqueue=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk-js.txt")
js_enqueued=$(awk '/requests in/ {print $1}' "$work/wrk-js.txt")
grep -E 'Non-2xx|Socket errors' "$work/wrk-js.txt" >&2 || true
js_enqueue_cost=$(per_call "$js_enqueued" "$before" "$after")
stop_gateway

start_gateway "${flags[@]}" "${queue[@]}" --nats-stream e2e
before=$(nats_counters)
js_e2e=$(e2e)
after=$(nats_counters)
js_e2e_cost=$(per_call "$calls" "$before" "$after")
stop_gateway

awk -v s="$sync_rate" -v ee="$emb_enqueue" -v ec="$emb_e2e" -v je="$js_enqueue" -v jc="$js_e2e" \
  -v jq="$js_enqueue_cost" -v jt="$js_e2e_cost" -v calls="$calls" 'BEGIN {
  split(jq, q, " "); split(jt, t, " ")
  printf "%-48s %10s  %s\n", "", "rate", "share"
  printf "%-48s %10.0f  1\n", "(a) sync through the gateway, 16 conns", s
  printf "%-48s %10.0f\n", "(b) embedded enqueue, 202/s, 64 conns", ee
  printf "%-48s %10.0f  %.2f of (a)\n", "(c) embedded end to end, calls/s", ec, ec / s
  printf "%-48s %10.0f  %.2f of embedded (b)\n", "(b) JetStream enqueue, 202/s, 64 conns", je, je / ee
  printf "%-48s %10.0f  %.2f of embedded (c)\n", "(c) JetStream end to end, calls/s", jc, jc / ec
  printf "nats-server per enqueue: %s msgs in, %s out, %s us CPU\n", q[1], q[2], q[3]
  printf "nats-server per call end to end (%d calls): %s msgs in, %s out, %s us CPU\n", calls, t[1], t[2], t[3]
}'

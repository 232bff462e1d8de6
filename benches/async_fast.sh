#!/usr/bin/env bash
# The async path with a fast upstream (examples/fast-upstream), so the queue's own cost shows,
# in one run, through `fgateway up --provider static`:
#   (a) sync calls through the gateway (wrk, 16 connections): the baseline;
#   (b) async enqueues, 202s/s (wrk, 64 connections, gateway with --no-worker): embedded queue,
#       then JetStream;
#   (c) end to end (benches/async_client.rs, 64 connections, CALLS calls with X-Callback-Url to
#       the client's own receiver, every call called back exactly once), worker inside the
#       gateway with --max-inflight 64 --max-inflight-per-function 64: embedded, then JetStream.
# Each row: the rate; the gateway's CPU time per call and, on JetStream, nats-server's (from
# /proc) and the messages nats-server received and sent per call (from its /varz: a request and
# its answer are one of each, a one-way ack one in), so round trips per call can be compared
# before and after a change; and the call's cost in sync calls ("sync eq": gateway plus
# nats-server CPU per call over the gateway's CPU per sync call), which moves far less than the
# rates on a machine whose speed varies from run to run.
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
find_nats_server
cargo build --release --quiet --bin fgateway --example fast-upstream --example async-client
prepare_fast_stack

hz=$(getconf CLK_TCK)
# Runs one phase and prints "rate calls gateway_us_per_call nats_in nats_out nats_us_per_call"
# (the nats figures 0 when no nats-server runs). $1: "wrk URL CONNS" or "e2e".
phase() {
  local g0 g1 n0="0 0 0" n1="0 0 0" out rate n
  g0=$(ticks "$gw")
  [ -n "${nats:-}" ] && n0=$(nats_counters)
  if [ "$1" = wrk ]; then
    wrk -t2 -c"$3" -d"${secs}s" -s "$work/post.lua" "$2" >"$work/wrk.txt"
    grep -E 'Non-2xx|Socket errors' "$work/wrk.txt" >&2 || true
    rate=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.txt")
    n=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  else
    out=$(./target/release/examples/async-client "http://127.0.0.1:$gw_port/async-function/fast" "$calls" 64)
    echo "$out" >>"$work/client.log"
    rate=$(awk -F'[ =]' '/^RESULT/ {print $5}' <<<"$out")
    n=$calls
  fi
  g1=$(ticks "$gw")
  [ -n "${nats:-}" ] && n1=$(nats_counters)
  awk -v r="$rate" -v n="$n" -v hz="$hz" -v g="$((g1 - g0))" \
    '{printf "%s %d %.0f %.1f %.1f %.0f\n", r, n, g*1e6/hz/n, ($4-$1)/n, ($5-$2)/n, ($6-$3)*1e6/hz/n}' <<<"$n0 $n1"
}
# nats-server's counters: "in_msgs out_msgs cpu_ticks".
nats_counters() {
  local v
  v=$(curl -fs "http://127.0.0.1:$mon_port/varz")
  python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(v["in_msgs"], v["out_msgs"], end=" ")' "$v"
  ticks "$nats"
}

flags=(--max-inflight 64 --max-inflight-per-function 64)
url() { echo "http://127.0.0.1:$gw_port/$1/fast"; }

# Embedded queue.
start_gateway --no-worker
sync=$(phase wrk "$(url function)" 16)
emb_enqueue=$(phase wrk "$(url async-function)" 64)
stop_gateway
start_gateway "${flags[@]}"
emb_e2e=$(phase e2e)
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
js_enqueue=$(phase wrk "$(url async-function)" 64)
stop_gateway
start_gateway "${flags[@]}" "${queue[@]}" --nats-stream e2e
js_e2e=$(phase e2e)
stop_gateway

# Rates move with whatever else the machine runs; CPU per call much less, so the table shows
# both, and each row's cost in sync calls: (gateway + nats-server CPU) / (a)'s gateway CPU.
printf '%s\n' "$sync" "$emb_enqueue" "$emb_e2e" "$js_enqueue" "$js_e2e" | awk -v calls="$calls" '
  { r[NR]=$1; g[NR]=$3; i[NR]=$4; o[NR]=$5; c[NR]=$6 }
  END {
    name[1]="(a) sync through the gateway, wrk 16 conns"
    name[2]="(b) embedded enqueue, wrk 64 conns"
    name[3]="(c) embedded end to end, " calls " calls"
    name[4]="(b) JetStream enqueue, wrk 64 conns"
    name[5]="(c) JetStream end to end, " calls " calls"
    printf "%-44s %8s %9s %8s %8s %9s %9s\n", "", "per s", "gw us", "nats us", "in/out", "sync eq", "share"
    for (k = 1; k <= 5; k++) {
      share = ""
      if (k == 3) share = sprintf("%.2f of (a)", r[3] / r[1])
      if (k == 4) share = sprintf("%.2f of emb.", r[4] / r[2])
      if (k == 5) share = sprintf("%.2f of emb.", r[5] / r[3])
      io = (k >= 4) ? sprintf("%.1f/%.1f", i[k], o[k]) : "-"
      printf "%-44s %8.0f %9d %8d %8s %9.1f  %s\n", name[k], r[k], g[k], c[k], io, (g[k] + c[k]) / g[1], share
    }
  }'

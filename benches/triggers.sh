#!/usr/bin/env bash
# Functions triggered by NATS messages against the same calls made over HTTP, in one run, with
# a fast upstream (examples/fast-upstream, `fgateway up --provider static`) so that the path's
# own cost shows: benches/trigger_client.rs sends CALLS asynchronous calls over HTTP (64
# keep-alive connections), then publishes CALLS NATS messages on the function's subject, and
# times each until the function has answered them all (the gateway's invocation counter).
# Twice: the embedded queue with --triggers-nats, then the queue on the same JetStream server.
#
#   bash benches/triggers.sh [CALLS]
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${1:-20000}"
source benches/common.sh
find_nats_server
cargo build --release --quiet --bin fgateway --example fast-upstream --example trigger-client
prepare_fast_stack
cat >>"$work/stack.yml" <<YAML
    annotations:
      topic: events.fast
YAML

nats_port=$(free_port)
mon_port=$(free_port)
"$nats_bin" -js -a 127.0.0.1 -p "$nats_port" -m "$mon_port" -sd "$work/nats" 2>/dev/null &
pids+=("$!")
wait_for "http://127.0.0.1:$mon_port/healthz"
nats_url="nats://127.0.0.1:$nats_port"
flags=(--max-inflight 64 --max-inflight-per-function 64)

run() {
  local label=$1 out
  shift
  gw_port=$(free_port)
  RUST_LOG=warn,fwatchdog::gateway::triggers::subjects=info "$fgateway" up --provider static \
    -f "$work/stack.yml" --port "$gw_port" \
    --data-dir "$work/data-$gw_port" "${flags[@]}" "$@" 2>>"$work/gateway.log" &
  gw=$!
  pids+=("$gw")
  wait_for "http://127.0.0.1:$gw_port/healthz"
  # The subscription is made within a second of start-up.
  until grep -q "subscribed" "$work/gateway.log"; do sleep 0.1; done
  out=$(./target/release/examples/trigger-client "127.0.0.1:$gw_port" "$nats_url" events.fast fast \
    "$calls" 64)
  echo "$label"
  grep -v '^RESULT' <<<"$out" | sed 's/^/  /'
  kill "$gw" && wait "$gw" 2>/dev/null || true
  : >"$work/gateway.log"
}

run "embedded queue, --triggers-nats $nats_url:" --triggers-nats "$nats_url"
run "JetStream queue on the same server:" --queue "$nats_url" --nats-stream bench

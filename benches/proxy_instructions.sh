#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a figure that does not
# move with the machine's load, unlike rates on shared 2-core machines. For fwatchdog mode=http
# and fgateway --provider static, both in front of examples/fast-upstream, it counts the
# instructions of a run of N1 and of N2 requests (`hey`, 16 connections, POST "hello world")
# and prints (I(N2) - I(N1)) / (N2 - N1), so start-up and shutdown cancel out. The kernel's
# share (system calls, TCP) is not counted. The gateway runs without its asynchronous-call
# worker, whose polling of the queue would count instructions by the second, not per request.
#
#   bash benches/proxy_instructions.sh [N1 N2]
#
# FWATCHDOG=/path FGATEWAY=/path count other builds of the two binaries (an older commit's, to
# compare).
set -euo pipefail
cd "$(dirname "$0")/.."
n1="${1:-1000}"
n2="${2:-4000}"
source benches/common.sh
for tool in valgrind:valgrind hey:hey; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    echo "installing ${tool#*:} (Debian package)" >&2
    apt-get update -qq && apt-get install -y -qq "${tool#*:}" >/dev/null
  fi
done
cargo build --release --quiet --bin fwatchdog --bin fgateway --example fast-upstream

fwatchdog_bin=${FWATCHDOG:-$PWD/target/release/fwatchdog}
fgateway_bin=${FGATEWAY:-$PWD/target/release/fgateway}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
up_port=$(free_port)
LISTEN_PORT=$up_port ./target/release/examples/fast-upstream 2>/dev/null &
pids+=($!)
wait_for "http://127.0.0.1:$up_port/"
printf 'functions:\n  fast:\n    upstream: http://127.0.0.1:%s\n' "$up_port" >"$work/static.yml"

# count WHAT N: instructions of a run of N requests.
count() {
  local what=$1 n=$2 port url pid
  port=$(free_port)
  local out="$work/callgrind.$what.$n"
  case $what in
    fwatchdog)
      mode=http port="$port" metrics_port=0 upstream_url="http://127.0.0.1:$up_port" \
        fprocess="sleep 1000000" healthcheck_interval=0 RUST_LOG=warn TMPDIR="$work" \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$fwatchdog_bin" \
        2>/dev/null &
      url="http://127.0.0.1:$port/"
      ;;
    fgateway)
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$fgateway_bin" up -f "$work/static.yml" --provider static --port "$port" \
        --data-dir "$work/gw.$n" --autoscale false --no-worker 2>/dev/null &
      url="http://127.0.0.1:$port/function/fast"
      ;;
  esac
  pid=$!
  for _ in $(seq 1 300); do curl -fs -o /dev/null -d x "$url" && break; sleep 0.1; done
  hey -n "$n" -c 16 -m POST -d "hello world" "$url" >/dev/null
  kill -INT "$pid"
  wait "$pid" || true
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

for what in fwatchdog fgateway; do
  a=$(count "$what" "$n1")
  b=$(count "$what" "$n2")
  echo "$what: $(((b - a) / (n2 - n1))) instructions per request (callgrind, $n1 and $n2 requests)"
done

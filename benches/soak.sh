#!/usr/bin/env bash
# Soak test (not part of CI): sends TOTAL requests (default 1,000,000) to each of
#   (1) fwatchdog, fork mode (fprocess=cat),
#   (2) fwatchdog, mode=http (the python-http example as upstream),
#   (3) fgateway, sync calls to a local http-mode replica,
#   (4) fgateway, async calls to the same function (202s, then the worker drains the queue),
# and prints the serving process's RSS and open file descriptors at the start, after every
# tenth of the requests, and at the end. Both must stay flat; the script fails when the last
# RSS is more than 16 MiB or the last fd count more than 64 above the first sample after
# warm-up.
#
#   bash benches/soak.sh              # 1,000,000 requests per phase (about 20 minutes)
#   bash benches/soak.sh 100000       # a quick run
#   bash benches/soak.sh 1000000 fork # one phase: fork, http, sync or async
#
# Load comes from `hey` (Debian package hey; installed when missing), 16 connections.
set -euo pipefail
cd "$(dirname "$0")/.."
total="${1:-1000000}"
only="${2:-}"
step=$((total / 10))

source benches/common.sh
command -v hey >/dev/null || { apt-get update -qq && apt-get install -y -qq hey >/dev/null; }
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
cargo build --release --quiet --bin fwatchdog --bin fgateway

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
failed=0

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }

# soak NAME PID URL [hey args...]: TOTAL requests in tenths, sampling PID between them.
soak() {
  local name=$1 pid=$2 url=$3
  shift 3
  printf '\n== %s: %d requests to %s\n' "$name" "$total" "$url"
  printf '%10s %10s %6s %10s %s\n' "requests" "RSS kB" "fds" "req/s" "statuses"
  printf '%10d %10d %6d\n' 0 "$(rss_kb "$pid")" "$(fds "$pid")"
  local sent=0 base_rss=0 base_fds=0
  while ((sent < total)); do
    local out
    out=$(hey -n "$step" -c 16 "$@" "$url")
    sent=$((sent + step))
    local rps statuses
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    statuses=$(awk '/^[[:space:]]+\[[0-9]+\]/ {printf "%s%s ", $1, $2}' <<<"$out")
    local r f
    r=$(rss_kb "$pid")
    f=$(fds "$pid")
    printf '%10d %10d %6d %10s %s\n' "$sent" "$r" "$f" "$rps" "$statuses"
    if ((sent == step)); then base_rss=$r; base_fds=$f; fi
  done
  if ((r - base_rss > 16384 || f - base_fds > 64)); then
    echo "!! $name: RSS or fds grew: RSS $base_rss -> $r kB, fds $base_fds -> $f" >&2
    failed=1
  fi
}

if [[ -z "$only" || "$only" == fork ]]; then
  port=$(free_port)
  TMPDIR="$work" port="$port" metrics_port=0 fprocess=cat RUST_LOG=warn \
    ./target/release/fwatchdog 2>"$work/fork.log" &
  pid=$!; pids+=($pid)
  wait_for "http://127.0.0.1:$port/_/health"
  soak "fwatchdog, fork mode (cat)" "$pid" "http://127.0.0.1:$port/" -m POST -d 'hello world'
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi

if [[ -z "$only" || "$only" == http ]]; then
  port=$(free_port); up=$(free_port)
  TMPDIR="$work" mode=http port="$port" metrics_port=0 upstream_url="http://127.0.0.1:$up" \
    LISTEN_PORT=$up QUIET=1 fprocess="python3 examples/python-http/server.py" RUST_LOG=warn \
    ./target/release/fwatchdog 2>"$work/http.log" &
  pid=$!; pids+=($pid)
  wait_for "http://127.0.0.1:$port/_/health"
  soak "fwatchdog, mode=http (python-http)" "$pid" "http://127.0.0.1:$port/echo" -m POST -d 'hello world'
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi

if [[ -z "$only" || "$only" == sync || "$only" == async ]]; then
  up=$(free_port); port=$(free_port)
  cat >"$work/stack.yml" <<YAML
functions:
  web:
    handler: $PWD/examples/python-http
    fprocess: python3 server.py
    environment:
      mode: http
      upstream_url: http://127.0.0.1:$up
      LISTEN_PORT: "$up"
      QUIET: "1"
      ready_path: /ready
YAML
  RUST_LOG=warn ./target/release/fgateway up -f "$work/stack.yml" --port "$port" \
    --data-dir "$work/gw" --max-inflight-per-function 64 2>"$work/gw.log" &
  pid=$!; pids+=($pid)
  wait_for "http://127.0.0.1:$port/function/web/ready"
  if [[ -z "$only" || "$only" == sync ]]; then
    soak "fgateway, sync" "$pid" "http://127.0.0.1:$port/function/web/echo" -m POST -d 'hello world'
  fi
  if [[ -z "$only" || "$only" == async ]]; then
    soak "fgateway, async (enqueue)" "$pid" "http://127.0.0.1:$port/async-function/web/echo" -m POST -d 'hello world'
    printf 'draining the queue...\n'
    while :; do
      depth=$(curl -fs "http://127.0.0.1:$port/metrics" | awk '/^gateway_queue_depth / {print $2}')
      inflight=$(curl -fs "http://127.0.0.1:$port/metrics" | awk '/^gateway_queue_in_flight / {print $2}')
      [[ "${depth:-0}" == 0 && "${inflight:-0}" == 0 ]] && break
      sleep 5
    done
    printf '%10s %10d %6d  (queue drained: every call ran)\n' "end" "$(rss_kb "$pid")" "$(fds "$pid")"
    curl -fs "http://127.0.0.1:$port/metrics" | grep -E '^gateway_function_invocation_total' || true
  fi
fi
exit "$failed"

#!/usr/bin/env bash
# Watchdog benchmark: fwatchdog's request rate for a `cat` handler beside this machine's raw
# spawn rate of the same handler, measured in the same run, in three variants: the default
# (a log line per request, as OpenFaaS's classic watchdog writes them: `Forking fprocess.` and
# `Wrote N Bytes - Duration: ...`, to a file), `log_requests=false`, and the static executable
# built for images (request lines on).
#
#   bash benches/watchdog.sh [SECONDS]
#
# Prints the raw spawn rate (a Rust loop, one worker per core), then per variant fwatchdog's
# requests/s and p50/p99 latency at 16 and 64 connections (wrk, small POST body), the ratio to
# the raw rate, the watchdog's own CPU time per request (its user+system time, not the
# handlers'; steadier than rates on a shared machine) and its peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"

source benches/common.sh
ensure_wrk

cargo build --release --quiet --bin fwatchdog
triple="$(uname -m)-unknown-linux-gnu"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --quiet --bin fwatchdog --target "$triple"
cargo bench --quiet --bench spawn_rate --no-run 2>/dev/null
raw=$(cargo bench --quiet --bench spawn_rate -- "$secs" cat | sed -n 's/^spawn_rate_per_sec=//p')

work=$(mktemp -d)
wd_pid=
trap 'kill $wd_pid 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "hello fwatchdog"
wrk.headers["Content-Type"] = "text/plain"
LUA

# cpu_ticks PID: the process's user + system time so far, in clock ticks.
cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# run LABEL BINARY [VAR=VALUE...]: one variant, its log written to a file.
run() {
  local label=$1 bin=$2
  shift 2
  : > "$work/log"
  env TMPDIR="$work" port=0 metrics_port=0 fprocess=cat "$@" "$bin" 2> "$work/log" &
  wd_pid=$!
  local addr=
  for _ in $(seq 1 200); do
    addr=$(sed -n 's/.*listening addr=\([0-9.:]*\).*/\1/p' "$work/log" | head -n1)
    [ -n "$addr" ] && break
    sleep 0.05
  done
  [ -n "$addr" ] || { echo "fwatchdog did not start:" >&2; cat "$work/log" >&2; exit 1; }
  local url="http://127.0.0.1:${addr##*:}/"
  curl -fsS -d warmup "$url" >/dev/null
  local ticks_before total=0
  ticks_before=$(cpu_ticks "$wd_pid")
  printf '\n%s\n' "$label"
  printf '%-12s %10s %10s %10s %8s\n' "connections" "req/s" "p50" "p99" "of raw"
  for c in 16 64; do
    read -r rps p50 p99 <<<"$(load "$url" "$c" -s "$work/post.lua")"
    ratio=$(awk -v a="$rps" -v b="$raw" 'BEGIN {printf "%.0f%%", 100*a/b}')
    printf '%-12s %10.0f %10s %10s %8s\n' "$c" "$rps" "$p50" "$p99" "$ratio"
    total=$(awk -v t="$total" -v r="$rps" -v s="$secs" 'BEGIN {print t + r * s}')
  done
  local ticks=$(( $(cpu_ticks "$wd_pid") - ticks_before ))
  local per_req
  per_req=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$total" \
    'BEGIN {printf "%.0f", 1e6 * t / hz / n}')
  echo "watchdog CPU per request: ${per_req} us; peak RSS: $(peak_rss "$wd_pid"); log: $(wc -l < "$work/log") lines"
  kill "$wd_pid"
  wait "$wd_pid" 2>/dev/null || true
  wd_pid=
}

printf '\n%-34s %10s\n' "raw spawn+wait of cat (baseline)" "${raw}/s"
run "fwatchdog (default: a log line per request)" ./target/release/fwatchdog healthcheck_interval=0
run "fwatchdog, log_requests=false" ./target/release/fwatchdog healthcheck_interval=0 \
  log_requests=false
run "fwatchdog, static executable (request lines on)" "./target/$triple/release/fwatchdog" \
  healthcheck_interval=0

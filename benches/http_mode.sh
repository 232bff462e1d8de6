#!/usr/bin/env bash
# http-mode benchmark: the example upstream alone, then the same upstream behind fwatchdog
# (mode=http), in one run, at 1, 16 and 64 connections.
#
#   bash benches/http_mode.sh [SECONDS]
#
# Prints requests/s, p50 and p99 for both, the ratios, and fwatchdog's peak RSS. The upstream
# is examples/python-http/server.py (standard-library Python, HTTP/1.1 keep-alive).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"

source benches/common.sh
ensure_wrk
command -v python3 >/dev/null || { echo "python3 is required (apt-get install python3)" >&2; exit 1; }
cargo build --release --quiet --bin fwatchdog

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

to_us() { # wrk latency (123.45us / 1.23ms / 1.02s) -> microseconds
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else print n*1000000 }'
}

up_port=$(free_port)
LISTEN_PORT=$up_port QUIET=1 python3 examples/python-http/server.py 2>"$work/up.log" &
pids+=($!)
wait_for "http://127.0.0.1:$up_port/ready"
declare -A alone
for c in 1 16 64; do alone[$c]=$(load "http://127.0.0.1:$up_port/" "$c"); done
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

up_port=$(free_port)
wd_port=$(free_port)
TMPDIR="$work" mode=http port="$wd_port" metrics_port=0 upstream_url="http://127.0.0.1:$up_port" \
  LISTEN_PORT=$up_port QUIET=1 fprocess="python3 examples/python-http/server.py" RUST_LOG=warn \
  ./target/release/fwatchdog 2>"$work/wd.log" &
wd_pid=$!
pids+=($wd_pid)
wait_for "http://127.0.0.1:$wd_port/_/health"
declare -A behind
for c in 1 16 64; do behind[$c]=$(load "http://127.0.0.1:$wd_port/" "$c"); done

printf '\n%-6s | %-30s | %-30s | %s\n' "conns" "upstream alone: req/s p50 p99" "behind fwatchdog: req/s p50 p99" "rate ratio, p50 ratio"
for c in 1 16 64; do
  read -r a_rps a_p50 a_p99 <<<"${alone[$c]}"
  read -r b_rps b_p50 b_p99 <<<"${behind[$c]}"
  ratio=$(awk -v a="$a_rps" -v b="$b_rps" 'BEGIN {printf "%.0f%%", 100*b/a}')
  p50x=$(awk -v a="$(to_us "$a_p50")" -v b="$(to_us "$b_p50")" 'BEGIN {printf "%.2fx", b/a}')
  printf '%-6s | %9.0f %9s %9s | %9.0f %9s %9s | %s, %s\n' "$c" "$a_rps" "$a_p50" "$a_p99" "$b_rps" "$b_p50" "$b_p99" "$ratio" "$p50x"
done
echo "fwatchdog peak RSS: $(peak_rss "$wd_pid")"

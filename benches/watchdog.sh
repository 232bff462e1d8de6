#!/usr/bin/env bash
# Watchdog benchmark: fwatchdog's request rate for a `cat` handler beside this machine's raw
# spawn rate of the same handler, measured in the same run.
#
#   bash benches/watchdog.sh [SECONDS]
#
# Prints the raw spawn rate (a Rust loop, one worker per core), fwatchdog's requests/s and
# p50/p99 latency at 16 and 64 connections (wrk, small POST body), the ratio to the raw rate,
# and the watchdog's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"

source benches/common.sh
ensure_wrk

cargo build --release --quiet --bin fwatchdog
cargo bench --quiet --bench spawn_rate --no-run 2>/dev/null
raw=$(cargo bench --quiet --bench spawn_rate -- "$secs" cat | sed -n 's/^spawn_rate_per_sec=//p')

work=$(mktemp -d)
trap 'kill $wd_pid 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "hello fwatchdog"
wrk.headers["Content-Type"] = "text/plain"
LUA

TMPDIR="$work" port=0 metrics_port=0 fprocess=cat RUST_LOG=warn,fwatchdog::watchdog=info \
  ./target/release/fwatchdog 2> "$work/log" &
wd_pid=$!
for _ in $(seq 1 200); do
  addr=$(sed -n 's/.*listening addr=\([0-9.:]*\).*/\1/p' "$work/log" | head -n1)
  [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "$addr" ] || { echo "fwatchdog did not start:" >&2; cat "$work/log" >&2; exit 1; }
url="http://127.0.0.1:${addr##*:}/"

curl -fsS -d warmup "$url" >/dev/null
printf '\n%-34s %10s\n' "raw spawn+wait of cat (baseline)" "${raw}/s"
printf '%-12s %10s %10s %10s %8s\n' "connections" "req/s" "p50" "p99" "of raw"
for c in 16 64; do
  read -r rps p50 p99 <<<"$(load "$url" "$c" -s "$work/post.lua")"
  ratio=$(awk -v a="$rps" -v b="$raw" 'BEGIN {printf "%.0f%%", 100*a/b}')
  printf '%-12s %10.0f %10s %10s %8s\n' "$c" "$rps" "$p50" "$p99" "$ratio"
done
echo "fwatchdog peak RSS: $(peak_rss "$wd_pid")"

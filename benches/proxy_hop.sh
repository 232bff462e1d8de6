#!/usr/bin/env bash
# The proxy hops with a fast upstream (examples/fast-upstream, a few lines of hyper), in one
# run, with wrk (POST "hello world") at 1 and 16 connections:
#   (a) the upstream alone,
#   (b) behind fwatchdog mode=http,
#   (c) behind fgateway --provider static,
#   (d) behind fgateway -> fwatchdog mode=http (local provider) -> upstream, the full local path;
#   (f) behind examples/bare-proxy: hyper and nothing of ours (an upstream connection per client
#       connection, no timeouts, metrics or header rewriting), the floor a proxy hop costs on
#       this machine, so (b) and (c) can be read against it as well as against (a).
# Prints req/s and p50 of each, and each one's share of (a)'s rate and multiple of its p50.
#
#   bash benches/proxy_hop.sh [SECONDS]
#
# FAST_UPSTREAM=/path/to/server swaps in another upstream (any server that reads its port from
# LISTEN_PORT, binds 127.0.0.1 and answers POST with 2xx), e.g. one written in Go, to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
source benches/common.sh
ensure_wrk
cargo build --release --quiet --bin fwatchdog --bin fgateway --example fast-upstream --example bare-proxy

start_fast_upstream

wd_port=$(free_port)
TMPDIR="$work" mode=http port="$wd_port" metrics_port=0 upstream_url="http://127.0.0.1:$up_port" \
  fprocess="sleep 1000000" RUST_LOG=warn ./target/release/fwatchdog 2>"$work/wd.log" &
pids+=($!)
wait_for "http://127.0.0.1:$wd_port/_/health"

bare_port=$(free_port)
LISTEN_PORT=$bare_port UPSTREAM="127.0.0.1:$up_port" ./target/release/examples/bare-proxy 2>/dev/null &
pids+=($!)
wait_for "http://127.0.0.1:$bare_port/"

gw_port=$(free_port)
local_port=$(free_port)
cat >"$work/static.yml" <<YAML
functions:
  fast:
    upstream: http://127.0.0.1:$up_port
YAML
cat >"$work/local.yml" <<YAML
functions:
  local:
    fprocess: $upstream_bin
    environment:
      mode: http
      upstream_url: http://127.0.0.1:$local_port
      LISTEN_PORT: "$local_port"
YAML
RUST_LOG=warn ./target/release/fgateway up -f "$work/local.yml" --port "$gw_port" \
  --data-dir "$work/gw" --provider local --autoscale false 2>"$work/gw.log" &
pids+=($!)
wait_for "http://127.0.0.1:$gw_port/function/local"
# The static function needs --provider static: a second gateway.
gs_port=$(free_port)
RUST_LOG=warn ./target/release/fgateway up -f "$work/static.yml" --port "$gs_port" \
  --data-dir "$work/gs" --provider static --autoscale false 2>"$work/gs.log" &
pids+=($!)
wait_for "http://127.0.0.1:$gs_port/function/fast"

to_us() {
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else print n*1000000 }'
}
declare -A rps p50
for c in 1 16; do
  for path in "a http://127.0.0.1:$up_port/" "b http://127.0.0.1:$wd_port/" \
    "c http://127.0.0.1:$gs_port/function/fast" "d http://127.0.0.1:$gw_port/function/local" \
    "f http://127.0.0.1:$bare_port/"; do
    read -r name url <<<"$path"
    read -r r p _ <<<"$(load "$url" "$c" -s "$work/post.lua")"
    rps[$name$c]=$r
    p50[$name$c]=$p
  done
done
printf '\n%-44s | %-26s | %-26s\n' "" "1 connection: req/s, p50" "16 connections: req/s, p50"
for name in a b c d f; do
  case $name in
    a) label="(a) upstream alone" ;;
    b) label="(b) fwatchdog mode=http" ;;
    c) label="(c) fgateway, static provider" ;;
    d) label="(d) fgateway -> fwatchdog -> upstream" ;;
    f) label="(f) bare hyper proxy (the floor)" ;;
  esac
  share1=$(awk -v a="${rps[a1]}" -v b="${rps[${name}1]}" 'BEGIN {printf "%.2f", b/a}')
  share16=$(awk -v a="${rps[a16]}" -v b="${rps[${name}16]}" 'BEGIN {printf "%.2f", b/a}')
  x1=$(awk -v a="$(to_us "${p50[a1]}")" -v b="$(to_us "${p50[${name}1]}")" 'BEGIN {printf "%.2fx", b/a}')
  printf '%-44s | %7.0f %8s (%s, %s) | %7.0f %8s (%s)\n' "$label" "${rps[${name}1]}" "${p50[${name}1]}" \
    "$share1" "$x1" "${rps[${name}16]}" "${p50[${name}16]}" "$share16"
done
echo "(shares are of (a)'s rate; the multiple is of (a)'s p50 at 1 connection)"

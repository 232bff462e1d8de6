#!/usr/bin/env bash
# Gateway benchmark: an http-mode function (examples/python-http behind fwatchdog) called
# directly on its fwatchdog, then through fgateway, in one run, at 16 and 64 connections.
#
#   bash benches/gateway.sh [SECONDS]
#
# Prints requests/s, p50 and p99 for both paths and the gateway/direct ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
source benches/common.sh
ensure_wrk
command -v python3 >/dev/null || { echo "python3 is required (apt-get install python3)" >&2; exit 1; }
cargo build --release --quiet --bin fwatchdog --bin fgateway

work=$(mktemp -d)
gw_pid=
trap '[ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

up_port=$(free_port)
cat > "$work/stack.yml" <<YAML
functions:
  web:
    handler: $PWD/examples/python-http
    fprocess: python3 server.py
    environment:
      mode: http
      upstream_url: http://127.0.0.1:$up_port
      LISTEN_PORT: $up_port
      ready_path: /ready
      QUIET: 1
      RUST_LOG: warn
YAML
gw_port=$(free_port)
RUST_LOG=info ./target/release/fgateway up -f "$work/stack.yml" --port "$gw_port" \
  --data-dir "$work/data" 2>"$work/gw.log" &
gw_pid=$!
wait_for "http://127.0.0.1:$gw_port/function/web/ready"
direct=$(sed -n 's/.*listening addr=\(127\.0\.0\.1:[0-9]*\).*function=web.*/\1/p' "$work/gw.log" | head -n1)
[ -n "$direct" ] || { echo "cannot find the function's own address in the gateway log" >&2; exit 1; }

printf '\n%-6s | %-30s | %-30s | %s\n' "conns" "fwatchdog direct: req/s p50 p99" "through fgateway: req/s p50 p99" "gateway/direct"
for c in 16 64; do
  read -r d_rps d_p50 d_p99 <<<"$(load "http://$direct/" "$c")"
  read -r g_rps g_p50 g_p99 <<<"$(load "http://127.0.0.1:$gw_port/function/web/" "$c")"
  ratio=$(awk -v a="$d_rps" -v b="$g_rps" 'BEGIN {printf "%.0f%%", 100*b/a}')
  printf '%-6s | %9.0f %9s %9s | %9.0f %9s %9s | %s\n' "$c" "$d_rps" "$d_p50" "$d_p99" "$g_rps" "$g_p50" "$g_p99" "$ratio"
done
echo "fgateway peak RSS: $(peak_rss "$gw_pid")"

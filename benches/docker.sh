#!/usr/bin/env bash
# The docker provider with a real engine (Podman's API service, started here with storage in a
# temp dir): the cold start of one container replica (from the deploy request to the function's
# first 200, N times, default 10), then the sync call rate through the gateway to a container
# replica vs to a local replica of the same function (`cat` behind fwatchdog), with wrk, in the
# same run. Needs podman, runc and busybox-static (Debian packages), and root.
#
#   bash benches/docker.sh [N] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10}"
secs="${2:-10}"
source benches/common.sh
ensure_wrk
cargo build --release --quiet --bin fwatchdog --bin fgateway
# The image's fwatchdog: one static executable, as the README builds it for images.
triple="$(uname -m)-unknown-linux-gnu"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --quiet --bin fwatchdog --target "$triple"

work=$(mktemp -d)
pids=()
podman_() { CONTAINERS_CONF="$work/containers.conf" podman --root "$work/root" --runroot "$work/run" "$@"; }
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  podman_ rm -a -f -t 0 >/dev/null 2>&1 || true
  podman_ system reset -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' >"$work/containers.conf"

# The image: the static fwatchdog and busybox, FROM scratch (no libc).
ctx="$work/ctx"
mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/usr/bin" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"
cp "target/$triple/release/fwatchdog" "$ctx/rootfs/usr/bin/"
cp "$(command -v busybox)" "$ctx/rootfs/bin/busybox"
for tool in sh cat; do ln -s busybox "$ctx/rootfs/bin/$tool"; done
printf 'FROM scratch\nCOPY rootfs/ /\nENV fprocess=cat\nCMD ["fwatchdog"]\n' >"$ctx/Dockerfile"
podman_ build -q -t fgw-bench:1 "$ctx" >/dev/null

# Started directly (not through the function) so that $! is podman itself.
CONTAINERS_CONF="$work/containers.conf" podman --root "$work/root" --runroot "$work/run" \
  system service --time=0 "unix://$work/podman.sock" 2>/dev/null &
pids+=($!)
for _ in $(seq 1 200); do [ -S "$work/podman.sock" ] && break; sleep 0.05; done

dport=$(free_port)
lport=$(free_port)
RUST_LOG=warn ./target/release/fgateway up --provider docker --docker-host "unix://$work/podman.sock" \
  --docker-on-exit stop --port "$dport" --data-dir "$work/gw-docker" 2>"$work/docker.log" &
pids+=($!)
RUST_LOG=warn ./target/release/fgateway up --port "$lport" --data-dir "$work/gw-local" 2>"$work/local.log" &
pids+=($!)
dgw="http://127.0.0.1:$dport"
lgw="http://127.0.0.1:$lport"
wait_for "$dgw/healthz"
wait_for "$lgw/healthz"

ms() { python3 -c 'import time; print(time.monotonic_ns() // 1000)'; }
times=()
for i in $(seq 1 "$n"); do
  start=$(ms)
  curl -fs -o /dev/null -d "{\"service\":\"cold$i\",\"image\":\"fgw-bench:1\"}" "$dgw/system/functions"
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' -d hi "$dgw/function/cold$i")" == 200 ]]; do :; done
  end=$(ms)
  times+=("$(((end - start) / 1000))")
  printf 'deploy to first 200, container %2d: %d ms\n' "$i" "${times[-1]}"
  curl -fs -o /dev/null -X DELETE -d "{\"functionName\":\"cold$i\"}" "$dgw/system/functions"
done
printf '%s\n' "${times[@]}" | sort -n | awk '{ v[NR] = $1 } END {
  printf "cold start of one container replica over %d deploys: p50 %d ms, p90 %d ms\n", NR, v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.5)] }'

curl -fs -o /dev/null -d '{"service":"echo","image":"fgw-bench:1"}' "$dgw/system/functions"
curl -fs -o /dev/null -d '{"service":"echo","envProcess":"cat"}' "$lgw/system/functions"
wait_for "$dgw/function/echo"
wait_for "$lgw/function/echo"
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "hello world"
LUA
read -r drps dp50 _ < <(load "$dgw/function/echo" 16 -s "$work/post.lua")
read -r lrps lp50 _ < <(load "$lgw/function/echo" 16 -s "$work/post.lua")
printf 'sync calls, wrk 16 connections, %ss each, same function (cat behind fwatchdog):\n' "$secs"
printf '  to a local replica:     %8.0f req/s  p50 %s\n' "$lrps" "$lp50"
printf '  to a container replica: %8.0f req/s  p50 %s  (%.2f of local)\n' "$drps" "$dp50" \
  "$(awk -v a="$drps" -v b="$lrps" 'BEGIN {print a/b}')"

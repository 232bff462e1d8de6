#!/usr/bin/env bash
# The Kubernetes provider on the test cluster (tests/k8s/cluster.sh), in one run:
#   (a) sync calls to a function pod called directly, on its pod IP (wrk, 1 and 16
#       connections): the baseline;
#   (b) the same calls through `fgateway up --provider kubernetes` (which sends them to the
#       pod's IP);
#   (c) deploy → first 200: a new function deployed through the gateway, polled until it
#       answers, RUNS times (p50, p90);
#   (d) scale from zero → first 200: the function scaled to zero (no pod left), then one call,
#       which wakes it and waits for a ready pod, RUNS times (p50, p90);
#   (e) the calls of (b) through a second gateway with `--kube-route proxy`, which reaches the
#       pod through the API server's proxy (what a gateway outside the cluster's network does).
# The function is fwatchdog in http mode in front of examples/fast-upstream, both static, in a
# FROM-scratch image: a fast upstream, so the hop's own cost shows.
#
#   bash benches/kubernetes.sh [SECONDS] [RUNS]      # as root
#
# FUNCTION_ENV="K=V ..." adds settings to the function image (log_requests=false, say: the
# gateway follows every pod's log, so a line per call costs the gateway too).
# Starts the cluster if it is not running (building it first if this machine has none) and
# stops it again at the end in that case.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
runs="${2:-10}"
source benches/common.sh
ensure_wrk
triple="$(uname -m)-unknown-linux-gnu"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet --target "$triple" \
  --target-dir target/static --bin fwatchdog --example fast-upstream
cargo build --release --quiet --bin fgateway

started=""
if ! bash tests/k8s/cluster.sh status >/dev/null 2>&1; then
  bash tests/k8s/cluster.sh up >/dev/null
  started=1
fi
work=$(mktemp -d)
ns="bench-$(date +%s)"
run=${FGW_K8S_RUN:-/var/tmp/fwatchdog-k8s}
api() {
  curl -fsS --cacert "$run/pki/ca.crt" -H "Authorization: Bearer $(cat "$run/pki/admin.token")" \
    -H 'Content-Type: application/json' "$@"
}
cleanup() {
  [ -n "${gw:-}" ] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null
  [ -n "${gw_proxy:-}" ] && kill "$gw_proxy" 2>/dev/null && wait "$gw_proxy" 2>/dev/null
  api -X DELETE "https://10.250.0.1:6443/api/v1/namespaces/$ns" >/dev/null 2>&1 || true
  [ -n "$started" ] && bash tests/k8s/cluster.sh down >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

static=target/static/$triple/release
image=localhost/fwatchdog-bench:latest
bash tests/k8s/cluster.sh image "$image" /fwatchdog "$static/fwatchdog:/fwatchdog" \
  "$static/examples/fast-upstream:/fast-upstream" \
  --env mode=http fprocess=/fast-upstream upstream_url=http://127.0.0.1:5000 LISTEN_PORT=5000 \
  ${FUNCTION_ENV:-}
api -X POST https://10.250.0.1:6443/api/v1/namespaces \
  -d "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\",\"labels\":{\"openfaas\":\"1\"}}}" >/dev/null

gw_port=$(free_port)
KUBECONFIG=$run/admin.kubeconfig POD_NAMESPACE=$ns RUST_LOG=warn ./target/release/fgateway up \
  --provider kubernetes --port "$gw_port" --data-dir "$work/gw" 2>"$work/gateway.log" &
gw=$!
wait_for "http://127.0.0.1:$gw_port/healthz"
gateway=http://127.0.0.1:$gw_port

deploy() {
  curl -fsS -o /dev/null "$gateway/system/functions" \
    -d "{\"service\":\"$1\",\"namespace\":\"$ns\",\"image\":\"$image\"}"
}
# Milliseconds since the epoch.
now_ms() { date +%s%3N; }
# Polls URL until it answers 200; prints the milliseconds since $1.
until_200() {
  local since=$1 url=$2
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -d x "$url")" = 200 ]; do sleep 0.05; done
  echo $(($(now_ms) - since))
}
pct() { sort -n | awk -v p="$1" '{v[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print v[i]}'; }

# (a) and (b).
deploy fast
until_200 "$(now_ms)" "$gateway/function/fast.$ns" >/dev/null
pod=$(api "https://10.250.0.1:6443/api/v1/namespaces/$ns/endpoints/fast" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["subsets"][0]["addresses"][0]["ip"])')
printf 'wrk.method = "POST"\nwrk.body = "hello world"\n' >"$work/post.lua"
direct_1=$(load "http://$pod:8080/" 1 -s "$work/post.lua")
direct_16=$(load "http://$pod:8080/" 16 -s "$work/post.lua")
through_1=$(load "$gateway/function/fast.$ns" 1 -s "$work/post.lua")
through_16=$(load "$gateway/function/fast.$ns" 16 -s "$work/post.lua")

# (e) through the API server's proxy.
proxy_port=$(free_port)
KUBECONFIG=$run/admin.kubeconfig POD_NAMESPACE=$ns RUST_LOG=warn ./target/release/fgateway up \
  --provider kubernetes --kube-route proxy --port "$proxy_port" --data-dir "$work/gw-proxy" \
  2>"$work/gateway-proxy.log" &
gw_proxy=$!
wait_for "http://127.0.0.1:$proxy_port/healthz"
until_200 "$(now_ms)" "http://127.0.0.1:$proxy_port/function/fast.$ns" >/dev/null
proxy_1=$(load "http://127.0.0.1:$proxy_port/function/fast.$ns" 1 -s "$work/post.lua")
proxy_16=$(load "http://127.0.0.1:$proxy_port/function/fast.$ns" 16 -s "$work/post.lua")
kill "$gw_proxy"
wait "$gw_proxy" 2>/dev/null || true

# (c) deploy → first 200.
deploys=()
for i in $(seq 1 "$runs"); do
  t=$(now_ms)
  deploy "cold-$i"
  deploys+=("$(until_200 "$t" "$gateway/function/cold-$i.$ns")")
  curl -fsS -o /dev/null -X DELETE "$gateway/system/functions" \
    -d "{\"functionName\":\"cold-$i\",\"namespace\":\"$ns\"}"
done

# (d) scale from zero → first 200.
wakes=()
for _ in $(seq 1 "$runs"); do
  curl -fsS -o /dev/null "$gateway/system/scale-function/fast" \
    -d "{\"serviceName\":\"fast\",\"namespace\":\"$ns\",\"replicas\":0}"
  # No pod left (its endpoint gone) before the call.
  until [ "$(api "https://10.250.0.1:6443/api/v1/namespaces/$ns/pods?labelSelector=faas_function=fast" |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')" = 0 ]; do sleep 0.2; done
  t=$(now_ms)
  wakes+=("$(until_200 "$t" "$gateway/function/fast.$ns")")
done

read -r d1 d1p50 _ <<<"$direct_1"
read -r d16 _ _ <<<"$direct_16"
read -r t1 t1p50 _ <<<"$through_1"
read -r t16 _ _ <<<"$through_16"
printf '%-52s %10s %10s\n' "" "req/s" "p50"
printf '%-52s %10.0f %10s\n' "(a) the pod directly, 1 connection" "$d1" "$d1p50"
printf '%-52s %10.0f %10s\n' "(b) through fgateway, 1 connection" "$t1" "$t1p50"
printf '%-52s %10.0f\n' "(a) the pod directly, 16 connections" "$d16"
printf '%-52s %10.0f   %.2f of (a)\n' "(b) through fgateway, 16 connections" "$t16" \
  "$(awk -v a="$d16" -v b="$t16" 'BEGIN {print b / a}')"
read -r p1 p1p50 _ <<<"$proxy_1"
read -r p16 _ _ <<<"$proxy_16"
printf '%-52s %10.0f %10s\n' "(e) through the API server's proxy, 1 connection" "$p1" "$p1p50"
printf '%-52s %10.0f   %.2f of (a)\n' "(e) through the API server's proxy, 16 connections" "$p16" \
  "$(awk -v a="$d16" -v b="$p16" 'BEGIN {print b / a}')"
printf '%-52s %7s ms p50 %7s ms p90\n' "(c) deploy -> first 200, $runs runs" \
  "$(printf '%s\n' "${deploys[@]}" | pct 50)" "$(printf '%s\n' "${deploys[@]}" | pct 90)"
printf '%-52s %7s ms p50 %7s ms p90\n' "(d) scale from zero -> first 200, $runs runs" \
  "$(printf '%s\n' "${wakes[@]}" | pct 50)" "$(printf '%s\n' "${wakes[@]}" | pct 90)"

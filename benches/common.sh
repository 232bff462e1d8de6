# Shared by the benchmark scripts: sourced, not run.

# Installs wrk from Debian's packages when it is missing.
ensure_wrk() {
  if ! command -v wrk >/dev/null; then
    echo "installing wrk (Debian package)" >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  fi
}

# Prints a loopback TCP port that was free a moment ago.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until URL answers 2xx (10 s at most).
wait_for() {
  for _ in $(seq 1 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "no answer from $1" >&2
  return 1
}

# Runs wrk against URL with CONNECTIONS for $secs seconds; prints "req/s p50 p99".
# Extra arguments go to wrk (a -s script, say). Errors and non-2xx counts go to stderr.
load() {
  local url=$1 conns=$2
  shift 2
  local threads=$((conns < 2 ? 1 : 2))
  wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "$@" "$url" | awk '
    /^Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2}
    /Non-2xx|Socket errors/ {print "  " $0 > "/dev/stderr"}
    END {print rps, p50, p99}'
}

# Peak RSS of PID, as "N kB".
peak_rss() {
  awk '/VmHWM/ {print $2, $3}' "/proc/$1/status"
}

# What the fast-upstream benchmarks share: a temporary $work (removed on exit, after every
# process in $pids is stopped), $work/post.lua (wrk POSTs "hello world"), and the fast upstream
# ($FAST_UPSTREAM, or examples/fast-upstream built beforehand) listening on $up_port.
start_fast_upstream() {
  work=$(mktemp -d)
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
  upstream_bin=${FAST_UPSTREAM:-$PWD/target/release/examples/fast-upstream}
  printf 'wrk.method = "POST"\nwrk.body = "hello world"\n' >"$work/post.lua"
  up_port=$(free_port)
  LISTEN_PORT=$up_port "$upstream_bin" 2>/dev/null &
  pids+=($!)
  wait_for "http://127.0.0.1:$up_port/"
}

# Sets nats_bin to the nats-server executable (PATH or Debian's /usr/sbin), or stops.
find_nats_server() {
  nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  [ -x "$nats_bin" ] || { echo "nats-server is required (apt-get install nats-server)" >&2; exit 1; }
}

# What the static-provider benchmarks share: the fast upstream (see start_fast_upstream),
# $work/stack.yml naming it function `fast`, and $fgateway ($FGATEWAY, or the release build).
prepare_fast_stack() {
  fgateway=${FGATEWAY:-$PWD/target/release/fgateway}
  start_fast_upstream
  cat >"$work/stack.yml" <<YAML
functions:
  fast:
    upstream: http://127.0.0.1:$up_port
YAML
}

# Starts a gateway (extra flags in "$@") and sets gw (its pid) and gw_port.
start_gateway() {
  gw_port=$(free_port)
  RUST_LOG=warn "$fgateway" up --provider static -f "$work/stack.yml" \
    --port "$gw_port" --data-dir "$work/data-$gw_port" "$@" 2>>"$work/gateway.log" &
  gw=$!
  pids+=("$gw")
  wait_for "http://127.0.0.1:$gw_port/healthz"
}
stop_gateway() {
  kill "$gw" && wait "$gw" 2>/dev/null || true
}

# ticks PID: the process's user + system time so far, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

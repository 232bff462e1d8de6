#!/usr/bin/env bash
# Runs the OpenFaaS certifier (github.com/openfaas/certifier) against fgateway, end to end: starts
# a Podman API service of its own, builds the two function images the certifier deploys (FROM
# scratch: a static busybox and a watchdog), starts fgateway on a free port, runs the
# certifier's test binary, prints what passed and failed, and tears everything down again.
# As root, from the repository root:
#
#   bash conformance/certifier.sh [OPTIONS] [-- CERTIFIER_FLAGS...]
#
# Options (each also as --name=value):
#   --provider NAME    where functions run: docker (Podman's Docker API), or kubernetes (the
#                      test cluster of tests/k8s/cluster.sh, fgateway deployed into it from
#                      deploy/kubernetes/). Default: docker.
#   --watchdog MODE    the images' watchdogs: classic (OpenFaaS's classic-watchdog and
#                      of-watchdog, as in the images the certifier names), fwatchdog (ours) or
#                      both (classic, then fwatchdog). Default: fwatchdog.
#   --runs N           certifier runs per watchdog mode, each on a fresh gateway. Default: 1.
#   --certifier PATH   a checkout of openfaas/certifier (built with `go test -c`, vendored
#                      modules, no network) or its built test binary. Default: $CERTIFIER.
#   --workdir DIR      Podman storage, image contexts, logs. Default: $WORKDIR, else
#                      target/conformance. One run at a time per DIR (a lock).
#   -h, --help         this text.
#   -- FLAGS...        passed to the certifier as they are (e.g. -test.run Test_Invoke).
#
# Environment:
#   FGATEWAY           default target/release/fgateway, else target/debug/fgateway.
#   FGATEWAY_STATIC    --provider kubernetes: a static fgateway for its image; default
#                      target/$(uname -m)-unknown-linux-gnu/release/fgateway, else
#                      target/static/$(uname -m)-unknown-linux-gnu/debug/fgateway.
#   FWATCHDOG          a static fwatchdog; default target/$(uname -m)-unknown-linux-gnu/release/
#                      fwatchdog, else target/release/fwatchdog.
#   CLASSIC_WATCHDOG, OF_WATCHDOG   OpenFaaS's watchdogs, static (for --watchdog classic).
#   BUSYBOX            a static busybox (busybox-static); default /bin/busybox, /usr/bin/busybox.
#   PODMAN, GO         the podman and go executables; default from PATH.
#   CERTIFIER_RUNC     1 (default): Podman runs runc with no default ulimits (crun fails on some
#                      cgroup layouts); 0: Podman's own defaults.
#   CERTIFIER_SUBNET, CERTIFIER_BRIDGE   the containers' network; default 10.87.213.0/24 on
#                      fgwcert0 (outside Podman's pools: 10.88.0.0/16, and 10.89.0.0 to 10.255.255.255).
#   CERTIFIER_NAMESPACES   passed to the certifier, and created on the gateway; default
#                      certifier-test.
#   idler_enabled      passed to the certifier; default true.
#   CERTIFIER_COMMIT   shown as the certifier's commit when --certifier is a binary.
#   CERTIFIER_TIMEOUT  the test binary's -test.timeout; default 30m.
#   FGATEWAY_ARGS      extra words for `fgateway up` (e.g. --log-format json).
#   RUST_LOG           passed to fgateway.
#
# Logs: WORKDIR/runs/STAMP/MODE-RUN/. The exit status is 0 only when every run passed every test
# and nothing of the run was left behind.

# A provider NAME is a set of functions: provider_NAME_start (also sets PROVIDER_GATEWAY_ARGS,
# its flags for `fgateway up`), _images CONTEXT TAG [CONTEXT TAG...], _reset (between runs),
# _stop and _leftovers (prints what of it remains after _stop, one thing a line); optionally
# _check (with the arguments' checks), _gateway RUN_DIR and _gateway_stop RUN_DIR (a gateway
# the provider deploys itself, instead of fgateway started here). Nothing else dispatches on
# the provider's name.

set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# The names the certifier deploys (its -registryPrefix default is docker.io).
ALPINE_IMAGE=docker.io/functions/alpine:latest
REDIRECTOR_IMAGE=docker.io/theaxer/redirector:latest
# The redirector's own HTTP server, behind its watchdog (not 8081: the watchdogs' metrics port).
REDIRECTOR_PORT=8082
START_TIMEOUT=120        # seconds, for things that should be quick
GATEWAY_STOP_TIMEOUT=120 # fgateway drains and stops its containers on SIGTERM

PROVIDER=docker WATCHDOG_MODE=fwatchdog RUNS=1
CERTIFIER_PATH=${CERTIFIER:-}
WORK=${WORKDIR:-$REPO_ROOT/target/conformance}
CERTIFIER_ARGS=()
# What the clean-up reads; empty means "not started".
GATEWAY_PID="" GATEWAY_PIDS=() CERTIFIER_PID="" TAIL_PID="" PROVIDER_GATEWAY_ARGS=()

# --- Helpers ------------------------------------------------------------------------------------
usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
log() { printf '[certifier.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
is_alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }
absolute() { if [[ $1 == /* ]]; then printf '%s\n' "$1"; else printf '%s\n' "$PWD/$1"; fi; }

# wait_until WHAT TIMEOUT COMMAND...: runs COMMAND every 0.2 s until it succeeds (COMMAND may die
# to stop early).
wait_until() {
	local what=$1 end=$((SECONDS + $2))
	shift 2
	until "$@"; do
		((SECONDS < end)) || { log "timed out waiting for $what"; return 1; }
		sleep 0.2
	done
}

# stop_process PID NAME TIMEOUT: SIGTERM, up to TIMEOUT seconds, then SIGKILL; reaps it.
stop_process() {
	local pid=$1 name=$2 end=$((SECONDS + $3))
	is_alive "$pid" || return 0
	log "stopping $name (pid $pid, SIGTERM, up to $3s)"
	kill -TERM "$pid" 2>/dev/null || true
	while is_alive "$pid" && ((SECONDS < end)); do sleep 0.2; done
	! is_alive "$pid" || { log "$name did not stop within $3s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
	wait "$pid" 2>/dev/null || true
}

# default VAR PATH...: unless VAR is set, the first executable PATH (else the last).
default() {
	local var=$1 path
	shift
	[[ -z ${!var:-} ]] || return 0
	for path in "$@"; do [[ -x $path ]] && break; done
	printf -v "$var" '%s' "$path"
}

# require_static WHAT PATH HINT: PATH must be an executable needing no C library (the images
# have none).
require_static() {
	[[ -n $2 && -f $2 && -x $2 ]] || die "$1 is needed ('$2' is not an executable file): $3"
	file -bL -- "$2" | grep -q static || die "$1 ($2) is not statically linked: $3"
}

# warn_stale BINARY: says so when a source file is newer than BINARY.
warn_stale() {
	local newer
	newer=$(find "$REPO_ROOT/src" -type f -newer "$1" -print -quit 2>/dev/null) || true
	[[ -z $newer ]] || log "warning: $1 is older than ${newer#"$REPO_ROOT"/} (and maybe more): rebuild it?"
}

# --- Arguments ----------------------------------------------------------------------------------
parse_args() {
	local opt value
	while (($# > 0)); do
		opt=${1%%=*}
		case $opt in
		-h | --help) usage; exit 0 ;;
		--) shift; CERTIFIER_ARGS=("$@"); return ;;
		--provider | --watchdog | --runs | --certifier | --workdir) ;;
		*) die "unknown argument: $1 (see --help)" ;;
		esac
		if [[ $1 == *=* ]]; then
			value=${1#*=}
		else
			(($# >= 2)) || die "$1 needs a value (see --help)"
			value=$2
			shift
		fi
		case $opt in
		--provider) PROVIDER=$value ;;
		--watchdog) WATCHDOG_MODE=$value ;;
		--runs) RUNS=$value ;;
		--certifier) CERTIFIER_PATH=$value ;;
		--workdir) WORK=$value ;;
		esac
		shift
	done
}

check_args() {
	declare -F "provider_${PROVIDER}_start" >/dev/null ||
		die "provider '$PROVIDER' is not supported (supported: docker, kubernetes)"
	case $WATCHDOG_MODE in
	classic | fwatchdog) MODES=("$WATCHDOG_MODE") ;;
	both) MODES=(classic fwatchdog) ;;
	*) die "--watchdog must be classic, fwatchdog or both, not '$WATCHDOG_MODE'" ;;
	esac
	[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number, not '$RUNS'"
	local tool
	for tool in curl file flock; do command -v $tool >/dev/null || die "$tool is needed"; done
	WORK=$(absolute "$WORK")

	! declare -F "provider_${PROVIDER}_check" >/dev/null || "provider_${PROVIDER}_check"
	default FGATEWAY "$REPO_ROOT"/target/{release,debug}/fgateway
	[[ -f $FGATEWAY && -x $FGATEWAY ]] ||
		die "fgateway ($FGATEWAY) is needed: cargo build --release --bin fgateway, or set FGATEWAY"
	FGATEWAY=$(absolute "$FGATEWAY")
	warn_stale "$FGATEWAY"
	if [[ " ${MODES[*]} " == *" fwatchdog "* ]]; then
		local triple
		triple=$(uname -m)-unknown-linux-gnu
		default FWATCHDOG "$REPO_ROOT/target/$triple/release/fwatchdog" "$REPO_ROOT/target/release/fwatchdog"
		require_static fwatchdog "$FWATCHDOG" "build it as the README says (RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --bin fwatchdog --target $triple) or set FWATCHDOG"
		FWATCHDOG=$(absolute "$FWATCHDOG")
		warn_stale "$FWATCHDOG"
	fi
	if [[ " ${MODES[*]} " == *" classic "* ]]; then
		require_static "OpenFaaS's classic watchdog" "${CLASSIC_WATCHDOG:-}" \
			"build github.com/openfaas/classic-watchdog with CGO_ENABLED=0 go build; set CLASSIC_WATCHDOG"
		require_static "OpenFaaS's of-watchdog" "${OF_WATCHDOG:-}" \
			"build github.com/openfaas/of-watchdog with CGO_ENABLED=0 go build; set OF_WATCHDOG"
		CLASSIC_WATCHDOG=$(absolute "$CLASSIC_WATCHDOG") OF_WATCHDOG=$(absolute "$OF_WATCHDOG")
	fi
	default BUSYBOX /bin/busybox /usr/bin/busybox
	require_static busybox "$BUSYBOX" "apt-get install busybox-static, or set BUSYBOX"

	[[ -n $CERTIFIER_PATH ]] || die "which certifier? Give --certifier PATH or set CERTIFIER (see --help)"
	CERTIFIER_PATH=$(absolute "$CERTIFIER_PATH")
	[[ -d $CERTIFIER_PATH/tests || (-f $CERTIFIER_PATH && -x $CERTIFIER_PATH) ]] ||
		die "--certifier $CERTIFIER_PATH is neither a checkout of openfaas/certifier nor an executable"
}

# Sets CERTIFIER_BIN (building it from a checkout if need be) and CERTIFIER_DESC.
prepare_certifier() {
	if [[ -f $CERTIFIER_PATH ]]; then
		CERTIFIER_BIN=$CERTIFIER_PATH
		CERTIFIER_DESC="binary $CERTIFIER_BIN, commit ${CERTIFIER_COMMIT:-unknown (set CERTIFIER_COMMIT)}"
		return
	fi
	CERTIFIER_BIN=$WORK/certifier.test
	log "building the certifier's test binary from $CERTIFIER_PATH"
	(cd -- "$CERTIFIER_PATH" && GOFLAGS=-mod=vendor GOTOOLCHAIN=local GOPROXY=off CGO_ENABLED=0 \
		"${GO:-go}" test -c -o "$CERTIFIER_BIN" ./tests) || die "go test -c failed in $CERTIFIER_PATH"
	local commit
	commit=$(git -C "$CERTIFIER_PATH" log -1 --format='%H (%cI) %s' 2>/dev/null) || commit=unknown
	[[ -z $(git -C "$CERTIFIER_PATH" status --porcelain --untracked-files=no 2>/dev/null) ]] ||
		commit+=", with local changes"
	CERTIFIER_DESC="checkout $CERTIFIER_PATH at $commit"
}

# --- Function images ----------------------------------------------------------------------------
# make_rootfs DIR WATCHDOG: busybox with every applet in /bin, WATCHDOG as /usr/bin/fwatchdog, a
# world-writable /tmp and a user "app".
make_rootfs() {
	local root=$1 applet
	mkdir -p "$root"/{bin,usr/bin,usr/local/bin,etc,tmp,proc,sys,dev,root,home/app}
	chmod 1777 "$root/tmp"
	install -m 0755 -- "$BUSYBOX" "$root/bin/busybox"
	install -m 0755 -- "$2" "$root/usr/bin/fwatchdog"
	for applet in $("$BUSYBOX" --list); do
		[[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
	done
	printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'app:x:1000:1000:app:/home/app:/bin/sh' \
		'nobody:x:65534:65534:nobody:/:/bin/false' >"$root/etc/passwd"
	printf '%s\n' 'root:x:0:' 'app:x:1000:' 'nogroup:x:65534:' >"$root/etc/group"
}

# write_dockerfile DIR MODE LINES...: FROM scratch with DIR/rootfs, LINES, and the health check
# of OpenFaaS's sample images (healthy while the watchdog's /tmp/.lock exists).
write_dockerfile() {
	local dir=$1 mode=$2
	shift 2
	printf '%s\n' 'FROM scratch' 'COPY rootfs/ /' 'ENV PATH=/usr/local/bin:/usr/bin:/bin' "$@" \
		"LABEL org.fgateway.conformance.watchdog=$mode" \
		'HEALTHCHECK --interval=5s --timeout=3s CMD [ -e /tmp/.lock ] || exit 1' \
		'CMD ["fwatchdog"]' >"$dir/Dockerfile"
}

# build_images MODE: functions/alpine and theaxer/redirector with MODE's watchdogs.
build_images() {
	local mode=$1 dir=$WORK/images/$1 alpine_watchdog=${FWATCHDOG:-} redirector_watchdog=${FWATCHDOG:-}
	if [[ $mode == classic ]]; then
		# As the published images: the classic watchdog forking a process per call; of-watchdog
		# in http mode in front of a long-running server.
		alpine_watchdog=$CLASSIC_WATCHDOG redirector_watchdog=$OF_WATCHDOG
	fi
	log "images for the $mode watchdog: functions/alpine with $alpine_watchdog, theaxer/redirector with $redirector_watchdog"
	rm -rf -- "$dir"
	# functions/alpine: the certifier gives fprocess (env, cat, sha512sum...) when it deploys.
	make_rootfs "$dir/alpine/rootfs" "$alpine_watchdog"
	write_dockerfile "$dir/alpine" "$mode"

	# theaxer/redirector: every call answers 302 to its `destination` variable. The handler runs
	# busybox httpd on loopback; for / it runs cgi-bin/index.cgi with its own environment.
	make_rootfs "$dir/redirector/rootfs" "$redirector_watchdog"
	local app=$dir/redirector/rootfs/home/app
	mkdir -p "$app/www/cgi-bin"
	printf '#!/bin/sh\nexec httpd -f -p 127.0.0.1:%s -h /home/app/www\n' "$REDIRECTOR_PORT" >"$app/handler"
	cat >"$app/www/cgi-bin/index.cgi" <<-'EOF'
		#!/bin/sh
		printf 'Status: 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n' "$destination"
	EOF
	chmod 0755 "$app/handler" "$app/www/cgi-bin/index.cgi"
	write_dockerfile "$dir/redirector" "$mode" 'WORKDIR /home/app' 'USER app' \
		"ENV fprocess=./handler mode=http upstream_url=http://127.0.0.1:$REDIRECTOR_PORT"

	"provider_${PROVIDER}_images" "$dir/alpine" "$ALPINE_IMAGE" "$dir/redirector" "$REDIRECTOR_IMAGE"
}

# Podman with the storage a provider chose (PODMAN_BASE: the command and its global options).
PODMAN_BASE=()
podman_cmd() { "${PODMAN_BASE[@]}" "$@" 9>&-; }

# --- Providers ----------------------------------------------------------------------------------
for provider_file in "$REPO_ROOT"/conformance/providers/*.sh; do
	# shellcheck source=/dev/null
	source "$provider_file"
done

# --- fgateway -----------------------------------------------------------------------------------
# gateway_address LOG: the address in fgateway's own `listening addr=` line, in its text format
# (`INFO fwatchdog::gateway: listening addr=...`) or JSON (`"target":"fwatchdog::gateway"`).
gateway_address() {
	awk '/listening addr=/ && (/ fwatchdog::gateway: / || /"target":"fwatchdog::gateway"/) {
		sub(/.*listening addr=/, ""); sub(/[ "].*/, ""); print; exit }' "$1" 2>/dev/null
}

# gateway_up LOG: whether fgateway has logged its address and answers /healthz there.
gateway_up() {
	is_alive "$GATEWAY_PID" || die "fgateway exited; $1 ends with:
$(tail -n 20 "$1")"
	GATEWAY_ADDR=$(gateway_address "$1")
	[[ -n $GATEWAY_ADDR ]] &&
		curl -fsS --noproxy '*' --max-time 2 -o /dev/null "http://$GATEWAY_ADDR/healthz" 2>/dev/null
}

# start_gateway RUN_DIR: fgateway with a fresh data directory (or, for a provider with a
# provider_NAME_gateway hook, the gateway that hook deploys); sets GATEWAY_URL.
start_gateway() {
	if declare -F "provider_${PROVIDER}_gateway" >/dev/null; then
		"provider_${PROVIDER}_gateway" "$1"
		return
	fi
	local dir=$1 extra=() environment=(PATH="$PATH" LANG=C.UTF-8)
	[[ -z ${FGATEWAY_ARGS:-} ]] || read -r -a extra <<<"$FGATEWAY_ARGS"
	[[ -z ${HOME:-} ]] || environment+=(HOME="$HOME")
	[[ -z ${RUST_LOG:-} ]] || environment+=(RUST_LOG="$RUST_LOG")
	mkdir -p "$dir/fgateway-data"
	# A clean environment: fgateway reads settings from variables (port, basic_auth...).
	env -i "${environment[@]}" "$FGATEWAY" up "${PROVIDER_GATEWAY_ARGS[@]}" --bind-address 127.0.0.1 \
		--port 0 --data-dir "$dir/fgateway-data" "${extra[@]}" >"$dir/fgateway.log" 2>&1 9>&- &
	GATEWAY_PID=$! GATEWAY_PIDS+=("$!")
	wait_until "fgateway's address in $dir/fgateway.log and its /healthz" "$START_TIMEOUT" \
		gateway_up "$dir/fgateway.log" || die "fgateway did not start"
	GATEWAY_URL=http://$GATEWAY_ADDR
	log "fgateway (pid $GATEWAY_PID) listens on $GATEWAY_URL"
}

# stop_gateway RUN_DIR: the run's gateway stopped (by the provider's provider_NAME_gateway_stop
# hook when it has one).
stop_gateway() {
	if declare -F "provider_${PROVIDER}_gateway_stop" >/dev/null; then
		"provider_${PROVIDER}_gateway_stop" "$1"
	else
		stop_process "$GATEWAY_PID" fgateway "$GATEWAY_STOP_TIMEOUT"
	fi
	GATEWAY_PID=""
}

# create_namespaces: the certifier's extra namespaces, as its upstream set-up creates them.
create_namespaces() {
	local ns code
	for ns in ${CERTIFIER_NAMESPACES//,/ }; do
		code=$(curl -sS --noproxy '*' --max-time 10 -o /dev/null -w '%{http_code}' \
			-H 'Content-Type: application/json' -d "{\"name\":\"$ns\"}" \
			"$GATEWAY_URL/system/namespace/") || code=000
		[[ $code == 20[012] || $code == 409 ]] || log "warning: creating namespace $ns answered $code"
	done
}

# --- The certifier and its output ---------------------------------------------------------------
# run_certifier RUN_DIR: runs it against GATEWAY_URL, shown and kept in RUN_DIR/certifier.log (in
# the background, so that a signal reaches the trap at once); sets CERTIFIER_RC.
run_certifier() {
	local out=$1/certifier.log args=(-test.v -test.count=1 "-test.timeout=${CERTIFIER_TIMEOUT:-30m}"
		"-gateway=$GATEWAY_URL" "${CERTIFIER_ARGS[@]}")
	log "running: CERTIFIER_NAMESPACES=$CERTIFIER_NAMESPACES idler_enabled=$IDLER_ENABLED $CERTIFIER_BIN ${args[*]}"
	: >"$out"
	CERTIFIER_NAMESPACES=$CERTIFIER_NAMESPACES idler_enabled=$IDLER_ENABLED \
		"$CERTIFIER_BIN" "${args[@]}" >"$out" 2>&1 9>&- &
	CERTIFIER_PID=$!
	tail -n +1 -f --pid="$CERTIFIER_PID" "$out" 9>&- &
	TAIL_PID=$!
	CERTIFIER_RC=0
	wait "$CERTIFIER_PID" || CERTIFIER_RC=$?
	wait "$TAIL_PID" || true
	CERTIFIER_PID="" TAIL_PID=""
}

# summarize LOG COUNTS_FILE: prints the counts and each failing test with its messages, and
# writes "top_pass top_fail top_skip sub_pass sub_fail sub_skip failed_names" to COUNTS_FILE.
# A message ("file_test.go:NNN: text", continued on deeper-indented lines) belongs to the test
# of the last "=== RUN/CONT/NAME" line, or, indented below a "--- RESULT" line, to that test.
summarize() {
	awk -v counts="$2" '
	function indent() { match($0, /^ */); return RLENGTH }
	function text() { s = $0; sub(/^ +/, "", s); return s }
	/^=== (RUN|CONT|NAME|PAUSE) / { current = $3; result = ""; owner = ""; next }
	/^ *--- (PASS|FAIL|SKIP): / {
		r = substr($2, 1, 4); n[(indent() ? "sub" : "top") r]++
		if (r == "FAIL") failed[++nf] = $3
		if (r == "SKIP") skipped[++ns] = $3
		result = $3; result_indent = indent(); owner = ""; next
	}
	/^ +[^ ]+_test\.go:[0-9]+: / {
		owner = (result != "" && indent() > result_indent) ? result : current
		owner_indent = indent(); msg[owner] = msg[owner] "        " text() "\n"; next
	}
	owner != "" && indent() > owner_indent { msg[owner] = msg[owner] "          " text() "\n"; next }
	{ owner = "" }
	END {
		printf "  top-level tests: %d passed, %d failed, %d skipped\n", n["topPASS"], n["topFAIL"], n["topSKIP"]
		printf "  subtests:        %d passed, %d failed, %d skipped\n", n["subPASS"], n["subFAIL"], n["subSKIP"]
		for (i = 1; i <= nf; i++) {
			printf "  FAILED %s\n%s", failed[i], (msg[failed[i]] != "" ? msg[failed[i]] : "        (no message of its own: see its subtests)\n")
			names = names (i > 1 ? "," : "") failed[i]
		}
		for (i = 1; i <= ns; i++) printf "  skipped %s\n%s", skipped[i], msg[skipped[i]]
		print n["topPASS"] + 0, n["topFAIL"] + 0, n["topSKIP"] + 0, n["subPASS"] + 0, n["subFAIL"] + 0,
			n["subSKIP"] + 0, (nf ? names : "-") > counts
	}' "$1"
}

# --- Clean-up -----------------------------------------------------------------------------------
cleanup() {
	local rc=$? left pid
	set +e
	trap - EXIT INT TERM HUP
	echo >&2
	log "tearing down"
	stop_process "$CERTIFIER_PID" "the certifier" 10
	stop_process "$TAIL_PID" tail 5
	stop_process "$GATEWAY_PID" fgateway "$GATEWAY_STOP_TIMEOUT"
	"provider_${PROVIDER}_stop"
	left=$(
		for pid in "${GATEWAY_PIDS[@]}"; do ! is_alive "$pid" || echo "process: fgateway (pid $pid)"; done
		awk -v dir="$WORK/" 'index($5, dir) == 1 { print "mount: " $5 }' /proc/self/mountinfo
		"provider_${PROVIDER}_leftovers"
	)
	if [[ -n $left ]]; then
		log "left behind (not removed: check and remove by hand):"
		sed 's/^/  /' <<<"$left" >&2
		((rc != 0)) || rc=1
	else
		log "nothing of this run is left behind (fgateway, mounts, and the $PROVIDER provider's containers, processes, network and firewall rules)"
	fi
	exit "$rc"
}

# --- Main ---------------------------------------------------------------------------------------
main() {
	parse_args "$@"
	check_args
	CERTIFIER_NAMESPACES=${CERTIFIER_NAMESPACES:-certifier-test}
	IDLER_ENABLED=${idler_enabled:-true}
	mkdir -p "$WORK"
	# One run per work directory (children do not inherit the lock: 9>&-).
	exec 9>"$WORK/.lock"
	flock -n 9 || die "another run is using $WORK (it holds $WORK/.lock): wait for it, or give another --workdir"
	RUNS_DIR=$WORK/runs/$(date +%Y%m%d-%H%M%S)
	mkdir -p "$RUNS_DIR"
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	# The terminal is gone: tear down all the same, logging to a file.
	trap 'exec >>"$RUNS_DIR/hangup.log" 2>&1; exit 129' HUP

	prepare_certifier
	log "certifier: $CERTIFIER_DESC"
	log "fgateway: $FGATEWAY"
	"provider_${PROVIDER}_start"

	local mode run dir start took counts rows=() failed=0 pass=0 fail=0 skip=0
	local row='%-10s %3s %8s %5s %5s %5s %5s %5s %5s %5s  %s\n'
	for mode in "${MODES[@]}"; do
		build_images "$mode"
		for ((run = 1; run <= RUNS; run++)); do
			dir=$RUNS_DIR/$mode-$run
			mkdir -p "$dir"
			echo >&2
			log "=== $mode watchdog, run $run of $RUNS (logs in $dir)"
			"provider_${PROVIDER}_reset"
			start=$SECONDS
			start_gateway "$dir"
			create_namespaces
			run_certifier "$dir"
			took=$((SECONDS - start))
			took="$((took / 60))m$((took % 60))s"
			stop_gateway "$dir"
			printf '\nResults: provider %s, %s watchdog, run %d of %d (%s, certifier exit status %d)\n' \
				"$PROVIDER" "$mode" "$run" "$RUNS" "$took" "$CERTIFIER_RC"
			echo "  certifier: $CERTIFIER_DESC"
			summarize "$dir/certifier.log" "$dir/counts"
			read -r -a counts <"$dir/counts"
			if ((counts[0] + counts[1] + counts[2] == 0)); then
				echo "  no test ran; the certifier's output ends with:"
				tail -n 15 "$dir/certifier.log" | sed 's/^/    /'
			fi
			pass=$((pass + counts[0])) fail=$((fail + counts[1])) skip=$((skip + counts[2]))
			((CERTIFIER_RC == 0 && counts[1] + counts[4] == 0)) || failed=1
			rows+=("$(printf "$row" "$mode" "$run" "$took" "${counts[@]:0:6}" "$CERTIFIER_RC" "${counts[6]}")")
		done
	done

	printf '\nSummary (provider %s; certifier: %s)\n' "$PROVIDER" "$CERTIFIER_DESC"
	printf "$row" watchdog run time pass fail skip sub:p sub:f sub:s exit "failed tests"
	printf '%s\n' "${rows[@]}"
	printf '\nTop-level tests over all runs: %d passed, %d failed, %d skipped\n' "$pass" "$fail" "$skip"
	((failed == 0)) || { echo "Some tests failed."; exit 1; }
	echo "Every test passed."
}

main "$@"

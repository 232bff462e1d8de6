# Sourced by conformance/certifier.sh: the docker provider's functions (see "A provider NAME" there).
# shellcheck shell=bash

# --- Provider: docker (a Podman API service of our own) -----------------------------------------
#
# Everything of Podman's lives under WORKDIR/podman: storage, run-time state, events, network
# definitions. Its containers join a bridge network of their own ($BRIDGE on $SUBNET), defined
# there as Podman's default network, so that containers created through the Docker API join it.
# netavark removes the bridge and its firewall rules when the last container leaves it.

NETWORK_NAME=fgw-certifier
podman_ping() {
	is_alive "$PODMAN_PID" || die "the Podman service exited; $PODMAN_DIR/service.log ends with:
$(tail -n 20 "$PODMAN_DIR/service.log")"
	[[ $(curl -sS --noproxy '*' --max-time 2 --unix-socket "$PODMAN_SOCKET" http://podman/_ping 2>/dev/null) == OK ]]
}

# docker_network_leftovers: our bridge, and firewall rules naming it, its subnet or network.
docker_network_leftovers() {
	local tool
	! ip link show "$BRIDGE" >/dev/null 2>&1 || echo "network link $BRIDGE"
	{
		for tool in iptables-save ip6tables-save; do
			if command -v $tool >/dev/null; then $tool 2>/dev/null | sed "s/^/$tool: /"; fi
		done
		if command -v nft >/dev/null; then nft list ruleset 2>/dev/null | sed 's/^/nft: /'; fi
	} | grep -F -e "$BRIDGE" -e "$SUBNET" -e "name: $NETWORK_NAME " || true
}

provider_docker_start() {
	[[ $EUID -eq 0 ]] || die "the docker provider needs root (it runs a rootful Podman)"
	local tool ulimits="" runtime=""
	# default_ulimits = [] and runtime = "runc" (unless CERTIFIER_RUNC=0): on some cgroup layouts
	# (cgroup v1 controllers without systemd, say) crun fails to create containers, and a
	# sandboxed host may refuse Podman's default ulimits; runc without them works there too.
	[[ ${CERTIFIER_RUNC:-1} == 0 ]] || ulimits='default_ulimits = []' runtime='runtime = "runc"'
	for tool in "${PODMAN:-podman}" ip ${runtime:+runc}; do
		command -v "$tool" >/dev/null || die "$tool is needed (Debian packages podman, iproute2, runc)"
	done
	BRIDGE=${CERTIFIER_BRIDGE:-fgwcert0} SUBNET=${CERTIFIER_SUBNET:-10.87.213.0/24}
	[[ $SUBNET =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/(1[6-9]|2[0-4])$ ]] ||
		die "CERTIFIER_SUBNET must look like A.B.C.0/16..24, not '$SUBNET'"
	local prefix=${BASH_REMATCH[1]}
	PODMAN_DIR=$WORK/podman
	mkdir -p "$PODMAN_DIR"/{root,run,tmp,networks,engine-tmp}
	# Podman reads only this file (CONTAINERS_CONF): nothing system-wide is used or changed.
	cat >"$PODMAN_DIR/containers.conf" <<-EOF
		[containers]
		$ulimits
		[engine]
		$runtime
		tmp_dir = "$PODMAN_DIR/engine-tmp"
		image_copy_tmp_dir = "$PODMAN_DIR/tmp"
		events_logger = "file"
		events_logfile_path = "$PODMAN_DIR/events.log"
		[network]
		network_config_dir = "$PODMAN_DIR/networks"
		default_network = "$NETWORK_NAME"
	EOF
	cat >"$PODMAN_DIR/networks/$NETWORK_NAME.json" <<-EOF
		{ "name": "$NETWORK_NAME", "id": "$(printf '%s' "$NETWORK_NAME" | sha256sum | cut -c1-64)",
		  "driver": "bridge", "network_interface": "$BRIDGE", "created": "$(date -u +%FT%TZ)",
		  "subnets": [ { "subnet": "$SUBNET", "gateway": "$prefix.1" } ], "ipv6_enabled": false,
		  "internal": false, "dns_enabled": false, "ipam_options": { "driver": "host-local" } }
	EOF
	PODMAN_BASE=(env "CONTAINERS_CONF=$PODMAN_DIR/containers.conf" "TMPDIR=$PODMAN_DIR/tmp"
		"${PODMAN:-podman}" --root "$PODMAN_DIR/root" --runroot "$PODMAN_DIR/run")

	# Containers a killed run left in this storage (their removal takes the bridge down), then
	# nothing may remain of the network, and no one else's may use its name or subnet.
	podman_cmd rm -af -t 2 >/dev/null 2>&1 || true
	local left defined
	left=$(docker_network_leftovers)
	[[ -z $left ]] || die "left over on this host (by an earlier run, or someone else's): remove it by hand, or set CERTIFIER_BRIDGE and CERTIFIER_SUBNET:
$left"
	defined=$(grep -l -s -F -e "\"$BRIDGE\"" -e "\"$SUBNET\"" /etc/containers/networks/*.json /etc/cni/net.d/*) || true
	[[ -z $defined ]] || die "$BRIDGE or $SUBNET is defined by another network ($defined): set CERTIFIER_BRIDGE or CERTIFIER_SUBNET"
	! ip -o addr show | grep -F " $prefix." >/dev/null || die "the subnet $SUBNET is in use on this host: set CERTIFIER_SUBNET"

	# A Unix socket path must fit in 108 bytes.
	PODMAN_SOCKET=$PODMAN_DIR/api.sock
	if ((${#PODMAN_SOCKET} > 100)); then
		SOCKET_TMP=$(mktemp -d /tmp/fgw-certifier.XXXXXX)
		PODMAN_SOCKET=$SOCKET_TMP/api.sock
	fi
	rm -f -- "$PODMAN_SOCKET"
	log "starting the Podman API service on $PODMAN_SOCKET (storage $PODMAN_DIR, network $BRIDGE $SUBNET)"
	# A simple command in the background: $! is podman itself (env execs it).
	"${PODMAN_BASE[@]}" system service --time=0 "unix://$PODMAN_SOCKET" >"$PODMAN_DIR/service.log" 2>&1 9>&- &
	PODMAN_PID=$!
	wait_until "the Podman API service" "$START_TIMEOUT" podman_ping ||
		die "the Podman service never answered on $PODMAN_SOCKET"
	PROVIDER_GATEWAY_ARGS=(--provider docker --image-pull never --docker-host "unix://$PODMAN_SOCKET"
		--docker-on-exit stop)
}

# provider_docker_images CONTEXT TAG...: builds each, and checks that it starts.
provider_docker_images() {
	local out
	while (($# >= 2)); do
		log "building $2"
		podman_cmd build --format docker --pull=never -t "$2" "$1" >"$1.build.log" 2>&1 ||
			die "podman build of $2 failed: $(tail -n 20 "$1.build.log")"
		out=$(podman_cmd run --rm "$2" fwatchdog -version 2>&1) ||
			die "$2 does not start (podman run --rm $2 fwatchdog -version): $out"
		log "$2 starts: $(grep -m 1 -o 'Version: [^[:space:]]*' <<<"$out" || echo "$out")"
		shift 2
	done
}

# Between runs, no container of an earlier run may remain.
provider_docker_reset() { podman_cmd rm -af -t 2 >/dev/null 2>&1 || true; }

provider_docker_stop() {
	[[ -n ${PODMAN_BASE[*]} ]] || return 0
	log "removing every container of $PODMAN_DIR (podman rm -af)"
	podman_cmd rm -af -t 2 >/dev/null 2>&1 || log "warning: podman rm -af failed"
	# Images a rebuild replaced keep no tag: drop them (the tagged ones stay, as a cache).
	podman_cmd image prune -f >/dev/null 2>&1 || true
	stop_process "${PODMAN_PID:-}" "the Podman API service" 30
	rm -f -- "${PODMAN_SOCKET:-}"
	[[ -z ${SOCKET_TMP:-} ]] || rm -rf -- "$SOCKET_TMP"
}

# Containers still in our storage, processes working on it (podman, conmon and its clean-up
# commands all name it), our bridge and firewall rules.
provider_docker_leftovers() {
	[[ -n ${PODMAN_BASE[*]} ]] || return 0
	local ids
	ids=$(podman_cmd ps -aq 2>/dev/null) || ids="(podman ps -a failed)"
	[[ -z $ids ]] || echo "containers in $PODMAN_DIR:" ${ids//$'\n'/ }
	pgrep -af -- "$PODMAN_DIR/(root|run)" | sed 's/^/process: /' || true
	docker_network_leftovers
}

# Sourced by conformance/certifier.sh: the kubernetes provider's functions (see "A provider NAME" there).
# shellcheck shell=bash

# --- Provider: kubernetes (the test cluster, fgateway deployed into it) ------------------------
#
# The single-node cluster of tests/k8s/cluster.sh (started here unless it is up; stopped again
# if it was started here). fgateway runs in it as deploy/kubernetes/ lays it out, from a static
# fgateway packed FROM scratch as fgateway:latest, with basic auth off (the certifier's default
# flags) and its claim on a volume under WORKDIR; the certifier reaches it on the node port
# (10.250.0.1:31112). The function images are built with Podman (private storage under
# WORKDIR/podman, no service) and loaded into the node with no registry.

KUBE_SCRIPT=$REPO_ROOT/tests/k8s/cluster.sh
KUBE_NODE_PORT_URL=http://10.250.0.1:31112
KUBE_VOLUME_PV=fgateway-certifier-data
KUBE_STARTED=""

kube() { bash "$KUBE_SCRIPT" kubectl "$@" 9>&-; }

provider_kubernetes_check() {
	[[ $EUID -eq 0 ]] || die "the kubernetes provider needs root (it runs the test cluster)"
	local triple
	triple=$(uname -m)-unknown-linux-gnu
	default FGATEWAY_STATIC "$REPO_ROOT/target/$triple/release/fgateway" "$REPO_ROOT/target/static/$triple/debug/fgateway"
	require_static fgateway "$FGATEWAY_STATIC" "build it static (RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --bin fgateway --target $triple) or set FGATEWAY_STATIC"
	FGATEWAY_STATIC=$(absolute "$FGATEWAY_STATIC")
	warn_stale "$FGATEWAY_STATIC"
	# The gateway is not run on this host; the generic check wants one all the same.
	FGATEWAY=${FGATEWAY:-$FGATEWAY_STATIC}
}

provider_kubernetes_start() {
	command -v "${PODMAN:-podman}" >/dev/null || die "podman is needed to build the function images"
	if bash "$KUBE_SCRIPT" status >/dev/null 2>&1; then
		log "the test cluster is up already: using it (and leaving it up)"
	else
		log "starting the test cluster (tests/k8s/cluster.sh up; building it first if this machine has none)"
		KUBE_STARTED=1
		bash "$KUBE_SCRIPT" up >"$WORK/cluster-up.log" 2>&1 9>&- ||
			die "the test cluster did not start: $(tail -n 20 "$WORK/cluster-up.log")"
	fi
	PODMAN_DIR=$WORK/podman
	mkdir -p "$PODMAN_DIR"/{root,run,tmp}
	PODMAN_BASE=(env "TMPDIR=$PODMAN_DIR/tmp" "${PODMAN:-podman}" --root "$PODMAN_DIR/root"
		--runroot "$PODMAN_DIR/run")
	log "loading fgateway:latest ($FGATEWAY_STATIC) into the node"
	bash "$KUBE_SCRIPT" image docker.io/library/fgateway:latest /fgateway \
		"$FGATEWAY_STATIC:/fgateway" --user=65532 9>&- || die "cannot load the fgateway image"
	KUBE_VOLUME=$WORK/k8s-volume
}

# provider_kubernetes_images CONTEXT TAG...: builds each with Podman and loads it into the node.
provider_kubernetes_images() {
	while (($# >= 2)); do
		log "building $2 and loading it into the node"
		podman_cmd build --format docker --pull=never -t "$2" "$1" >"$1.build.log" 2>&1 ||
			die "podman build of $2 failed: $(tail -n 20 "$1.build.log")"
		rm -f -- "$1.oci.tar"
		podman_cmd save --format oci-archive -o "$1.oci.tar" "$2" >>"$1.build.log" 2>&1 ||
			die "podman save of $2 failed: $(tail -n 20 "$1.build.log")"
		bash "$KUBE_SCRIPT" import "$1.oci.tar" 9>&- || die "cannot load $2 into the node"
		shift 2
	done
}

kube_gateway_ready() {
	curl -fsS --noproxy '*' --max-time 2 -o /dev/null "$KUBE_NODE_PORT_URL/healthz" 2>/dev/null
}

# provider_kubernetes_gateway RUN_DIR: a volume for the claim, deploy/kubernetes/ applied, basic
# auth off, and the gateway answering on the node port.
provider_kubernetes_gateway() {
	rm -rf -- "$KUBE_VOLUME"
	mkdir -p "$KUBE_VOLUME"
	chown 65532:65532 "$KUBE_VOLUME"
	kube apply -f - >/dev/null <<-EOF || die "cannot create the gateway's volume"
		apiVersion: v1
		kind: PersistentVolume
		metadata: {name: $KUBE_VOLUME_PV}
		spec:
		  capacity: {storage: 1Gi}
		  accessModes: [ReadWriteOnce]
		  persistentVolumeReclaimPolicy: Retain
		  hostPath: {path: $KUBE_VOLUME, type: Directory}
	EOF
	kube apply -f "$REPO_ROOT/deploy/kubernetes/" >"$1/apply.log" 2>&1 ||
		die "kubectl apply -f deploy/kubernetes/ failed: $(cat "$1/apply.log")"
	kube -n openfaas set env deployment/gateway basic_auth=false >>"$1/apply.log" 2>&1 ||
		die "cannot turn basic auth off: $(cat "$1/apply.log")"
	kube -n openfaas rollout status deployment/gateway --timeout="${START_TIMEOUT}s" >>"$1/apply.log" 2>&1 ||
		die "the gateway did not roll out: $(tail -n 20 "$1/apply.log")"
	wait_until "the gateway on $KUBE_NODE_PORT_URL" "$START_TIMEOUT" kube_gateway_ready ||
		die "the gateway does not answer on $KUBE_NODE_PORT_URL"
	GATEWAY_URL=$KUBE_NODE_PORT_URL
	log "fgateway runs in the cluster ($(kube -n openfaas get pods -l app=gateway -o name | tr '\n' ' ')), on $GATEWAY_URL"
}

# provider_kubernetes_gateway_stop RUN_DIR: its log kept, then everything applied removed.
provider_kubernetes_gateway_stop() {
	kube -n openfaas logs deployment/gateway >"$1/fgateway.log" 2>&1 || true
	provider_kubernetes_reset
}

# Between runs: no gateway, function, namespace or volume of an earlier run.
provider_kubernetes_reset() {
	local ns
	for ns in ${CERTIFIER_NAMESPACES//,/ }; do
		kube delete namespace "$ns" --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1 || true
	done
	kube delete -f "$REPO_ROOT/deploy/kubernetes/" --ignore-not-found --wait=true --timeout=180s >/dev/null 2>&1 || true
	kube delete pv "$KUBE_VOLUME_PV" --ignore-not-found >/dev/null 2>&1 || true
	rm -rf -- "${KUBE_VOLUME:-/nonexistent}"
}

provider_kubernetes_stop() {
	[[ -n ${PODMAN_BASE[*]} ]] || return 0
	if bash "$KUBE_SCRIPT" status >/dev/null 2>&1; then provider_kubernetes_reset; fi
	if [[ -n $KUBE_STARTED ]]; then
		log "stopping the test cluster"
		bash "$KUBE_SCRIPT" down >/dev/null 2>&1 9>&- || log "warning: cluster.sh down failed"
	fi
	podman_cmd image prune -f >/dev/null 2>&1 || true
}

# What of the run remains: the cluster (when started here), else what was applied in it.
provider_kubernetes_leftovers() {
	[[ -n ${PODMAN_BASE[*]} ]] || return 0
	pgrep -af -- "$PODMAN_DIR/(root|run)" | sed 's/^/process: /' || true
	if [[ -n $KUBE_STARTED ]]; then
		! bash "$KUBE_SCRIPT" status >/dev/null 2>&1 || echo "the test cluster is still up"
		! ip link show fgwk8s0 >/dev/null 2>&1 || echo "network link fgwk8s0"
		! ip netns list 2>/dev/null | grep -qw fgwk8s || echo "network namespace fgwk8s"
	else
		local ns
		for ns in openfaas openfaas-fn ${CERTIFIER_NAMESPACES//,/ }; do
			kube get namespace "$ns" >/dev/null 2>&1 && echo "namespace $ns in the test cluster"
		done
		kube get pv "$KUBE_VOLUME_PV" >/dev/null 2>&1 && echo "persistent volume $KUBE_VOLUME_PV"
	fi
	true
}

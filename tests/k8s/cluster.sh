#!/usr/bin/env bash
# A real single-node Kubernetes (v1.20.2) for fgateway's Kubernetes tests, without a registry
# or the internet: Kubernetes built from Debian's source package with Debian's Go 1.19; etcd,
# containerd, runc and the CNI plugins from Debian's packages, unpacked privately (nothing is
# installed into /usr, no service is registered).
#
#   bash tests/k8s/cluster.sh build     # once per machine: download and build (≈ 10 min cold on
#                                       # 2 cores), cached under $FGW_K8S_CACHE by the source's
#                                       # sha256; a no-op when the cache holds it
#   bash tests/k8s/cluster.sh up        # start it (builds first if needed); prints the env file
#   bash tests/k8s/cluster.sh import F  # load an image archive (docker or OCI) into the node
#   bash tests/k8s/cluster.sh image localhost/NAME:TAG /ENTRYPOINT SRC:DEST... [--user=UID] [--env K=V...]
#                                       # pack files into a FROM-scratch image and load it
#   bash tests/k8s/cluster.sh down      # stop it and remove everything it put on the host
#   bash tests/k8s/cluster.sh status    # exit 0 when it is up and its node Ready
#   bash tests/k8s/cluster.sh kubectl ARGS...   # kubectl, as the cluster's admin
#
# Every daemon runs in a network namespace of its own (fgwk8s). One veth pair links it to the
# host: the host end (fgwk8s0) is 10.250.0.2, the cluster's node 10.250.0.1, and the host routes
# the pod network (10.244.0.0/24) through it, so processes on the host (the tests, fgateway)
# reach the API server at https://10.250.0.1:6443, pods on their IPs and NodePort Services on
# 10.250.0.1. kube-proxy (iptables mode) gives pods the Service kubernetes (10.96.0.1:443), as
# in-cluster clients expect; its and the kubelet's iptables chains, the CNI bridge and pod
# traffic stay in the namespace. Pods resolve Services and StatefulSet pods
# (NAME.NS.svc.cluster.local, HOST.NAME.NS.svc.cluster.local) through tests/k8s/dns.py on the
# node's address. `down` stops the daemons by PID,
# unmounts what they mounted, deletes the namespace and the veth, and removes the cgroups the
# kubelet made; `up` runs `down` first, so a run killed half-way is cleaned by the next.
#
# FGW_K8S_CACHE: the build cache (default /var/cache/fwatchdog-k8s). FGW_K8S_RUN: the running
# cluster's state (default /var/tmp/fwatchdog-k8s). Needs root, and the Debian packages
# installed by .ci/run (iproute2, util-linux, openssl, gcc, make, rsync, podman for the pause
# image is not needed: it is packed here).
set -euo pipefail

CACHE=${FGW_K8S_CACHE:-/var/cache/fwatchdog-k8s}
RUN=${FGW_K8S_RUN:-/var/tmp/fwatchdog-k8s}
NS=fgwk8s
HOST_IF=fgwk8s0
NODE_IF=fgwk8s1
HOST_IP=10.250.0.2
NODE_IP=10.250.0.1
POD_NET=10.244.0.0/24
VERSION=v1.20.2
# The Debian source package and the packages it builds with (bookworm).
SRC_TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
SRC_SHA256=${FGW_K8S_SRC_SHA256:-}
TOOL_DEBS=(golang-1.19-go golang-1.19-src golang-github-modern-go-reflect2-dev)
RUNTIME_DEBS=(containerd containernetworking-plugins etcd-server)
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# An apt configuration of our own, with the deb-src lines the machine's apt lacks, so nothing in
# /etc/apt changes.
apt_private() {
  local dir=$CACHE/apt
  mkdir -p "$dir/lists/partial" "$dir/archives/partial"
  local uris
  uris=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uris" ] || uris=http://deb.debian.org/debian
  cat >"$dir/sources.list" <<SRC
deb $uris bookworm main
deb-src $uris bookworm main
SRC
  APT=(apt-get -q -o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=-
       -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache::Archives=$dir/archives"
       -o APT::Sandbox::User=root)
  "${APT[@]}" update >/dev/null
}

# Downloads and unpacks what the build and the cluster need into $CACHE (once).
fetch() {
  [ -f "$CACHE/fetched" ] && return 0
  log "downloading Debian's kubernetes source and packages"
  apt_private
  mkdir -p "$CACHE/debs" "$CACHE/src" "$CACHE/go" "$CACHE/sysroot"
  (cd "$CACHE/debs" && "${APT[@]}" download "${TOOL_DEBS[@]}" "${RUNTIME_DEBS[@]}" >/dev/null)
  (cd "$CACHE/src" && "${APT[@]}" source --download-only kubernetes >/dev/null)
  for d in "$CACHE"/debs/golang-*.deb; do dpkg -x "$d" "$CACHE/go"; done
  for p in "${RUNTIME_DEBS[@]}"; do dpkg -x "$CACHE"/debs/"${p}"_*.deb "$CACHE/sysroot"; done
  touch "$CACHE/fetched"
}

# The build's key: the source tarball's sha256.
key() {
  sha256sum "$CACHE/src/$SRC_TARBALL" | cut -c1-16
}

bin_dir() { echo "$CACHE/k8s-$(key)/bin"; }

# Builds under a lock (one build per cache at a time), held only while building: the daemons
# `up` starts afterwards do not inherit it.
build() {
  mkdir -p "$CACHE"
  (
    flock 9
    build_locked
  ) 9>"$CACHE/.lock"
}

build_locked() {
  fetch
  [ -z "$SRC_SHA256" ] || echo "$SRC_SHA256  $CACHE/src/$SRC_TARBALL" | sha256sum -c --quiet ||
    die "the source tarball's checksum differs from FGW_K8S_SRC_SHA256"
  local out c missing=()
  out=$(bin_dir)
  # A cache made before a component joined the list gets just what it lacks.
  for c in "${COMPONENTS[@]}" pause; do
    [ -f "$out/.done" ] && [ -x "$out/$c" ] || missing+=("$c")
  done
  ((${#missing[@]})) || return 0
  log "building Kubernetes $VERSION (${missing[*]}) into $out (about 10 minutes on 2 cores, once per machine)"
  local work=$CACHE/build
  rm -rf "$work"
  mkdir -p "$work/gopath/src/k8s.io"
  tar -xzf "$CACHE/src/$SRC_TARBALL" -C "$work"
  local src
  src=$(echo "$work"/kubernetes-*)
  # The vendored reflect2 1.0.1 predates Go 1.18's runtime; Debian's 1.0.2 replaces it.
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  mkdir -p "$src/vendor/github.com/modern-go/reflect2"
  cp "$CACHE"/go/usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
     "$CACHE"/go/usr/share/gocode/src/github.com/modern-go/reflect2/*.s \
     "$src/vendor/github.com/modern-go/reflect2/" 2>/dev/null ||
    cp "$CACHE"/go/usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$src/vendor/github.com/modern-go/reflect2/"
  ln -sfn "$src" "$work/gopath/src/k8s.io/kubernetes"
  export GOROOT=$CACHE/go/usr/lib/go-1.19
  export PATH=$GOROOT/bin:$PATH GOPATH=$work/gopath GO111MODULE=off GOFLAGS= CGO_ENABLED=0 GOPROXY=off
  export GOCACHE=$work/gocache
  # Generated sources first (the API server's OpenAPI definitions), as 1.20's make does.
  (cd "$src" && GOFLAGS=-p=2 make generated_files >"$work/generate.log" 2>&1) ||
    { tail -30 "$work/generate.log" >&2; die "make generated_files failed"; }
  local v=k8s.io/kubernetes/vendor/k8s.io ldflags
  ldflags="-s -w -X $v/component-base/version.gitVersion=$VERSION -X $v/component-base/version.gitMajor=1"
  ldflags+=" -X $v/component-base/version.gitMinor=20 -X $v/client-go/pkg/version.gitVersion=$VERSION"
  ldflags+=" -X $v/client-go/pkg/version.gitMajor=1 -X $v/client-go/pkg/version.gitMinor=20"
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp"
  [ -d "$out" ] && cp -a "$out/." "$out.tmp/"
  rm -f "$out.tmp/.done"
  for c in "${missing[@]}"; do
    [ "$c" != pause ] || continue
    log "building $c"
    (cd "$work/gopath/src/k8s.io/kubernetes" &&
      go build -p 2 -trimpath -ldflags="$ldflags" -o "$out.tmp/$c" "./cmd/$c")
  done
  # The pod sandbox's pause process, from the same source.
  gcc -Os -static -DVERSION="$VERSION-fwatchdog" -o "$out.tmp/pause" "$src/build/pause/linux/pause.c"
  touch "$out.tmp/.done"
  rm -rf "$out"
  mv "$out.tmp" "$out"
  # The build tree and Go's cache take gigabytes; the binaries are all that is kept.
  rm -rf "$work"
  log "built: $(du -sh "$out" | cut -f1)"
}

# Packs a FROM-scratch image as an OCI archive, with no engine: $1 the archive, $2 its name
# (localhost/NAME:TAG), $3 the entrypoint (a path in the image), then SRC:DEST files (each
# owned by root, mode kept), `--user=UID` to run as that user, and ENV=VALUE settings after a
# `--env`.
pack_image() {
  python3 - "$@" <<'PY'
import hashlib, io, json, os, sys, tarfile
out, ref, entry, *rest = sys.argv[1:]
files, env, user = [], [], ""
for a in rest:
    if a.startswith("--user="):
        user = a.split("=", 1)[1]
    elif "=" in a and ":" not in a.split("=", 1)[0]:
        env.append(a)
    elif a != "--env":
        files.append(a.split(":", 1))
blobs = {}
def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": f"sha256:{digest}", "size": len(data)}
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    dirs = set()
    for src, dest in files:
        parts = dest.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
        info = t.gettarinfo(src, arcname=dest.strip("/"))
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        with open(src, "rb") as f:
            t.addfile(info, f)
    if "tmp" not in dirs:
        info = tarfile.TarInfo("tmp")
        info.type, info.mode = tarfile.DIRTYPE, 0o1777
        t.addfile(info)
layer_desc = blob(layer.getvalue())
config = json.dumps({
    "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
    "os": "linux",
    "config": {"Entrypoint": [entry], "Env": env, **({"User": user} if user else {})},
    "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
}).encode()
config_desc = blob(config)
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
}).encode()
manifest_desc = blob(manifest)
index = json.dumps({"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_desc,
    "annotations": {"org.opencontainers.image.ref.name": ref}}]}).encode()
with tarfile.open(out, "w") as t:
    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    add("index.json", index)
    for digest, data in blobs.items():
        add(f"blobs/sha256/{digest}", data)
PY
}

in_ns() { nsenter --net="/run/netns/$NS" "$@"; }

ctr_() { "$CACHE/sysroot/usr/bin/ctr" --address "$RUN/containerd.sock" -n k8s.io "$@"; }

kubectl_get() {
  # A GET on the API server with the admin token (no kubectl needed): prints the body.
  curl -fsS --cacert "$RUN/pki/ca.crt" -H "Authorization: Bearer $(cat "$RUN/pki/admin.token")" \
    "https://$NODE_IP:6443$1"
}

pki() {
  local d=$RUN/pki
  mkdir -p "$d"
  (
    cd "$d"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -subj /CN=fwatchdog-test-ca -days 30 -out ca.crt 2>/dev/null
    openssl genrsa -out apiserver.key 2048 2>/dev/null
    printf 'subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:%s\nextendedKeyUsage=serverAuth\n' "$NODE_IP" >apiserver.ext
    openssl req -new -key apiserver.key -subj /CN=kube-apiserver -out apiserver.csr 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    openssl rand -hex 16 | tr -d '\n' >admin.token
    echo "$(cat admin.token),admin,admin,system:masters" >tokens.csv
  )
  cat >"$RUN/admin.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: fwatchdog-test
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority: $d/ca.crt
users:
- name: admin
  user:
    token: $(cat "$d/admin.token")
contexts:
- name: fwatchdog-test
  context: {cluster: fwatchdog-test, user: admin}
current-context: fwatchdog-test
KC
}

# Starts a daemon in the namespace, its pid in $RUN/NAME.pid, its log in $RUN/logs/NAME.log.
daemon() {
  local name=$1
  shift
  setsid nsenter --net="/run/netns/$NS" "$@" >"$RUN/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

# Waits up to $2 seconds for command $3... to succeed; $1 names it.
wait_for() {
  local what=$1 limit=$2
  shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { log "no $what within ${limit}s; logs in $RUN/logs"; return 1; }
    sleep 0.5
  done
}

node_ready() {
  kubectl_get /api/v1/nodes/node1 | python3 -c '
import json, sys
n = json.load(sys.stdin)
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]) else 1)'
}

up() {
  build
  down >/dev/null 2>&1 || true
  local bin
  bin=$(bin_dir)
  mkdir -p "$RUN/logs" "$RUN/etcd" "$RUN/state" "$RUN/kubelet" "$RUN/cni"
  pki
  # The network: a namespace, and a veth pair from the host into it.
  ip netns add "$NS"
  in_ns ip link set lo up
  ip link add "$HOST_IF" type veth peer name "$NODE_IF"
  ip link set "$NODE_IF" netns "$NS"
  ip addr add "$HOST_IP/24" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  in_ns ip addr add "$NODE_IP/24" dev "$NODE_IF"
  in_ns ip link set "$NODE_IF" up
  in_ns ip route add default via "$HOST_IP"
  in_ns sysctl -qw net.ipv4.ip_forward=1
  ip route add "$POD_NET" via "$NODE_IP" dev "$HOST_IF"
  # CNI: a bridge in the namespace, addresses kept under $RUN.
  sed "s|@RUN@|$RUN|g; s|@POD_NET@|$POD_NET|g" "$HERE/10-bridge.conflist" >"$RUN/cni/10-bridge.conflist"
  sed "s|@RUN@|$RUN|g; s|@CACHE@|$CACHE|g" "$HERE/containerd.toml" >"$RUN/containerd.toml"
  sed "s|@NODE_IP@|$NODE_IP|g" "$HERE/kubelet.yaml" >"$RUN/kubelet/config.yaml"
  local sys=$CACHE/sysroot/usr/bin p=$RUN/pki k=$RUN/admin.kubeconfig
  daemon containerd env PATH="$sys:$PATH" "$sys/containerd" --config "$RUN/containerd.toml"
  daemon etcd "$sys/etcd" --name fgw --data-dir "$RUN/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster fgw=http://127.0.0.1:2380
  daemon kube-apiserver "$bin/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port=6443 \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" --token-auth-file="$p/tokens.csv" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --service-cluster-ip-range=10.96.0.0/16 \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --kubelet-preferred-address-types=InternalIP
  wait_for "containerd" 30 test -S "$RUN/containerd.sock"
  pack_image "$RUN/pause.tar" localhost/pause:local /pause "$bin/pause:/pause"
  wait_for "containerd answering" 30 ctr_ version
  ctr_ images import "$RUN/pause.tar" >/dev/null
  wait_for "API server" 90 kubectl_get /readyz
  # Cluster DNS for Service and StatefulSet pod names (tests/k8s/dns.py), on the node's address.
  daemon dns python3 "$HERE/dns.py" "$NODE_IP" "https://$NODE_IP:6443" "$p/ca.crt" "$p/admin.token"
  daemon kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$k" \
    --authentication-kubeconfig="$k" --authorization-kubeconfig="$k" --bind-address=127.0.0.1 \
    --leader-elect=false --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --use-service-account-credentials=false --controllers='*,-nodeipam'
  daemon kube-scheduler "$bin/kube-scheduler" --kubeconfig="$k" --authentication-kubeconfig="$k" \
    --authorization-kubeconfig="$k" --bind-address=127.0.0.1 --leader-elect=false
  daemon kubelet "$bin/kubelet" --kubeconfig="$k" --config="$RUN/kubelet/config.yaml" \
    --root-dir="$RUN/kubelet/root" --container-runtime=remote \
    --container-runtime-endpoint="unix://$RUN/containerd.sock" --hostname-override=node1 \
    --node-ip="$NODE_IP" --pod-infra-container-image=localhost/pause:local \
    --cert-dir="$RUN/kubelet/pki"
  # Services' cluster IPs and node ports (iptables rules in the namespace, gone with it): pods
  # reach the API server at the Service kubernetes (10.96.0.1:443), the host a NodePort
  # Service on $NODE_IP.
  daemon kube-proxy "$bin/kube-proxy" --kubeconfig="$k" --hostname-override=node1 \
    --cluster-cidr="$POD_NET" --proxy-mode=iptables --conntrack-max-per-core=0 \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256
  wait_for "node Ready" 120 node_ready
  cat >"$RUN/env" <<ENV
KUBECONFIG=$RUN/admin.kubeconfig
FGW_K8S_NODE_IP=$NODE_IP
FGW_K8S_KUBECTL=$bin/kubectl
ENV
  log "up: KUBECONFIG=$RUN/admin.kubeconfig"
  echo "$RUN/env"
}

status() {
  [ -f "$RUN/kube-apiserver.pid" ] && node_ready
}

import() {
  local archive=$1
  [ -f "$archive" ] || die "no such archive: $archive"
  ctr_ images import "$archive" >/dev/null
}

# Packs and imports an image: image NAME ENTRYPOINT SRC:DEST... [--env K=V...].
image() {
  local archive
  archive=$(mktemp)
  pack_image "$archive" "$@"
  ctr_ images import "$archive" >/dev/null
  rm -f "$archive"
}

down() {
  local names=(dns kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd containerd) n pid
  for n in "${names[@]}"; do
    [ -f "$RUN/$n.pid" ] && kill "$(cat "$RUN/$n.pid")" 2>/dev/null || true
  done
  for n in "${names[@]}"; do
    [ -f "$RUN/$n.pid" ] || continue
    pid=$(cat "$RUN/$n.pid")
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$RUN/$n.pid"
  done
  # Containers' shims and processes (children of the containerd that was stopped).
  local f
  for f in "$RUN"/state/containerd/io.containerd.runtime.v2.task/k8s.io/*/{init,shim}.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  # Whatever is still in the namespace.
  if [ -e "/run/netns/$NS" ]; then
    for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  fi
  # Mounts under the run directory (sandbox shm, overlay roots, volumes) and the pods' netns.
  grep -oE " $RUN/[^ ]+" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  local m
  for m in $(grep -oE " /run/netns/cni-[^ ]+" /proc/mounts || true); do
    umount -l "$m" 2>/dev/null || true
    rm -f "$m"
  done
  ip route del "$POD_NET" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  # The kubelet's pod cgroups (cgroupfs driver), now empty.
  local h
  for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  rm -rf "$RUN"
  log "down"
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  status) status ;;
  kubectl) shift; exec "$(bin_dir)/kubectl" --kubeconfig="$RUN/admin.kubeconfig" "$@" ;;
  import) import "${2:?archive}" ;;
  image) shift; image "$@" ;;
  *) die "usage: cluster.sh build|up|down|status|kubectl ARGS...|import ARCHIVE|image NAME ENTRYPOINT SRC:DEST... [--env K=V...]" ;;
esac

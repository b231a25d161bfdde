#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, for development and the Kubernetes tests.
#
#   scripts/dev-cluster.sh up      build what is missing (once), start the cluster, wait Ready
#   scripts/dev-cluster.sh down    stop exactly what `up` started; remove its bridge,
#                                  iptables chains, mounts and state
#   scripts/dev-cluster.sh env     print KUBECONFIG=... (eval "$(scripts/dev-cluster.sh env)")
#   scripts/dev-cluster.sh status  what runs, and whether the API answers
#   scripts/dev-cluster.sh diagnose  components' log tails, pods and events (CI prints it
#                                  when the tests fail)
#   scripts/dev-cluster.sh build   only build the Kubernetes binaries into the cache
#
# Pieces: Debian's etcd, containerd, runc, CNI plugins and iptables; kube-apiserver,
# controller-manager, scheduler, kubelet, kube-proxy and kubectl built from Debian's
# Kubernetes source (v1.20.2) into $MIRRORD_K8S_CACHE (default /var/cache/mirrord-k8s),
# keyed by the source version and reused after. Everything listens on 127.0.0.1 or on the
# cluster's own bridge (10.244.0.1); pods get 10.244.0.0/24, Services 10.96.0.0/16.
# The EphemeralContainers feature gate (alpha in 1.20) is on (kubectl debug works); 1.20 still
# forbids capabilities in them, so agent.ephemeral needs 1.21+ and is refused here.
# Needs root (containers, bridges, iptables).
set -euo pipefail

K8S_VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE=${MIRRORD_K8S_CACHE:-/var/cache/mirrord-k8s}
BIN=$CACHE/kubernetes-$K8S_VERSION/bin
RUN=${MIRRORD_CLUSTER_DIR:-/var/lib/mirrord-dev-cluster}
BRIDGE=mirrord0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
NODE=mirrord-dev
SANDBOX_IMAGE=mirrord.dev/pause:1
PACKAGES=(etcd-server containerd runc containernetworking-plugins iptables conntrack make dpkg-dev
  busybox-static openssl golang-go golang-github-modern-go-reflect2-dev rsync nftables)

say() { echo "dev-cluster: $*" >&2; }
die() { say "error: $*"; diagnose >&2 || true; exit 1; }

# ---------------------------------------------------------------------------- packages

need_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]} (install them, or run as root)"
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------------------- build

# Debian's Kubernetes source, fetched with a private apt configuration derived from the
# system's own sources (same mirror), so the system's apt setup is left as it is.
fetch_source() {
  local src=$CACHE/src apt=$CACHE/apt
  [ -d "$src/kubernetes-$K8S_VERSION" ] && return 0
  local sources=/etc/apt/sources.list.d/debian.sources uri
  [ -f "$sources" ] || die "no $sources to derive a deb-src mirror from"
  uri=$(awk '/^URIs:/ {print $2; exit}' "$sources")
  [ -n "$uri" ] || die "no URIs: line in $sources"
  mkdir -p "$apt/lists/partial" "$src"
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" > "$apt/src.sources"
  local opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$apt/parts"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
  mkdir -p "$apt/parts" "$apt/cache"; cp "$apt/src.sources" "$apt/parts/src.sources"
  say "fetching Debian's kubernetes source $DEB_VERSION from $uri"
  apt-get "${opts[@]}" update -qq
  # Unpacked with Debian's patches (security fixes included) into kubernetes-<upstream>.
  (cd "$src" && apt-get "${opts[@]}" source -qq "kubernetes=$DEB_VERSION" >/dev/null)
  local tree
  tree=$(find "$src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
  [ -n "$tree" ] && mv "$tree" "$src/kubernetes-$K8S_VERSION"
  [ -d "$src/kubernetes-$K8S_VERSION" ] || die "apt-get source did not produce $src/kubernetes-$K8S_VERSION"
}

build() {
  [ -x "$BIN/kubelet" ] && return 0
  need_packages
  fetch_source
  local tree=$CACHE/src/kubernetes-$K8S_VERSION
  # reflect2 1.0.1 (vendored) breaks on Go >= 1.18; Debian's 1.0.2 works.
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
  rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod"
  export GOPATH=$CACHE/gopath GO111MODULE=off CGO_ENABLED=0 GOFLAGS= GOCACHE=$CACHE/gocache
  mkdir -p "$GOPATH/src/k8s.io"
  ln -sfn "$tree" "$GOPATH/src/k8s.io/kubernetes"
  local started=$SECONDS
  (
    cd "$GOPATH/src/k8s.io/kubernetes"
    if [ ! -f .generated_done ]; then
      say "make generated_files (about 2 min)"
      make generated_files >/dev/null; touch .generated_done
    fi
    local v=k8s.io/kubernetes/vendor/k8s.io ld="-s -w" p c
    for p in client-go/pkg/version component-base/version; do
      ld="$ld -X $v/$p.gitVersion=v$K8S_VERSION -X $v/$p.gitMajor=1 -X $v/$p.gitMinor=20 -X $v/$p.gitTreeState=clean"
    done
    mkdir -p "$BIN.partial"
    for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
      [ -x "$BIN.partial/$c" ] && continue
      say "building $c"
      go build -o "$BIN.partial/$c" -ldflags "$ld" "./cmd/$c"
    done
  )
  mv "$BIN.partial" "$BIN"
  say "built Kubernetes v$K8S_VERSION in $((SECONDS - started)) s into $BIN"
}

# ---------------------------------------------------------------------------- pki

cert() { # cert NAME CN ORG [SAN]: a key and a certificate signed by the cluster CA
  local name=$1 cn=$2 org=$3 san=${4:-} pki=$RUN/pki
  [ -f "$pki/$name.crt" ] && return 0
  openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
  local subj="/CN=$cn"; [ -n "$org" ] && subj="/O=$org$subj"
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  local ext="$pki/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } > "$ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/${5:-ca}.crt" -CAkey "$pki/${5:-ca}.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

ca() { # ca NAME CN
  local pki=$RUN/pki
  [ -f "$pki/$1.crt" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/$1.key" -subj "/CN=$2" \
    -days 3650 -sha256 -out "$pki/$1.crt" 2>/dev/null
}

kubeconfig() { # kubeconfig NAME CERT: a kubeconfig for a client certificate
  local pki=$RUN/pki
  cat > "$RUN/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mirrord-dev
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: mirrord-dev
  context: {cluster: mirrord-dev, user: $1}
current-context: mirrord-dev
EOF
}

pki() {
  mkdir -p "$RUN/pki"; chmod 700 "$RUN/pki"
  ca ca kubernetes-ca
  ca front-proxy-ca front-proxy-ca
  cert apiserver kube-apiserver "" \
    "IP:$NODE_IP,IP:127.0.0.1,IP:$API_SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  cert admin kubernetes-admin system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kube-proxy system:kube-proxy ""
  cert kubelet "system:node:$NODE" system:nodes "IP:$NODE_IP,DNS:$NODE"
  cert front-proxy-client front-proxy-client "" "" front-proxy-ca
  [ -f "$RUN/pki/sa.key" ] || {
    openssl genrsa -out "$RUN/pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$RUN/pki/sa.key" -pubout -out "$RUN/pki/sa.pub" 2>/dev/null
  }
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  kubeconfig kube-proxy kube-proxy
  kubeconfig kubelet kubelet
}

# ---------------------------------------------------------------------------- processes

start() { # start NAME CMD...: run in the background, pid in $RUN/pids, log in $RUN/logs
  local name=$1; shift
  if [ -f "$RUN/pids/$name" ] && kill -0 "$(cat "$RUN/pids/$name")" 2>/dev/null; then return 0; fi
  # The daemons outlive this script: they keep no descriptor of its caller's but the three
  # standard ones (e.g. `flock LOCK scripts/dev-cluster.sh up` would otherwise leave LOCK
  # held by the cluster for as long as it runs).
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] && eval "exec $fd>&-"
    done
    exec setsid "$@" > "$RUN/logs/$name.log" 2>&1 < /dev/null
  ) &
  echo $! > "$RUN/pids/$name"
}

wait_for() { # wait_for WHAT SECONDS CMD...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what not ready after ${secs}s (logs: $RUN/logs)"
}

network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  [ -f "$RUN/ip_forward.orig" ] || cat /proc/sys/net/ipv4/ip_forward > "$RUN/ip_forward.orig"
  echo 1 > /proc/sys/net/ipv4/ip_forward
  modprobe br_netfilter 2>/dev/null || true
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] ||
    die "bridge netfilter missing (/proc/sys/net/bridge): Services between pods would not work"
  echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
  mkdir -p "$RUN/cni/net.d"
  cat > "$RUN/cni/net.d/10-mirrord.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "mirrord-dev",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "dataDir": "$RUN/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# overlayfs when the filesystem under $RUN can carry it (not, e.g., when it is itself an
# overlay on older kernels); otherwise native (copies, slower, always works).
snapshotter() {
  local t=$RUN/overlay-probe ok=native
  mkdir -p "$t/lower" "$t/upper" "$t/work" "$t/merged"
  if mount -t overlay overlay -o "lowerdir=$t/lower,upperdir=$t/upper,workdir=$t/work" \
       "$t/merged" 2>/dev/null; then
    ok=overlayfs
    umount "$t/merged"
  fi
  rm -rf "$t"
  echo "$ok"
}

containerd_up() {
  local d=$RUN/containerd snap
  mkdir -p "$d"
  snap=${MIRRORD_CLUSTER_SNAPSHOTTER:-$(snapshotter)}
  # images.sh unpacks imported images for the same snapshotter.
  echo "$snap" > "$d/snapshotter"
  say "containerd snapshotter: $snap"
  cat > "$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  # root here lacks CAP_SYS_RESOURCE: without this runc fails to start any container.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$snap"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
EOF
  start containerd containerd --config "$d/config.toml"
  wait_for containerd 30 ctr --address "$d/containerd.sock" version
  pause_image
}

# The sandbox ("pause") image, built here: no registry is reachable.
pause_image() {
  ctr --address "$RUN/containerd/containerd.sock" -n k8s.io images ls -q | grep -qx "$SANDBOX_IMAGE" && return 0
  "$(dirname "$0")/images.sh" pause
}

control_plane() {
  local pki=$RUN/pki
  start etcd etcd --name "$NODE" --data-dir "$RUN/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NODE=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381
  wait_for etcd 30 curl -fsS http://127.0.0.1:2381/health
  # The front-proxy flags make the aggregation layer (APIService) work.
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --bind-address="$NODE_IP" --advertise-address="$NODE_IP" \
    --secure-port=6443 --service-cluster-ip-range="$SERVICE_CIDR" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --authorization-mode=Node,RBAC \
    --token-auth-file="$RUN/tokens.csv" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" \
    --proxy-client-key-file="$pki/front-proxy-client.key" \
    --enable-aggregator-routing=true --allow-privileged=true \
    --kubelet-preferred-address-types=InternalIP \
    --enable-admission-plugins=NodeRestriction \
    --feature-gates=EphemeralContainers=true
  wait_for kube-apiserver 90 "$BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig" get --raw /readyz
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$RUN/controller-manager.kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=10257 --port=0 \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
    --controllers='*,-nodeipam'
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$RUN/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259 --port=0
}

node() {
  local pki=$RUN/pki
  : > "$RUN/resolv.conf"   # pods get no nameserver: nothing here resolves outside names
  cat > "$RUN/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
featureGates:
  EphemeralContainers: true
failSwapOn: false
resolvConf: $RUN/resolv.conf
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
# Images are imported, never pulled: the kubelet must not collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Absolute floors, not percentages: a big disk that build trees have filled to 99% still
# has gigabytes free, and a disk-pressure taint leaves every new pod Pending (seen here with
# 1.5 GB free of 252 GB under a 1% threshold: the likely cause of a CI run whose operator
# never became Available). The taint also goes 10 s after the pressure, not 5 min.
evictionHard: {"memory.available": "100Mi", "nodefs.available": "512Mi", "imagefs.available": "512Mi"}
evictionPressureTransitionPeriod: 10s
serializeImagePulls: false
EOF
  start kubelet "$BIN/kubelet" --config="$RUN/kubelet.yaml" \
    --kubeconfig="$RUN/kubelet.kubeconfig" --hostname-override="$NODE" --node-ip="$NODE_IP" \
    --container-runtime=remote --container-runtime-endpoint="unix://$RUN/containerd/containerd.sock" \
    --root-dir="$RUN/kubelet" --cert-dir="$RUN/kubelet-pki"
  start kube-proxy "$BIN/kube-proxy" --kubeconfig="$RUN/kube-proxy.kubeconfig" \
    --hostname-override="$NODE" --cluster-cidr="$POD_CIDR" --proxy-mode=iptables \
    --bind-address=127.0.0.1 --metrics-bind-address=127.0.0.1:10249 \
    --healthz-bind-address=127.0.0.1:10256 --conntrack-max-per-core=0
  wait_for "node $NODE" 90 kctl wait --for=condition=Ready "node/$NODE" --timeout=2s
}

kctl() { "$BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig" "$@"; }

up() {
  [ "$(id -u)" -eq 0 ] || die "up needs root (containers, bridges, iptables)"
  need_packages
  build
  local started=$SECONDS
  mkdir -p "$RUN/pids" "$RUN/logs"
  pki
  # Token users for tests (static tokens, like kubeadm's bootstrap): alice and bob.
  [ -f "$RUN/tokens.csv" ] || {
    echo "$(openssl rand -hex 16),alice,alice,developers" > "$RUN/tokens.csv"
    echo "$(openssl rand -hex 16),bob,bob,developers" >> "$RUN/tokens.csv"
  }
  network
  containerd_up
  control_plane
  node
  # The default ServiceAccount must exist before pods can be created in `default`.
  wait_for "default service account" 60 kctl -n default get serviceaccount default
  smoke
  say "cluster up in $((SECONDS - started)) s; $(env_line)"
}

# A pod through the whole path (scheduler, kubelet, containerd, CNI, a non-root user on a
# read-only root filesystem, as the chart runs the operator): a cluster that cannot run
# one fails here, with the reason, instead of in a test's timeout.
smoke() {
  "$(dirname "$0")/images.sh" busybox
  kctl -n default delete pod dev-cluster-smoke --ignore-not-found --wait=true >/dev/null
  kctl -n default apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: dev-cluster-smoke}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
  containers:
    - name: smoke
      image: mirrord.dev/busybox:1
      imagePullPolicy: Never
      command: ["/bin/sh", "-c", "ip -4 addr show eth0 | grep -q 10.244. && echo ok"]
      securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
YAML
  wait_for "a smoke-test pod" 90 pod_succeeded default dev-cluster-smoke
  kctl -n default delete pod dev-cluster-smoke --wait=false >/dev/null
}

pod_succeeded() { [ "$(kctl -n "$1" get pod "$2" -o 'jsonpath={.status.phase}')" = Succeeded ]; }

# What to look at when the cluster or a test's pods misbehave: the components' logs, the
# pods and the events. Bounded, so it fits at the end of a CI log.
diagnose() {
  [ -d "$RUN/logs" ] || { say "diagnose: no cluster state in $RUN"; return 0; }
  local f
  echo "=== dev-cluster diagnostics ($RUN)"
  status || true
  for f in "$RUN"/logs/*.log; do
    echo "--- $(basename "$f") (last 12 lines)"
    tail -n 12 "$f" | cut -c1-400
  done
  echo "--- pods"
  kctl get pods -A -o wide 2>&1 | head -40 || true
  echo "--- events (last 30)"
  kctl get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 30 | cut -c1-400 || true
}

# ---------------------------------------------------------------------------- down

down() {
  [ -d "$RUN" ] || { say "nothing to stop"; return 0; }
  local name
  for name in kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop "$name"
  done
  # Containers: kill every shim of our containerd (and its container processes), then it.
  local sock=$RUN/containerd/containerd.sock pid
  for pid in $(pgrep -f "containerd-shim.*-address $sock" || true); do
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  stop containerd
  # Mounts under our directory (volumes, rootfs, netns), deepest first.
  awk -v run="$RUN" '$2 ~ "^"run {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  # Network namespaces the CNI plugins made for our pods.
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do
    ip netns delete "$ns" 2>/dev/null || true
  done
  [ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  cleanup_chains
  ip link delete "$BRIDGE" 2>/dev/null || true
  ip link show 2>/dev/null | awk -F'[ @:]+' '/veth/ && /master '"$BRIDGE"'/ {print $2}' |
    while read -r v; do ip link delete "$v" 2>/dev/null || true; done
  [ -f "$RUN/ip_forward.orig" ] && cat "$RUN/ip_forward.orig" > /proc/sys/net/ipv4/ip_forward
  rm -rf "$RUN"
  say "down: processes stopped, bridge, chains, mounts and state removed"
}

stop() {
  local f=$RUN/pids/$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Chains left by the kubelet (KUBE-FIREWALL, KUBE-MARK-*, canaries), kube-proxy (after its
# own --cleanup) and the CNI plugins (CNI-*), in every table, IPv4 and IPv6: rules that
# jump to them first, then the chains themselves.
cleanup_chains() {
  local ipt table chain rule
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in nat filter mangle; do
      "$ipt" -t "$table" -S 2>/dev/null | { grep -E '^-A .*(CNI-|KUBE-)' || true; } | while read -r rule; do
        eval "$ipt -t $table ${rule/-A/-D}" 2>/dev/null || true
      done
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '/^-N (CNI|KUBE)-/ {print $2}'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '/^-N (CNI|KUBE)-/ {print $2}'); do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# ---------------------------------------------------------------------------- env, status

env_line() { echo "KUBECONFIG=$RUN/admin.kubeconfig"; }

env_cmd() {
  [ -f "$RUN/admin.kubeconfig" ] || die "no cluster: run scripts/dev-cluster.sh up"
  echo "export $(env_line)"
  echo "export PATH=$BIN:\$PATH"
}

status() {
  local name
  for name in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    if [ -f "$RUN/pids/$name" ] && kill -0 "$(cat "$RUN/pids/$name")" 2>/dev/null; then
      echo "$name running (pid $(cat "$RUN/pids/$name"))"
    else
      echo "$name not running"
    fi
  done
  kctl get --raw /readyz >/dev/null 2>&1 && echo "API ready: $(env_line)" || { echo "API not reachable"; return 1; }
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_cmd ;;
  status) status ;;
  diagnose) diagnose ;;
  build) need_packages; build ;;
  *) echo "usage: $0 up|down|env|status|diagnose|build" >&2; exit 2 ;;
esac

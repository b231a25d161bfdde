#!/usr/bin/env bash
# Failover with two operator replicas (issue 29): the leading replica's pod deleted while a
# developer's steal holds a port of a real Deployment, then the time until stolen traffic
# reaches a developer's process again. Sessions do not yet survive a change of leader, so
# "again" is a new `mirrordctl steal` (run at once, and again each time it is refused)
# through the API server, the way a developer retries. Two ways to lose the leader, RUNS
# times each (default 10): `kubectl delete pod` (SIGTERM: the leader ends its sessions,
# cleans up and gives the Lease up) and `kubectl delete pod --force --grace-period=0`
# (the kubelet kills it within seconds; the Lease runs out: leaderElection.leaseDuration,
# the chart's 15 s). Prints each run and min/median/max (BENCHMARKS.md, "Failover with two
# replicas", says where the time goes). Needs the dev cluster (it brings it up if it is
# down, and leaves it as it found it); runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }

was_up=0
if scripts/dev-cluster.sh status >/dev/null 2>&1; then was_up=1; else scripts/dev-cluster.sh up >/dev/null; fi
eval "$(scripts/dev-cluster.sh env)"
cargo build --quiet --release -p mirrord-operator -p mirrord-agent -p mirrordctl
scripts/images.sh operator >/dev/null 2>&1
scripts/images.sh agent >/dev/null 2>&1
ctl=$PWD/${CARGO_TARGET_DIR:-target}/release/mirrordctl
ns=mirrord-bench-ha
web=mirrord-bench-ha-web
tmp=$(mktemp -d)
lpid=""; cpid=""
cleanup() {
  [ -n "$cpid" ] && kill "$cpid" 2>/dev/null || true
  [ -n "$lpid" ] && kill "$lpid" 2>/dev/null || true
  scripts/helm uninstall mirrord-operator -n $ns --wait >/dev/null 2>&1 || true
  kubectl delete namespace $ns $web --wait=false >/dev/null 2>&1 || true
  rm -rf "$tmp"
  [ "$was_up" = 1 ] || scripts/dev-cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

kubectl create namespace $ns >/dev/null
kubectl create namespace $web >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: $web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
        - name: httpd
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo pod > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"]
YAML
kubectl -n $web rollout status deployment/web --timeout=120s >/dev/null
ip=$(kubectl -n $web get pod -l app=web -o jsonpath='{.items[0].status.podIP}')
scripts/helm install mirrord-operator deploy/helm/mirrord-operator -n $ns --set replicas=2 >/dev/null
until [ "$(kubectl get apiservice v1.operator.mirrord.dev -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' 2>/dev/null)" = True ]; do sleep 0.5; done

# The developer's process: answers "local".
mkdir -p "$tmp/www" && echo local > "$tmp/www/index.html"
lport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$lport" --bind 127.0.0.1 --directory "$tmp/www" >/dev/null 2>&1 &
lpid=$!

stolen() { [ "$(curl -s -m 1 "http://$ip/" 2>/dev/null)" = local ]; }
steal() {
  "$ctl" steal --target deployment/web --namespace $web --port "80=127.0.0.1:$lport" >"$tmp/ctl.log" 2>&1 &
  cpid=$!
}
leader() { kubectl -n $ns get pod -l mirrord.dev/leader=true -o jsonpath='{.items[0].metadata.name}' 2>/dev/null; }
both_ready() {
  [ "$(kubectl -n $ns get pods -l app.kubernetes.io/name=mirrord-operator -o jsonpath='{range .items[*]}{.status.containerStatuses[0].ready}{"\n"}{end}' | grep -c true)" = 2 ]
}

run() { # run MODE N: one failover, prints the seconds
  local mode=$1 n=$2 t0 t1 old
  until both_ready && [ -n "$(leader)" ]; do sleep 0.5; done
  steal
  until stolen; do
    kill -0 "$cpid" 2>/dev/null || steal
    sleep 0.2
  done
  old=$(leader)
  t0=$(now)
  case $mode in
    graceful) kubectl -n $ns delete pod "$old" --wait=false >/dev/null ;;
    force) kubectl -n $ns delete pod "$old" --force --grace-period=0 >/dev/null 2>&1 ;;
  esac
  # The developer runs the command again at once (the old session is gone with its leader).
  kill "$cpid" 2>/dev/null || true; wait "$cpid" 2>/dev/null || true
  steal
  until stolen; do
    kill -0 "$cpid" 2>/dev/null || steal
    sleep 0.2
  done
  t1=$(now)
  kill -INT "$cpid" 2>/dev/null || true; wait "$cpid" 2>/dev/null || true; cpid=""
  echo "$mode run $n: $old deleted -> stolen again (new session, $(leader) leads) $(secs "$t0" "$t1") s" >&2
  secs "$t0" "$t1"
}

summary() { python3 -c "import sys,statistics as s; v=sorted(float(x) for x in sys.argv[2:]); print(f'{sys.argv[1]}: min {v[0]:.1f} s, median {s.median(v):.1f} s, max {v[-1]:.1f} s over {len(v)} runs')" "$@"; }
echo "failover, two replicas, lease $(kubectl -n $ns get lease mirrord-operator -o jsonpath='{.spec.leaseDurationSeconds}') s"
g=(); f=()
for i in $(seq "$RUNS"); do g+=("$(run graceful "$i")"); done
for i in $(seq "$RUNS"); do f+=("$(run force "$i")"); done
summary "kubectl delete pod (graceful)" "${g[@]}"
summary "kubectl delete pod --force --grace-period=0" "${f[@]}"

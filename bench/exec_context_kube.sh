#!/usr/bin/env bash
# `exec` in the target's context on the dev cluster (issue 27): an outgoing connection made
# through the preload layer, mirrordctl, the operator (through the API server's aggregated
# API) and the target pod's agent, against the same client connecting directly from the
# node, in one run: set-up (connect, one GET, the answer, close) and bulk (one 256 MiB
# download), both to another pod; and what `exec` adds to `python3 -c pass`.
# Runs as root; leaves the cluster up, the namespaces removed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-200}; RUNS=${RUNS:-9}
scripts/dev-cluster.sh up > /dev/null
eval "$(scripts/dev-cluster.sh env)"
cargo build --quiet --release -p mirrord-operator -p mirrord-agent -p mirrordctl -p mirrord-layer
scripts/images.sh operator agent busybox > /dev/null 2>&1
CTL=$ROOT/target/release/mirrordctl
ns=mirrord-bench-exec
cleanup() {
  scripts/helm uninstall mirrord-operator -n $ns --wait > /dev/null 2>&1 || true
  kubectl delete namespace $ns --wait=false > /dev/null 2>&1 || true
}
trap cleanup EXIT
kubectl delete namespace $ns --ignore-not-found --wait=true > /dev/null
kubectl create namespace $ns > /dev/null
# The target (`api`) and the destination (`files`: busybox httpd, an index and a 256 MiB file).
kubectl -n $ns apply -f - > /dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo api > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: files}
spec:
  selector: {matchLabels: {app: files}}
  template:
    metadata: {labels: {app: files}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: httpd
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo hello > /tmp/www/index.html && dd if=/dev/zero of=/tmp/www/big bs=1M count=256 2>/dev/null && exec httpd -f -p 80 -h /tmp/www"]
YAML
kubectl -n $ns rollout status deployment/api --timeout=120s > /dev/null
kubectl -n $ns rollout status deployment/files --timeout=120s > /dev/null
files=$(kubectl -n $ns get pods -l app=files -o jsonpath='{.items[0].status.podIP}')
scripts/helm install mirrord-operator deploy/helm/mirrord-operator -n $ns --wait > /dev/null
for _ in $(seq 120); do
  [ "$(kubectl get apiservice v1.operator.mirrord.dev -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ] && break
  sleep 0.5
done
for _ in $(seq 100); do curl -s -m 1 "http://$files/" > /dev/null && break; sleep 0.2; done
under() { "$CTL" exec -t deployment/api -n $ns --no-remote-dns -- "$@" 2> /tmp/mirrord-bench-exec.err; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
under true || { cat /tmp/mirrord-bench-exec.err; exit 1; }   # the agent starts once

echo "== exec context (cluster): outgoing connection set-up to another pod, $N sequential"
read -r d50 d99 < <(python3 bench/exec_client.py setup "$files" 80 "$N")
read -r e50 e99 < <(under python3 bench/exec_client.py setup "$files" 80 "$N" | tail -1)
printf '%-44s p50 %7.3f ms  p99 %7.3f ms\n' "direct from the node" "$d50" "$d99" "through layer + operator + agent" "$e50" "$e99"
echo "ratio (p50): $(ratio "$e50" "$d50")x"

echo "== exec context (cluster): bulk, one connection receiving 256 MiB from another pod"
read -r db dgot < <(python3 bench/exec_client.py bulk "$files" 80 0)
read -r eb egot < <(under python3 bench/exec_client.py bulk "$files" 80 0 | tail -1)
printf '%-44s %7s MB/s\n' "direct from the node" "$db" "through layer + operator + agent" "$eb"
[ "$dgot" = "$egot" ] && echo "ratio: $(ratio "$eb" "$db")x" || echo "TRUNCATED: $egot of $dgot bytes"

echo "== exec context (cluster): what exec adds to \`python3 -c pass\`, median of $RUNS"
wall() { python3 - "$RUNS" "$@" <<'PY'
import statistics, subprocess, sys, time
runs, cmd = int(sys.argv[1]), sys.argv[2:]
t = []
for _ in range(runs):
    s = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t.append((time.perf_counter() - s) * 1000)
print(f"{statistics.median(t):.1f}")
PY
}
plain=$(wall python3 -c pass)
full=$(wall "$CTL" exec -t deployment/api -n $ns -- python3 -c pass)
printf '%-44s %7s ms\n' "python3 -c pass" "$plain" "exec (env, outgoing, DNS)" "$full"
echo "added by exec: $(python3 -c "print(f'{$full - $plain:.1f}')") ms"

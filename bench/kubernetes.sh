#!/usr/bin/env bash
# Kubernetes costs on this machine: dev-cluster `up` (warm cache: binaries built), the
# operator's time to Ready after `helm install` with its image already loaded, and the
# operator pod's idle RSS. Runs as root; leaves the cluster as it found it (up or down).
# The cold cost (building Kubernetes) is printed by `scripts/dev-cluster.sh build`.
set -euo pipefail
cd "$(dirname "$0")/.."
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }

was_up=0
if scripts/dev-cluster.sh status >/dev/null 2>&1; then was_up=1; fi
scripts/dev-cluster.sh down >/dev/null 2>&1
t0=$(now); scripts/dev-cluster.sh up >/dev/null 2>&1; t1=$(now)
echo "dev-cluster up (warm cache, from nothing running): $(secs "$t0" "$t1") s"
eval "$(scripts/dev-cluster.sh env)"
cargo build --quiet --release -p mirrord-operator
scripts/images.sh operator 2>/dev/null
ns=mirrord-bench
kubectl delete namespace $ns --ignore-not-found --wait=true >/dev/null
kubectl create namespace $ns >/dev/null
for run in 1 2 3; do
  t0=$(now)
  scripts/helm install mirrord-operator deploy/helm/mirrord-operator -n $ns \
    --set operator.jsonLog=true --set operator.metrics=true >/dev/null
  # The Deployment creates its pod asynchronously: wait for it to exist, then to be Ready.
  until kubectl -n $ns get pod -l app.kubernetes.io/instance=mirrord-operator -o name | grep -q pod/; do sleep 0.05; done
  kubectl -n $ns wait --for=condition=Ready pod -l app.kubernetes.io/instance=mirrord-operator --timeout=120s >/dev/null
  t1=$(now)
  sleep 3
  pid=$(pgrep -f -- '--ca-dir=/etc/mirrord/ca' | head -1)
  echo "run $run: helm install -> operator Ready $(secs "$t0" "$t1") s; idle RSS $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$pid/status)"
  scripts/helm uninstall mirrord-operator -n $ns --wait >/dev/null
  kubectl -n $ns wait --for=delete pod -l app.kubernetes.io/instance=mirrord-operator --timeout=60s >/dev/null 2>&1 || true
done
kubectl delete namespace $ns --wait=false >/dev/null
[ $was_up -eq 1 ] || scripts/dev-cluster.sh down >/dev/null

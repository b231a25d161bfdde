#!/usr/bin/env bash
# `exec` reading the target's files on the dev cluster (issue 28), against `kubectl exec`, in
# one run: a 50 MB file of random bytes read whole (`kubectl exec cat`, whole command, against
# a process under `mirrordctl exec` timing its own open and read: each open fetches the file
# through the operator and the pod's agent into a local copy), and `stat` of 1,000 paths
# (one `kubectl exec` of `stat` of all of them, against 1,000 `os.stat` under exec: one round trip
# each). Median of RUNS. Runs as root; leaves the cluster up, the namespace removed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-5}
scripts/dev-cluster.sh up > /dev/null
eval "$(scripts/dev-cluster.sh env)"
cargo build --quiet --release -p mirrord-operator -p mirrord-agent -p mirrordctl -p mirrord-layer
scripts/images.sh operator agent busybox > /dev/null 2>&1
CTL=$ROOT/target/release/mirrordctl
ns=mirrord-bench-files
cleanup() {
  scripts/helm uninstall mirrord-operator -n $ns --wait > /dev/null 2>&1 || true
  kubectl delete namespace $ns --wait=false > /dev/null 2>&1 || true
}
trap cleanup EXIT
kubectl delete namespace $ns --ignore-not-found --wait=true > /dev/null
kubectl create namespace $ns > /dev/null
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
      volumes: [{name: data, emptyDir: {}}]
      containers:
        - name: app
          image: mirrord.dev/busybox:1
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "head -c 52428800 /dev/urandom > /data/big && mkdir /data/many && for i in $(seq 0 999); do echo $i > /data/many/f$i; done && touch /data/ready && exec sleep 100000"]
          readinessProbe: {exec: {command: ["/bin/sh", "-c", "test -f /data/ready"]}, periodSeconds: 1}
          volumeMounts: [{name: data, mountPath: /data}]
YAML
kubectl -n $ns rollout status deployment/api --timeout=180s > /dev/null
pod=$(kubectl -n $ns get pods -l app=api -o jsonpath='{.items[0].metadata.name}')
scripts/helm install mirrord-operator deploy/helm/mirrord-operator -n $ns --wait > /dev/null
for _ in $(seq 120); do
  [ "$(kubectl get apiservice v1.operator.mirrord.dev -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ] && break
  sleep 0.5
done
under() { "$CTL" exec -t deployment/api -n $ns --no-remote-dns --no-outgoing --no-env -- "$@" 2> /tmp/mirrord-bench-files.err; }
median() { python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
timed() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N); python3 -c "print(f'{$t1 - $t0:.4f}')"; }
under true || { cat /tmp/mirrord-bench-files.err; exit 1; }   # the agent starts once
# busybox: its applets are reached through its shell.
want=$(kubectl -n $ns exec "$pod" -- sh -c 'sha256sum /data/big' | cut -c1-64)

echo "== files (cluster): a 50 MB file of random bytes read whole, median of $RUNS"
k=(); e=()
for _ in $(seq "$RUNS"); do
  k+=("$(timed kubectl -n $ns exec "$pod" -- sh -c 'cat /data/big')")
  read -r took n sum < <(under python3 bench/files_client.py read /data/big | tail -1)
  [ "$sum" = "$want" ] || { echo "CHECKSUM MISMATCH: $sum, not $want ($n bytes)"; exit 1; }
  e+=("$took")
done
km=$(median "${k[@]}"); em=$(median "${e[@]}")
printf '%-52s %8s s  (%s MB/s)\n' "kubectl exec cat (whole command)" "$km" "$(python3 -c "print(f'{50 * 1.048576 / $km:.0f}')")"
printf '%-52s %8s s  (%s MB/s)\n' "open + read under exec (layer, operator, agent)" "$em" "$(python3 -c "print(f'{50 * 1.048576 / $em:.0f}')")"
echo "ratio (exec / kubectl exec): $(ratio "$em" "$km")x; checksums equal"

echo "== files (cluster): stat of 1,000 paths, median of $RUNS"
k=(); e=()
paths=$(python3 -c "print(' '.join(f'/data/many/f{i}' for i in range(1000)))")
for _ in $(seq "$RUNS"); do
  k+=("$(timed kubectl -n $ns exec "$pod" -- sh -c "stat -c %s $paths")")
  read -r took found < <(under python3 bench/files_client.py stat /data/many 1000 | tail -1)
  [ "$found" = 1000 ] || { echo "only $found of 1000 paths"; exit 1; }
  e+=("$took")
done
km=$(median "${k[@]}"); em=$(median "${e[@]}")
printf '%-52s %8s s\n' "kubectl exec stat of all 1,000 (one command)" "$km"
printf '%-52s %8s s  (%s ms per path)\n' "1,000 os.stat under exec (one round trip each)" "$em" "$(python3 -c "print(f'{$em:.3f}')")"
echo "ratio (exec / kubectl exec): $(ratio "$em" "$km")x"

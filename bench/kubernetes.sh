#!/usr/bin/env bash
# Kubernetes costs on this machine: dev-cluster `up` (warm cache: binaries built), the
# operator's time to Ready after `helm install` with its image already loaded, the
# operator pod's idle RSS, and the agent's start, RSS, pass-through cost and fail-open time. Runs as root; leaves the cluster as it found it (up or down).
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
  pid=$(pgrep -f -- 'mirrord-operator serve --config=/etc/mirrord/config/config.toml' | head -1)
  echo "run $run: helm install -> operator Ready $(secs "$t0" "$t1") s; idle RSS $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$pid/status)"
  scripts/helm uninstall mirrord-operator -n $ns --wait >/dev/null
  kubectl -n $ns wait --for=delete pod -l app.kubernetes.io/instance=mirrord-operator --timeout=60s >/dev/null 2>&1 || true
done
kubectl delete namespace $ns --wait=false >/dev/null

# The agent: from its pod's creation to the redirect in place (image loaded), its idle RSS,
# what it costs on the way to the pod (pass-through, same run: before it and through it),
# and how long a SIGKILLed agent's port stays dark (its lease, 3 s by default).
cargo build --quiet --release -p mirrord-agent
scripts/images.sh agent 2>/dev/null
ns=mirrord-bench-agent
kubectl delete namespace $ns --ignore-not-found --wait=true >/dev/null
kubectl create namespace $ns >/dev/null
# The workload: the operator image's keep-alive demo server (busybox httpd would fork per
# connection and the client would run out of ports, which is not what is measured here).
kubectl -n $ns create deployment web --image=mirrord.dev/operator:0.1.0 -- \
  /usr/local/bin/mirrord-operator demo-server --bind 0.0.0.0 --port 8080 --name web >/dev/null
kubectl -n $ns patch deployment web --type=json -p '[{"op":"add","path":"/spec/template/spec/containers/0/imagePullPolicy","value":"Never"}]' >/dev/null
kubectl -n $ns rollout status deployment/web --timeout=90s >/dev/null
# The patch rolled the Deployment: wait until the first pod is gone, not just replaced.
until [ "$(kubectl -n $ns get pod -l app=web -o name | wc -l)" -eq 1 ]; do sleep 0.2; done
pod=$(kubectl -n $ns get pod -l app=web -o jsonpath='{.items[0].metadata.name}')
uid=$(kubectl -n $ns get pod "$pod" -o jsonpath='{.metadata.uid}')
ip=$(kubectl -n $ns get pod "$pod" -o jsonpath='{.status.podIP}')
for _ in $(seq 100); do curl -s -m 1 "http://$ip:8080/" >/dev/null && break; sleep 0.1; done
rate() { wrk -t1 -c"$1" -d5s "http://$ip:8080/" 2>/dev/null | awk '/Requests\/sec/ {print $2}' || true; }
agent_pod() {
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $ns}
spec:
  hostPID: true
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
    - name: agent
      image: mirrord.dev/agent:0.1.0
      imagePullPolicy: Never
      args: ["intercept", "--pod-uid", "$uid", "--port", "8080", "--json-log"]
      securityContext: {privileged: true}
YAML
}
start_agent() { # start_agent NAME: create it, wait for the redirect
  agent_pod "$1"
  until kubectl -n $ns logs "$1" 2>/dev/null | grep -q "agent intercepting"; do sleep 0.05; done
}
# Two rounds, each: direct, then through a fresh agent (same run, same pod).
for round in 1 2; do
  direct1=$(rate 1); direct16=$(rate 16)
  t0=$(now); start_agent "agent-$round"; t1=$(now)
  sleep 1
  apid=$(pgrep -f "mirrord-agent intercept --pod-uid $uid" | head -1)
  idle=$(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$apid/status)
  via1=$(rate 1); via16=$(rate 16)
  echo "round $round: agent pod created -> redirect in place $(secs "$t0" "$t1") s, idle RSS $idle, $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$apid/status) after the load"
  echo "round $round, keep-alive: through the agent c=1 $via1 req/s vs direct $direct1 ($(secs 0 "$via1/$direct1")x); c=16 $via16 vs $direct16 ($(secs 0 "$via16/$direct16")x)"
  kubectl -n $ns delete pod "agent-$round" --wait=true >/dev/null
  # Connections whose addresses match a NAT entry the agent's redirect left in conntrack
  # still go to its (closed) port until the entry ends: let the client pick fresh ones.
  sleep 5
done
start_agent agent-kill
apid=$(pgrep -f "mirrord-agent intercept --pod-uid $uid" | head -1)
t0=$(now); kill -KILL "$apid"
sleep 0.1
until curl -s -m 0.5 "http://$ip:8080/" >/dev/null; do sleep 0.05; done
t1=$(now)
echo "agent SIGKILLed: the pod's port answers again after $(secs "$t0" "$t1") s (lease 3 s)"

# Sessions through the chart's operator and its agents (same pod, same run): how long a
# session takes to open when the agent must start (cold) and when it is there (warm), and
# what a stolen request costs through the agent, the operator and mirrordctl to a local
# demo server, against the pod served directly.
cargo build --quiet --release -p mirrordctl
scripts/helm install mirrord-operator deploy/helm/mirrord-operator -n $ns --wait >/dev/null
kubectl -n $ns wait --for=delete pod -l mirrord.dev/role=agent --timeout=60s >/dev/null 2>&1 || true
tmp=$(mktemp -d)
svc=$(kubectl -n $ns get svc mirrord-operator -o jsonpath='{.spec.clusterIP}')
until (exec 3<>"/dev/tcp/$svc/8443") 2>/dev/null; do sleep 0.1; done
# Issued by the operator in its pod (README "Run it on Kubernetes"): its registry must list
# a credential, and the CA key never leaves the pod.
( umask 077; kubectl -n $ns exec deploy/mirrord-operator -- mirrord-operator certs issue \
    --user bench --operator-addr "$svc:8443" --out - > "$tmp/creds" )
target/release/mirrord-operator demo-server --bind 127.0.0.1 --port 18181 --name local >/dev/null 2>&1 &
demo=$!
sleep 0.5
mkdir -p "$tmp/home" # no ~/.mirrord: without --credentials mirrordctl uses the kubeconfig
open_session() { # open_session [ARGS]: a steal in the background (pid in $ctl), sets $opened (s)
  local t0; t0=$(now)
  HOME="$tmp/home" target/release/mirrordctl "$@" steal -t deployment/web -n $ns \
    --port 8080=127.0.0.1:18181 >"$tmp/ctl.out" 2>&1 &
  ctl=$!
  until grep -q '^session ' "$tmp/ctl.out" 2>/dev/null; do
    kill -0 $ctl 2>/dev/null || { cat "$tmp/ctl.out" >&2; exit 1; }
    sleep 0.01
  done
  opened=$(secs "$t0" "$(now)")
}
direct1=$(rate 1); direct16=$(rate 16)
for round in 1 2; do
  open_session --credentials "$tmp/creds"; cold=$opened
  if [ "$round" -eq 1 ]; then stolen1=$(rate 1); stolen16=$(rate 16); fi
  kill -INT $ctl; wait $ctl || true
  open_session --credentials "$tmp/creds"; warm=$opened
  kill -INT $ctl; wait $ctl || true
  echo "round $round: session open, agent cold $cold s, warm $warm s"
  sleep 8 # past the agents' linger (5 s): the next one is cold again
done
echo "stolen through the agent, operator and mirrordctl to a local server, keep-alive: c=1 $stolen1 req/s vs direct $direct1 ($(secs 0 "$stolen1/$direct1")x); c=16 $stolen16 vs $direct16 ($(secs 0 "$stolen16/$direct16")x)"
# The same session through the Kubernetes API server (the aggregated API, this kubeconfig's
# user): one more hop for every stolen byte, and RBAC questions when it opens.
open_session; api_cold=$opened
api1=$(rate 1); api16=$(rate 16)
kill -INT $ctl; wait $ctl || true
open_session; api_warm=$opened
kill -INT $ctl; wait $ctl || true
echo "through the API server: session open, agent cold $api_cold s, warm $api_warm s; stolen c=1 $api1 req/s ($(secs 0 "$api1/$direct1")x direct, $(secs 0 "$api1/$stolen1")x the operator's own port); c=16 $api16 ($(secs 0 "$api16/$direct16")x, $(secs 0 "$api16/$stolen16")x)"
kill $demo 2>/dev/null || true
rm -rf "$tmp"
scripts/helm uninstall mirrord-operator -n $ns --wait >/dev/null
kubectl delete namespace $ns --wait=false >/dev/null
[ $was_up -eq 1 ] || scripts/dev-cluster.sh down >/dev/null

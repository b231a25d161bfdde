#!/usr/bin/env bash
# The main job, end to end on one machine: an operator in front of a demo target whose
# replicas it runs itself, two developers' sessions (a filtered steal and a mirror), the
# traffic they get, `mirrordctl status`, the functional JSON logs and the Prometheus metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "building mirrord-operator and mirrordctl (release; the first build takes several minutes)..." >&2
cargo build --release -p mirrord-operator -p mirrordctl
# Where cargo put them: CARGO_TARGET_DIR (relative to here) if set.
TARGET=${CARGO_TARGET_DIR:-target}; [[ $TARGET = /* ]] || TARGET="$PWD/$TARGET"
BIN="$TARGET/release"
[ -x "$BIN/mirrord-operator" ] || { echo "build failed: no $BIN/mirrord-operator" >&2; exit 1; }
WORK=$(mktemp -d)
API=127.0.0.1:18443 LISTEN=127.0.0.1:18080 METRICS=127.0.0.1:19000
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cat > "$WORK/operator.toml" <<TOML
[api]
listen = "$API"

[[targets]]
name = "api"              # addressed as deployment/api
replicas = 2
command = ["$BIN/mirrord-operator", "demo-server", "--port", "{port}", "--name", "api-replica"]
[[targets.ports]]
port = 80
listen = "$LISTEN"        # where the target's traffic arrives
TOML

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "start the operator (JSON logs, metrics on $METRICS)"
OPERATOR_JSON_LOG=true OPERATOR_METRICS_ENABLED=true OPERATOR_METRICS_ADDR=$METRICS \
  "$BIN/mirrord-operator" serve --config "$WORK/operator.toml" --state-dir "$WORK/state" \
  > "$WORK/operator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q '"replica ready"' "$WORK/operator.log" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$WORK/operator.log"; echo "operator failed to start" >&2; exit 1; }
  sleep 0.1
done
curl -sf "http://$LISTEN/hello"

step "issue credentials: developers alice and bob, an admin"
"$BIN/mirrord-operator" certs issue --state-dir "$WORK/state" --user alice --out "$WORK/alice"
"$BIN/mirrord-operator" certs issue --state-dir "$WORK/state" --user bob --out "$WORK/bob"
"$BIN/mirrord-operator" certs issue --state-dir "$WORK/state" --user ops --role admin --valid-for 7d --out "$WORK/ops"
"$BIN/mirrord-operator" certs list --state-dir "$WORK/state"

step "alice's and bob's local processes"
"$BIN/mirrord-operator" demo-server --port 19091 --name alice-laptop & pids+=($!)
"$BIN/mirrord-operator" demo-server --port 19092 --name bob-laptop & pids+=($!)
sleep 0.3

step "alice steals requests with 'x-user: alice'; bob mirrors everything"
"$BIN/mirrordctl" --credentials "$WORK/alice" steal --target deployment/api \
  --port 80=127.0.0.1:19091 --header '^x-user: alice$' & pids+=($!)
"$BIN/mirrordctl" --credentials "$WORK/bob" mirror --target deployment/api \
  --port 80=127.0.0.1:19092 & pids+=($!)
sleep 1

step "traffic to the target"
curl -s -H 'x-user: alice' "http://$LISTEN/orders/1"
curl -s "http://$LISTEN/orders/2"
curl -s -H 'x-user: bob' "http://$LISTEN/orders/3"

step "mirrordctl status (alice sees her own session; the admin sees all)"
"$BIN/mirrordctl" --credentials "$WORK/alice" status
"$BIN/mirrordctl" --credentials "$WORK/ops" status

step "a conflicting unfiltered steal is refused"
"$BIN/mirrordctl" --credentials "$WORK/bob" steal --target deployment/api --port 80=127.0.0.1:19092 || true

step "kill all sessions (an admin's right)"
"$BIN/mirrordctl" --credentials "$WORK/ops" sessions kill --all
sleep 0.5
curl -s -H 'x-user: alice' "http://$LISTEN/orders/4"

step "functional log events (fields.message)"
grep -E '"message":"(Session Started|Session Ended|Port Stolen|Port Mirrored|Port Released|Target Copied)"' "$WORK/operator.log"

step "metrics (mirrord_*)"
curl -s "http://$METRICS/metrics" | grep -E '^mirrord_(sessions|stolen|port_locks|bypassed|build)' | grep -v _bucket

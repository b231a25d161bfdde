#!/usr/bin/env bash
# Where a stolen request's CPU goes, against the minimal relay of the same hops: a flat
# `perf record` (no call graph, 2 kHz) of the relay's edge and far side, then of the
# operator and `mirrordctl`, each during DURATION s of wrk -c64 keep-alive; printed as CPU
# per request, bucketed (kernel, tokio, channels, malloc, TLS, ...). perf slows every
# process: compare the rows with each other, not with bench/dataplane.sh's figures.
# FILTERED=1 profiles a filtered steal (every request matches) instead of an unfiltered one.
source "$(dirname "$0")/lib.sh"
need_tools perf:linux-perf
LOCAL=$(free_port); LISTEN=$(free_port); API=$(free_port); UP=$(free_port); RELAY=$(free_port); TUNNEL=$(free_port)
nginx_start upstream "$UP" 1
nginx_start local "$LOCAL" 1
operator_one_target "$API" "$LISTEN" "$UP"
"$BIN/mirrord-operator" certs issue --state-dir "$WORK/state" --user bench --out "$WORK/creds" > /dev/null

# profile URL NAME:PID NAME:PID: warm up, then record both processes during one wrk run.
WRK_HEADER=(); STEAL_FILTER=()
if [ "${FILTERED:-0}" = 1 ]; then WRK_HEADER=(-H "x-steal: 1"); STEAL_FILTER=(--header '^x-steal: 1$'); fi
profile() {
  local url=$1 np rec=()
  wrk -t1 -c64 -d2s "${WRK_HEADER[@]}" "$url" > /dev/null
  shift
  for np in "$@"; do
    perf record -q -F 2000 -o "${PERF_DATA:-$WORK}/${np%%:*}.data" -p "${np#*:}" -- sleep "$DURATION" 2> /dev/null &
    rec+=($!)
  done
  local reqs; reqs=$(wrk -t1 -c64 -d"${DURATION}s" "${WRK_HEADER[@]}" "$url" | awk '/requests in/ {print $1}')
  wait "${rec[@]}"
  for np in "$@"; do
    echo "== ${np%%:*} ($reqs requests)"
    perf report -i "${PERF_DATA:-$WORK}/${np%%:*}.data" --no-children --sort dso,sym -n --stdio 2> /dev/null |
      python3 "$ROOT/bench/perf_buckets.py" "$reqs" 2000
  done
}

"$BIN/mirrord-bench" relay-edge --listen "127.0.0.1:$RELAY" --tunnel "127.0.0.1:$TUNNEL" --cert-out "$WORK/relay.pem" > "$WORK/relay-edge.log" 2>&1 &
EDGE=$!; PIDS+=($EDGE); wait_port "$TUNNEL"
"$BIN/mirrord-bench" relay-far --tunnel "127.0.0.1:$TUNNEL" --cert "$WORK/relay.pem" --local "127.0.0.1:$LOCAL" > "$WORK/relay-far.log" 2>&1 &
FAR=$!; PIDS+=($FAR); wait_port "$RELAY"
profile "http://127.0.0.1:$RELAY/" "relay-edge:$EDGE" "relay-far:$FAR"
kill "$EDGE" "$FAR"

"$BIN/mirrordctl" --credentials "$WORK/creds" steal --target api --port "80=127.0.0.1:$LOCAL" "${STEAL_FILTER[@]}" > "$WORK/steal.log" 2>&1 &
CTL=$!; PIDS+=($CTL)
for _ in $(seq 100); do grep -q '^port ' "$WORK/steal.log" 2> /dev/null && break; sleep 0.05; done
profile "http://127.0.0.1:$LISTEN/" "operator:$OP_PID" "mirrordctl:$CTL"

#!/usr/bin/env bash
# Data plane: pass-through, stolen (unfiltered and filtered), the unmatched path of a
# filtered steal, and mirroring, each beside its reference measured in the same run:
# nginx and HAProxy (`mode tcp`, `mode http`) for pass-through, a minimal multiplexed TLS
# relay of the same hops (`mirrord-bench relay-edge/relay-far`) for the stolen path, and
# the CPU each process spends per request (from /proc).
source "$(dirname "$0")/lib.sh"
need_tools haproxy
RELAY_BIN=${RELAY_BIN:-$BIN/mirrord-bench}

UP=$(free_port); PROXY=$(free_port); LOCAL=$(free_port); LISTEN=$(free_port); API=$(free_port); HOLE=$(free_port)
HATCP=$(free_port); HAHTTP=$(free_port); RELAY=$(free_port); TUNNEL=$(free_port); NOPOOL=$(free_port)
nginx_start upstream "$UP" 1           # the target's real service
nginx_start proxy "$PROXY" 2 "$UP"     # the reference reverse proxy
nginx_start nopool "$NOPOOL" 2 "$UP" unpooled   # the same without its upstream pool
haproxy_start tcp "$HATCP" tcp "$UP"   # the reference L4 relay
haproxy_start http "$HAHTTP" http "$UP"
nginx_start local "$LOCAL" 1           # the developer's local process

operator_one_target "$API" "$LISTEN" "$UP"
"$BIN/mirrord-operator" certs issue --state-dir "$WORK/state" --user bench --out "$WORK/creds" > /dev/null
CTL=("$BIN/mirrordctl" --credentials "$WORK/creds")

session() { # session NAME ARGS... : start mirrordctl, wait until active
  local log="$WORK/$1.log"; shift
  "${CTL[@]}" "$@" > "$log" 2>&1 &
  PIDS+=($!); LAST=$!
  for _ in $(seq 100); do grep -q '^port ' "$log" 2>/dev/null && return 0; sleep 0.05; done
  cat "$log"; return 1
}

# PARTS: which parts run (a quick look at one of them; ratios to a part not run print n/a).
want() { [[ " ${PARTS:-passthrough stolen mirror} " == *" $1 "* ]]; }

want passthrough && echo "== pass-through (no session): direct vs nginx, HAProxy tcp and http vs interceptor"
want passthrough && for c in 1 64; do
  for mode in keep-alive new-conn; do
    extra=(); [ "$mode" = new-conn ] && extra=(-H "Connection: close")
    wrk_run "direct      c=$c $mode" "http://127.0.0.1:$UP/" "$c" "${extra[@]}"
    wrk_run "nginx       c=$c $mode" "http://127.0.0.1:$PROXY/" "$c" "${extra[@]}"
    wrk_run "haproxy tcp c=$c $mode" "http://127.0.0.1:$HATCP/" "$c" "${extra[@]}"
    wrk_run "haproxy http c=$c $mode" "http://127.0.0.1:$HAHTTP/" "$c" "${extra[@]}"
    wrk_run "interceptor c=$c $mode" "http://127.0.0.1:$LISTEN/" "$c" "${extra[@]}"
    if [ "$mode" = new-conn ]; then
      wrk_run "nginx unpooled c=$c $mode" "http://127.0.0.1:$NOPOOL/" "$c" "${extra[@]}"
      echo "   ratio interceptor/nginx-unpooled $(ratio "interceptor c=$c $mode" "nginx unpooled c=$c $mode"), nginx/nginx-unpooled $(ratio "nginx       c=$c $mode" "nginx unpooled c=$c $mode")"
    fi
    best=$(awk -F'|' -v c="c=$c $mode" '($1=="nginx       " c || $1=="haproxy tcp " c || $1=="haproxy http " c) && $2>m {m=$2; b=$1} END {print b}' "$WORK/results.psv")
    echo "   ratio interceptor/nginx $(ratio "interceptor c=$c $mode" "nginx       c=$c $mode"), interceptor/haproxy-tcp $(ratio "interceptor c=$c $mode" "haproxy tcp c=$c $mode"), interceptor/haproxy-http $(ratio "interceptor c=$c $mode" "haproxy http c=$c $mode"), interceptor/best ($best) $(ratio "interceptor c=$c $mode" "$best"), interceptor/direct $(ratio "interceptor c=$c $mode" "direct      c=$c $mode")"
  done
done

if want stolen; then
echo "== stolen traffic vs direct to the local process and vs the minimal TLS relay of the same hops"
for c in 1 64; do wrk_run "local direct c=$c keep-alive" "http://127.0.0.1:$LOCAL/" "$c"; done
"$RELAY_BIN" relay-edge --listen "127.0.0.1:$RELAY" --tunnel "127.0.0.1:$TUNNEL" --cert-out "$WORK/relay.pem" > "$WORK/relay-edge.log" 2>&1 &
EDGE=$!; PIDS+=($EDGE)
wait_port "$TUNNEL"
"$RELAY_BIN" relay-far --tunnel "127.0.0.1:$TUNNEL" --cert "$WORK/relay.pem" --local "127.0.0.1:$LOCAL" > "$WORK/relay-far.log" 2>&1 &
FAR=$!; PIDS+=($FAR)
wait_port "$RELAY"
for c in 1 64; do
  wrk_cpu "relay reference c=$c keep-alive" "http://127.0.0.1:$RELAY/" "$c" "edge:$EDGE far:$FAR"
  echo "   ratio relay/direct $(ratio "relay reference c=$c keep-alive" "local direct c=$c keep-alive")"
done
kill "$EDGE" "$FAR"; wait "$EDGE" "$FAR" 2>/dev/null || true
session steal-unfiltered steal --target api --port "80=127.0.0.1:$LOCAL"
for c in 1 64; do
  wrk_cpu "steal unfiltered c=$c keep-alive" "http://127.0.0.1:$LISTEN/" "$c" "operator:$OP_PID mirrordctl:$LAST"
  echo "   ratio stolen/relay $(ratio "steal unfiltered c=$c keep-alive" "relay reference c=$c keep-alive"), stolen/direct $(ratio "steal unfiltered c=$c keep-alive" "local direct c=$c keep-alive")"
done
kill "$LAST"; wait "$LAST" 2>/dev/null || true; sleep 0.5

session steal-filtered steal --target api --port "80=127.0.0.1:$LOCAL" --header '^x-steal: 1$'
for c in 1 64; do
  wrk_cpu "steal filtered (match) c=$c keep-alive" "http://127.0.0.1:$LISTEN/" "$c" "operator:$OP_PID mirrordctl:$LAST" -H "x-steal: 1"
  echo "   ratio stolen/relay $(ratio "steal filtered (match) c=$c keep-alive" "relay reference c=$c keep-alive"), filtered/unfiltered $(ratio "steal filtered (match) c=$c keep-alive" "steal unfiltered c=$c keep-alive"), stolen/direct $(ratio "steal filtered (match) c=$c keep-alive" "local direct c=$c keep-alive")"
done

echo "== filtered steal, unmatched requests vs pass-through"
for c in 1 64; do
  wrk_run "steal filtered (no match) c=$c keep-alive" "http://127.0.0.1:$LISTEN/" "$c"
  echo "   ratio unmatched/pass-through $(ratio "steal filtered (no match) c=$c keep-alive" "interceptor c=$c keep-alive")"
done
kill "$LAST"; wait "$LAST" 2>/dev/null || true; sleep 0.5
fi

want mirror || exit 0
echo "== mirror: the real path with 0, 1, 10 mirroring sessions, and a stuck mirror"
wrk_run "mirror x0 c=64 keep-alive" "http://127.0.0.1:$LISTEN/" 64
MIRRORS=()
session mirror-1 mirror --target api --port "80=127.0.0.1:$LOCAL"; MIRRORS+=($LAST)
wrk_run "mirror x1 c=64 keep-alive" "http://127.0.0.1:$LISTEN/" 64
echo "   ratio 1 mirror/none $(ratio "mirror x1 c=64 keep-alive" "mirror x0 c=64 keep-alive")"
for i in $(seq 2 10); do session "mirror-$i" mirror --target api --port "80=127.0.0.1:$LOCAL"; MIRRORS+=($LAST); done
wrk_run "mirror x10 c=64 keep-alive" "http://127.0.0.1:$LISTEN/" 64
echo "   ratio 10 mirrors/none $(ratio "mirror x10 c=64 keep-alive" "mirror x0 c=64 keep-alive")"
kill "${MIRRORS[@]}"; sleep 0.5
# A mirror whose local process accepts and never reads.
python3 -c "
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $HOLE)); s.listen(1024); held = []
while True: held.append(s.accept()[0])
" & PIDS+=($!)
wait_port "$HOLE"
session mirror-stuck mirror --target api --port "80=127.0.0.1:$HOLE"
wrk_run "mirror stuck c=64 keep-alive" "http://127.0.0.1:$LISTEN/" 64
echo "   ratio stuck mirror/none $(ratio "mirror stuck c=64 keep-alive" "mirror x0 c=64 keep-alive")"
if kill -0 "$LAST" 2>/dev/null; then echo "   the stuck mirror's session is still alive"; else echo "   the stuck mirror's session ended: $(tail -1 "$WORK/mirror-stuck.log")"; fi
echo "operator RSS after the data plane runs: $(rss_mb "$OP_PID") MB"

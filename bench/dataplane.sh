#!/usr/bin/env bash
# Data plane: pass-through, stolen (unfiltered and filtered), the unmatched path of a
# filtered steal, and mirroring, each beside its reference measured in the same run.
source "$(dirname "$0")/lib.sh"

UP=$(free_port); PROXY=$(free_port); LOCAL=$(free_port); LISTEN=$(free_port); API=$(free_port); HOLE=$(free_port)
nginx_start upstream "$UP" 1           # the target's real service
nginx_start proxy "$PROXY" 2 "$UP"     # the reference reverse proxy
nginx_start local "$LOCAL" 1           # the developer's local process

cat > "$WORK/op.toml" <<TOML
[api]
listen = "127.0.0.1:$API"
[[targets]]
name = "api"
[[targets.ports]]
port = 80
listen = "127.0.0.1:$LISTEN"
upstream = "127.0.0.1:$UP"
TOML
operator_start "$WORK/op.toml"
"$BIN/mirrord-operator" certs issue --state-dir "$WORK/state" --user bench --out "$WORK/creds" > /dev/null
CTL=("$BIN/mirrordctl" --credentials "$WORK/creds")

session() { # session NAME ARGS... : start mirrordctl, wait until active
  local log="$WORK/$1.log"; shift
  "${CTL[@]}" "$@" > "$log" 2>&1 &
  PIDS+=($!); LAST=$!
  for _ in $(seq 100); do grep -q '^port ' "$log" 2>/dev/null && return 0; sleep 0.05; done
  cat "$log"; return 1
}

echo "== pass-through (no session): direct vs nginx reverse proxy vs interceptor"
for c in 1 64; do
  for mode in keep-alive new-conn; do
    extra=(); [ "$mode" = new-conn ] && extra=(-H "Connection: close")
    wrk_run "direct      c=$c $mode" "http://127.0.0.1:$UP/" "$c" "${extra[@]}"
    wrk_run "nginx       c=$c $mode" "http://127.0.0.1:$PROXY/" "$c" "${extra[@]}"
    wrk_run "interceptor c=$c $mode" "http://127.0.0.1:$LISTEN/" "$c" "${extra[@]}"
    echo "   ratio interceptor/nginx $(ratio "interceptor c=$c $mode" "nginx       c=$c $mode"), interceptor/direct $(ratio "interceptor c=$c $mode" "direct      c=$c $mode")"
  done
done

echo "== stolen traffic vs direct to the local process"
for c in 1 64; do wrk_run "local direct c=$c keep-alive" "http://127.0.0.1:$LOCAL/" "$c"; done
session steal-unfiltered steal --target api --port "80=127.0.0.1:$LOCAL"
for c in 1 64; do
  wrk_run "steal unfiltered c=$c keep-alive" "http://127.0.0.1:$LISTEN/" "$c"
  echo "   ratio stolen/direct $(ratio "steal unfiltered c=$c keep-alive" "local direct c=$c keep-alive")"
done
kill "$LAST"; wait "$LAST" 2>/dev/null || true; sleep 0.5

session steal-filtered steal --target api --port "80=127.0.0.1:$LOCAL" --header '^x-steal: 1$'
for c in 1 64; do
  wrk_run "steal filtered (match) c=$c keep-alive" "http://127.0.0.1:$LISTEN/" "$c" -H "x-steal: 1"
  echo "   ratio stolen/direct $(ratio "steal filtered (match) c=$c keep-alive" "local direct c=$c keep-alive")"
done

echo "== filtered steal, unmatched requests vs pass-through"
for c in 1 64; do
  wrk_run "steal filtered (no match) c=$c keep-alive" "http://127.0.0.1:$LISTEN/" "$c"
  echo "   ratio unmatched/pass-through $(ratio "steal filtered (no match) c=$c keep-alive" "interceptor c=$c keep-alive")"
done
kill "$LAST"; wait "$LAST" 2>/dev/null || true; sleep 0.5

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

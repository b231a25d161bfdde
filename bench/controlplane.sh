#!/usr/bin/env bash
# Control plane: sessions opened and closed per second; operator memory with 1,000 and
# 10,000 idle sessions (each a real mTLS connection answering pings every second);
# /metrics scrape time and size with them; functional events per second, JSON logging on.
source "$(dirname "$0")/lib.sh"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true   # 10,000 sessions need ~10,000 descriptors on each side

API=$(free_port); LISTEN=$(free_port)
# metrics_grace: each phase measures its own sessions' series only; every idle session
# below belongs to one client.
operator_one_target "$API" "$LISTEN" 9 \
  '[sessions]' 'ping_interval = "1s"' 'client_timeout = "30s"' 'metrics_grace = "3s"' \
  '[limits]' 'max_sessions_per_client = 20000'
"$BIN/mirrord-operator" certs issue --state-dir "$WORK/state" --user bench --out "$WORK/creds" > /dev/null
LOAD=("$BIN/mirrord-bench")
ARGS=(--credentials "$WORK/creds" --target deployment/api --port 80)

active() { curl -s "http://$METRICS/metrics" | awk '/^mirrord_sessions_active / {print $2}'; }
wait_active() { for _ in $(seq 600); do [ "$(active)" = "$1" ] && return 0; sleep 0.1; done; echo "sessions_active never reached $1 (at $(active))" >&2; return 1; }

echo "== sessions opened and closed per second (mirror sessions, 16 at a time, full mTLS handshake each)"
"${LOAD[@]}" open-close "${ARGS[@]}" --count 3000 --concurrency 16
wait_active 0
echo "operator RSS with no sessions: $(rss_mb "$OP_PID") MB"

for n in 1000 10000; do
  echo "== $n idle sessions"
  rm -f "$WORK/hold.fifo"; mkfifo "$WORK/hold.fifo"
  "${LOAD[@]}" hold "${ARGS[@]}" --count "$n" < "$WORK/hold.fifo" > "$WORK/hold.out" 2>&1 &
  HOLD=$!; PIDS+=($HOLD)
  exec 7> "$WORK/hold.fifo"
  for _ in $(seq 1200); do grep -q holding= "$WORK/hold.out" && break; kill -0 $HOLD || { cat "$WORK/hold.out"; exit 1; }; sleep 0.1; done
  cat "$WORK/hold.out"
  wait_active "$n"
  sleep 5   # a few ping rounds: steady state
  echo "operator RSS with $n sessions: $(rss_mb "$OP_PID") MB"
  for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "http://$METRICS/metrics"; done \
    | sort -n | awk -v n="$n" 'NR==3 {printf "scrape with %d sessions: median %.1f ms, %.1f MB\n", n, $1*1000, $2/1048576}' 
  echo "   series lines: $(curl -s "http://$METRICS/metrics" | grep -vc '^#')"
  exec 7>&-
  wait "$HOLD" 2>/dev/null || true
  wait_active 0
  sleep 4   # grace: the ended sessions' series go
done
echo "operator RSS after all sessions ended: $(rss_mb "$OP_PID") MB"

echo "== functional events per second (JSON log lines written to /dev/null)"
"${LOAD[@]}" events --count 300000 > /dev/null

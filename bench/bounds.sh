#!/usr/bin/env bash
# Bounds: what one user can cost everybody else, measured.
#  1. The worst filter the operator allows (16 parts, each regex as large as the compiled
#     size limit lets through, found by asking the operator itself), held by one client in
#     as many mirror sessions as it may open, with traffic evaluating every filter: the
#     operator's RSS, and another user's `mirrordctl status` latency, before and during.
#  2. The time from freezing (SIGSTOP) a client that holds an unfiltered steal, under upload
#     traffic, until the port answers from the target again (client_timeout = 10 s).
#  3. The worst backtracking filter the operator accepts: one user's look-around filter that
#     reaches its backtracking limit on every attacking request, under load, and another
#     user's stolen requests meanwhile, against the same load with a harmless header.
#  4. Hardening round 3 (issue 24), each an attack that worked before, and what it costs
#     now: the operator's RSS and another user's `status` latency before and during:
#     a. oversized strings (200 session requests with a 900 KB target name), and the log
#        bytes they write;
#     b. 40 concurrent 12 MB uploads matching a filtered mirror whose client never reads;
#     c. 1,700 idle TCP connections to an intercepted port with no session (no credential
#        needed): the latency of real requests meanwhile;
#     d. 50 sessions of one client each holding an unfinished 1 MB frame.
source "$(dirname "$0")/lib.sh"
CTL="$BIN/mirrordctl"
LOAD="$BIN/mirrord-bench"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

API=$(free_port); LISTEN=$(free_port); UP=$(free_port); DEV=$(free_port)
# UP: the target (nginx: it takes uploads and answers 200). DEV: the local process of every
# session (mirrordctl refuses to start when nothing listens).
nginx_start target "$UP" 1
python3 -m http.server --bind 127.0.0.1 "$DEV" > /dev/null 2>&1 & PIDS+=($!)
wait_port "$DEV"
# The connection cap a 1,024-descriptor operator with one port derives (README "Limits"),
# as the hardening report measured it.
operator_one_target "$API" "$LISTEN" "$UP" '[limits]' 'max_connections_per_port = 149'
for u in heavy other frozen mallory alice hostile; do
  "$BIN/mirrord-operator" certs issue --state-dir "$WORK/state" --user "$u" --out "$WORK/$u" > /dev/null
done
MAX_SESSIONS=64   # limits.max_sessions_per_client; limits.max_filter_regexes_per_client (64) admits 4 of them

# status_ms N: median wall time of N `mirrordctl status` runs by another user, in ms.
status_ms() {
  for _ in $(seq "$1"); do
    local a b; a=$(date +%s%N)
    "$CTL" --credentials "$WORK/other" status > /dev/null 2>&1 || echo "status failed" >&2
    b=$(date +%s%N); echo $(((b - a) / 1000))
  done | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'
}

# The largest N for which `\w{N}` is admitted (binary search against the operator).
admitted() {
  timeout 5 "$CTL" --credentials "$WORK/heavy" mirror --target api --port "80=127.0.0.1:$DEV" --header "\\w{$1}" > "$WORK/probe.out" 2>&1 &
  local p=$!
  for _ in $(seq 50); do
    grep -q '^session ' "$WORK/probe.out" && { kill -INT $p; wait $p 2>/dev/null; return 0; }
    kill -0 $p 2>/dev/null || { wait $p 2>/dev/null; return 1; }
    sleep 0.1
  done
  kill $p 2>/dev/null; wait $p 2>/dev/null; return 1
}
lo=1; hi=5000
while [ $((hi - lo)) -gt 1 ]; do mid=$(((lo + hi) / 2)); if admitted $mid; then lo=$mid; else hi=$mid; fi; done
echo "worst single regex admitted: \\w{$lo} (\\w{$hi} is refused: $(grep -o 'compiles to more than [0-9]* bytes' "$WORK/probe.out" | head -1))"

echo "== one client opening $MAX_SESSIONS sessions with the worst filter allowed, traffic evaluating them"
base_rss=$(rss_mb "$OP_PID"); base_status=$(status_ms 9)
HEADERS=()
for i in $(seq 16); do HEADERS+=(--header "\\w{$lo}"); done
HEAVY=()
t0=$(date +%s.%N)
for i in $(seq "$MAX_SESSIONS"); do
  "$CTL" --credentials "$WORK/heavy" mirror --target api --port "80=127.0.0.1:$DEV" "${HEADERS[@]}" > "$WORK/heavy.$i.out" 2>&1 &
  HEAVY+=($!); PIDS+=($!)
done
# Every attempt either opened (and keeps running) or was refused (and exited).
settled() { local n=0; for i in $(seq "$MAX_SESSIONS"); do
  grep -q '^session ' "$WORK/heavy.$i.out" 2>/dev/null || ! kill -0 "${HEAVY[$((i - 1))]}" 2>/dev/null && n=$((n + 1)); done; echo $n; }
for _ in $(seq 600); do [ "$(settled)" -ge "$MAX_SESSIONS" ] && break; sleep 0.1; done
t1=$(date +%s.%N)
opened=$(grep -l '^session ' "$WORK"/heavy.*.out 2>/dev/null | wc -l)
extra=$(grep -h 'mirrordctl:' "$WORK"/heavy.*.out 2>/dev/null | sort | uniq -c | sort -rn | head -1 | sed 's/^ *//')
# Requests whose headers every filter must scan (no match: each regex runs to the end).
wrk -t1 -c16 -d"${DURATION}s" -H "x-long: $(head -c 2000 /dev/zero | tr '\0' 'a')" "http://127.0.0.1:$LISTEN/" > "$WORK/wrk.out" 2>&1 &
WRK=$!
sleep 1
load_status=$(status_ms 9)
peak=$(rss_mb "$OP_PID")
wait $WRK
after_rss=$(rss_mb "$OP_PID")
printf '%-58s %s\n' "sessions opened of $MAX_SESSIONS attempted, time" "$opened in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f s", b-a}')"
printf '%-58s %s\n' "the others were refused (count, message)" "$extra"
printf '%-58s %s\n' "requests through 16 x $opened filters" "$(awk '/Requests\/sec/ {print $2 " req/s"}' "$WORK/wrk.out")"
printf '%-58s %s MB -> %s MB (during traffic), %s MB after\n' "operator RSS" "$base_rss" "$peak" "$after_rss"
printf '%-58s %s ms -> %s ms\n' "another user's status (median of 9, process start incl.)" "$base_status" "$load_status"
pkill -INT -f "credentials $WORK/heavy" || true
sleep 2

echo "== a frozen client holding an unfiltered steal, under upload traffic"
"$CTL" --credentials "$WORK/frozen" steal --target api --port "80=127.0.0.1:$DEV" > "$WORK/frozen.out" 2>&1 &
FROZEN=$!; PIDS+=($FROZEN)
for _ in $(seq 100); do grep -q '^port ' "$WORK/frozen.out" && break; sleep 0.1; done
kill -STOP $FROZEN
python3 - "$LISTEN" <<'PY' &
import socket, sys, threading, time
port = int(sys.argv[1]); end = time.time() + 30
def upload():
    chunk = b"x" * 65536
    while time.time() < end:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.sendall(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n")
            for _ in range(16): s.sendall(chunk)
        except OSError:
            pass
for _ in range(8): threading.Thread(target=upload, daemon=True).start()
time.sleep(30)
PY
LOADER=$!; PIDS+=($LOADER)
t0=$(date +%s.%N)
while :; do
  body=$(curl -s -m 1 "http://127.0.0.1:$LISTEN/" || true)
  if grep -q "hello, world" <<<"$body"; then break; fi
  [ "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print (b-a > 60)}')" = 1 ] && { echo "port still held after 60 s"; break; }
  sleep 0.1
done
t1=$(date +%s.%N)
printf '%-58s %s\n' "port back to the target after the client froze" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f s (client_timeout 10 s)", b-a}')"
kill -CONT $FROZEN 2>/dev/null || true
kill $LOADER 2>/dev/null || true

echo "== what a filter's regex costs per header line (regex alone; fancy-regex; the operator's filters)"
"$LOAD" filter-cost

echo "== the worst backtracking filter allowed, under load (another user's stolen requests meanwhile)"
# Mallory subscribes first, so every request is tried against her filters before Alice's:
# `(a+)+$` (no look-around: fancy-regex hands it to the linear-time engine) and a shape that
# backtracks until the limit on a header of a's (the look-behind keeps it in the
# backtracking engine).
"$CTL" --credentials "$WORK/mallory" steal --target api --port "80=127.0.0.1:$DEV" --any \
  --header '(a+)+$' --header '^x-h: (?:(a|a)+)+c(?<!z)' > "$WORK/mallory.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^port ' "$WORK/mallory.out" && break; sleep 0.1; done
"$CTL" --credentials "$WORK/alice" steal --target api --port "80=127.0.0.1:$DEV" --header '^x-user: alice$' > "$WORK/alice.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^port ' "$WORK/alice.out" && break; sleep 0.1; done
HOSTILE="x-h: $(head -c 4096 /dev/zero | tr '\0' 'a')b"
BENIGN="x-h: $(head -c 4097 /dev/zero | tr '\0' 'c')"
limited() { curl -s "http://$METRICS/metrics" | awk '/^mirrord_filter_limited_requests_total\{/ {s += $2} END {print s + 0}'; }
wrk_run "alice stolen, alone (c=4)" "http://127.0.0.1:$LISTEN/" 4 -H "x-user: alice"
wrk -t1 -c2 -d"$((DURATION + 2))s" --latency -H "$BENIGN" "http://127.0.0.1:$LISTEN/" > "$WORK/benign.out" 2>&1 &
BG=$!; sleep 1
wrk_run "alice stolen, 2 benign connections (c=4)" "http://127.0.0.1:$LISTEN/" 4 -H "x-user: alice"
wait $BG
before=$(limited)
wrk -t1 -c2 -d"$((DURATION + 2))s" --latency -H "$HOSTILE" "http://127.0.0.1:$LISTEN/" > "$WORK/hostile.out" 2>&1 &
BG=$!; sleep 1
wrk_run "alice stolen, 2 hostile connections (c=4)" "http://127.0.0.1:$LISTEN/" 4 -H "x-user: alice"
wait $BG
after=$(limited)
hostile_reqs=$(awk '/requests in/ {print $1}' "$WORK/hostile.out")
printf '%-58s %s req/s, p50 %s, p99 %s\n' "benign requests (2 connections, 4 KiB header)" \
  "$(awk '/Requests\/sec/ {print $2}' "$WORK/benign.out")" "$(ms "$(awk '$1=="50%" {print $2}' "$WORK/benign.out")")" "$(ms "$(awk '$1=="99%" {print $2}' "$WORK/benign.out")")"
printf '%-58s %s req/s, p50 %s, p99 %s\n' "hostile requests (each: the filter at its limit)" \
  "$(awk '/Requests\/sec/ {print $2}' "$WORK/hostile.out")" "$(ms "$(awk '$1=="50%" {print $2}' "$WORK/hostile.out")")" "$(ms "$(awk '$1=="99%" {print $2}' "$WORK/hostile.out")")"
printf '%-58s %s of %s hostile requests\n' "counted in mirrord_filter_limited_requests_total" "$((after - before))" "$hostile_reqs"
printf '%-58s %s (benign: %s)\n' "alice's req/s under hostile load / alone" \
  "$(ratio "alice stolen, 2 hostile connections (c=4)" "alice stolen, alone (c=4)")" \
  "$(ratio "alice stolen, 2 benign connections (c=4)" "alice stolen, alone (c=4)")"
p99() { awk -F'|' -v l="$1" '$1==l {gsub("ms","",$4); print $4}' "$WORK/results.psv"; }
printf '%-58s %s\n' "alice's p99 under hostile / under benign load" \
  "$(awk -v a="$(p99 "alice stolen, 2 hostile connections (c=4)")" -v b="$(p99 "alice stolen, 2 benign connections (c=4)")" 'BEGIN{printf "%.2f", a/b}')"
pkill -INT -f "credentials $WORK/mallory" || true
pkill -INT -f "credentials $WORK/alice" || true
sleep 1

echo "== hardening round 3: what one client can still cost everyone"
ATTACK=(--credentials "$WORK/hostile" --target deployment/api --port 80)
# hold KIND COUNT: runs an attack that holds what it made until its stdin closes.
hold_attack() {
  rm -f "$WORK/attack.fifo"; mkfifo "$WORK/attack.fifo"
  "$LOAD" attack "${ATTACK[@]}" --kind "$1" --count "$2" < "$WORK/attack.fifo" > "$WORK/attack.out" 2>&1 &
  ATTACKER=$!; PIDS+=($ATTACKER)
  exec 7> "$WORK/attack.fifo"
}
release_attack() { exec 7>&-; wait "$ATTACKER" 2>/dev/null || true; }
row() { printf '%-58s %s\n' "$1" "$2"; }

# a. Oversized strings.
rss0=$(rss_mb "$OP_PID"); st0=$(status_ms 9); log0=$(stat -c %s "$WORK/operator.log")
"$LOAD" attack "${ATTACK[@]}" --kind oversized --count 200 > "$WORK/attack.out" 2>&1 &
A=$!; sleep 0.5; st1=$(status_ms 9); wait $A
rss1=$(rss_mb "$OP_PID"); log1=$(stat -c %s "$WORK/operator.log")
row "a. 200 requests with a 900 KB target name" "$(cat "$WORK/attack.out")"
row "   operator RSS" "$rss0 MB -> $rss1 MB"
row "   log written for them" "$(( (log1 - log0) / 1024 )) KiB ($(( (log1 - log0) / 200 )) bytes per refused request)"
row "   another user's status (median of 9)" "$st0 ms -> $st1 ms"

# b. A filtered mirror that never reads, 40 concurrent 12 MB uploads.
hold_attack mirror-hog 1
for _ in $(seq 100); do grep -q mirror_hog=open "$WORK/attack.out" && break; sleep 0.1; done
rss0=$(rss_mb "$OP_PID"); st0=$(status_ms 9)
head -c $((12 * 1024 * 1024)) /dev/zero > "$WORK/upload.bin"
peak=$rss0
for i in $(seq 40); do
  curl -s -o /dev/null -w '%{http_code}\n' --data-binary @"$WORK/upload.bin" "http://127.0.0.1:$LISTEN/up/$i" >> "$WORK/uploads.out" &
done
st1=$(status_ms 5)
for _ in $(seq 20); do r=$(rss_mb "$OP_PID"); peak=$(awk -v a="$peak" -v b="$r" 'BEGIN{print (b>a)?b:a}'); sleep 0.2; done
wait_uploads() { while [ "$(wc -l < "$WORK/uploads.out")" -lt 40 ]; do sleep 0.2; done; }
wait_uploads
dropped=$(curl -s "http://$METRICS/metrics" | awk '/^mirrord_mirror_copies_dropped_total\{reason="budget"\}/ {print $2}')
row "b. 40 x 12 MB uploads, a mirror that never reads" "$(sort "$WORK/uploads.out" | uniq -c | xargs) (status codes)"
row "   operator RSS (limits.max_mirror_copy_bytes 128 MiB)" "$rss0 MB -> $peak MB peak"
row "   copies dropped for the budget" "${dropped:-0}"
row "   another user's status" "$st0 ms -> $st1 ms"
release_attack

# c. 1,700 idle connections to the intercepted port, no session.
probe_ms() {
  for _ in $(seq "$1"); do curl -s -o /dev/null -m 10 -w '%{time_total}\n' "http://127.0.0.1:$LISTEN/" || echo 10; done \
    | sort -n | awk '{a[NR]=$1} END {printf "%.1f ms median, %.1f ms max", a[int((NR+1)/2)]*1000, a[NR]*1000}'
}
p0=$(probe_ms 9)
python3 - "$LISTEN" <<'PY' > "$WORK/idle.out" 2>&1 &
import socket, sys, time
held = []
for _ in range(1700):
    try:
        held.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2))
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(30)
PY
IDLE=$!; PIDS+=($IDLE)
for _ in $(seq 100); do [ -s "$WORK/idle.out" ] && break; sleep 0.1; done
sleep 1.5
p1=$(probe_ms 9)
row "c. $(head -1 "$WORK/idle.out") idle connections to the port (no session)" "limits.max_connections_per_port 149"
row "   a real request's time" "$p0 -> $p1"
kill $IDLE 2>/dev/null || true

# d. Unfinished frames.
rss0=$(rss_mb "$OP_PID"); st0=$(status_ms 9)
hold_attack partial-frames 50
for _ in $(seq 300); do grep -q partial_frames= "$WORK/attack.out" && break; sleep 0.1; done
rss1=$(rss_mb "$OP_PID"); st1=$(status_ms 9)
row "d. 50 sessions, each an unfinished 1 MB frame" "$(grep partial_frames= "$WORK/attack.out")"
row "   operator RSS (limits.max_buffered_bytes_per_client 32 MiB)" "$rss0 MB -> $rss1 MB"
row "   another user's status" "$st0 ms -> $st1 ms"
release_attack

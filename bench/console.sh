#!/usr/bin/env bash
# Console (issue 15): with 1,000 live sessions, the time to load the page (the HTML, its
# script and stylesheet, and /api/status, as a browser does on each poll) and the operator
# CPU the event stream costs: session churn with no console viewer against the same churn
# with 10 viewers following /api/events, in the same run.
source "$(dirname "$0")/lib.sh"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
VIEWERS=${VIEWERS:-10}

API=$(free_port); LISTEN=$(free_port); CONSOLE=$(free_port)
operator_one_target "$API" "$LISTEN" 9 \
  '[console]' "listen = \"127.0.0.1:$CONSOLE\"" \
  '[sessions]' 'ping_interval = "1s"' 'client_timeout = "30s"' \
  '[limits]' 'max_sessions_per_client = 20000'
"$BIN/mirrord-operator" certs issue --state-dir "$WORK/state" --user bench --out "$WORK/creds" > /dev/null
"$BIN/mirrord-operator" certs issue --state-dir "$WORK/state" --user root --role admin --out "$WORK/root" > /dev/null
LOAD=("$BIN/mirrord-bench")
ARGS=(--credentials "$WORK/creds" --target deployment/api --port 80)
machine

# cpu_s PID: user+system CPU seconds the process used so far.
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }

echo "== 1,000 idle sessions held"
rm -f "$WORK/hold.fifo"; mkfifo "$WORK/hold.fifo"
"${LOAD[@]}" hold "${ARGS[@]}" --count 1000 < "$WORK/hold.fifo" > "$WORK/hold.out" 2>&1 &
HOLD=$!; PIDS+=($HOLD)
exec 7> "$WORK/hold.fifo"
for _ in $(seq 1200); do grep -q holding= "$WORK/hold.out" && break; kill -0 $HOLD || { cat "$WORK/hold.out"; exit 1; }; sleep 0.1; done
cat "$WORK/hold.out"
sleep 3

LINK=$("$BIN/mirrordctl" --credentials "$WORK/root" console login 2>/dev/null)
# page.py: logs in with the link, then times the page's requests over one keep-alive
# connection (median of 9) and can follow the event stream in N threads.
cat > "$WORK/page.py" <<'PY'
import http.client, ssl, statistics, sys, threading, time, urllib.parse
link, mode = sys.argv[1], sys.argv[2]
u = urllib.parse.urlsplit(link)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def conn(): return http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
c = conn(); c.request("GET", u.path + "?" + u.query); r = c.getresponse(); r.read()
cookie = r.getheader("set-cookie").split(";")[0]
H = {"cookie": cookie}
if mode == "page":
    c = conn()
    times, size = [], 0
    for _ in range(9):
        t = time.perf_counter(); size = 0
        for p in ["/", "/assets/console.js", "/assets/console.css", "/api/status"]:
            c.request("GET", p, headers=H); r = c.getresponse(); b = r.read(); size += len(b)
            assert r.status == 200, (p, r.status)
        times.append(time.perf_counter() - t)
    c.request("GET", "/api/status", headers=H); r = c.getresponse(); st = r.read()
    print(f"page load (4 requests, keep-alive): median {statistics.median(times)*1000:.1f} ms, "
          f"max {max(times)*1000:.1f} ms, {size/1024:.0f} KiB; /api/status alone {len(st)/1024:.0f} KiB")
else:
    n, seconds = int(sys.argv[3]), float(sys.argv[4])
    got = [0] * n
    def follow(i):
        c = conn(); c.request("GET", "/api/events", headers=H); r = c.getresponse()
        end = time.time() + seconds
        while time.time() < end:
            line = r.fp.readline()
            if not line: break
            if line.startswith(b"id: "): got[i] += 1
    ts = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(n)]
    for t in ts: t.start()
    for t in ts: t.join(seconds + 5)
    print(f"events received per viewer: min {min(got)}, max {max(got)}")
PY
python3 "$WORK/page.py" "$LINK" page

echo "== operator CPU during session churn (3,000 sessions opened and closed, 16 at a time), 1,000 held"
churn() { "${LOAD[@]}" open-close "${ARGS[@]}" --count 3000 --concurrency 16 | tail -1; }
a=$(cpu_s "$OP_PID"); t0=$(date +%s.%N); churn; t1=$(date +%s.%N); b=$(cpu_s "$OP_PID")
none=$(awk -v a="$a" -v b="$b" 'BEGIN{print b-a}')
printf '%-52s %s CPU s in %.1f s\n' "no viewer" "$none" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
sleep 2
LINK=$("$BIN/mirrordctl" --credentials "$WORK/root" console login 2>/dev/null)
python3 "$WORK/page.py" "$LINK" follow "$VIEWERS" 25 > "$WORK/viewers.out" &
VIEW=$!; PIDS+=($VIEW)
sleep 2
a=$(cpu_s "$OP_PID"); t0=$(date +%s.%N); churn; t1=$(date +%s.%N); b=$(cpu_s "$OP_PID")
with=$(awk -v a="$a" -v b="$b" 'BEGIN{print b-a}')
printf '%-52s %s CPU s in %.1f s\n' "$VIEWERS viewers following /api/events" "$with" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
wait $VIEW || true
cat "$WORK/viewers.out"
printf '%-52s %s\n' "CPU ratio (viewers / none)" "$(awk -v a="$none" -v b="$with" 'BEGIN{printf "%.2f", b/a}')"
exec 7>&-
wait "$HOLD" 2>/dev/null || true

# Shared helpers for the benchmark scripts (sourced).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Where cargo put the release builds: CARGO_TARGET_DIR (relative to the repo) if set.
TARGET=${CARGO_TARGET_DIR:-target}; [[ $TARGET = /* ]] || TARGET="$ROOT/$TARGET"
BIN=${BIN:-$TARGET/release}   # BIN=DIR runs other builds (e.g. a baseline)
WORK=${WORK:-$(mktemp -d /tmp/mirrord-bench.XXXXXX)}
DURATION=${DURATION:-5}
PIDS=()

# need_tools TOOL[:PACKAGE]...: installs the Debian package (by default the tool's name) of
# each tool missing (root), so every script runs on its own on a fresh machine.
need_tools() {
  local need=() t
  for t in "$@"; do command -v "${t%%:*}" > /dev/null || need+=("${t#*:}"); done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "installing ${need[*]} (references and load generators)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null
  systemctl stop nginx haproxy 2> /dev/null || true   # the packages' own services are not ours
}
need_tools wrk nginx curl python3
[ "${BENCH_SYSCALLS:-0}" != 1 ] || need_tools perf:linux-perf

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# nginx NAME PORT WORKERS [proxy_to_port [unpooled]]: a fixed 13-byte body, or a reverse
# proxy keeping up to 128 idle upstream connections (`unpooled`: one per request, nginx's
# default).
nginx_start() {
  local name=$1 port=$2 workers=$3 proxy=${4:-} pool=${5:-}
  local dir="$WORK/nginx-$name"; mkdir -p "$dir/logs"
  local location='return 200 "hello, world\n";'
  local upstream=""
  if [ -n "$proxy" ]; then
    if [ "$pool" = unpooled ]; then
      upstream="upstream up { server 127.0.0.1:$proxy; }"
      location='proxy_pass http://up;'
    else
      upstream="upstream up { server 127.0.0.1:$proxy; keepalive 128; }"
      location='proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
    fi
  fi
  cat > "$dir/nginx.conf" <<CONF
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 0;  # bench/bounds.sh uploads large bodies
  $upstream
  server { listen 127.0.0.1:$port reuseport; location / { $location } }
}
CONF
  nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
  PIDS+=($!)
  wait_port "$port"
}

# wrk_run LABEL URL CONNS [extra wrk args...] -> "LABEL rps p50_ms p99_ms"
wrk_run() {
  local label=$1 url=$2 conns=$3; shift 3
  local out
  out=$(wrk -t1 -c"$conns" -d"${DURATION}s" --latency "$@" "$url" 2>&1)
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local errs; errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  local reqs; reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  printf '%-44s %10.0f req/s  p50 %8s  p99 %8s  %s\n' "$label" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$errs"
  echo "$label|$rps|$(ms "$p50")|$(ms "$p99")|$reqs" >> "$WORK/results.psv"
}

# cpu_ticks PID: the process's user + system CPU so far, in clock ticks (/proc/PID/stat).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# wrk_cpu LABEL URL CONNS "NAME:PID ..." [extra wrk args...]: wrk_run, then each named
# process's CPU over the run divided by the requests wrk completed, in microseconds.
# With BENCH_SYSCALLS=1 (needs perf), also each process's system calls and context switches
# per request: the kernel's share of a hop, compared process by process.
wrk_cpu() {
  local label=$1 url=$2 conns=$3 procs=$4; shift 4
  local -A before=() stat=()
  local np
  for np in $procs; do
    before[$np]=$(cpu_ticks "${np#*:}")
    if [ "${BENCH_SYSCALLS:-0}" = 1 ]; then
      perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "${np#*:}" \
        -o "$WORK/perf-${np%%:*}.csv" 2>/dev/null &
      stat[$np]=$!
    fi
  done
  wrk_run "$label" "$url" "$conns" "$@"
  local reqs; reqs=$(awk -F'|' -v l="$label" '$1==l {print $5}' "$WORK/results.psv" | tail -1)
  local line="   CPU per request:" hz; hz=$(getconf CLK_TCK) calls=""
  for np in $procs; do
    local d=$(( $(cpu_ticks "${np#*:}") - ${before[$np]} ))
    local us; us=$(awk -v d="$d" -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
    line+=" ${np%%:*} $us us"
    echo "$label|cpu ${np%%:*}|$us" >> "$WORK/cpu.psv"
    if [ -n "${stat[$np]:-}" ]; then
      kill -INT "${stat[$np]}"; wait "${stat[$np]}" 2>/dev/null || true
      calls+=" ${np%%:*} $(awk -F, -v n="$reqs" '$3 ~ /sys_enter/ {s=$1} $3 ~ /context-switches/ {c=$1} END {printf "%.2f syscalls %.2f switches", s/n, c/n}' "$WORK/perf-${np%%:*}.csv")"
    fi
  done
  echo "$line"
  [ -z "$calls" ] || echo "   per request:$calls"
}

# haproxy_start NAME PORT MODE UPSTREAM_PORT: HAProxy 2 threads, `mode tcp` or `mode http`
# (http: keep-alive both sides, idle server connections reused across clients, the
# default `http-reuse safe`).
haproxy_start() {
  local name=$1 port=$2 mode=$3 up=$4
  local dir="$WORK/haproxy-$name"; mkdir -p "$dir"
  cat > "$dir/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 4096
defaults
  mode $mode
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$port
  default_backend b
backend b
  server s1 127.0.0.1:$up
CONF
  haproxy -db -f "$dir/haproxy.cfg" > "$dir/out.log" 2>&1 &
  PIDS+=($!)
  wait_port "$port"
}

# wrk prints 1.23ms / 456.00us / 1.02s: normalise to ms.
ms() {
  local v=$1
  case $v in
    *us) awk -v x="${v%us}" 'BEGIN{printf "%.3fms", x/1000}';;
    *ms) awk -v x="${v%ms}" 'BEGIN{printf "%.3fms", x}';;
    *s) awk -v x="${v%s}" 'BEGIN{printf "%.3fms", x*1000}';;
    *) echo "$v";;
  esac
}

# ratio A B: A/B from results.psv req/s
ratio() {
  awk -F'|' -v a="$1" -v b="$2" '$1==a{x=$2} $1==b{y=$2} END{ if (y>0) printf "%.2f", x/y; else print "n/a" }' "$WORK/results.psv"
}

# operator_start CONFIG: release operator with JSON logs and metrics; sets OP_PID, METRICS.
operator_start() {
  METRICS=127.0.0.1:$(free_port)
  OPERATOR_JSON_LOG=true OPERATOR_METRICS_ENABLED=true OPERATOR_METRICS_ADDR=$METRICS \
    "$BIN/mirrord-operator" serve --config "$1" --state-dir "$WORK/state" > "$WORK/operator.log" 2>&1 &
  OP_PID=$!
  PIDS+=($OP_PID)
  for _ in $(seq 100); do grep -q "operator ready" "$WORK/operator.log" 2>/dev/null && return 0; sleep 0.05; done
  cat "$WORK/operator.log"; return 1
}

# operator_one_target API LISTEN UPSTREAM [TOML LINE...]: operator_start with a config of
# one target, `api`, whose port 80 listens on LISTEN and goes to UPSTREAM (127.0.0.1 ports);
# the extra lines (settings sections) come before the target.
operator_one_target() {
  local api=$1 listen=$2 up=$3; shift 3
  {
    printf '[api]\nlisten = "127.0.0.1:%s"\n' "$api"
    [ $# -eq 0 ] || printf '%s\n' "$@"
    printf '[[targets]]\nname = "api"\n[[targets.ports]]\nport = 80\n'
    printf 'listen = "127.0.0.1:%s"\nupstream = "127.0.0.1:%s"\n' "$listen" "$up"
  } > "$WORK/op.toml"
  operator_start "$WORK/op.toml"
}

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

machine() {
  echo "machine: $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)), $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -sr)"
  echo "tools: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), nginx $(nginx -v 2>&1 | cut -d/ -f2), $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3), $(rustc --version)"
}

#!/usr/bin/env bash
# All benchmarks: release builds, then the data plane and the control plane.
# Needs wrk, nginx, curl, python3 (Debian packages; installed if missing and root).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for t in wrk nginx curl python3; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  systemctl stop nginx 2>/dev/null || true
fi
cargo build --quiet --release -p mirrord-operator -p mirrordctl -p mirrord-bench
source bench/lib.sh
machine
echo "duration per wrk run: ${DURATION}s, wrk -t1"
bash bench/dataplane.sh
bash bench/controlplane.sh
bash bench/console.sh

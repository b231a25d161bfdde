#!/usr/bin/env bash
# All benchmarks: release builds, then the data plane and the control plane.
# Needs wrk, nginx, haproxy, curl, python3 (Debian packages; bench/lib.sh installs them if
# missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p mirrord-operator -p mirrordctl -p mirrord-bench
source bench/lib.sh
machine
echo "duration per wrk run: ${DURATION}s, wrk -t1"
bash bench/dataplane.sh
bash bench/controlplane.sh
bash bench/console.sh

#!/usr/bin/env bash
# The whole test suite. As root it first brings up the dev Kubernetes cluster
# (scripts/dev-cluster.sh: built once into a cache, ~15 min cold, ~25 s warm) so the
# Kubernetes tests run against it; without one they say so and return, except under CI,
# where a missing cluster fails them. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  scripts/dev-cluster.sh up
  eval "$(scripts/dev-cluster.sh env)"
else
  echo "test.sh: not root, so no dev cluster: the Kubernetes tests will be skipped" >&2
fi
cargo test --workspace "$@"

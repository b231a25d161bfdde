#!/usr/bin/env bash
# Container images without a registry: each is written as a `docker save` style archive
# (one layer: a root filesystem made here) and imported into the dev cluster's containerd.
#
#   scripts/images.sh pause       the pod sandbox image (busybox sleeping)
#   scripts/images.sh busybox     busybox (httpd, sh, wget, nc) for test targets and clients
#   scripts/images.sh operator    the operator from this tree's release build
#                                 (OPERATOR_BIN=path: another build, e.g. the tests' debug one)
#   scripts/images.sh agent       the agent (AGENT_BIN likewise) with Debian's nft
#   scripts/images.sh all         all of the above
#   scripts/images.sh base        pause and busybox, each only if missing (the kubelet
#                                 removes images under disk pressure, whatever its GC says)
#   scripts/images.sh operator agent   several at once
#
# The operator image holds the release binary and exactly the shared libraries `ldd`
# lists; it runs as a non-root user with a read-only root filesystem.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${MIRRORD_CLUSTER_DIR:-/var/lib/mirrord-dev-cluster}
SOCK=$RUN/containerd/containerd.sock
TARGET=${CARGO_TARGET_DIR:-target}
# The tag the chart uses by default: its appVersion.
VERSION=$(awk -F'"' '/^appVersion:/ {print $2; exit}' deploy/helm/mirrord-operator/Chart.yaml)

say() { echo "images: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ -S "$SOCK" ] || die "no containerd at $SOCK: run scripts/dev-cluster.sh up first"
SNAPSHOTTER=$(cat "$RUN/containerd/snapshotter" 2>/dev/null || echo overlayfs)
command -v busybox >/dev/null || die "busybox missing (Debian package busybox-static)"

# image NAME:TAG ROOTFS ENTRYPOINT_JSON: archive ROOTFS as one layer and import it.
image() {
  local ref=$1 rootfs=$2 entrypoint=$3 out
  out=$(mktemp -d)
  # mktemp makes 0700 directories: the image's / must be traversable by non-root users.
  chmod 0755 "$rootfs"
  tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -cf "$out/layer.tar" .
  python3 - "$out" "$ref" "$entrypoint" <<'PY'
import hashlib, json, sys
out, ref, entrypoint = sys.argv[1:]
digest = hashlib.sha256(open(f"{out}/layer.tar", "rb").read()).hexdigest()
config = {
    "architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": json.loads(entrypoint),
               "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest}"]},
}
json.dump(config, open(f"{out}/config.json", "w"))
json.dump([{"Config": "config.json", "RepoTags": [ref], "Layers": ["layer.tar"]}],
          open(f"{out}/manifest.json", "w"))
PY
  tar -C "$out" -cf "$out/image.tar" manifest.json config.json layer.tar
  ctr --address "$SOCK" -n k8s.io images import --snapshotter "$SNAPSHOTTER" "$out/image.tar" >/dev/null
  rm -rf "$out"
  say "imported $ref"
}

busybox_root() { # a root filesystem with busybox and its applets as links
  local root=$1 applet
  mkdir -p "$root/bin" "$root/tmp" "$root/www" "$root/etc"
  chmod 1777 "$root/tmp"
  cp "$(command -v busybox)" "$root/bin/busybox"
  for applet in sh sleep httpd wget nc cat echo ls mkdir env hostname ip kill ps; do
    ln -sf busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >> "$root/etc/passwd"
}

present() { ctr --address "$SOCK" -n k8s.io images ls -q | grep -qx "$1"; }

pause() {
  local root; root=$(mktemp -d)
  busybox_root "$root"
  image mirrord.dev/pause:1 "$root" '["/bin/sleep", "2147483647"]'
  rm -rf "$root"
}

busybox_image() {
  local root; root=$(mktemp -d)
  busybox_root "$root"
  image mirrord.dev/busybox:1 "$root" '["/bin/sh"]'
  rm -rf "$root"
}

operator() {
  local bin=${OPERATOR_BIN:-$TARGET/release/mirrord-operator} root lib
  [ -x "$bin" ] || die "no $bin: run cargo build --release -p mirrord-operator first (or set OPERATOR_BIN)"
  root=$(mktemp -d)
  mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
  # Debug info stays on the build machine (the release profile keeps it for profiling).
  strip --strip-debug -o "$root/usr/local/bin/mirrord-operator" "$bin"
  # The dynamic loader and every library the binary links, at the same paths.
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  echo 'mirrord:x:65532:65532:mirrord:/:/sbin/nologin' > "$root/etc/passwd"
  echo 'mirrord:x:65532:' > "$root/etc/group"
  image "mirrord.dev/operator:$VERSION" "$root" '["/usr/local/bin/mirrord-operator"]'
  rm -rf "$root"
}

# Copies BIN to ROOT/DEST with the dynamic loader and every library `ldd` lists, at the
# same paths.
with_libs() {
  local bin=$1 root=$2 dest=$3 lib
  mkdir -p "$root$(dirname "$dest")"
  strip --strip-debug -o "$root$dest" "$bin"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

agent() {
  local bin=${AGENT_BIN:-$TARGET/release/mirrord-agent} root
  [ -x "$bin" ] || die "no $bin: run cargo build --release -p mirrord-agent first (or set AGENT_BIN)"
  command -v nft >/dev/null || die "nft missing (Debian package nftables)"
  command -v conntrack >/dev/null || die "conntrack missing (Debian package conntrack)"
  root=$(mktemp -d)
  mkdir -p "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  with_libs "$bin" "$root" /usr/local/bin/mirrord-agent
  # The redirect is nftables; the agent runs Debian's nft (same libraries, via ldd).
  with_libs "$(command -v nft)" "$root" /usr/local/bin/nft
  # And conntrack, to forget the redirected connections' NAT entries when it leaves.
  with_libs "$(command -v conntrack)" "$root" /usr/local/bin/conntrack
  echo 'root:x:0:0:root:/:/sbin/nologin' > "$root/etc/passwd"
  image "mirrord.dev/agent:$VERSION" "$root" '["/usr/local/bin/mirrord-agent"]'
  rm -rf "$root"
}

[ $# -gt 0 ] || { echo "usage: $0 pause|busybox|operator|agent|all|base..." >&2; exit 2; }
for name in "$@"; do
  case "$name" in
    pause) pause ;;
    busybox) busybox_image ;;
    operator) operator ;;
    agent) agent ;;
    all) pause; busybox_image; operator; agent ;;
    base)
      present mirrord.dev/pause:1 || pause
      present mirrord.dev/busybox:1 || busybox_image
      ;;
    *) echo "usage: $0 pause|busybox|operator|agent|all|base... (not $name)" >&2; exit 2 ;;
  esac
done

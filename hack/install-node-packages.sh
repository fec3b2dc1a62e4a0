#!/usr/bin/env bash
# The Debian packages real nodes and the image build need (root): podman/buildah (image build), runc (the
# OCI runtime under containerd; crun refuses cgroup v1 hybrid hosts), mmdebstrap (the local base image),
# CNI plugins, iptables (kube-proxy, NAT), conntrack. Idempotent: does nothing when all are installed.
# containerd itself is built from source (hack/tools/containerd), Debian's is 1.x.
set -euo pipefail
PACKAGES=(podman buildah runc conmon fuse-overlayfs mmdebstrap skopeo containernetworking-plugins
  iptables conntrack iproute2 ca-certificates)
if [ "$(id -u)" != 0 ]; then
  echo "install-node-packages: real nodes need root (containers, network namespaces, mounts); run as root" >&2
  exit 1
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" = 0 ]; then
  echo "==> Debian packages for real nodes: all installed"
  exit 0
fi
echo "==> installing Debian packages for real nodes: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

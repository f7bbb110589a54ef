#!/usr/bin/env bash
# Installs the Debian 12 packages the build and tests need (and with --peers the main job's
# peers), only those missing. Run as root.
set -euo pipefail
packages=(cmake make gcc clang pkg-config libcriterion-dev libhwloc-dev zlib1g-dev
          ocl-icd-opencl-dev opencl-headers libclblast-dev pocl-opencl-icd clinfo
          gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user python3-numpy python3-pytest
          chromium libopenmpi-dev openmpi-bin)
# With --peers (the main job, scripts/bench.sh): the peers it times beside ours
# (bench/peers/peers.py, docs/peers.md); the tests do not need them. OpenBLAS: without it
# Debian's numpy, FAISS and PyTorch call the reference BLAS, several times slower, and the
# comparison would flatter us.
if [ "${1:-}" = --peers ]; then
  packages+=(python3-torch python3-faiss python3-hnswlib python3-sklearn libopenblas0-pthread)
fi
# The Node addon (node/): node, and the Node-API headers where node's package lacks them
# (NodeSource's nodejs ships /usr/include/node; Debian's needs libnode-dev).
packages+=(nodejs)
[ -f /usr/include/node/node_api.h ] || packages+=(libnode-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: set up, build Release, and run `sona bench` on every available backend.
# Extra arguments go to `sona bench` (e.g. --quick, --json out.json, --html report.html).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --peers
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSONA_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
# OpenCL CPU devices (PoCL) are otherwise used only when asked for: the main job measures every
# backend there is, so it asks (a GPU still comes first).
export SONA_OPENCL_DEVICE=${SONA_OPENCL_DEVICE:-any}
./build/bin/sona info
# The peers (docs/peers.md) on the inputs of our rows, before ours, merged into the same report;
# not for --list or --help, which run nothing.
peers=() quick=() run=1
for arg in "$@"; do
  case $arg in --quick) quick=(--quick) ;; --list | --help | -h) run=0 ;; esac
done
if [ "$run" = 0 ]; then
  :
elif /usr/bin/python3 bench/peers/peers.py --check; then
  peers_dir=$(mktemp -d)
  trap 'rm -rf "$peers_dir"' EXIT
  # A peer that fails costs its rows, not the main job's report.
  if ./build/bin/sona bench --dump-data "$peers_dir" &&
     /usr/bin/python3 bench/peers/peers.py --data "$peers_dir" --out "$peers_dir/peers.json" "${quick[@]}"; then
    peers=(--peers "$peers_dir/peers.json")
  else
    echo "peers: failed (above); the report goes without them" >&2
  fi
else
  echo "peers: skipped (they do not all import; scripts/deps.sh --peers installs them)" >&2
fi
./build/bin/sona bench "$@" "${peers[@]}"

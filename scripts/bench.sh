#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: set up, build Release, and run `sona bench` on every available backend.
# Extra arguments go to `sona bench` (e.g. --quick, --json out.json, --html report.html).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSONA_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
# OpenCL CPU devices (PoCL) are otherwise used only when asked for: the main job measures every
# backend there is, so it asks (a GPU still comes first).
export SONA_OPENCL_DEVICE=${SONA_OPENCL_DEVICE:-any}
./build/bin/sona info
exec ./build/bin/sona bench "$@"

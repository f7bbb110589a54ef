#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite: set up, then the suite under AddressSanitizer + UBSan, the concurrent
# tests under ThreadSanitizer, the NEON variant under qemu, then the Release build with a quick
# `sona bench` run, and last the Release tests, whose ctest summary closes the output. Warnings
# are errors in every build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc)

step() { printf '\n=== %s\n' "$*"; }

step "AddressSanitizer + UBSan build and tests"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSONA_SANITIZE=address,undefined \
  -DSONA_BUILD_TOOLS=OFF >/dev/null
cmake --build build-asan -j"$jobs" >/dev/null
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -j1)

step "ThreadSanitizer build and the concurrent tests (tests/test_concurrent_*.c)"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DSONA_SANITIZE=thread -DSONA_BUILD_TOOLS=OFF \
  >/dev/null
concurrent_tests=$(cd tests && ls test_concurrent_*.c | sed 's/\.c$//')
# shellcheck disable=SC2086 # one target per word
cmake --build build-tsan -j"$jobs" --target $concurrent_tests >/dev/null
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --output-on-failure -j1 -L concurrent)

step "State loader fuzzing (clang + libFuzzer, 30 s on a seed made by fuzz_make_seed)"
if command -v clang >/dev/null; then
  CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DSONA_SANITIZE=address,undefined \
    -DSONA_FUZZ=ON -DSONA_BUILD_TOOLS=OFF >/dev/null
  cmake --build build-fuzz -j"$jobs" --target fuzz_load fuzz_make_seed >/dev/null
  corpus=$(mktemp -d)
  build-fuzz/bin/fuzz_make_seed "$corpus/seed.state"
  build-fuzz/bin/fuzz_load -max_total_time=30 -rss_limit_mb=2048 -artifact_prefix=build-fuzz/ \
    "$corpus" 2>&1 | tail -n 3
  rm -rf "$corpus"
else
  echo "clang not found: fuzzing skipped"
fi

step "NEON variant: aarch64 cross build, op checker under qemu-aarch64"
# No aarch64 zlib in the cross sysroot: the built-in CRC-32 (SONA_ZLIB=OFF) stands in there.
toolchain=()  # only on first configure: cached afterwards, and CMake warns when it is passed again
[ -f build-aarch64/CMakeCache.txt ] || toolchain=(-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake)
cmake -S . -B build-aarch64 "${toolchain[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DSONA_BUILD_TESTS=OFF -DSONA_BUILD_TOOLS=OFF -DSONA_OPENCL=OFF \
  -DSONA_CUDA=OFF -DSONA_ZLIB=OFF -DCMAKE_EXE_LINKER_FLAGS=-static >/dev/null
# Log kept quiet unless it fails: the static link warns that dlopen needs glibc at run time,
# which is moot there (no GPU modules in this build).
cmake --build build-aarch64 -j"$jobs" --target sona_ops_check >build-aarch64/build.log 2>&1 ||
  { cat build-aarch64/build.log; exit 1; }
qemu-aarch64 build-aarch64/bin/sona_ops_check

step "Release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSONA_BUILD_TESTS=ON -DSONA_BUILD_TOOLS=ON >/dev/null
cmake --build build -j"$jobs" >/dev/null

step "sona bench --quick (the main job, so it never rots)"
./build/bin/sona bench --quick --json build/bench-quick.json

step "Release tests"
(cd build && ctest --output-on-failure -j1)

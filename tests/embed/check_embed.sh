#!/usr/bin/env bash
# usage: check_embed.sh SONA_SOURCE_DIR CONSUMER_SRC WORK_DIR
# Configures the consumer twice (add_subdirectory, FetchContent), builds it, runs both programs,
# and checks that the subproject built no tests or tools of its own.
set -euo pipefail
sona=$1 src=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
# The CUDA module is the main build's to test; an nvcc build here would only cost time. -Werror,
# off by default in a subproject, is on: libsona's code stays warning-free embedded too.
for how in subdirectory fetchcontent; do
  build=$work/$how
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSONA_SOURCE_DIR="$sona" \
    -DSONA_EMBED_WITH="$how" -DSONA_CUDA=OFF -DSONA_WERROR=ON >"$work/$how-configure.log" 2>&1 ||
    { cat "$work/$how-configure.log"; exit 1; }
  targets=$(cmake --build "$build" --target help)
  if grep -Eq '(^| )(test_engine|sona_cli|sona_ops_check)$' <<<"$targets"; then
    echo "$how: the subproject defined its tests or tools" >&2
    exit 1
  fi
  cmake --build "$build" -j2 >"$work/$how-build.log" 2>&1 || { cat "$work/$how-build.log"; exit 1; }
  for prog in consumer consumer_static; do
    "$build/$prog" | tee "$work/$how-$prog.out"
    grep -q "^libsona " "$work/$how-$prog.out"
  done
done
echo "embed consumer: add_subdirectory and FetchContent builds both ran"

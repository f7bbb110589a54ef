#!/usr/bin/env bash
# usage: check_install.sh BUILD_DIR CONSUMER_SRC WORK_DIR
set -euo pipefail
build=$1 src=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(ls -d "$prefix"/lib* | head -n 1)

# 1. CMake package
cmake -S "$src" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cmake-build" >/dev/null
LD_LIBRARY_PATH=$libdir "$work/cmake-build/consumer" | tee "$work/out1"
grep -q "^libsona " "$work/out1"
"$work/cmake-build/consumer_static" | tee "$work/out1s"
grep -q "^libsona " "$work/out1s"
! grep -rEq "/usr/lib/|libhwloc\.so|libz\.so" "$libdir/cmake/sona" || { echo "library paths in the CMake package" >&2; exit 1; }

# 2. pkg-config
export PKG_CONFIG_PATH=$libdir/pkgconfig
cc -std=c11 -Wall -Werror "$src/consumer.c" $(pkg-config --cflags --libs sona) -o "$work/consumer-pc"
LD_LIBRARY_PATH=$libdir "$work/consumer-pc" | tee "$work/out2"
grep -q "^libsona " "$work/out2"
# Static: libsona.a, with its private dependencies as sona.pc's Requires.private names them
# (linked shared here: `pkg-config --static` would also want hwloc's own private libraries).
requires=$(pkg-config --print-requires-private sona)
for dep in hwloc zlib; do
  grep -qw "$dep" <<<"$requires" || { echo "sona.pc: $dep not in Requires.private" >&2; exit 1; }
done
# shellcheck disable=SC2046,SC2086 # the flags are words
cc -std=c11 -Wall -Werror "$src/consumer.c" $(pkg-config --cflags sona) "$libdir/libsona.a" \
  $(pkg-config --libs $requires) -lpthread -lm -ldl -o "$work/consumer-pc-static"
"$work/consumer-pc-static" | tee "$work/out2s"
grep -q "^libsona " "$work/out2s"
echo "install consumer: find_package and pkg-config builds (shared and static) all ran"

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

# 2. pkg-config
export PKG_CONFIG_PATH=$libdir/pkgconfig
cc -std=c11 -Wall -Werror "$src/consumer.c" $(pkg-config --cflags --libs sona) -o "$work/consumer-pc"
LD_LIBRARY_PATH=$libdir "$work/consumer-pc" | tee "$work/out2"
grep -q "^libsona " "$work/out2"
echo "install consumer: find_package and pkg-config builds both ran"

#!/bin/sh
# SPDX-License-Identifier: MIT
# Checks that every #include between the folders of src/ points down the layers of src/README.md
# (or stays in its folder): a folder may include only folders of a lower level, so no circle can
# form between them. Inside src/engine/, the loops depend only on base.h: the headers of loops A
# (its thread), B, C and the checkpoint are for the loop thread (thread.c), the thread's for the handle
# (engine.c). Tests, benchmarks and tools never include the engine's state (engine/base.h).
# Prints each offending include; exit 1 if any.
set -eu
cd "$(dirname "$0")/.."

level() {
    case $1 in
    sona) echo 0 ;; # the public headers
    common) echo 1 ;;
    comm) echo 1 ;; # libsona-mpi: the public API only
    backend) echo 2 ;;
    cpu | gpu) echo 3 ;;
    dispatch | cuda | opencl) echo 4 ;;
    core/adapt | core/memory | core/patterns) echo 5 ;;
    engine) echo 6 ;;
    *) echo unknown ;;
    esac
}

bad=0
for f in $(git ls-files -- 'src/*.c' 'src/*.h' 'src/*.cu'); do
    from=$(dirname "${f#src/}")
    from_level=$(level "$from")
    if [ "$from_level" = unknown ]; then
        echo "$f: folder $from has no level in scripts/layers.sh (add it there and to src/README.md)"
        bad=1
        continue
    fi
    for inc in $(sed -n 's/^#include "\([a-z0-9_/]*\)\/[a-z0-9_]*\.h"$/\1/p' "$f"); do
        [ "$inc" = "$from" ] && continue
        to_level=$(level "$inc")
        if [ "$to_level" = unknown ] || [ "$to_level" -ge "$from_level" ]; then
            echo "$f includes $inc/: not below $from/"
            bad=1
        fi
    done
done
# Who may include which engine header besides its own .c file.
engine_users() {
    case $1 in
    loop_a.h) echo 'thread.c request.c' ;; # request.c defines loop A's thread
    loop_b.h | loop_c.h | persist.h) echo thread.c ;;
    thread.h) echo engine.c ;;
    *) echo '*' ;;
    esac
}
for f in $(git ls-files -- 'src/engine/*.c' 'src/engine/*.h'); do
    name=${f##*/}
    for inc in $(sed -n 's/^#include "engine\/\([a-z0-9_]*\.h\)"$/\1/p' "$f"); do
        users=$(engine_users "$inc")
        [ "$users" = '*' ] || [ "${inc%.h}.c" = "$name" ] && continue
        case " $users " in *" $name "*) continue ;; esac
        echo "$f includes engine/$inc: only $users may (the loops depend only on base.h)"
        bad=1
    done
done
# Tests, benchmarks and tools see an engine through the API and engine/inspect.h, never its state.
for f in $(git ls-files -- 'tests/*.c' 'tests/*.h' 'bench/*.c' 'bench/*.h' 'tools/*.c' 'tools/*.h'); do
    if grep -q '^#include "engine/base.h"' "$f"; then
        echo "$f includes engine/base.h: use the API or engine/inspect.h"
        bad=1
    fi
done
# CPU variants are files compiled with their own flags, chosen by cpuid (src/cpu): no compiler
# ifunc clones elsewhere (their resolvers run before a sanitizer's runtime, and ranks of one
# cluster on different CPUs would round differently).
for f in $(git ls-files -- 'src/*.c' 'src/*.h'); do
    if grep -q 'target_clones\|__attribute__((ifunc' "$f"; then
        echo "$f uses target_clones or ifunc: put ISA-specific code in a src/cpu variant"
        bad=1
    fi
done
exit $bad

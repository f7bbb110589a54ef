#!/bin/sh
# SPDX-License-Identifier: MIT
# Checks that every #include between the folders of src/ points down the layers of src/README.md
# (or stays in its folder): a folder may include only folders of a lower level, so no circle can
# form between them. Prints each offending include; exit 1 if any.
set -eu
cd "$(dirname "$0")/.."

level() {
    case $1 in
    sona) echo 0 ;; # the public headers
    common) echo 1 ;;
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
exit $bad

#!/bin/sh
# SPDX-License-Identifier: MIT
# Adds the SPDX licence line to every tracked C, CUDA and OpenCL source under src/, include/,
# tools/, bench/, tests/ and node/ and to node/'s JavaScript and TypeScript (as its first line),
# and to the shell scripts under scripts/ and tools/ (after the shebang). Files that already
# have it are left alone, so it can be rerun.
#   scripts/spdx.sh          add the line where it is missing
#   scripts/spdx.sh --check  list the files without it (or with it twice); exit 1 if any
# CMake files and scripts/deps.sh are left out for now: they were being edited elsewhere.
set -eu
cd "$(dirname "$0")/.."
c_line='/* SPDX-License-Identifier: MIT */'
sh_line='# SPDX-License-Identifier: MIT'
js_line='// SPDX-License-Identifier: MIT'
check=0
[ "${1:-}" = --check ] && check=1

files() {
    git ls-files -- 'src/*.c' 'src/*.h' 'src/*.cu' 'src/*.cl' 'include/*.h' 'tools/*.c' 'tools/*.h' \
        'bench/*.c' 'bench/*.h' 'tests/*.c' 'tests/*.h' 'node/*.c' 'node/*.h' 'node/*.js' 'node/*.ts'
    git ls-files -- 'scripts/*.sh' 'tools/*.sh' | grep -v '^scripts/deps\.sh$'
}

bad=0
for f in $(files); do
    case $f in
    *.sh) line=$sh_line at=1; head -n 1 "$f" | grep -q '^#!' && at=2 ;;
    *.js | *.ts) line=$js_line at=1 ;;
    *) line=$c_line at=1 ;;
    esac
    n=$(grep -cxF -- "$line" "$f" || true)
    if [ "$check" = 1 ]; then
        if [ "$n" != 1 ] || [ "$(sed -n "${at}p" "$f")" != "$line" ]; then
            echo "$f: $n SPDX line(s), expected one on line $at"
            bad=1
        fi
    elif [ "$n" = 0 ]; then
        if [ "$at" = 1 ]; then
            { printf '%s\n' "$line"; cat "$f"; } >"$f.spdx"
        else
            { head -n 1 "$f"; printf '%s\n' "$line"; tail -n +2 "$f"; } >"$f.spdx"
        fi
        cat "$f.spdx" >"$f" # in place: the file keeps its mode
        rm "$f.spdx"
    fi
done
exit $bad

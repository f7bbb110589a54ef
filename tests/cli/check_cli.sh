#!/bin/sh
# The `sona` command line's parsing: --help and --version, "--opt=value" and "--opt value",
# and the exit status (2) and message of a bad argument (numbers that are not finite or never
# end, report paths that cannot be written, checked before running; names that are not UTF-8). Run by ctest:
#   check_cli.sh SONA SOURCE_DIR WORK_DIR PART
# PART is help, version, bench, errors or export-peft; each is its own ctest test.
set -u
sona=$1 src=$2 work=$3 part=$4
mkdir -p "$work" || exit 1
out=$work/$part.out err=$work/$part.err
failures=0

fail() {
    echo "FAIL: $*"
    echo "--- stdout:"; cat "$out"
    echo "--- stderr:"; cat "$err"
    failures=$((failures + 1))
}

# expect STATUS CMD...: runs CMD with stdout in $out and stderr in $err; checks the status.
expect() {
    want=$1; shift
    "$@" >"$out" 2>"$err"
    got=$?
    [ "$got" -eq "$want" ] || fail "'$*' exited $got, expected $want"
    [ "$got" -eq "$want" ]
}

# has FILE TEXT WHAT: FILE contains the fixed string TEXT.
has() {
    grep -qF -- "$2" "$1" || fail "$3: no '$2' in $(basename "$1")"
}

case $part in
help)
    for h in --help -h help; do
        if expect 0 "$sona" $h; then
            [ -s "$out" ] || fail "sona $h: empty stdout"
            for c in info bench demo export-peft version; do has "$out" "$c" "sona $h"; done
        fi
    done
    for c in info bench demo export-peft version; do
        for h in --help -h; do
            expect 0 "$sona" $c $h && has "$out" "usage: sona $c" "sona $c $h"
            [ -s "$err" ] && fail "sona $c $h wrote on stderr"
        done
        expect 0 "$sona" help $c && has "$out" "usage: sona $c" "sona help $c"
    done
    # No command: the usage, on stderr, and status 2.
    expect 2 "$sona" && has "$err" "usage: sona" "sona"
    # info: the routing table, one row per op, with each device's crossover.
    if expect 0 "$sona" info; then
        has "$out" "routing:   by cost" "sona info"
        for op in lora_apply lora_grad param_update sqdist_argmin knn_exact gemm cluster_sums; do
            has "$out" "  $op " "sona info"
        done
        has "$out" "opencl from" "sona info"
        has "$out" "cuda from" "sona info"
    fi
    ;;
version)
    v=$(sed -n 's/^#define SONA_VERSION_STRING "\(.*\)"$/\1/p' "$src/include/sona/common.h")
    [ -n "$v" ] || { echo "FAIL: no SONA_VERSION_STRING in include/sona/common.h"; exit 1; }
    for a in --version -V version; do
        expect 0 "$sona" $a && has "$out" "libsona) $v" "sona $a"
    done
    ;;
bench)
    # Both spellings of a value, on a cheap group; --json and --backend too.
    expect 0 "$sona" bench --group=loop_a --quick --json="$work/eq.json" && has "$out" "loop_a" "--group=loop_a"
    expect 0 "$sona" bench --group loop_a --quick --json "$work/sp.json" && has "$out" "loop_a" "--group loop_a"
    [ -s "$work/eq.json" ] && [ -s "$work/sp.json" ] || fail "--json=FILE / --json FILE wrote no report"
    expect 0 "$sona" bench --backend=cpu --list && has "$out" "loop_a" "--backend=cpu --list"
    expect 0 "$sona" bench --list --backend cpu && has "$out" "loop_a" "--list --backend cpu"
    ;;
errors)
    expect 2 "$sona" bench --grup loop_a && has "$err" "sona bench: unknown option '--grup'" "bench --grup"
    expect 2 "$sona" bench --grup=loop_a && has "$err" "sona bench: unknown option '--grup'" "bench --grup="
    expect 2 "$sona" bench --group && has "$err" "sona bench: --group needs a value" "bench --group"
    expect 2 "$sona" bench --group= && has "$err" "sona bench: --group needs a value" "bench --group="
    expect 2 "$sona" bench --list --json && has "$err" "sona bench: --json needs a value" "bench --json"
    expect 2 "$sona" bench --quick=yes && has "$err" "sona bench: --quick takes no value" "bench --quick="
    expect 2 "$sona" bench --threshold=x && has "$err" "--threshold" "bench --threshold=x"
    expect 2 "$sona" bench --group=no_such && has "$err" "unknown group 'no_such'" "bench --group=no_such"
    expect 2 "$sona" bench stray && has "$err" "sona bench: unexpected argument 'stray'" "bench stray"
    expect 2 "$sona" frobnicate && has "$err" "sona: unknown command 'frobnicate'" "frobnicate"
    expect 2 "$sona" --frob && has "$err" "sona: unknown option '--frob'" "--frob"
    expect 2 "$sona" help frobnicate && has "$err" "unknown command 'frobnicate'" "help frobnicate"
    expect 2 "$sona" info --verbose && has "$err" "sona info: unknown option '--verbose'" "info --verbose"
    expect 2 "$sona" info extra && has "$err" "sona info: unexpected argument 'extra'" "info extra"
    expect 2 "$sona" demo 50 && has "$err" "sona demo: TRAJECTORIES" "demo 50"
    expect 2 "$sona" demo 1x && has "$err" "'1x'" "demo 1x"
    expect 2 "$sona" demo --seed 3 && has "$err" "sona demo: unknown option '--seed'" "demo --seed"
    expect 2 "$sona" export-peft a b --module && has "$err" "sona export-peft: --module needs a value" \
        "export-peft --module"
    expect 2 "$sona" export-peft a && has "$err" "missing DIR" "export-peft a"
    expect 2 "$sona" export-peft a b c && has "$err" "unexpected argument 'c'" "export-peft a b c"
    expect 2 "$sona" version 1 && has "$err" "unexpected argument '1'" "version 1"
    # Numbers that parse but cannot be used: not finite, or a count that never ends.
    for t in nan inf -inf 1e999; do
        expect 2 "$sona" bench --list --threshold=$t && has "$err" "finite percentage" "bench --threshold=$t"
    done
    expect 2 "$sona" demo -1 && has "$err" "'-1'" "demo -1"
    expect 2 "$sona" demo -- -1 && has "$err" "'-1'" "demo -- -1"
    expect 2 "$sona" demo 4294967295 && has "$err" "from 100 to 1000000" "demo 4294967295"
    expect 2 "$sona" demo 1000001 && has "$err" "from 100 to 1000000" "demo 1000001"
    # Output and input paths are checked before the benchmark runs (the group would print rows).
    rm -rf "$work/no-such-dir"
    expect 2 "$sona" bench --group=loop_a --quick --json "$work/no-such-dir/r.json" \
        && has "$err" "no-such-dir does not exist" "bench --json into a missing folder"
    grep -q "loop_a" "$out" && fail "bench --json into a missing folder ran the benchmark first"
    expect 2 "$sona" bench --group=loop_a --quick --html "$work" && has "$err" "is a directory" "bench --html DIR"
    grep -q "loop_a" "$out" && fail "bench --html DIR ran the benchmark first"
    expect 2 "$sona" bench --group=loop_a --quick --compare "$work/no-such-dir/base.json" \
        && has "$err" "--compare" "bench --compare of a missing file"
    grep -q "loop_a" "$out" && fail "bench --compare of a missing file ran the benchmark first"
    rm -f "$work/fifo" && mkfifo "$work/fifo" || fail "mkfifo"
    expect 2 timeout 60 "$sona" bench --group=loop_a --quick --compare "$work/fifo" \
        && has "$err" "not a regular file" "bench --compare FIFO"
    rm -f "$work/fifo"
    expect 2 "$sona" bench --group=loop_a --quick --peers "$work/no-such-dir/peers.json" \
        && has "$err" "--peers" "bench --peers of a missing file"
    grep -q "loop_a" "$out" && fail "bench --peers of a missing file ran the benchmark first"
    # --dump-data: the peers' inputs as .npy with their shapes, and what the peers must match.
    expect 2 "$sona" bench --dump-data "$work/no-such-dir" && has "$err" "--dump-data" "bench --dump-data into a missing folder"
    rm -rf "$work/peers-data" && mkdir "$work/peers-data" || fail "mkdir peers-data"
    if expect 0 "$sona" bench --dump-data "$work/peers-data"; then
        head -c 128 "$work/peers-data/extraction_5000.npy" | grep -qF "'shape': (5000, 256)" \
            || fail "bench --dump-data: extraction_5000.npy has no shape (5000, 256)"
        [ "$(wc -c <"$work/peers-data/search_clustered_10000.npy")" -eq $((128 + 10164 * 256 * 4)) ] \
            || fail "bench --dump-data: search_clustered_10000.npy is not 10 164 x 256 float32 after a 128-byte header"
        has "$work/peers-data/peers_data.json" '"ef_construction": 100' "bench --dump-data's peers_data.json"
    fi
    rm -rf "$work/peers-data"
    ;;
export-peft)
    # Options before, between and after the operands, with '=' or a separate value.
    rm -rf "$work/peft-eq" "$work/peft-sp"
    expect 0 "$sona" export-peft --base-model=org/model "$src/tests/data/state_v2.sona" \
        --module=m.layers.%u.my_proj "$work/peft-eq" && has "$work/peft-eq/adapter_config.json" "org/model" "--base-model="
    has "$work/peft-eq/adapter_config.json" "my_proj" "--module="
    has "$work/peft-eq/adapter_config.json" '"r": 4' "the fixture's rank"
    [ -s "$work/peft-eq/adapter_model.safetensors" ] || fail "no adapter_model.safetensors"
    expect 0 "$sona" export-peft "$src/tests/data/state_v2.sona" "$work/peft-sp" --base-model org/model \
        && has "$work/peft-sp/adapter_config.json" "org/model" "--base-model NAME"
    # A tenant's Micro-LoRA over the same directory (replaced whole), and the width check.
    expect 0 "$sona" export-peft "$src/tests/data/state_v2.sona" "$work/peft-sp" --tenant=0 --micro-layer 3 \
        && has "$work/peft-sp/adapter_config.json" '"r": 1' "--tenant: the fixture's Micro-LoRA rank"
    has "$work/peft-sp/adapter_model.safetensors" "layers.3." "--micro-layer"
    expect 1 "$sona" export-peft "$src/tests/data/state_v2.sona" "$work/peft-sp" --model-hidden 4096 \
        && has "$err" "wide" "--model-hidden of another width"
    expect 2 "$sona" export-peft a b --tenant=x && has "$err" "--tenant must be a whole number" "--tenant=x"
    # JSON is UTF-8: a name in another encoding is refused, nothing written.
    rm -rf "$work/peft-bad"
    latin1=$(printf 'org/mod\351le')
    expect 1 "$sona" export-peft "$src/tests/data/state_v2.sona" "$work/peft-bad" --base-model "$latin1" \
        && has "$err" "base_model is not valid UTF-8" "--base-model in Latin-1"
    expect 1 "$sona" export-peft "$src/tests/data/state_v2.sona" "$work/peft-bad" --module "m.$latin1.%u.o_proj" \
        && has "$err" "module_format is not valid UTF-8" "--module in Latin-1"
    [ -e "$work/peft-bad" ] && fail "a refused export left $work/peft-bad"
    utf8=$(printf 'org/mod\303\251le')
    expect 0 "$sona" export-peft "$src/tests/data/state_v2.sona" "$work/peft-bad" --base-model "$utf8" \
        && has "$work/peft-bad/adapter_config.json" "$utf8" "--base-model in UTF-8"
    ;;
*)
    echo "check_cli.sh: unknown part '$part'"
    exit 1
    ;;
esac
[ "$failures" -eq 0 ] && echo "sona CLI $part: all checks passed"
[ "$failures" -eq 0 ]

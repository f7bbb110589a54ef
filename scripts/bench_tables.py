#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""BENCHMARKS.md's tables from a `sona bench --json` report: one table per group, in the
report's order, each row a case on a backend with its median and p99, the spec's target and
goal (stretch) where the group has them, the verdict, and its throughput or value.

    python3 scripts/bench_tables.py build/bench-full.json > /tmp/tables.md

The learning group is summarised per task (lift after 100 / 250 / 500 / 1000 trajectories and
trajectories to a lift of 0.1, mean of its seeds), as bench/group_learning.c reports it.
"""
import json
import sys
from collections import OrderedDict


def us(v):
    """A time in microseconds, in the unit that reads best."""
    if v is None:
        return ""
    if v >= 1e6:
        return f"{v / 1e6:.3g} s"
    if v >= 1e3:
        return f"{v / 1e3:.3g} ms"
    return f"{v:.3g} µs"


def num(v):
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def timed_table(rows):
    has_spec = any("target_us" in r or "stretch_us" in r for r in rows)
    head = ["case", "backend", "median", "p99"]
    if has_spec:
        head += ["target", "goal", "verdict"]
    head += ["throughput / value"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    values = {}
    for r in rows:  # a timed row's companion values (recall, iterations, qps) go on its line
        if r.get("kind") == "value":
            values.setdefault((r["case"], r["backend"]), []).append(r)
    for r in rows:
        kind = r.get("kind")
        extra = []
        if r.get("gflops"):
            extra.append(f"{r['gflops']:.3g} GFLOP/s")
        if r.get("gbps"):  # both for the ops bound by memory, read against the group's host memory row
            extra.append(f"{r['gbps']:.3g} GB/s")
        if kind == "timed":
            for v in values.pop((r["case"], r["backend"]), []):
                extra.append(f"{v['metric']} {num(v['value'])}{(' ' + v['unit']) if v.get('unit') else ''}")
            line = [r["case"], r["backend"], us(r.get("median_us")), us(r.get("p99_us"))]
        elif kind == "skipped":
            line = [r["case"], r["backend"], "skipped", ""]
            extra.append(r.get("reason", ""))
        else:
            continue
        if has_spec:
            line += [us(r.get("target_us")), us(r.get("stretch_us")), r.get("verdict", "")]
        line.append("; ".join(extra))
        out.append("| " + " | ".join(line) + " |")
    for (case, backend), vs in values.items():  # values without a timed row (memory, cycles)
        for v in vs:
            line = [case, backend, "", ""]
            if has_spec:
                line += [us(v.get("target_us")), us(v.get("stretch_us")), v.get("verdict", "")]
            line.append(f"{v['metric']} {num(v['value'])}{(' ' + v['unit']) if v.get('unit') else ''}")
            out.append("| " + " | ".join(line) + " |")
    return out


def learning_table(rows):
    """Per task: lift after 100 / 250 / 500 / 1000 trajectories, mean of the seeds (worst seed),
    and trajectories to a lift of 0.1 (worst seed); the other tasks' own figures below."""
    tasks = OrderedDict()
    for r in rows:
        if r.get("kind") != "value" or "/" not in r["case"] or r["case"].startswith("seeds/"):
            continue
        task, what = r["case"].rsplit("/", 1)
        tasks.setdefault(task, OrderedDict()).setdefault(what, {})[r["metric"]] = r["value"]
    cols = ["lift@100", "lift@250", "lift@500", "lift@1000"]
    out = ["| task | " + " | ".join(cols) + " | to 0.1 |", "|---|" + "---|" * (len(cols) + 1)]
    others = []
    for task, whats in tasks.items():
        if "lift@1000" not in whats:
            figures = [f"{w} {num(m.get('mean', next(iter(m.values()))))}" for w, m in whats.items()
                       if not w.startswith("curve")]
            others.append(f"- {task}: " + ", ".join(figures))
            continue
        cells = []
        for c in cols:
            m = whats.get(c, {})
            cells.append(f"{m['mean']:.3f} ({m['min']:.3f})" if "mean" in m and "min" in m else "")
        t = whats.get("to_lift0.1", {})
        mean, worst = t.get("seed_mean"), t.get("worst_seed")
        cells.append("never" if mean is None or mean < 0 else f"{num(mean)} ({num(worst)})")
        out.append(f"| {task} | " + " | ".join(cells) + " |")
    return out + ([""] + others if others else [])


def value_table(rows):
    out = ["| case | backend | metric | value |", "|---|---|---|---|"]
    for r in rows:
        if r.get("kind") == "value":
            unit = f" {r['unit']}" if r.get("unit") else ""
            out.append(f"| {r['case']} | {r['backend']} | {r['metric']} | {num(r['value'])}{unit} |")
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        report = json.load(f)
    h = report["header"]
    print(f"Machine: {h.get('cpu')}, {h.get('cores')} cores ({h.get('features')}); "
          f"{h.get('compiler')}, {h.get('build_type')}; git {h.get('git')}; {h.get('date')}; "
          f"CPU variant {h.get('cpu_variant', '').split(':')[0]}; backends {h.get('backends')}"
          f"{' (quick run)' if h.get('quick') else ''}.")
    groups = OrderedDict()
    for r in report["rows"]:
        groups.setdefault(r["group"], []).append(r)
    for g, rows in groups.items():
        print(f"\n### {g}\n")
        if g == "learning":
            table = learning_table(rows)
        elif not any(r.get("kind") in ("timed", "skipped") for r in rows):
            table = value_table(rows)
        else:
            table = timed_table(rows)
        print("\n".join(table))


if __name__ == "__main__":
    main()

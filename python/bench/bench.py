# SPDX-License-Identifier: MIT
"""The Python package's costs against the C library's, median and p99 over repeated calls.

    python3 python/bench/bench.py [--quick] [--sona PATH_TO_sona_TOOL]

Rows (issue targets in brackets):
  apply 1x4096         Engine.apply of one row into out=, per call; against the C time per row,
                       taken from one apply_batch of 1 000 rows of that tenant divided by 1 000
                       [<= 3 us above it]
  apply_batch 256x4096 64 tenants interleaved, the default rank, on the CPU (device_apply=0): against the
                       C library's `sona bench --group engine_apply` CPU row, run by this script
                       [>= 90 % of its throughput]
  request 4x4096       begin, 4 steps of 4096, end, background thread on [<= 15 us]
Time it on a quiet machine (e.g. under `flock /tmp/sona-bench.lock`).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import sona  # noqa: E402


def timed(fn, reps, inner=1, between=None):
    """Median and p99 in microseconds of fn() (each sample averages `inner` calls); between(),
    when given, runs untimed after each sample."""
    for _ in range(max(10, reps // 20)):
        fn()
    samples = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        samples[i] = (time.perf_counter_ns() - t0) / 1e3 / inner
        if between:
            between()
    return float(np.median(samples)), float(np.percentile(samples, 99))


def spin(us):
    """Busy for us microseconds: the model's work between two requests in serving."""
    end = time.perf_counter_ns() + us * 1000
    while time.perf_counter_ns() < end:
        pass


def c_engine_apply_median(tool):
    """The CPU row of the C benchmark's engine_apply group, in microseconds (None without it)."""
    if not tool or not os.path.exists(tool):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ea.json")
        subprocess.run([tool, "bench", "--group", "engine_apply", "--json", out], check=True,
                       stdout=subprocess.DEVNULL)
        with open(out) as f:
            rows = json.load(f)["rows"]
    for r in rows:
        if r.get("group") == "engine_apply" and r.get("backend") == "cpu":
            return float(r["median_us"])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--sona", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "bin", "sona"),
                    help="the sona tool for the C baseline of apply_batch (default: the build tree's)")
    args = ap.parse_args()
    reps = 300 if args.quick else 2000
    rng = np.random.default_rng(1)
    rows = []

    with sona.Engine(4096, background_thread=0, device_apply=0) as e:
        x = rng.standard_normal(4096).astype(np.float32)
        out = np.empty_like(x)
        med, p99 = timed(lambda: e.apply(x, out=out), reps, inner=10)
        xs = np.tile(x, (1000, 1))
        ys = np.empty_like(xs)
        ids = np.zeros(1000, dtype=np.int32)
        c_med, _ = timed(lambda: e.apply_batch(xs, ids, out=ys), max(30, reps // 20))
        c_row = c_med / 1000
        rows.append(("apply 1x4096", med, p99, f"C {c_row:.2f} us/row: +{med - c_row:.2f} us (<= 3)"))

    # The C benchmark's work (bench/group_engine_apply.c): 64 tenants whose adapters each
    # learned from one request, rows uniform in [-1, 1), each row's tenant drawn at random.
    with sona.Engine(4096, background_thread=0, device_apply=0, max_tenants=64) as e:
        tenants = [0] + [e.create_tenant() for _ in range(63)]
        for t in tenants:
            qa = rng.uniform(-1, 1, (2, 4096)).astype(np.float32)
            with e.request(t, qa[0]) as r:
                r.step(0, qa[1], reward=1.0)
                r.quality = 1.0
        xs = sona.empty((256, 4096))  # 64-byte aligned rows, as the C benchmark's
        xs[:] = rng.uniform(-1, 1, (256, 4096))
        ids = np.array(rng.choice(tenants, 256), dtype=np.int32)
        ys = sona.empty((256, 4096))
        # The package against the same C call made through ctypes with the same arrays, in
        # turns in this process: what the binding adds. The C tool's own run is a cross-check
        # only: its time swings by 10-15 % between processes (470-533 us in two runs in a row).
        h, ai, ax, ay = e._h, sona.engine._addr(ids), sona.engine._addr(xs), sona.engine._addr(ys)
        pkg, raw = [], []
        for _ in range(3):
            pkg.append(timed(lambda: e.apply_batch(xs, ids, out=ys), max(20, reps // 30)))
            raw.append(timed(lambda: sona._native.apply_batch(h, 256, ai, ax, ay), max(20, reps // 30)))
        med, p99 = float(np.median([m for m, _ in pkg])), float(np.median([q for _, q in pkg]))
        c_here = float(np.median([m for m, _ in raw]))
        c = c_engine_apply_median(args.sona)
        note = (f"C call here {c_here:.0f} us: {100 * c_here / med:.0f} % of its throughput (>= 90)"
                + (f"; sona bench {c:.0f} us" if c else ""))
        rows.append(("apply_batch 256x4096, 64 tenants", med, p99, note))

    with sona.Engine(4096) as e:
        q = rng.standard_normal(4096).astype(np.float32)
        acts = rng.standard_normal((4, 4096)).astype(np.float32)

        def record():
            r = e.request(0, q)
            for s in range(4):
                r.step(0, acts[s], reward=0.25 * s)
            r.end(0.5)
        # Serving's steady state first: until loop B's queue is full or its cycles give
        # trajectories back, every request takes a fresh trajectory and page-faults it in (5
        # pages at 4096: about as much as the rest of the request), a cost of start-up only. So
        # requests run until 5 000 trajectories were processed or dropped (these rates exceed
        # what loop B learns at 4096, about 3 000 trajectories a second: the full queue drops,
        # counted, and its trajectories are reused).
        for i in range(100_000):
            record()
            if i % 1000 == 999:
                st = e.stats()
                if st.trajectories_dropped + st.trajectories_processed >= 5000:
                    break
        # Back to back: loop A's step (about 28 us at 4096, in the engine's loop A thread) cannot
        # keep up with a request every ~20 us: the worst case. Paced as in serving (50 us of
        # other work between requests, not timed), loop A runs beside the caller.
        med, p99 = timed(record, reps)
        rows.append(("request 4x4096 (back to back)", med, p99, "(<= 15)"))
        e.flush()
        med, p99 = timed(record, reps, between=lambda: spin(50))
        rows.append(("request 4x4096 (paced, 50 us apart)", med, p99, "(<= 15)"))

    print(f"libsona {sona.library_version} from {sona.library_path}")
    print(f"{'row':<38} {'median us':>10} {'p99 us':>10}  against")
    for name, med, p99, note in rows:
        print(f"{name:<38} {med:>10.2f} {p99:>10.2f}  {note}")


if __name__ == "__main__":
    main()

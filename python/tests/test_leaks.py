# SPDX-License-Identifier: MIT
"""No leak over 100 000 calls: Python objects (tracemalloc) and the process (RSS) stay flat
once warm, for apply, apply_batch, requests and stats."""
import gc
import tracemalloc

import numpy as np

import sona

CALLS = 100_000


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def run(engine, x, xs, ids, out, n):
    for i in range(n):
        engine.apply(x, out=out)
        if i % 10 == 0:
            engine.apply_batch(xs, ids)
        if i % 20 == 0:
            with engine.request(0, x) as r:
                r.step(0, x, reward=0.5)
                r.quality = 0.5
        if i % 100 == 0:
            engine.stats()


def test_no_leak_over_100k_calls():
    rng = np.random.default_rng(3)
    H = 64
    x = rng.standard_normal(H).astype(np.float32)
    xs = rng.standard_normal((8, H)).astype(np.float32)
    ids = np.zeros(8, dtype=np.int32)
    out = np.empty(H, dtype=np.float32)
    with sona.Engine(H) as e:
        run(e, x, xs, ids, out, 5_000)  # warm: pools, caches, the loop thread's buffers
        gc.collect()
        tracemalloc.start()
        rss0 = rss_kib()
        snap0 = tracemalloc.take_snapshot()
        run(e, x, xs, ids, out, CALLS)
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        rss1 = rss_kib()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
        stats = e.stats()
    print(f"100k calls: Python heap {grown:+d} B, RSS {rss1 - rss0:+d} KiB, "
          f"{stats.trajectories_recorded} trajectories")
    # Per call, a leak of even one small object would be ~5 MB here; tracemalloc's own
    # bookkeeping and interned ints account for a few kB.
    assert grown < 64 * 1024, grown
    # The engine's queue and pattern bank fill up to their bounds as trajectories arrive (a few
    # MB at hidden 64); a leak of 100 bytes a call would add 10 MB.
    assert rss1 - rss0 < 8 * 1024, (rss0, rss1)
    assert stats.trajectories_recorded >= CALLS // 20

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The peers beside `sona bench`: PyTorch's LoRA matmuls, FAISS and scikit-learn k-means, and
hnswlib, on the inputs of our rows (written by `sona bench --dump-data DIR`), at our thread count.
Writes rows in the format of `sona bench --json` (group "peers"); `sona bench --peers FILE` merges
them into its report and adds our time over theirs per row. The rules: docs/peers.md.

    sona bench --dump-data DIR
    /usr/bin/python3 bench/peers/peers.py --data DIR --out peers.json [--quick]
    sona bench --peers peers.json ...

--check exits 0 when every peer imports, else 1 naming those that do not.
"""
import argparse
import json
import os
import statistics
import sys
import time

PEERS = {"torch": "python3-torch", "faiss": "python3-faiss", "hnswlib": "python3-hnswlib",
         "sklearn": "python3-sklearn"}


def missing_peers():
    missing = []
    for module, package in PEERS.items():
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} ({package})")
    return missing


class Report:
    """The rows, in the shape bench/report_json.c writes them."""

    def __init__(self):
        self.rows = []

    def timed(self, case, backend, samples_s, calls_per_sample=1, ours=None):
        per_call = sorted(s / calls_per_sample * 1e6 for s in samples_s)
        row = {"group": "peers", "case": case, "backend": backend, "kind": "timed",
               "median_us": statistics.median(per_call),
               "p99_us": per_call[min(len(per_call) - 1, int(0.99 * len(per_call)))],
               "samples": len(per_call), "calls_per_sample": calls_per_sample}
        self._ours(row, ours)
        self.rows.append(row)
        return row["median_us"]

    def value(self, case, backend, metric, value, unit="", ours=None):
        row = {"group": "peers", "case": case, "backend": backend, "kind": "value",
               "metric": metric, "value": value, "unit": unit}
        self._ours(row, ours)
        self.rows.append(row)

    def skipped(self, case, backend, reason):
        self.rows.append({"group": "peers", "case": case, "backend": backend, "kind": "skipped",
                          "reason": reason})

    @staticmethod
    def _ours(row, ours):
        # The row of ours it stands beside: (group, case) for a time, plus a metric for a value.
        if ours:
            row["ours_group"], row["ours_case"] = ours[0], ours[1]
            if len(ours) > 2:
                row["ours_metric"] = ours[2]


def repeat(fn, samples, warmup=1):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def batched(fn, min_sample_s=0.01, samples=15):
    """Per-call samples of a short call: calls are batched until a sample lasts min_sample_s."""
    fn()
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - t0 >= min_sample_s:
            break
        calls *= 2
    return repeat(lambda: [fn() for _ in range(calls)], samples, warmup=0), calls


def inertia(np, X, C):
    """Sum of squared distances of each row to its nearest centre (float64)."""
    X64, C64 = X.astype(np.float64), C.astype(np.float64)
    d = (X64 * X64).sum(1)[:, None] - 2.0 * X64 @ C64.T + (C64 * C64).sum(1)[None, :]
    return float(np.maximum(d.min(1), 0.0).sum())


def run_kmeans(rep, meta, data, quick):
    import numpy as np
    ex = meta["extraction"]
    X = np.load(os.path.join(data, ex["file"]))
    ours = (ex["group"], ex["case"])
    k, iters, tol = ex["k"], ex["max_iterations"], ex["tolerance"]
    threads = ex.get("threads", meta["threads"])  # what our k-means splits its work into
    samples = 3 if quick else 7
    name = f"kmeans/{ex['case']}"
    try:
        import faiss
        from threadpoolctl import threadpool_limits
        # FAISS has no tolerance: it runs niter iterations from random rows. 10, 15, its default
        # (25) and our cap (100), each with the inertia it reaches, on our thread count; and 15
        # on one thread too when that is more, where FAISS may do better (docs/peers.md).
        runs = [(niter, threads) for niter in (10, 15, 25, iters)]
        if threads > 1:
            runs.append((15, 1))
        for niter, t in runs:
            km = None

            def fit():
                nonlocal km
                km = faiss.Kmeans(X.shape[1], k, niter=niter, seed=1234, nredo=1,
                                  max_points_per_centroid=X.shape[0])
                km.train(X)
            case = f"{name} faiss niter={niter}" + (" 1 thread" if t < threads else "")
            faiss.omp_set_num_threads(t)
            with threadpool_limits(limits=t):
                rep.timed(case, "faiss", repeat(fit, samples), ours=ours)
            rep.value(case, "faiss", "inertia", inertia(np, X, km.centroids), ours=ours + ("inertia",))
    except ImportError:
        rep.skipped(f"{name} faiss", "faiss", "faiss does not import (python3-faiss)")
    try:
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits
        km = None

        def fit():
            nonlocal km
            km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=iters, tol=tol,
                        algorithm="lloyd", random_state=1234).fit(X)
        case = f"{name} sklearn k-means++"
        with threadpool_limits(limits=threads):
            rep.timed(case, "sklearn", repeat(fit, samples), ours=ours)
        rep.value(case, "sklearn", "inertia", inertia(np, X, km.cluster_centers_), ours=ours + ("inertia",))
        rep.value(case, "sklearn", "iterations", km.n_iter_)
    except ImportError:
        rep.skipped(f"{name} sklearn", "sklearn", "sklearn does not import (python3-sklearn)")


def run_search(rep, meta, data, quick):
    import numpy as np
    try:
        import hnswlib
    except ImportError:
        rep.skipped("hnsw", "hnswlib", "hnswlib does not import (python3-hnswlib)")
        return
    for s in meta["search"]:
        name = f"hnsw/{s['case']}"
        if quick and s["n"] > 10000:
            rep.skipped(name, "hnswlib", "--quick: our 100,000-pattern row is skipped too")
            continue
        P = np.load(os.path.join(data, s["file"]), mmap_mode="r")
        n, k = s["n"], s["k"]
        base = np.ascontiguousarray(P[:n])
        timing_q = np.ascontiguousarray(P[n:n + s["timing_queries"]])
        recall_q = np.ascontiguousarray(P[n + s["timing_queries"]:])
        ours = (s["group"], s["case"])
        index = hnswlib.Index(space="cosine", dim=base.shape[1])
        index.set_num_threads(meta["threads"])
        t0 = time.perf_counter()
        index.init_index(max_elements=n, M=s["M"], ef_construction=s["ef_construction"], random_seed=42)
        index.add_items(base, np.arange(n), num_threads=meta["threads"])
        build_s = time.perf_counter() - t0
        rep.value(f"{name} M={s['M']} efc={s['ef_construction']}", "hnswlib", "build", build_s, "s",
                  ours=ours + ("build",))
        # The exact top k by cosine, for recall@k.
        unit = base / np.linalg.norm(base, axis=1, keepdims=True)
        qu = recall_q / np.linalg.norm(recall_q, axis=1, keepdims=True)
        exact = np.argsort(-(qu @ unit.T), axis=1)[:, :k]
        for ef in (10, 16, 24, 32, 50, 64, 100):
            index.set_ef(ef)
            found, _ = index.knn_query(recall_q, k=k, num_threads=meta["threads"])
            recall = np.mean([len(set(found[i]) & set(exact[i])) / k for i in range(len(recall_q))])
            # All timing queries in one knn_query call, so the per-call cost of Python is shared
            # by 64 queries instead of charged to each.
            samples, calls = batched(lambda: index.knn_query(timing_q, k=k, num_threads=meta["threads"]),
                                     min_sample_s=0.05, samples=9 if quick else 21)
            case = f"{name} ef={ef}"
            rep.timed(case, "hnswlib", samples, calls * len(timing_q), ours=ours)
            rep.value(case, "hnswlib", f"recall@{k}", float(recall), ours=ours + (f"recall@{k}",))


def run_lora(rep, meta, quick):
    try:
        import torch
    except ImportError:
        rep.skipped("lora", "torch", "torch does not import (python3-torch)")
        return
    torch.set_num_threads(meta["threads"])
    torch.manual_seed(0x5eed)
    samples = 7 if quick else 15
    # Our shapes and value ranges (bench/group_lora.c): x, delta in [-1, 1), B in [-0.5, 0.5);
    # y = x + s B (A x) with s = 2. Values do not change a dense matmul's time.
    def uniform(*shape, lo=-1.0, hi=1.0):
        return torch.empty(*shape).uniform_(lo, hi)
    with torch.no_grad():
        for group, case, hidden, rank in (("micro_lora_forward", "rank2/2048", 2048, 2),
                                          ("base_lora_forward", "rank16/2048", 2048, 16)):
            x, A = uniform(1, hidden), uniform(hidden, rank)
            B, y = uniform(rank, hidden, lo=-0.5, hi=0.5), torch.empty(1, hidden)
            fn = lambda: torch.addmm(x, torch.mm(x, A), B, alpha=2.0, out=y)
            s, calls = batched(fn, samples=samples)
            rep.timed(f"lora/{group}/{case}", "torch", s, calls, ours=(group, case))
        # 64 rows over 8 adapters, row i through adapter i % 8: two batched matmuls over the rows
        # grouped by adapter (the grouping is free for this regular pattern).
        n, hidden, rank, count = 64, 2048, 16, 8
        x, A = uniform(n, hidden), uniform(count, hidden, rank)
        B = uniform(count, rank, hidden, lo=-0.5, hi=0.5)
        y = torch.empty(n, hidden)

        def batched_apply():
            xg = x.view(n // count, count, hidden).transpose(0, 1)
            yg = torch.baddbmm(xg, torch.bmm(xg, A), B, alpha=2.0)
            y.view(n // count, count, hidden).copy_(yg.transpose(0, 1))
        s, calls = batched(batched_apply, samples=samples)
        rep.timed("lora/batched_lora_apply/64x2048/r16/8adapters", "torch", s, calls,
                  ours=("batched_lora_apply", "64x2048/r16/8adapters"))
        # One learning signal into a rank-1 adapter: dB += w s delta (A x)^T, dA += w s (B^T delta) x^T.
        hidden = 1024
        x, d = uniform(hidden), uniform(hidden)
        A, B = uniform(1, hidden), uniform(hidden, 1, lo=-0.5, hi=0.5)
        gA, gB = torch.zeros(1, hidden), torch.zeros(hidden, 1)

        def accumulate():
            gB.addr_(d, torch.mv(A, x), alpha=0.8 * 2.0)
            gA.addr_(torch.mv(B.t(), d), x, alpha=0.8 * 2.0)
        s, calls = batched(accumulate, samples=samples)
        rep.timed("lora/gradient_accumulation/1024", "torch", s, calls,
                  ours=("gradient_accumulation", "1024"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 0 when every peer imports")
    ap.add_argument("--data", help="the folder `sona bench --dump-data` wrote")
    ap.add_argument("--out", help="the JSON rows to write")
    ap.add_argument("--quick", action="store_true", help="fewer samples; no 100,000-pattern index")
    args = ap.parse_args()
    if args.check:
        missing = missing_peers()
        if missing:
            print("peers missing: " + ", ".join(missing), file=sys.stderr)
        return 1 if missing else 0
    if not args.data or not args.out:
        ap.error("--data and --out are needed")
    with open(os.path.join(args.data, "peers_data.json")) as f:
        meta = json.load(f)
    # Before numpy loads a BLAS or OpenMP runtime: room for the most threads a row of ours uses;
    # each peer is then held to its row's count.
    most = max(meta["threads"], meta["extraction"].get("threads", meta["threads"]))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(most)
    # OpenMP threads that spin between parallel regions take the cores from OpenBLAS's: on two
    # cores FAISS's 2-thread k-means took 90-230 ms with spinning, 54-57 ms without (1 thread:
    # 62-66 ms). Waiting passively is its best setting here.
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    rep = Report()
    run_kmeans(rep, meta, args.data, args.quick)
    run_search(rep, meta, args.data, args.quick)
    run_lora(rep, meta, args.quick)
    with open(args.out, "w") as f:
        json.dump({"format": "sona-bench-1", "header": {"threads": meta["threads"], "quick": args.quick},
                   "rows": rep.rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

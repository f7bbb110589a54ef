# SPDX-License-Identifier: MIT
"""sona.Comm and Engine.sync (include/sona/comm.h), after tests/test_sync.c: three engines in
three threads of a local group learn different traffic and sync; afterwards Base-LoRA
(apply_layer), tenant 0 (apply) and the pattern bank answer alike, bit for bit, on every rank. A
callback that raises makes every rank's sync raise a SonaError and leaves every engine as it
was. The ctypes mirrors of the C structs match a compiler's offsetof. torch.distributed (Gloo,
a world of one process, and two processes that learned apart) where torch is importable."""
import ctypes
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import sona
from sona import _native as _n
from helpers import SynthTask

H, LAYERS, RANK, K = 32, 4, 4, 3
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_engine(seed=1):
    return sona.Engine(H, background_thread=False, device_apply=0, seed=seed, base_layers=LAYERS,
                       base_rank=RANK, base_alpha=2.0 * RANK, micro_rank=2, micro_alpha=4.0,
                       loop_b_threshold=2**30, loop_b_interval_ms=0)


def train(engine, seed, n):
    """n requests of a synthetic task (its own seed: each rank learns different traffic), a
    loop B cycle every 10, as test_sync.c's train()."""
    task = SynthTask(H, clusters=3, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    for done in range(0, n, 10):
        task.run(engine, min(10, n - done), rng)
        engine.force_learn()


PROBE = np.random.default_rng(5).standard_normal((16, H)).astype(np.float32)


def outputs(engine):
    """What an engine answers: every Base-LoRA layer, tenant 0, the nearest patterns."""
    layers = [engine.apply_layer(PROBE, layer).tobytes() for layer in range(LAYERS)]
    tenant = engine.apply_batch(PROBE, 0).tobytes()
    hits = [(h.id, h.similarity, h.avg_quality, h.size)
            for h in engine.find_patterns(PROBE[0], k=8)]
    return layers, tenant, hits


@pytest.fixture
def engines():
    es = [make_engine(seed=1 + i) for i in range(K)]
    for i, e in enumerate(es):
        train(e, seed=20 + i, n=40 + 20 * i)
    yield es
    for e in es:
        e.close()


# ---- the struct mirrors ------------------------------------------------------------------------

LAYOUT_C = r"""
#include <stddef.h>
#include <stdio.h>
#include <sona.h>
#define F(T, f) printf(#T " " #f " %zu %zu\n", offsetof(T, f), sizeof(((T *)0)->f));
int main(void)
{
    F(sona_sync_result, ranks) F(sona_sync_result, rank) F(sona_sync_result, weight)
    F(sona_sync_result, merge_error) F(sona_sync_result, tenants_merged)
    F(sona_sync_result, global) F(sona_sync_result, merge_us)
    F(sona_sync_config, weighting) F(sona_sync_config, merge) F(sona_sync_config, method)
    F(sona_comm_ops, ctx) F(sona_comm_ops, rank) F(sona_comm_ops, size)
    F(sona_comm_ops, allreduce_sum_f32) F(sona_comm_ops, allgather) F(sona_comm_ops, destroy)
    F(sona_stats, tenants) F(sona_stats, quality_baseline) F(sona_stats, last_phi)
    F(sona_stats, inputs_out_of_range)
    F(sona_sync_periodic, syncs) F(sona_sync_periodic, failed) F(sona_sync_periodic, last)
    F(sona_sync_periodic, last_error)
    printf("sizeof sona_sync_result %zu\nsizeof sona_sync_config %zu\n"
           "sizeof sona_comm_ops %zu\nsizeof sona_stats %zu\nsizeof sona_sync_periodic %zu\n",
           sizeof(sona_sync_result), sizeof(sona_sync_config), sizeof(sona_comm_ops),
           sizeof(sona_stats), sizeof(sona_sync_periodic));
    return 0;
}
"""


def test_struct_mirrors_match_the_compilers_layout(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc or not os.path.exists(os.path.join(REPO, "include", "sona.h")):
        pytest.skip("no C compiler or no include/sona.h beside the package")
    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text(LAYOUT_C)
    subprocess.run([cc, "-std=c11", "-I", os.path.join(REPO, "include"), str(src), "-o",
                    str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    mirrors = {"sona_sync_result": _n.SyncResult, "sona_sync_config": _n.SyncConfig,
               "sona_comm_ops": _n.CommOps, "sona_stats": _n.Stats,
               "sona_sync_periodic": _n.SyncPeriodic}
    checked = 0
    for line in out.splitlines():
        words = line.split()
        if words[0] == "sizeof":
            assert ctypes.sizeof(mirrors[words[1]]) == int(words[2]), line
        else:
            field = getattr(mirrors[words[0]], "global_" if words[1] == "global" else words[1])
            assert (field.offset, field.size) == (int(words[2]), int(words[3])), line
        checked += 1
    assert checked == 29


# ---- the communicator on its own ---------------------------------------------------------------

def test_local_group_collectives_through_the_c_handle():
    group = sona.comm.local_group(K)

    def work(i, comm):
        a = np.arange(6, dtype=np.float32) * (i + 1)
        comm.allreduce_sum(a)
        return comm.rank, comm.size, a, comm.allgather(bytes([i]) * 5), comm.allgather(b"")

    for i, (rank, size, a, gathered, empty) in enumerate(group.run(work)):
        assert (rank, size) == (i, K)
        assert np.array_equal(a, np.arange(6, dtype=np.float32) * 6)
        assert gathered == b"".join(bytes([j]) * 5 for j in range(K))
        assert empty == b""
    group.close()
    assert all(c.closed for c in group)


def test_callbacks_see_the_librarys_buffers_without_a_copy():
    seen = {}

    def allreduce(arr):
        seen["arr"] = (arr.ctypes.data, arr.dtype, arr.shape, arr.flags.writeable)
        arr *= 2

    def allgather(send):
        seen["send"] = (np.frombuffer(send, np.uint8).ctypes.data, send.readonly, len(send))
        return bytearray(send)

    with sona.Comm(rank=0, size=1, allreduce_sum=allreduce, allgather=allgather) as comm:
        a = np.ones(7, dtype=np.float32)
        assert comm.allreduce_sum(a) is a
        assert np.array_equal(a, np.full(7, 2, np.float32))
        assert seen["arr"] == (a.ctypes.data, np.float32, (7,), True)
        assert comm.allgather(b"abc") == b"abc"
        assert seen["send"][1:] == (True, 3)


def test_an_exception_in_a_callback_is_a_backend_error_chained_from_it():
    def bad(arr):
        raise ValueError("the network is down")

    with sona.Comm(rank=0, size=1, allreduce_sum=bad, allgather=bytes) as comm:
        with pytest.raises(sona.BackendError) as info:
            comm.allreduce_sum(np.ones(3, np.float32))
        assert isinstance(info.value.__cause__, ValueError)
        assert "the network is down" in str(info.value)
        assert comm.last_exception is None  # handed over to the SonaError
    with sona.Comm(rank=lambda: 5, size=2, allreduce_sum=bad, allgather=bytes) as comm:
        with pytest.raises(sona.BackendError, match="rank 5 of 2"):
            comm.rank  # the C wrapper's check of the callback's answer
    with sona.Comm(rank=0, size=lambda: "one", allreduce_sum=bad, allgather=bytes) as comm:
        with pytest.raises(sona.BackendError) as info:
            comm.size
        assert isinstance(info.value.__cause__, TypeError)
    with sona.Comm(rank=0, size=2, allreduce_sum=bad, allgather=lambda s: b"short") as comm:
        with pytest.raises(sona.BackendError, match="2 x 3 = 6 expected"):
            comm.allgather(b"abc")


def test_a_comm_needs_every_callback_and_is_used_by_one_thread_at_a_time():
    with pytest.raises(sona.InvalidArgumentError, match="allgather"):
        sona.Comm(rank=0, size=1, allreduce_sum=lambda a: None)
    entered, release = threading.Event(), threading.Event()

    def slow(arr):
        entered.set()
        release.wait(30)

    comm = sona.Comm(rank=0, size=1, allreduce_sum=slow, allgather=bytes)
    t = threading.Thread(target=comm.allreduce_sum, args=(np.ones(2, np.float32),))
    t.start()
    try:
        assert entered.wait(30)
        with pytest.raises(sona.StateError, match="one thread at a time"):
            comm.size
        with pytest.raises(sona.StateError):
            comm.close()
    finally:
        release.set()
        t.join()
    comm.close()
    comm.close()  # idempotent
    with pytest.raises(sona.StateError, match="closed"):
        comm.rank


# ---- Engine.sync -------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["sketch", "exact"])
def test_three_ranks_that_learned_apart_answer_alike_after_a_sync(engines, method):
    before = [outputs(e) for e in engines]
    assert before[0][0] != before[1][0]  # the ranks learned different Base-LoRAs
    local = [e.stats() for e in engines]
    group = sona.comm.local_group(K)
    results = group.run(lambda i, comm: engines[i].sync(comm, method=method))
    after = [outputs(e) for e in engines]
    for i in range(K):
        assert after[i] == after[0], f"rank {i} differs from rank 0"
        assert after[i][0] != before[i][0], f"rank {i}'s Base-LoRA did not merge"
        r = results[i]
        assert isinstance(r, sona.SyncResult)
        assert (r.ranks, r.rank, r.tenants_merged) == (K, i, 1)
        assert r.merge_error >= 0
        assert r.merge_us > 0  # it merged: the arithmetic took some time
        assert r.global_stats.trajectories_processed == sum(s.trajectories_processed
                                                            for s in local)
        assert r.global_stats == results[0].global_stats
    # Weighted by the trajectories each learned from (the default): 40, 60 and 80.
    assert [r.weight for r in results] == pytest.approx([40 / 180, 60 / 180, 80 / 180])
    # A second sync with nothing new changes no bit.
    group.run(lambda i, comm: engines[i].sync(comm, method=method, weighting="equal"))
    assert [outputs(e) for e in engines] == after
    group.close()


def test_attached_comm_syncs_after_every_cycle_and_is_given_back():
    """Loop B syncs by itself once attached (sona_sync_attach): each rank's force_learn, run
    in its own thread, is followed by a sync; afterwards the ranks answer alike. The comm is
    loop B's meanwhile (StateError from Python) and usable again after sync_detach."""
    es = [make_engine(seed=1 + i) for i in range(K)]
    group = sona.comm.local_group(K)
    for e, comm in zip(es, group):
        e.sync_attach(comm, every_cycles=1)
    with pytest.raises(sona.StateError):
        group[0].rank  # the engine's while attached
    with pytest.raises(sona.InvalidArgumentError):
        es[0].sync_attach(group[0], every_cycles=0)
    group.run(lambda i, comm: train(es[i], seed=30 + i, n=30))  # three cycles a rank
    for e in es:
        p = e.periodic_syncs
        assert isinstance(p, sona.PeriodicSyncs)
        assert (p.syncs, p.failed, p.last_status, p.last_error) == (3, 0, 0, "")
    after = [outputs(e) for e in es]
    assert all(a == after[0] for a in after), "the ranks differ after their periodic syncs"
    for e in es:
        e.sync_detach()
        e.sync_detach()  # a no-op
    assert [c.rank for c in group] == list(range(K))
    es[1].sync_attach(group[1], every_cycles=2)
    es[1].close()  # detaches first
    assert group[1].rank == 1
    for e in es:
        e.close()
    group.close()


def test_sync_options_by_name_and_enum(engines):
    group = sona.comm.local_group(K)
    results = group.run(lambda i, comm: engines[i].sync(
        comm, weighting=sona.Weighting.EQUAL, merge="CHANGES", method=sona.Method.EXACT))
    assert [r.weight for r in results] == pytest.approx([1 / 3] * 3)
    with pytest.raises(sona.InvalidArgumentError, match="'sketch', 'exact'"):
        engines[0].sync(group[0], method="svd")
    with pytest.raises(sona.InvalidArgumentError, match="sona.Comm"):
        engines[0].sync(object())
    group.close()
    with pytest.raises(sona.StateError, match="closed"):
        engines[0].sync(group[0])


def test_a_world_of_one_leaves_the_engine_as_it_is(engines):
    e = engines[0]
    before = outputs(e)
    with sona.Comm(rank=0, size=1, allreduce_sum=lambda a: None,
                   allgather=lambda s: bytes(s)) as comm:
        r = e.sync(comm)
    assert (r.ranks, r.rank, r.weight) == (1, 0, 1.0)
    assert outputs(e) == before


class FailingRank:
    """A local rank whose `where` callback raises at its `at`-th call."""

    def __init__(self, inner, where, at):
        self._inner, self._where, self._at, self.calls = inner, where, at, 0
        self.rank, self.size, self.abort = inner.rank, inner.size, inner.abort

    def _maybe_fail(self):
        self.calls += 1
        if self.calls == self._at:
            raise RuntimeError(f"injected failure in {self._where}")

    def allreduce_sum(self, arr):
        if self._where == "allreduce_sum":
            self._maybe_fail()
        return self._inner.allreduce_sum(arr)

    def allgather(self, send):
        if self._where == "allgather":
            self._maybe_fail()
        return self._inner.allgather(send)


@pytest.mark.parametrize("where,at,method", [("allgather", 1, "sketch"),
                                             ("allgather", 3, "exact"),
                                             ("allreduce_sum", 1, "sketch"),
                                             ("allreduce_sum", 2, "sketch")])
def test_a_raising_callback_fails_every_rank_and_changes_no_engine(engines, where, at, method):
    before = [outputs(e) for e in engines]
    stats = [e.stats() for e in engines]
    group = sona.comm.local_group(K, timeout=60)
    failing = sona.Comm(FailingRank(group[1]._obj, where, at))
    comms = [group[0], failing, group[2]]
    errors = group.run(lambda i, _: engines[i].sync(comms[i], method=method),
                       return_exceptions=True)
    for i, err in enumerate(errors):
        assert isinstance(err, sona.SonaError), f"rank {i}: {err!r}"
        assert isinstance(err, sona.BackendError), f"rank {i}: {err!r}"
        assert outputs(engines[i]) == before[i], f"rank {i} changed"
        s = engines[i].stats()
        assert (s.base_updates, s.patterns, s.tasks) == \
            (stats[i].base_updates, stats[i].patterns, stats[i].tasks)
    assert isinstance(errors[1].__cause__, RuntimeError)
    assert "injected failure" in str(errors[1])
    assert isinstance(errors[0].__cause__, threading.BrokenBarrierError)
    # Mended, the same group syncs.
    group.reset()
    group.run(lambda i, comm: engines[i].sync(comm, method=method))
    after = [outputs(e) for e in engines]
    assert all(a == after[0] for a in after)
    failing.close()
    group.close()


# ---- torch.distributed -------------------------------------------------------------------------

def test_from_torch_without_torch_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    with pytest.raises(sona.UnavailableError, match="torch is not importable"):
        sona.Comm.from_torch()


def test_from_torch_over_gloo_in_a_world_of_one(tmp_path, engines):
    pytest.importorskip("torch", reason="torch is not installed (python3-torch): the "
                                        "torch.distributed path is not tested")
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch has no torch.distributed with Gloo")
    assert not dist.is_initialized()
    with pytest.raises(sona.StateError, match="init_process_group"):
        sona.Comm.from_torch()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        with sona.Comm.from_torch() as comm:
            assert (comm.rank, comm.size) == (0, 1)
            a = np.arange(5, dtype=np.float32)
            comm.allreduce_sum(a)
            assert np.array_equal(a, np.arange(5, dtype=np.float32))
            assert comm.allgather(b"sona") == b"sona"
            e = engines[0]
            before = outputs(e)
            r = e.sync(comm, method="exact")
            assert (r.ranks, r.rank, r.weight) == (1, 0, 1.0)
            assert outputs(e) == before
        group = dist.new_group([0], backend="gloo")
        with sona.Comm.from_torch(group) as comm:
            assert engines[1].sync(comm).ranks == 1
    finally:
        dist.destroy_process_group()


def test_from_torch_over_gloo_across_two_processes(tmp_path):
    """The real path: two processes, each an engine that learned its own traffic, synced over a
    Gloo group; afterwards both answer alike (the same digest of every output)."""
    pytest.importorskip("torch", reason="torch is not installed (python3-torch): the "
                                        "torch.distributed path is not tested")
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_rank.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(worker)), os.environ.get("PYTHONPATH", "")]))
    env["SONA_LIBRARY"] = _n.library_path  # the library this test loaded
    procs = [subprocess.Popen([sys.executable, worker, str(r), "2", str(tmp_path / "store")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
            outs.append(out.split())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    (r0, a0, g0, k0, w0, d0), (r1, a1, g1, k1, w1, d1) = outs
    assert (r0, r1, a0, a1, k0, k1) == ("0", "1", "3.0", "3.0", "2", "2")
    assert g0 == g1 == "0000000001010101"
    assert float(w0) + float(w1) == pytest.approx(1.0)
    assert d0 == d1, "the two ranks answer differently after the sync"

"""Communicators for Engine.sync: the collectives of a cluster, given to libsona as callbacks.

libsona never opens a socket (include/sona/comm.h): ``sona_sync`` merges the engines of all
ranks through four callbacks the application provides. ``Comm`` fills that table from Python:

    comm = sona.Comm.from_torch()            # torch.distributed (Gloo; NCCL users: see there)
    comm = sona.Comm(my_obj)                 # rank(), size(), allreduce_sum(arr), allgather(b)
    comm = sona.Comm(rank=0, size=1, allreduce_sum=f, allgather=g)
    group = sona.comm.local_group(3)         # 3 ranks in one process, one thread each

    result = engine.sync(comm)               # every rank calls it (a collective)

The callbacks (each rank calls them in the same order with the same sizes, like MPI):
  * ``rank()`` -> int in 0..size-1, ``size()`` -> int >= 1 (or pass ints);
  * ``allreduce_sum(arr)``: arr is a float32 numpy array over the library's buffer (no copy);
    replace its contents in place by the element-wise sum over the ranks. libsona does not need
    the sums to be bit-identical across ranks;
  * ``allgather(send)`` -> bytes: send is a read-only memoryview (format "B") over the
    library's buffer; return size * len(send) bytes (any buffer: bytes, bytearray, a numpy
    array) holding rank i's block at i * len(send). It is copied into the library's buffer;
  * optionally ``abort(exc)``: called when one of the callbacks raised, so that the other ranks
    stop waiting for this one (the local group breaks its barrier). Return value ignored.

An exception raised by a callback is turned into SONA_E_BACKEND for libsona (which then leaves
the engine exactly as it was); Engine.sync raises the resulting SonaError with the callback's
exception as its ``__cause__`` (``raise ... from``). KeyboardInterrupt and SystemExit are
re-raised as themselves.

Thread safety (as sona_comm): a Comm is used by one thread at a time (a second thread calling
into it meanwhile gets StateError), and every rank must call the collectives -- Engine.sync
included -- in the same order. Distinct Comm objects are independent. Engine.sync releases the
GIL while libsona works (ctypes); the callbacks take it back while they run.
"""

from __future__ import annotations

import ctypes
import enum
import threading
import weakref
from ctypes import byref, c_uint32, c_void_p
from typing import Any, Callable, List, Optional, Union

import numpy as np

from . import _native as _n
from ._closing import Closing
from .errors import (InvalidArgumentError, SizeError, StateError, STATUS,
                     UnavailableError, error_for)

__all__ = ["Comm", "Weighting", "Merge", "Method", "LocalGroup", "local_group"]

_BACKEND = STATUS["SONA_E_BACKEND"]


def _text(b: Optional[bytes]) -> str:
    return b.decode("utf-8", "replace") if b else ""


# ---- the sync configuration, by name -----------------------------------------------------------

class Weighting(str, enum.Enum):
    """How the ranks weigh in an average (sona_sync_weighting)."""
    EQUAL = "equal"                  # every rank the same
    TRAJECTORIES = "trajectories"    # each rank by the trajectories it learned from since its
                                     # last sync (equal when none learned any); the default


class Merge(str, enum.Enum):
    """What a sync makes of the ranks' adapters (sona_sync_merge)."""
    AVERAGE = "average"  # their (weighted) average
    CHANGES = "changes"  # the last sync's state plus every rank's change since (sync once
                         # before serving so that it exists; README, "Cluster"); overshoots
                         # near what the traffic teaches
    PACED = "paced"      # the last sync's state plus the mean change times a gain in [1, k]
                         # read from the last merge's move; the default


class Method(str, enum.Enum):
    """How Base-LoRA's merge is reduced to rank r (sona_sync_method)."""
    SKETCH = "sketch"  # two all-reduces a layer, ~1.27x a ring all-reduce; the default
    EXACT = "exact"    # all-gathers every rank's factors: exact, (k - 1)x Base-LoRA received


_C_VALUES = {Weighting.EQUAL: 0, Weighting.TRAJECTORIES: 1, Merge.AVERAGE: 0, Merge.CHANGES: 1,
             Merge.PACED: 2,
             Method.SKETCH: 0, Method.EXACT: 1}


def _enum(cls, value) -> int:
    try:
        return _C_VALUES[cls(value.lower() if isinstance(value, str) else value)]
    except ValueError:
        names = ", ".join(repr(m.value) for m in cls)
        raise InvalidArgumentError(f"{cls.__name__.lower()}: {value!r} is not one of "
                                   f"{names}") from None


def _sync_config(weighting, merge, method) -> "_n.SyncConfig":
    cfg = _n.SyncConfig()
    _n.sync_config_default(byref(cfg))
    if weighting is not None:
        cfg.weighting = _enum(Weighting, weighting)
    if merge is not None:
        cfg.merge = _enum(Merge, merge)
    if method is not None:
        cfg.method = _enum(Method, method)
    return cfg


def _require_library() -> None:
    if _n.sync is None or _n.comm_create is None:
        raise UnavailableError(f"the loaded libsona ({_n.library_path}) has no sona_sync: it "
                               f"predates the cluster API")


# ---- the communicator --------------------------------------------------------------------------

def _as_callable(v: Any, what: str) -> Callable:
    if callable(v):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        n = int(v)
        return lambda: n
    raise InvalidArgumentError(f"Comm: {what} must be a callable (or an int for rank/size), "
                               f"not {type(v).__name__}")


class Comm(Closing):
    """A sona_comm over Python callables (see the module's docstring for what each does).

    ``Comm(obj)`` takes obj's methods ``rank``, ``size``, ``allreduce_sum``, ``allgather`` (and
    ``abort`` if it has one); keyword arguments give or override each (rank and size may be
    ints). Owns the C handle: use it as a context manager or call close() (idempotent; the
    finalizer closes too). The ctypes callbacks live as long as the Comm.

    ``comm.rank``, ``comm.size``, ``comm.allreduce_sum(arr)`` and ``comm.allgather(data)`` call
    the collectives through the C handle (with libsona's argument checks), as sona_sync does.
    ``comm.last_exception`` is the exception the last failing callback raised (None if none).
    """

    def __init__(self, obj: Any = None, *, rank: Any = None, size: Any = None,
                 allreduce_sum: Optional[Callable] = None, allgather: Optional[Callable] = None,
                 abort: Optional[Callable] = None):
        self._h: Optional[int] = None
        _require_library()
        fns = {}
        for name, given in (("rank", rank), ("size", size), ("allreduce_sum", allreduce_sum),
                            ("allgather", allgather)):
            v = given if given is not None else getattr(obj, name, None)
            if v is None:
                raise InvalidArgumentError(f"Comm: no {name} (pass an object with a {name}() "
                                           f"method, or {name}=...)")
            fns[name] = _as_callable(v, name)
        self._rank_fn, self._size_fn = fns["rank"], fns["size"]
        self._allreduce_fn, self._allgather_fn = fns["allreduce_sum"], fns["allgather"]
        self._abort_fn = abort if abort is not None else getattr(obj, "abort", None)
        self._obj = obj
        self.last_exception: Optional[BaseException] = None
        self._use = threading.Lock()
        # The table: ctypes thunks referenced by self, so that they outlive every call libsona
        # makes (sona_comm_create copies the pointers, not the Python objects). They reach self
        # through a weak reference: no cycle, so a Comm nobody closed is freed (and its handle
        # destroyed) as soon as it is unreachable, not at the next garbage collection.
        me = weakref.ref(self)

        def thunk(cftype, method):
            def cb(*args):
                c = me()
                return _BACKEND if c is None else method(c, *args)
            return cftype(cb)

        self._cbs = (thunk(_n.COMM_RANK, Comm._cb_rank), thunk(_n.COMM_SIZE, Comm._cb_size),
                     thunk(_n.COMM_ALLREDUCE, Comm._cb_allreduce),
                     thunk(_n.COMM_ALLGATHER, Comm._cb_allgather))
        ops = _n.CommOps()
        ops.ctx = None
        ops.rank, ops.size, ops.allreduce_sum_f32, ops.allgather = self._cbs
        h = c_void_p()
        status = _n.comm_create(byref(ops), byref(h))
        if status:
            raise error_for(status, _text(_n.last_error()))
        self._h = h.value

    # -- the callbacks libsona calls (never raise: an exception becomes SONA_E_BACKEND) --
    def _failed(self, where: str, exc: BaseException) -> int:
        self.last_exception = exc
        try:
            exc.add_note(f"raised by the {where} callback of a sona.Comm")  # Python >= 3.11
        except AttributeError:
            pass
        if self._abort_fn is not None:
            try:
                self._abort_fn(exc)
            except BaseException:  # the original exception is the one to report
                pass
        return _BACKEND

    def _count(self, fn: Callable, what: str) -> int:
        v = fn()
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 2**32:
            raise TypeError(f"{what}() returned {v!r}, not an int in 0..2^32-1")
        return int(v)

    def _cb_rank(self, ctx, out) -> int:
        try:
            out[0] = self._count(self._rank_fn, "rank")
            return 0
        except BaseException as e:
            return self._failed("rank", e)

    def _cb_size(self, ctx, out) -> int:
        try:
            out[0] = self._count(self._size_fn, "size")
            return 0
        except BaseException as e:
            return self._failed("size", e)

    def _cb_allreduce(self, ctx, data, n) -> int:
        try:
            if n:
                arr = np.ctypeslib.as_array((ctypes.c_float * n).from_address(data))
            else:
                arr = np.empty(0, dtype=np.float32)
            self._allreduce_fn(arr)
            return 0
        except BaseException as e:
            return self._failed("allreduce_sum", e)

    def _cb_allgather(self, ctx, send, nbytes, recv) -> int:
        try:
            if nbytes:
                view = memoryview((ctypes.c_char * nbytes).from_address(send)).cast("B")
                view = view.toreadonly()
            else:
                view = memoryview(b"")
            got = self._allgather_fn(view)
            k = self._count(self._size_fn, "size")
            out = memoryview(got).cast("B") if got is not None else None
            if out is None or out.nbytes != k * nbytes:
                raise ValueError(f"allgather returned {None if out is None else out.nbytes} "
                                 f"bytes, size {k} x {nbytes} = {k * nbytes} expected")
            if nbytes:  # np.frombuffer: the returned buffer's address, read-only or not
                ctypes.memmove(recv, np.frombuffer(out, dtype=np.uint8).ctypes.data, out.nbytes)
            return 0
        except BaseException as e:
            return self._failed("allgather", e)

    # -- use from Python, through the C handle --
    def _acquire(self) -> int:
        if not self._use.acquire(blocking=False):
            raise StateError("the sona.Comm is in use by another thread (a Comm is used by one "
                             "thread at a time)")
        if self._h is None:
            self._use.release()
            raise StateError("the sona.Comm is closed")
        self.last_exception = None
        return self._h

    def _raise(self, status: int, message: str) -> None:
        exc, self.last_exception = self.last_exception, None
        err = error_for(status, message)
        if exc is not None:
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
                raise exc
            err.message = f"{err.message} ({type(exc).__name__}: {exc})"
            err.args = (err.message,)
            raise err from exc
        raise err

    def _check(self, status: int, h: int) -> None:
        if status:
            self._raise(status, _text(_n.comm_last_error(h)))

    def _u32(self, query: Callable) -> int:
        h = self._acquire()
        try:
            v = c_uint32()
            self._check(query(h, byref(v)), h)
            return v.value
        finally:
            self._use.release()

    @property
    def rank(self) -> int:
        """This process's rank (sona_comm_rank: the callback's, checked against size)."""
        return self._u32(_n.comm_rank)

    @property
    def size(self) -> int:
        """The number of ranks (sona_comm_size)."""
        return self._u32(_n.comm_size)

    def allreduce_sum(self, arr: np.ndarray) -> np.ndarray:
        """arr (a writeable C-contiguous float32 numpy array) summed in place over the ranks
        through the C handle, as libsona calls it; returns arr. A collective."""
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or \
                not arr.flags.c_contiguous or not arr.flags.writeable:
            raise InvalidArgumentError("allreduce_sum: a writeable C-contiguous float32 numpy "
                                       "array")
        h = self._acquire()
        try:
            self._check(_n.comm_allreduce_sum(h, arr.ctypes.data if arr.size else None,
                                              arr.size), h)
            return arr
        finally:
            self._use.release()

    def allgather(self, data: Union[bytes, bytearray, memoryview]) -> bytes:
        """Every rank's data (the same length on each) concatenated in rank order, through the
        C handle. A collective."""
        src = bytes(data)
        h = self._acquire()
        try:
            n = self._count(self._size_fn, "size")
            recv = ctypes.create_string_buffer(max(1, n * len(src)))
            self._check(_n.comm_allgather(h, src if src else None, len(src), recv), h)
            return recv.raw[:n * len(src)]
        finally:
            self._use.release()

    # -- lifecycle --
    def close(self) -> None:
        """Destroys the C handle (sona_comm_destroy). Idempotent; StateError while another
        thread uses the Comm."""
        if self._h is None:
            return
        if not self._use.acquire(blocking=False):
            raise StateError("close: the sona.Comm is in use by another thread")
        try:
            h, self._h = self._h, None
            if h is not None:
                _n.comm_destroy(h)
        finally:
            self._use.release()

    def __repr__(self) -> str:
        return f"<sona.Comm {'closed' if self._h is None else 'over ' + repr(self._obj)}>"

    # -- torch.distributed --
    @classmethod
    def from_torch(cls, group: Any = None) -> "Comm":
        """A Comm over torch.distributed's default process group (or ``group``): all_reduce
        with SUM over ``torch.from_numpy`` views of libsona's buffers (no copy), all_gather of
        uint8 tensors for the bytes. CPU tensors: a Gloo group (``init_process_group("gloo")``).
        For NCCL, create a Gloo group beside it for sona (``dist.new_group(backend="gloo")``)
        and pass it as ``group``: NCCL needs device tensors. Raises UnavailableError when torch
        is not installed and StateError when torch.distributed is not initialised."""
        return cls(_TorchOps(group))


class _TorchOps:
    def __init__(self, group: Any):
        try:
            import torch
            import torch.distributed as dist
        except ImportError as e:
            raise UnavailableError(f"Comm.from_torch: torch is not importable ({e})") from None
        if not dist.is_available():
            raise UnavailableError("Comm.from_torch: this torch was built without "
                                   "torch.distributed")
        if not dist.is_initialized():
            raise StateError("Comm.from_torch: torch.distributed is not initialised: call "
                             "torch.distributed.init_process_group(...) first (on every rank)")
        self._torch, self._dist, self._group = torch, dist, group
        backend = str(dist.get_backend(group)).lower()
        if backend == "nccl":
            raise InvalidArgumentError(
                "Comm.from_torch: the group's backend is NCCL, which needs device tensors and "
                "libsona's buffers are in host memory: pass a Gloo group made beside it, "
                "dist.new_group(backend=\"gloo\")")
        self._rank = dist.get_rank(group)
        self._size = dist.get_world_size(group)
        if self._rank < 0:
            raise InvalidArgumentError("Comm.from_torch: this process is not in the group")

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def allreduce_sum(self, arr: np.ndarray) -> None:
        if arr.size:
            self._dist.all_reduce(self._torch.from_numpy(arr), op=self._dist.ReduceOp.SUM,
                                  group=self._group)

    def allgather(self, send: memoryview) -> np.ndarray:
        torch, n = self._torch, len(send)
        out = np.empty(self._size * n, dtype=np.uint8)
        if n == 0:
            return out
        mine = torch.from_numpy(np.frombuffer(send, dtype=np.uint8).copy())
        blocks = [torch.from_numpy(out[i * n:(i + 1) * n]) for i in range(self._size)]
        self._dist.all_gather(blocks, mine, group=self._group)  # received straight into out
        return out

    def __repr__(self) -> str:
        return f"torch.distributed(rank {self._rank} of {self._size})"


# ---- a world of threads in one process ---------------------------------------------------------

class LocalGroup:
    """n ranks in one process, rank i a Comm used by one thread (``group[i]``, ``group.comms``).
    Each collective meets the other ranks' at a threading.Barrier: all-reduce sums in rank order
    (every rank gets the same bits), all-gather concatenates. For tests and demos: the data
    moves through Python, and the ranks must run in distinct threads (``run`` starts them).

    A callback that raises on one rank breaks the barrier (``abort``), so every rank's collective
    fails (BrokenBarrierError) instead of waiting forever; so does a wait longer than
    ``timeout`` seconds. ``reset()`` mends the group once every rank has returned.
    """

    def __init__(self, n: int, timeout: Optional[float] = 60.0):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgumentError(f"local_group: n must be an int >= 1, not {n!r}")
        self.n = n
        self.timeout = timeout
        self._barrier = threading.Barrier(n, timeout=timeout)
        self._slots: List[Any] = [None] * n
        self.comms = [Comm(_LocalRank(self, i)) for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Comm:
        return self.comms[i]

    def __iter__(self):
        return iter(self.comms)

    def _wait(self) -> None:
        self._barrier.wait()

    def abort(self, exc: Optional[BaseException] = None) -> None:
        """Breaks the barrier: every rank waiting, or arriving later, fails its collective."""
        self._barrier.abort()

    @property
    def broken(self) -> bool:
        return self._barrier.broken

    def reset(self) -> None:
        """Mends a broken group (call it when no rank is inside a collective)."""
        self._barrier.reset()
        self._slots = [None] * self.n

    def run(self, fn: Callable[[int, Comm], Any], return_exceptions: bool = False) -> list:
        """fn(rank, comm) in n threads at once; the list of their results in rank order. An
        exception in a rank is raised after every thread has finished (the lowest rank's), or
        with return_exceptions=True is returned in that rank's place."""
        results: List[Any] = [None] * self.n
        failed = [False] * self.n

        def one(i: int) -> None:
            try:
                results[i] = fn(i, self.comms[i])
            except BaseException as e:  # reported to the caller below
                results[i], failed[i] = e, True
                self.abort(e)  # a rank that stops early must not leave the others waiting

        threads = [threading.Thread(target=one, args=(i,), name=f"sona-rank-{i}")
                   for i in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not return_exceptions:
            for i in range(self.n):
                if failed[i]:
                    raise results[i]
        return results

    def close(self) -> None:
        for c in self.comms:
            c.close()

    def __enter__(self) -> "LocalGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<sona.comm.LocalGroup of {self.n} threads>"


class _LocalRank:
    def __init__(self, group: LocalGroup, rank: int):
        self._g, self._rank = group, rank

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._g.n

    def abort(self, exc: BaseException) -> None:
        self._g.abort(exc)

    def allreduce_sum(self, arr: np.ndarray) -> None:
        g = self._g
        g._slots[self._rank] = arr
        g._wait()                 # every rank's array is in place
        total = g._slots[0].copy()
        for a in g._slots[1:]:    # rank order: the same bits on every rank
            total += a
        g._wait()                 # nobody writes its array before all have read
        arr[...] = total

    def allgather(self, send: memoryview) -> bytes:
        g = self._g
        g._slots[self._rank] = send
        g._wait()
        sizes = {len(s) for s in g._slots}
        if len(sizes) != 1:
            g.abort()
            raise SizeError(f"allgather: the ranks sent different sizes {sorted(sizes)}")
        out = b"".join(g._slots)
        g._wait()                 # the send buffers stay valid until all have copied
        return out

    def __repr__(self) -> str:
        return f"local rank {self._rank} of {self._g.n}"


def local_group(n: int, timeout: Optional[float] = 60.0) -> LocalGroup:
    """A LocalGroup: n ranks in one process, one thread each (``group[i]`` is rank i's Comm;
    ``group.run(fn)`` runs fn(rank, comm) in n threads)."""
    return LocalGroup(n, timeout)

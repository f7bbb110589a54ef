"""The SONA engine from Python: sona.Engine and sona.Request over libsona's C API.

Thread safety (include/sona/engine.h): every Engine method may be called from any number of
threads at once (apply never waits for a learning cycle), except close(), which must be the last
call on the engine, and load(), which must not race with requests in flight (Engine.load refuses
while a Request of this engine is open). A Request belongs to one thread at a time (the C
sona_request is owned by the caller from begin to end). Every call into libsona releases the GIL
(ctypes.CDLL), so threads applying and recording run in parallel.

Arrays: inputs are numpy arrays (or anything np.asarray accepts: a PyTorch CPU tensor, a list).
A C-contiguous float32 array is passed to the library as it is, without a copy; any other dtype
or layout is converted once (np.ascontiguousarray(x, dtype=np.float32)). Outputs are new float32
arrays, or the ``out=`` array, which must be a writeable C-contiguous float32 array of the
output's shape and is written in place (it may be the input itself: an in-place apply).
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import threading
import weakref
from ctypes import byref, c_char_p, c_double, c_int, c_int32, c_uint32, c_void_p
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _native as _n
from ._closing import Closing
from .errors import (InvalidArgumentError, NotFoundError, SizeError, SonaError, StateError,
                     UnavailableError, error_for)

if TYPE_CHECKING:
    from .comm import Comm

__all__ = ["Engine", "Request", "Stats", "SyncResult", "PatternHit", "PRESETS", "config_fields",
           "default_config", "state_config", "empty"]

PRESETS = {"default": 0, "max_throughput": 1, "max_quality": 2, "edge": 3}
_KINDS = {0: "int", 1: "float", 2: "string"}


def _text(b: Optional[bytes]) -> str:
    return b.decode("utf-8", "replace") if b else ""


def _thread_error(status: int) -> SonaError:
    return error_for(status, _text(_n.last_error()))


# ---- configuration by name (the ABI-safe path: no struct layout in Python) ------------------

def config_fields() -> List[tuple]:
    """Every field of sona_engine_config as (name, kind), kind "int", "float" or "string", in
    the library's order (sona_engine_config_field)."""
    out = []
    kind = c_int()
    i = 0
    while True:
        name = _n.config_field(i, byref(kind))
        if name is None:
            return out
        out.append((name.decode(), _KINDS.get(kind.value, "int")))
        i += 1


def _preset_id(preset: Union[str, int]) -> int:
    if isinstance(preset, str):
        try:
            return PRESETS[preset.lower()]
        except KeyError:
            raise InvalidArgumentError(
                f"unknown preset {preset!r}: one of {', '.join(PRESETS)}") from None
    if isinstance(preset, int) and preset in PRESETS.values():
        return preset
    raise InvalidArgumentError(f"unknown preset {preset!r}: one of {', '.join(PRESETS)}")


def _config_buffer() -> ctypes.Array:
    # Opaque bytes of the library's own size: the binding never mirrors the struct.
    return ctypes.create_string_buffer(_n.config_size())


def _config_set(buf, name: str, value: Any) -> None:
    """Sets one field by name; ValueError (a SonaError subclass) with the library's message."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f"config field names are strings, not {type(name).__name__}")
    key = name.encode()
    if isinstance(value, (str, bytes, os.PathLike)):
        v = os.fsencode(value)
        status = _n.config_set_string(buf, key, v)
    else:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int):
            try:
                d = float(value)
            except OverflowError:
                d = math.nan
            if d != value:
                raise InvalidArgumentError(
                    f"config {name}: {value} has no exact double (the C API takes a double)")
        else:
            try:
                d = float(value)
            except (TypeError, ValueError):
                raise InvalidArgumentError(
                    f"config {name}: takes a number, not {type(value).__name__}") from None
        status = _n.config_set(buf, key, d)
    if status:
        raise _thread_error(status)


def _config_dict(ptr) -> Dict[str, Union[int, float, str]]:
    out: Dict[str, Union[int, float, str]] = {}
    d = c_double()
    s = c_char_p()
    for name, kind in config_fields():
        key = name.encode()
        if kind == "string":
            status = _n.config_get_string(ptr, key, byref(s))
            if status:
                raise _thread_error(status)
            out[name] = _text(s.value)
        else:
            status = _n.config_get(ptr, key, byref(d))
            if status:
                raise _thread_error(status)
            out[name] = int(d.value) if kind == "int" else d.value
    return out


def default_config(hidden: int, preset: Union[str, int] = "default") -> Dict[str, Any]:
    """The preset's configuration for width hidden, as a dict of every field."""
    buf = _config_buffer()
    _n.config_default(buf, _preset_id(preset), int(hidden))
    return _config_dict(buf)


def state_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The configuration the state file at path was saved with (sona_state_config), as a dict:
    Engine(**state_config(p)) creates an engine that can load p."""
    buf = _config_buffer()
    status = _n.state_config(os.fsencode(path), buf)
    if status:
        raise _thread_error(status)
    return _config_dict(buf)


# ---- results ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PatternHit:
    """One pattern found by Engine.find_patterns (sona_pattern_hit)."""
    id: int
    similarity: float   # cosine with the query
    avg_quality: float
    size: int           # trajectories merged into it


Stats = dataclasses.make_dataclass(
    "Stats",
    [(name, float if ctype is ctypes.c_float else int) for name, ctype in _n.STATS_FIELDS],
    frozen=True, namespace={"__doc__": "Engine.stats(): the fields of sona_stats "
                                       "(include/sona/engine.h), same names and meanings."})
Stats.__module__ = __name__


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """Engine.sync's result (sona_sync_result)."""
    ranks: int            # the size of the communicator
    rank: int             # this process's rank
    weight: float         # this rank's share of the average or of the mean change (sum 1)
    merge_error: float    # |merged - M|_F / |M|_F of Base-LoRA's s B A over the layers, M the
                          # merge's target (for "sketch": of M's part in the sketched range)
    tenants_merged: int   # tenant ids live on two ranks or more, merged there
    global_stats: Stats   # sona_sync_result.global: every counter summed over the ranks, read
                          # just before the merge (quality_baseline, last_phi: the mean)
    merge_us: float = 0.0  # this rank's CPU time in the merge's own arithmetic (microseconds)


@dataclasses.dataclass(frozen=True)
class PeriodicSyncs:
    """Engine.periodic_syncs (sona_sync_periodic): the syncs loop B ran since sync_attach."""
    syncs: int            # attempted
    failed: int           # of those, failed (each left the engine as it was)
    last_status: int      # the last one's sona_status (0 before any)
    last_error: str       # the last failure's message ("" when none failed)


# ---- arrays ----------------------------------------------------------------------------------

_F32 = np.dtype(np.float32)


def _f32(x: Any, what: str) -> np.ndarray:
    """x as a C-contiguous float32 array: x itself when it already is one, else one copy."""
    if (type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous
            and x.flags.aligned):
        return x
    try:
        return np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{what}: not convertible to a float32 array: {e}") from None


def empty(shape: Union[int, tuple]) -> np.ndarray:
    """An uninitialised float32 array whose data starts on a 64-byte boundary. The CPU kernels
    read and write whole cache lines: rows of x and y at numpy's usual 16-byte alignment made
    apply_batch of 256 x 4096 10-20 % slower. Results the package allocates are such arrays;
    pass them as inputs and ``out=`` too for the fastest batched calls."""
    count = int(np.prod(shape))
    buf = np.empty(count * 4 + 64, dtype=np.uint8)
    skip = (-buf.ctypes.data) % 64
    return buf[skip:skip + count * 4].view(np.float32).reshape(shape)


def _out(out: Optional[np.ndarray], shape: tuple, what: str) -> np.ndarray:
    if out is None:
        return empty(shape)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise InvalidArgumentError(
            f"{what}: out must be a writeable C-contiguous float32 numpy array")
    if out.shape != shape:
        raise SizeError(f"{what}: out has shape {out.shape}, the result {shape}")
    return out


def _i32(v: Any, what: str) -> int:
    """v as a C int32_t (ctypes would wrap a larger value silently)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{what} must be an integer, not {type(v).__name__}")
    v = int(v)
    if not -2**31 <= v < 2**31:
        raise InvalidArgumentError(f"{what} {v} is outside int32")
    return v


def _u32(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{what} must be an integer, not {type(v).__name__}")
    v = int(v)
    if not 0 <= v < 2**32:
        raise InvalidArgumentError(f"{what} {v} is outside 0..2^32-1")
    return v


def _ids(tenants: Any, n: int) -> np.ndarray:
    """tenants as n C-contiguous int32 ids: one int for every row, or one per row."""
    if isinstance(tenants, (int, np.integer)) and not isinstance(tenants, bool):
        return np.full(n, _i32(tenants, "tenant"), dtype=np.int32)
    t = np.asarray(tenants)
    if t.dtype != np.int32:
        if t.dtype.kind not in "iu" or (t.size and (t.min() < -2**31 or t.max() >= 2**31)):
            raise InvalidArgumentError(f"tenants must be int32 ids, not {t.dtype} values")
    t = np.ascontiguousarray(t, dtype=np.int32)
    if t.shape != (n,):
        raise SizeError(f"apply_batch: {t.shape} tenants for {n} rows")
    return t


def _addr(a: np.ndarray, _byte=ctypes.c_char) -> int:
    """The address of a's data. Through the buffer protocol where it can (0.18 us a call against
    ndarray.ctypes.data's 0.53, and a request makes five such calls); read-only and empty
    arrays, which it refuses, through ndarray.ctypes."""
    try:
        return ctypes.addressof(_byte.from_buffer(a))
    except (TypeError, ValueError):
        return a.ctypes.data


# ---- the engine ------------------------------------------------------------------------------

class Engine(Closing):
    """A SONA engine (sona_engine): per-tenant Micro-LoRA, per-layer Base-LoRA, trajectory
    recording and the learning loops.

    ``Engine(hidden, preset="default", **overrides)``: the preset's configuration for width
    hidden (sona_engine_config_default), then every override set by its field name through the
    library's name-based setter (sona_engine_config_set; state_path takes a string, booleans
    are 1/0). An unknown name or a value the field's type cannot hold raises ValueError (a
    SonaError subclass: NotFoundError or InvalidArgumentError/NonFiniteError) with the library's
    message; a combination the engine refuses raises the error sona_engine_create returns.

    Thread safety: any method from any number of threads at once, except close() (the last
    call: it must not race with other calls on the engine) and load() (not while requests are in
    flight; it refuses while a Request of this engine is open). Calls release the GIL.
    Use as a context manager (closed on exit), or call close(); the finalizer closes too.
    """

    def __init__(self, hidden: int, preset: Union[str, int] = "default", **overrides: Any):
        self._h: Optional[int] = None
        self._attached: Optional["Comm"] = None  # sync_attach's comm
        # Reentrant: a Request's finalizer may run (garbage collection) while this thread holds it.
        self._lock = threading.RLock()
        self._requests: "weakref.WeakSet[Request]" = weakref.WeakSet()
        hidden = _u32(hidden, "hidden")
        buf = _config_buffer()
        _n.config_default(buf, _preset_id(preset), hidden)
        for name, value in overrides.items():
            _config_set(buf, name, value)
        h = c_void_p()
        status = _n.engine_create(buf, byref(h))
        if status:
            raise _thread_error(status)
        self._h = h.value
        cfg = _n.engine_get_config(self._h)
        d = c_double()
        _n.config_get(cfg, b"hidden", byref(d))
        self.hidden = int(d.value)
        _n.config_get(cfg, b"base_layers", byref(d))
        self.base_layers = int(d.value)

    # -- lifecycle --
    def close(self) -> None:
        """Abandons the requests still open, then destroys the engine (sona_engine_destroy: its
        threads stop, a running cycle finishing first). Idempotent. Must not race with other
        calls on this engine."""
        if self._h is not None:
            self.sync_detach()  # before the engine goes: its thread may be in a collective
        with self._lock:
            h, self._h = self._h, None
            reqs = list(self._requests)
            self._requests.clear()
        if h is None:
            return
        for r in reqs:
            r._drop()
        _n.engine_destroy(h)

    def _handle(self) -> int:
        h = self._h
        if h is None:
            raise StateError("the engine is closed")
        return h

    def _check(self, status: int, h: int) -> None:
        if status:
            raise error_for(status, _text(_n.engine_last_error(h)))

    def _row(self, x: Any, what: str) -> np.ndarray:
        a = _f32(x, what)
        if a.shape != (self.hidden,):
            raise SizeError(f"{what}: shape {a.shape}, the engine's width is ({self.hidden},)")
        return a

    def _rows(self, x: Any, what: str) -> np.ndarray:
        a = _f32(x, what)
        if a.ndim < 1 or a.shape[-1] != self.hidden:
            raise SizeError(f"{what}: shape {a.shape}, rows of the engine's width {self.hidden} "
                            f"expected")
        return a

    # -- properties --
    @property
    def config(self) -> Dict[str, Any]:
        """The engine's configuration (sona_engine_get_config), every field by name."""
        return _config_dict(_n.engine_get_config(self._handle()))

    @property
    def device(self) -> Optional[str]:
        """The backend batched applies go to ("cuda", "opencl"), or None for the CPU."""
        d = _n.engine_device(self._handle())
        return d.decode() if d else None

    @property
    def enabled(self) -> bool:
        """Learning on or off (sona_engine_set_enabled): off, requests are applied but not
        recorded and no loop runs."""
        return bool(_n.engine_enabled(self._handle()))

    @enabled.setter
    def enabled(self, on: bool) -> None:
        _n.engine_set_enabled(self._handle(), 1 if on else 0)

    # -- tenants --
    def create_tenant(self) -> int:
        """A new tenant with an identity Micro-LoRA; its id. FullError when every slot is used."""
        h = self._handle()
        t = c_int32()
        self._check(_n.tenant_create(h, byref(t)), h)
        return t.value

    def remove_tenant(self, tenant: int) -> None:
        """Removes a tenant (not tenant 0: InvalidArgumentError; unknown: NotFoundError)."""
        h = self._handle()
        self._check(_n.tenant_remove(h, _i32(tenant, 'tenant')), h)

    # -- apply --
    def apply(self, x: Any, tenant: int = 0, out: Optional[np.ndarray] = None) -> np.ndarray:
        """y = x + delta_tenant(x) through the tenant's Micro-LoRA (tenant -1: y = x).

        x: one row of shape (hidden,), or any shape (..., hidden) (every row through the same
        tenant, as one batch). A C-contiguous float32 x is read in place; other inputs are
        converted once. Returns a new array, or writes out (which may be x itself: in place).
        An unknown tenant raises NotFoundError (nothing written). NaN in x is not checked (the
        serving path): such a row comes out non-finite."""
        h = self._h
        if h is None:
            raise StateError("the engine is closed")
        if type(tenant) is not int or not -2**31 <= tenant < 2**31:
            tenant = _i32(tenant, "tenant")
        # The fast path: one float32 row, as the serving loop passes it.
        if (type(x) is np.ndarray and x.dtype == _F32 and x.shape == (self.hidden,)
                and x.flags.c_contiguous and x.flags.aligned):
            a = x
        else:
            a = self._rows(x, "apply: x")
        y = _out(out, a.shape, "apply")
        if a.ndim == 1:
            ay = y.ctypes.data
            if y is a:
                status = _n.apply_inplace(h, tenant, ay)
            else:
                ax = a.ctypes.data
                if ax == ay:
                    status = _n.apply_inplace(h, tenant, ay)
                elif out is not None and np.may_share_memory(a, y):
                    raise InvalidArgumentError("apply: out overlaps x without being x")
                else:
                    status = _n.apply(h, tenant, ax, ay)
            if status:
                self._check(status, h)
            return y
        n = a.size // self.hidden
        ids = np.full(n, tenant, dtype=np.int32)
        self._batch(h, n, ids, a, y)
        return y

    def _batch(self, h: int, n: int, ids: np.ndarray, a: np.ndarray, y: np.ndarray) -> None:
        if n == 0:
            return
        if y is not a and _addr(y) != _addr(a) and np.may_share_memory(a, y):
            raise InvalidArgumentError("apply_batch: out overlaps xs without being xs")
        self._check(_n.apply_batch(h, n, _addr(ids), _addr(a), _addr(y)), h)

    def apply_batch(self, xs: Any, tenants: Union[int, Sequence[int], np.ndarray],
                    out: Optional[np.ndarray] = None) -> np.ndarray:
        """Row i of xs (shape (n, hidden)) through tenant tenants[i] (-1 = none); tenants may be
        one int for every row. xs is read in place when C-contiguous float32 (tenants when
        C-contiguous int32), else converted once. Returns a new (n, hidden) array, or writes
        out (which may be xs: in place). A row with an unknown tenant raises NotFoundError."""
        h = self._handle()
        a = self._rows(xs, "apply_batch: xs")
        if a.ndim != 2:
            raise SizeError(f"apply_batch: xs has shape {a.shape}, (n, {self.hidden}) expected")
        n = a.shape[0]
        ids = _ids(tenants, n)
        y = _out(out, a.shape, "apply_batch")
        self._batch(h, n, ids, a, y)
        return y

    def apply_layer(self, x: Any, layer: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """x (shape (hidden,) or (n, hidden)) through Base-LoRA layer `layer`
        (0..base_layers-1; else InvalidArgumentError). out may be x (in place)."""
        h = self._handle()
        a = self._rows(x, "apply_layer: x")
        y = _out(out, a.shape, "apply_layer")
        n = a.size // self.hidden
        if n and y is not a and _addr(y) != _addr(a) and np.may_share_memory(a, y):
            raise InvalidArgumentError("apply_layer: out overlaps x without being x")
        if n:
            self._check(_n.apply_layer_batch(h, _u32(layer, 'layer'), n, _addr(a), _addr(y)), h)
        return y

    # -- requests --
    def request(self, tenant: int, query: Any) -> "Request":
        """Starts recording one request of tenant whose query embedding is query (hidden
        floats): a Request, best used as a context manager::

            with engine.request(0, q) as r:
                r.step(layer, activations, reward=0.7)
                r.quality = 0.9
        """
        return Request(self, tenant, query)

    def flush(self) -> None:
        """Applies every tenant's pending Micro-LoRA gradients now (sona_flush)."""
        h = self._handle()
        self._check(_n.flush(h), h)

    # -- loops --
    def tick(self) -> None:
        """Runs a loop B cycle in this thread if one is due (sona_tick)."""
        h = self._handle()
        self._check(_n.tick(h), h)

    def force_learn(self) -> None:
        """Runs a loop B cycle now on whatever is queued (sona_force_learn)."""
        h = self._handle()
        self._check(_n.force_learn(h), h)

    def deep_cycle(self) -> None:
        """Runs a loop C cycle now (sona_deep_cycle)."""
        h = self._handle()
        self._check(_n.deep_cycle(h), h)

    # -- patterns, stats --
    def find_patterns(self, query: Any, k: int = 5) -> List[PatternHit]:
        """The k patterns most similar to query, best first."""
        h = self._handle()
        q = self._row(query, "find_patterns: query")
        k = _u32(k, "find_patterns: k")
        if k == 0:
            return []
        hits = (_n.PatternHit * k)()
        found = c_uint32()
        self._check(_n.find_patterns(h, _addr(q), k, hits, byref(found)), h)
        return [PatternHit(int(x.id), float(x.similarity), float(x.avg_quality), int(x.size))
                for x in hits[:found.value]]

    def stats(self) -> "Stats":
        """The engine's counters (sona_get_stats) as a Stats dataclass."""
        h = self._handle()
        # Room to spare: a newer library's longer struct cannot write past the buffer.
        buf = ctypes.create_string_buffer(ctypes.sizeof(_n.Stats) + 1024)
        self._check(_n.get_stats(h, buf), h)
        s = _n.Stats.from_buffer(buf)
        return Stats(**{name: getattr(s, name) for name, _ in _n.STATS_FIELDS})

    # -- the cluster --
    def sync(self, comm: Comm, weighting: Optional[str] = None, merge: Optional[str] = None,
             method: Optional[str] = None) -> SyncResult:
        """Merges this engine with the other ranks' through comm (sona_sync): a collective that
        every rank calls, in the same order as its other collectives on comm. Afterwards every
        rank holds the same Base-LoRA, EWC++ state and pattern bank bit for bit, and tenant ids
        live on several ranks are merged there (README, "Cluster"; include/sona/comm.h).

        weighting: "trajectories" (each rank by what it learned since its last sync; the
        default) or "equal"; merge: "paced" (the default: the last sync's state plus the mean
        change times a gain in [1, k]), "average" or "changes" (the last sync's state plus
        every rank's change since); method: "sketch" (the default) or "exact" for
        Base-LoRA. Each also takes the members of sona.Weighting, sona.Merge, sona.Method;
        None keeps the library's default. Queued trajectories are not merged: call
        force_learn() first.

        Returns a SyncResult. On failure (a callback raised: BackendError chained from the
        callback's exception; engines of another shape: SizeError) the engine is exactly as
        before the call, and every rank fails alike. The GIL is released while libsona works,
        so the ranks of a sona.comm.local_group run in threads."""
        from .comm import Comm, _sync_config
        if not isinstance(comm, Comm):
            raise InvalidArgumentError(f"sync: comm must be a sona.Comm, not "
                                       f"{type(comm).__name__}")
        cfg = _sync_config(weighting, merge, method)
        h = self._handle()
        # Room to spare, as in stats(): a newer library's longer struct stays inside the buffer.
        buf = ctypes.create_string_buffer(ctypes.sizeof(_n.SyncResult) + 1024)
        ch = comm._acquire()
        try:
            status = _n.sync(h, ch, byref(cfg), buf)
            if status:
                comm._raise(status, _text(_n.engine_last_error(h)))
        finally:
            comm._use.release()
        r = _n.SyncResult.from_buffer(buf)
        g = r.global_
        return SyncResult(ranks=int(r.ranks), rank=int(r.rank), weight=float(r.weight),
                          merge_error=float(r.merge_error), tenants_merged=int(r.tenants_merged),
                          global_stats=Stats(**{name: getattr(g, name)
                                                for name, _ in _n.STATS_FIELDS}),
                          merge_us=float(r.merge_us))

    def sync_attach(self, comm: Comm, every_cycles: int, weighting: Optional[str] = None,
                    merge: Optional[str] = None, method: Optional[str] = None) -> None:
        """Loop B syncs this engine through comm by itself (sona_sync_attach): after every
        every_cycles-th loop B cycle that ran (the engine's thread, tick() or force_learn()),
        in the thread that ran it; the options are sync()'s. Every rank must attach the same
        every_cycles and options and run the same number of cycles. comm is loop B's while
        attached: using it from Python meanwhile raises StateError, and the engine keeps it
        alive. Attaching again replaces the comm and restarts the count; sync_detach() or
        close() detaches. Failures are counted in periodic_syncs, never raised here (with
        background_thread off, tick() and force_learn() raise the sync's failure)."""
        from .comm import Comm, _sync_config
        if not isinstance(comm, Comm):
            raise InvalidArgumentError(f"sync_attach: comm must be a sona.Comm, not "
                                       f"{type(comm).__name__}")
        if _n.sync_attach is None:
            raise UnavailableError(f"the loaded libsona ({_n.library_path}) has no "
                                   f"sona_sync_attach")
        every = _u32(every_cycles, "sync_attach: every_cycles")
        if every == 0:
            raise InvalidArgumentError("sync_attach: every_cycles must be >= 1")
        cfg = _sync_config(weighting, merge, method)
        self.sync_detach()
        h = self._handle()
        ch = comm._acquire()  # held while attached: the engine's thread uses the comm
        status = _n.sync_attach(h, ch, byref(cfg), every)
        if status:
            comm._use.release()
            self._check(status, h)
        self._attached = comm

    def sync_detach(self) -> None:
        """Ends the periodic syncs (waiting for one in flight) and gives comm back. No-op when
        none is attached."""
        comm, self._attached = self._attached, None
        if comm is None:
            return
        try:
            if self._h is not None:
                _n.sync_attach(self._h, None, None, 0)
        finally:
            comm._use.release()

    @property
    def periodic_syncs(self) -> PeriodicSyncs:
        """The periodic syncs since the last sync_attach (sona_sync_periodic_get)."""
        if _n.sync_periodic_get is None:
            raise UnavailableError(f"the loaded libsona ({_n.library_path}) has no "
                                   f"sona_sync_periodic_get")
        h = self._handle()
        p = _n.SyncPeriodic()
        self._check(_n.sync_periodic_get(h, byref(p)), h)
        return PeriodicSyncs(syncs=int(p.syncs), failed=int(p.failed), last_status=int(p.last),
                             last_error=_text(p.last_error))

    # -- persistence, export --
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes everything learned, and the queued trajectories, to path (sona_save:
        atomically, by rename)."""
        h = self._handle()
        self._check(_n.save(h, os.fsencode(path)), h)

    def load(self, path: Union[str, os.PathLike]) -> None:
        """Replaces the learned state with the file's (sona_load). Must not race with requests
        in flight: refused with StateError while a Request of this engine is open. A corrupt
        file raises CorruptError, another shape SizeError; the engine is untouched then."""
        with self._lock:
            h = self._handle()
            if len(self._requests):
                raise StateError(f"load: {len(self._requests)} request(s) of this engine are "
                                 f"open: end or abandon them first")
            self._check(_n.load(h, os.fsencode(path)), h)

    def export_peft(self, directory: Union[str, os.PathLike], module_format: Optional[str] = None,
                    base_model: str = "", tenant: int = -1, micro_layer: int = 0,
                    model_hidden: int = 0) -> None:
        """Writes the Base-LoRA (tenant -1) or a tenant's Micro-LoRA as a PEFT LoRA adapter
        directory (adapter_model.safetensors, adapter_config.json), published whole
        (sona_export_peft; the fields are sona_peft_config's). module_format None keeps the
        library's default ("base_model.model.model.layers.%u.self_attn.o_proj")."""
        h = self._handle()
        pc = _n.PeftConfig()
        _n.peft_config_default(byref(pc))
        if module_format is not None:
            pc.module_format = module_format.encode()
        pc.base_model = base_model.encode()
        pc.tenant = _i32(tenant, 'tenant')
        pc.micro_layer = _u32(micro_layer, 'micro_layer')
        pc.model_hidden = _u32(model_hidden, 'model_hidden')
        self._check(_n.export_peft(h, os.fsencode(directory), byref(pc)), h)

    def __repr__(self) -> str:
        state = "closed" if self._h is None else f"hidden={self.hidden}"
        return f"<sona.Engine {state}>"


class Request:
    """One request's trajectory being recorded (sona_request). Made by Engine.request.

    As a context manager it always finishes: on a normal exit it ends with ``quality`` (which
    must have been set: else it is abandoned and StateError raised); if an exception escapes the
    block it is abandoned (nothing learned) and the exception propagates. Or call end(quality) /
    abandon() yourself. A Request belongs to one thread at a time.
    """

    def __init__(self, engine: Engine, tenant: int, query: Any):
        self._r: Optional[int] = None
        self.quality: Optional[float] = None
        tenant = _i32(tenant, "tenant")
        q = engine._row(query, "request: query")
        r = c_void_p()
        with engine._lock:
            h = engine._handle()
            engine._check(_n.request_begin(h, tenant, _addr(q), byref(r)), h)
            self._r = r.value
            self._engine = engine
            engine._requests.add(self)
        self.tenant = tenant

    @property
    def open(self) -> bool:
        return self._r is not None

    def _take(self) -> int:
        """The handle, now owned by the caller (the request is closed for everyone else). It
        stays among the engine's open requests (load refuses) until _done()."""
        with self._engine._lock:
            r, self._r = self._r, None
        if r is None:
            raise StateError("the request has already ended")
        return r

    def _done(self) -> None:
        with self._engine._lock:
            self._engine._requests.discard(self)

    def _drop(self) -> None:
        # The engine is closing: abandon while its handle is alive.
        r, self._r = self._r, None
        if r is not None:
            _n.request_abandon(r)

    def step(self, layer: int, activations: Any, reward: float = 0.0,
             attention: Any = None) -> None:
        """One step: the activations (hidden floats) after layer `layer`, its reward, and
        optional attention weights (checked for NaN/Inf, not learned from)."""
        r = self._r
        if r is None:
            raise StateError("the request has already ended")
        e = self._engine
        h = e._handle()
        a = e._row(activations, "step: activations")
        if attention is None:
            att, n_att = None, 0
        else:
            att_arr = _f32(attention, "step: attention").reshape(-1)
            att, n_att = (_addr(att_arr) if att_arr.size else None), att_arr.size
        layer = _u32(layer, "step: layer")
        e._check(_n.request_step(r, layer, _addr(a), att, n_att, float(reward)), h)

    def end(self, quality: Optional[float] = None) -> None:
        """Ends the request with its final quality (or the ``quality`` attribute) and runs loop
        A (sona_request_end). The request is finished whatever the outcome."""
        q = self.quality if quality is None else quality
        if q is None:
            raise StateError("end: no quality given (set request.quality or pass it)")
        q = float(q)
        r = self._take()
        h = self._engine._h
        try:
            status = _n.request_end(r, q)
        finally:
            self._done()
        if status:
            raise error_for(status, _text(_n.engine_last_error(h)))

    def abandon(self) -> None:
        """Drops the request without learning from it (sona_request_abandon). Idempotent."""
        if self._r is None:
            return
        try:
            _n.request_abandon(self._take())
        finally:
            self._done()

    def __enter__(self) -> "Request":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._r is None:
            return False
        if exc_type is not None:
            self.abandon()
            return False
        if self.quality is None:
            self.abandon()
            raise StateError("the request block ended without setting request.quality: "
                             "abandoned")
        self.end()
        return False

    def __del__(self) -> None:
        try:
            if self._r is not None and self._engine._h is not None:
                self.abandon()
        except Exception:
            pass

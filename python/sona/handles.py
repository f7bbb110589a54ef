"""libsona's standalone handles from Python: Lora (an adapter set), Index (HNSW search by cosine)
and Bank (trajectories clustered into patterns), for users who want one piece without an Engine.

Thread safety (the C headers): a Bank is internally locked, so any thread may call it at any time.
A Lora or an Index is not: these classes hold a lock of their own around every call, so Python
threads may share one safely (a call waits for the one in progress). Every call releases the GIL.
Arrays follow the Engine's rule: C-contiguous float32 is used in place, anything else is converted
once.
"""

from __future__ import annotations

import ctypes
import threading
from ctypes import byref, c_uint32, c_void_p
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native as _n
from ._closing import Closing
from .engine import _addr, _f32, _i32, _text, _thread_error, _u32
from .errors import InvalidArgumentError, SizeError, StateError, error_for

__all__ = ["Lora", "Index", "Bank", "Pattern"]

_STORAGE = {"f32": 0, "f16": 1, "q8": 2}


def _set_fields(cfg: ctypes.Structure, overrides: dict, what: str) -> None:
    names = {f[0] for f in cfg._fields_}
    for key, value in overrides.items():
        if key not in names or key in ("clock_ms", "clock_ctx", "index"):
            raise InvalidArgumentError(f"{what}: no field named {key!r}")
        try:
            setattr(cfg, key, value)
        except TypeError as e:
            raise InvalidArgumentError(f"{what}: {key}: {e}") from None


class _Handle(Closing):
    """An owned C handle: closed by close(), the context manager, or the garbage collector."""

    _destroy = None

    def __init__(self) -> None:
        self._h: Optional[int] = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            h, self._h = self._h, None
        if h is not None:
            type(self)._destroy(h)

    def _handle(self) -> int:
        h = self._h
        if h is None:
            raise StateError(f"the {type(self).__name__} is closed")
        return h

    def _check(self, status: int, h: int, last_error) -> None:
        if status:
            raise error_for(status, _text(last_error(h)) or _text(_n.last_error()))


class Lora(_Handle):
    """An adapter set (sona_lora): `count` adapters of y = x + s B (A x).

    ``Lora(hidden, kind="micro"|"base", **fields)``: the kind's defaults (micro: rank 2, one
    adapter; base: rank 8, 12 adapters), then any sona_lora_config field by name (rank, count,
    alpha, seed, learning_rate, clip_norm)."""

    _destroy = staticmethod(_n.lora_destroy)

    def __init__(self, hidden: int, kind: str = "micro", **fields: Any):
        super().__init__()
        kinds = {"micro": 0, "base": 1}
        if kind not in kinds:
            raise InvalidArgumentError(f"kind {kind!r}: one of {', '.join(kinds)}")
        cfg = _n.LoraConfig()
        _n.lora_config_default(byref(cfg), kinds[kind], _u32(hidden, "hidden"))
        _set_fields(cfg, fields, "Lora")
        h = c_void_p()
        status = _n.lora_create(byref(cfg), byref(h))
        if status:
            raise _thread_error(status)
        self._h = h.value
        self.hidden, self.rank, self.count = cfg.hidden, cfg.rank, cfg.count

    def _rows(self, x: Any, what: str) -> np.ndarray:
        a = _f32(x, what)
        if a.ndim != 2 or a.shape[1] != self.hidden:
            raise SizeError(f"{what}: shape {a.shape}, rows of width {self.hidden} expected")
        return a

    def _ids(self, adapters: Union[int, Sequence[int]], n: int) -> np.ndarray:
        ids = np.full(n, _i32(adapters, "adapter"), np.int32) if isinstance(adapters, (int, np.integer)) \
            else np.ascontiguousarray(adapters, dtype=np.int32)
        if ids.shape != (n,):
            raise SizeError(f"{ids.shape} adapter ids for {n} rows")
        return ids

    def forward(self, x: Any, adapters: Union[int, Sequence[int]] = 0) -> np.ndarray:
        """Rows of x (n, hidden) through adapter ids (one int for all, or one per row; -1 none)."""
        one = np.ndim(x) == 1
        a = self._rows(np.atleast_2d(_f32(x, "forward: x")), "forward: x")
        ids = self._ids(adapters, a.shape[0])
        y = np.empty_like(a)
        with self._lock:
            h = self._handle()
            self._check(_n.lora_forward_batch(h, a.shape[0], _addr(ids), _addr(a), _addr(y)), h,
                        _n.lora_last_error)
        return y[0] if one else y

    def accumulate(self, x: Any, delta: Any, w: Union[float, Sequence[float]] = 1.0,
                   adapters: Union[int, Sequence[int]] = 0) -> None:
        """Learning signals: row i asks adapter ids[i]'s output for x_i to move by w_i delta_i.
        All-or-nothing: a bad row (NaN, Inf) refuses the batch and changes nothing."""
        a = self._rows(np.atleast_2d(_f32(x, "accumulate: x")), "accumulate: x")
        d = self._rows(np.atleast_2d(_f32(delta, "accumulate: delta")), "accumulate: delta")
        if d.shape != a.shape:
            raise SizeError(f"accumulate: delta {d.shape} for x {a.shape}")
        wv = np.ascontiguousarray(np.broadcast_to(np.asarray(w, np.float32), (a.shape[0],)))
        ids = self._ids(adapters, a.shape[0])
        with self._lock:
            h = self._handle()
            self._check(_n.lora_accumulate_batch(h, a.shape[0], _addr(ids), _addr(a), _addr(d), _addr(wv)),
                        h, _n.lora_last_error)

    @property
    def pending(self) -> int:
        with self._lock:
            return int(_n.lora_pending(self._handle()))

    def apply_updates(self) -> None:
        """One step of every adapter's accumulated gradient; clears the accumulators."""
        with self._lock:
            h = self._handle()
            self._check(_n.lora_apply_updates(h), h, _n.lora_last_error)

    def weights(self, adapter: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """(A (rank, hidden), B (hidden, rank)) of one adapter, copies."""
        A = np.empty((self.rank, self.hidden), np.float32)
        B = np.empty((self.hidden, self.rank), np.float32)
        with self._lock:
            h = self._handle()
            self._check(_n.lora_get_weights(h, _i32(adapter, "adapter"), _addr(A), _addr(B)), h,
                        _n.lora_last_error)
        return A, B

    def set_weights(self, adapter: int, A: Any = None, B: Any = None) -> None:
        """Replaces A and/or B of one adapter (non-finite values refused, nothing changed)."""
        a = None if A is None else _f32(A, "set_weights: A")
        b = None if B is None else _f32(B, "set_weights: B")
        if a is not None and a.shape != (self.rank, self.hidden):
            raise SizeError(f"set_weights: A {a.shape}, ({self.rank}, {self.hidden}) expected")
        if b is not None and b.shape != (self.hidden, self.rank):
            raise SizeError(f"set_weights: B {b.shape}, ({self.hidden}, {self.rank}) expected")
        with self._lock:
            h = self._handle()
            self._check(_n.lora_set_weights(h, _i32(adapter, "adapter"), None if a is None else _addr(a),
                                            None if b is None else _addr(b)), h, _n.lora_last_error)


class Index(_Handle):
    """Nearest neighbours by cosine over an HNSW graph (sona_index).

    ``Index(dim, storage="f32"|"f16"|"q8", **fields)``: any sona_index_config field by name (M,
    ef_construction, ef_search, initial_capacity, seed, track_access)."""

    _destroy = staticmethod(_n.index_destroy)

    def __init__(self, dim: int, storage: str = "f32", **fields: Any):
        super().__init__()
        if storage not in _STORAGE:
            raise InvalidArgumentError(f"storage {storage!r}: one of {', '.join(_STORAGE)}")
        cfg = _n.IndexConfig()
        _n.index_config_default(byref(cfg), _u32(dim, "dim"))
        cfg.storage = _STORAGE[storage]
        _set_fields(cfg, fields, "Index")
        h = c_void_p()
        status = _n.index_create(byref(cfg), byref(h))
        if status:
            raise _thread_error(status)
        self._h = h.value
        self.dim = cfg.dim

    def _vec(self, v: Any, what: str) -> np.ndarray:
        a = _f32(v, what)
        if a.shape != (self.dim,):
            raise SizeError(f"{what}: shape {a.shape}, ({self.dim},) expected")
        return a

    def __len__(self) -> int:
        with self._lock:
            return int(_n.index_size(self._handle()))

    def insert(self, id: int, vec: Any) -> None:
        a = self._vec(vec, "insert: vec")
        with self._lock:
            h = self._handle()
            self._check(_n.index_insert(h, int(id), _addr(a)), h, _n.index_last_error)

    def remove(self, id: int) -> None:
        with self._lock:
            h = self._handle()
            self._check(_n.index_remove(h, int(id)), h, _n.index_last_error)

    def search(self, query: Any, k: int = 10) -> List[Tuple[int, float]]:
        """The k ids most similar to query, best first, as (id, cosine)."""
        q = self._vec(query, "search: query")
        k = _u32(k, "k")
        ids = np.empty(max(k, 1), np.uint64)
        sims = np.empty(max(k, 1), np.float32)
        found = c_uint32()
        with self._lock:
            h = self._handle()
            self._check(_n.index_search(h, _addr(q), k, _addr(ids), _addr(sims), byref(found)), h,
                        _n.index_last_error)
        return [(int(ids[i]), float(sims[i])) for i in range(found.value)]

    def vector(self, id: int) -> np.ndarray:
        out = np.empty(self.dim, np.float32)
        with self._lock:
            h = self._handle()
            self._check(_n.index_get_vector(h, int(id), _addr(out)), h, _n.index_last_error)
        return out


class Pattern:
    """A pattern of a Bank (sona_pattern), with its centroid."""

    __slots__ = ("id", "size", "total_weight", "avg_quality", "access_count", "created_ms",
                 "last_access_ms", "route_count", "centroid")

    def __init__(self, p: _n.Pattern, centroid: np.ndarray):
        for f, _ in _n.Pattern._fields_:
            setattr(self, f, getattr(p, f))
        self.centroid = centroid

    def __repr__(self) -> str:
        return f"<sona.Pattern id={self.id} size={self.size} avg_quality={self.avg_quality:.3f}>"


class Bank(_Handle):
    """Trajectory embeddings clustered into patterns, searched by cosine (sona_bank).

    ``Bank(dim, **fields)``: any sona_bank_config field by name (k_clusters, rows_per_cluster,
    max_iterations, tolerance, seeding_trials, merge_threshold, merge_z, min_cluster_size,
    min_quality, stale_after_ms, capacity, max_pending, seed)."""

    _destroy = staticmethod(_n.bank_destroy)

    def __init__(self, dim: int, **fields: Any):
        super().__init__()
        cfg = _n.BankConfig()
        _n.bank_config_default(byref(cfg), _u32(dim, "dim"))
        _set_fields(cfg, fields, "Bank")
        h = c_void_p()
        status = _n.bank_create(byref(cfg), byref(h))
        if status:
            raise _thread_error(status)
        self._h = h.value
        self.dim = cfg.dim

    def add(self, embeddings: Any, qualities: Any, weights: Any = None) -> None:
        """Queues trajectories for the next extraction: rows of dim floats with a quality each
        (and a weight, 1 by default)."""
        e = np.atleast_2d(_f32(embeddings, "add: embeddings"))
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise SizeError(f"add: embeddings {e.shape}, rows of width {self.dim} expected")
        n = e.shape[0]
        q = np.ascontiguousarray(np.broadcast_to(np.asarray(qualities, np.float32), (n,)))
        w = None if weights is None else np.ascontiguousarray(np.broadcast_to(np.asarray(weights, np.float32), (n,)))
        h = self._handle()
        self._check(_n.bank_add_batch(h, n, _addr(e), self.dim, _addr(q), None if w is None else _addr(w), None),
                    h, _n.bank_last_error)

    @property
    def pending(self) -> int:
        return int(_n.bank_pending(self._handle()))

    def extract(self) -> dict:
        """Clusters every pending trajectory into patterns; what happened, by name."""
        res = _n.ExtractResult()
        h = self._handle()
        self._check(_n.bank_extract(h, byref(res)), h, _n.bank_last_error)
        return {f: getattr(res, f) for f, _ in _n.ExtractResult._fields_}

    def __len__(self) -> int:
        return int(_n.bank_pattern_count(self._handle()))

    def search(self, query: Any, k: int = 5) -> List[Tuple[int, float]]:
        """The k patterns most similar to query, best first, as (id, cosine)."""
        q = _f32(query, "search: query")
        if q.shape != (self.dim,):
            raise SizeError(f"search: query {q.shape}, ({self.dim},) expected")
        k = _u32(k, "k")
        ids = np.empty(max(k, 1), np.uint64)
        sims = np.empty(max(k, 1), np.float32)
        found = c_uint32()
        h = self._handle()
        self._check(_n.bank_search(h, _addr(q), self.dim, k, _addr(ids), _addr(sims), byref(found)), h,
                    _n.bank_last_error)
        return [(int(ids[i]), float(sims[i])) for i in range(found.value)]

    def pattern(self, id: int) -> Pattern:
        p = _n.Pattern()
        c = np.empty(self.dim, np.float32)
        h = self._handle()
        self._check(_n.bank_pattern_get(h, int(id), byref(p), _addr(c)), h, _n.bank_last_error)
        return Pattern(p, c)

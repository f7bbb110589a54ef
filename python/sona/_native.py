"""Finds and loads libsona, and declares the C functions the package calls (ctypes).

The library is looked for, in this order:
  1. the path in the environment variable SONA_LIBRARY (a file, or a directory holding
     libsona.so);
  2. the package's own directory (a copy installed beside this file);
  3. the build tree of the repository this package sits in: <repo>/build/lib/libsona.so;
  4. the system's search path (ctypes.util.find_library("sona")).
The first that loads wins; ``library_path`` says which. When none loads, ImportError names every
place tried and why each failed.

The library is opened with ctypes.CDLL, not PyDLL: every foreign call releases the GIL while it
runs, so Python threads calling into libsona run in parallel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import (POINTER, Structure, c_char, c_char_p, c_double, c_float, c_int, c_int32, c_size_t,
                    c_uint, c_uint32, c_uint64, c_void_p)

_HERE = os.path.dirname(os.path.abspath(__file__))
_NAMES = ("libsona.so", "libsona.so.0", "libsona.dylib", "sona.dll")


def _candidates():
    """(where, path or name) in search order."""
    env = os.environ.get("SONA_LIBRARY")
    if env:
        if os.path.isdir(env):
            for n in _NAMES:
                yield "SONA_LIBRARY", os.path.join(env, n)
        else:
            yield "SONA_LIBRARY", env
    for n in _NAMES:
        yield "package directory", os.path.join(_HERE, n)
    repo = os.path.dirname(os.path.dirname(_HERE))
    if os.path.exists(os.path.join(repo, "include", "sona.h")):  # used in place, in the repo
        for n in _NAMES:
            yield "repository build tree", os.path.join(repo, "build", "lib", n)
    else:
        yield "repository build tree", None
    found = ctypes.util.find_library("sona")
    yield "system (ctypes.util.find_library)", found


def _load():
    tried = []
    for where, path in _candidates():
        if not path:
            tried.append(f"{where}: not found" if where.startswith("system")
                         else f"{where}: not inside the repository")
            continue
        if os.sep in path and not os.path.exists(path):
            tried.append(f"{where}: {path}: no such file")
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{where}: {path}: {e}")
            continue
        if not hasattr(lib, "sona_engine_config_set"):
            tried.append(f"{where}: {path}: too old (no sona_engine_config_set)")
            continue
        return lib, (os.path.abspath(path) if os.sep in path else path), where
    raise ImportError("sona: cannot load libsona; tried, in order:\n  " + "\n  ".join(tried) +
                      "\nSet SONA_LIBRARY to the path of libsona.so (build it with cmake: "
                      "build/lib/libsona.so).")


lib, library_path, library_found_in = _load()


class PatternHit(Structure):
    """sona_pattern_hit (include/sona/engine.h)."""
    _fields_ = [("id", c_uint64), ("similarity", c_float), ("avg_quality", c_float),
                ("size", c_uint32)]


# sona_stats (include/sona/engine.h), field for field.
STATS_FIELDS = [
    ("trajectories_recorded", c_uint64), ("trajectories_processed", c_uint64),
    ("trajectories_dropped", c_uint64), ("trajectories_queued", c_uint64),
    ("trajectories_in_cycle", c_uint64), ("signals_accepted", c_uint64),
    ("signals_rejected", c_uint64), ("micro_updates", c_uint64), ("base_updates", c_uint64),
    ("patterns", c_uint64), ("tasks", c_uint64), ("task_boundaries", c_uint64),
    ("loop_b_cycles", c_uint64), ("loop_c_cycles", c_uint64), ("dreams", c_uint64),
    ("dreams_replayed", c_uint64), ("patterns_merged", c_uint64), ("last_loop_b_us", c_uint64),
    ("last_loop_c_us", c_uint64), ("device_batches", c_uint64), ("device_fallbacks", c_uint64),
    ("tenants", c_uint32), ("quality_baseline", c_float), ("last_phi", c_float),
    ("inputs_out_of_range", c_uint64),
]


class Stats(Structure):
    _fields_ = STATS_FIELDS


class PeftConfig(Structure):
    """sona_peft_config (include/sona/engine.h)."""
    _fields_ = [("module_format", c_char_p), ("base_model", c_char_p), ("tenant", c_int32),
                ("micro_layer", c_uint32), ("model_hidden", c_uint32)]


def _proto(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


st = c_int  # sona_status
P = c_void_p

version = _proto("sona_version", c_char_p)
version_number = _proto("sona_version_number", c_uint)
status_str = _proto("sona_status_str", c_char_p, c_int)
last_error = _proto("sona_last_error", c_char_p)

config_size = _proto("sona_engine_config_size", c_size_t)
config_field = _proto("sona_engine_config_field", c_char_p, c_uint32, POINTER(c_int))
config_set = _proto("sona_engine_config_set", st, P, c_char_p, c_double)
config_get = _proto("sona_engine_config_get", st, P, c_char_p, POINTER(c_double))
config_set_string = _proto("sona_engine_config_set_string", st, P, c_char_p, c_char_p)
config_get_string = _proto("sona_engine_config_get_string", st, P, c_char_p, POINTER(c_char_p))
config_default = _proto("sona_engine_config_default", None, P, c_int, c_uint32)
state_config = _proto("sona_state_config", st, c_char_p, P)

engine_create = _proto("sona_engine_create", st, P, POINTER(c_void_p))
engine_destroy = _proto("sona_engine_destroy", None, P)
engine_last_error = _proto("sona_engine_last_error", c_char_p, P)
engine_get_config = _proto("sona_engine_get_config", c_void_p, P)
engine_device = _proto("sona_engine_device", c_char_p, P)
engine_set_enabled = _proto("sona_engine_set_enabled", None, P, c_int)
engine_enabled = _proto("sona_engine_enabled", c_int, P)

tenant_create = _proto("sona_tenant_create", st, P, POINTER(c_int32))
tenant_remove = _proto("sona_tenant_remove", st, P, c_int32)

apply = _proto("sona_apply", st, P, c_int32, P, P)
apply_inplace = _proto("sona_apply_inplace", st, P, c_int32, P)
apply_batch = _proto("sona_apply_batch", st, P, c_uint32, P, P, P)
apply_layer = _proto("sona_apply_layer", st, P, c_uint32, P, P)
apply_layer_batch = _proto("sona_apply_layer_batch", st, P, c_uint32, c_uint32, P, P)

request_begin = _proto("sona_request_begin", st, P, c_int32, P, POINTER(c_void_p))
request_step = _proto("sona_request_step", st, P, c_uint32, P, P, c_uint32, c_float)
request_end = _proto("sona_request_end", st, P, c_float)
request_abandon = _proto("sona_request_abandon", None, P)
flush = _proto("sona_flush", st, P)

tick = _proto("sona_tick", st, P)
force_learn = _proto("sona_force_learn", st, P)
deep_cycle = _proto("sona_deep_cycle", st, P)

find_patterns = _proto("sona_find_patterns", st, P, P, c_uint32, P, POINTER(c_uint32))
get_stats = _proto("sona_get_stats", st, P, P)

save = _proto("sona_save", st, P, c_char_p)
load = _proto("sona_load", st, P, c_char_p)

peft_config_default = _proto("sona_peft_config_default", None, POINTER(PeftConfig))
export_peft = _proto("sona_export_peft", st, P, c_char_p, POINTER(PeftConfig))


# ---- the standalone handles (python/sona/handles.py) --------------------------------------------

class LoraConfig(Structure):
    """sona_lora_config (include/sona/lora.h), field for field."""
    _fields_ = [("hidden", c_uint32), ("rank", c_uint32), ("count", c_uint32), ("alpha", c_float),
                ("seed", c_uint64), ("learning_rate", c_float), ("clip_norm", c_float)]


class IndexConfig(Structure):
    """sona_index_config (include/sona/index.h), field for field (storage: a sona_storage int)."""
    _fields_ = [("dim", c_uint32), ("M", c_uint32), ("ef_construction", c_uint32),
                ("ef_search", c_uint32), ("initial_capacity", c_uint32), ("seed", c_uint64),
                ("track_access", c_int), ("storage", c_int)]


class BankConfig(Structure):
    """sona_bank_config (include/sona/bank.h), field for field (the clock left NULL)."""
    _fields_ = [("dim", c_uint32), ("k_clusters", c_uint32), ("rows_per_cluster", c_uint32),
                ("max_iterations", c_uint32), ("tolerance", c_float), ("seeding_trials", c_uint32),
                ("merge_threshold", c_float), ("merge_z", c_float), ("min_cluster_size", c_uint32),
                ("min_quality", c_float), ("stale_after_ms", c_uint64), ("capacity", c_uint32),
                ("max_pending", c_uint32), ("seed", c_uint64), ("index", IndexConfig),
                ("clock_ms", c_void_p), ("clock_ctx", c_void_p)]


class Pattern(Structure):
    """sona_pattern (include/sona/bank.h)."""
    _fields_ = [("id", c_uint64), ("size", c_uint64), ("total_weight", c_double),
                ("avg_quality", c_float), ("access_count", c_uint64), ("created_ms", c_uint64),
                ("last_access_ms", c_uint64), ("route_count", c_uint32)]


class ExtractResult(Structure):
    """sona_bank_extract_result (include/sona/bank.h)."""
    _fields_ = [("trajectories", c_uint32), ("clusters", c_uint32), ("iterations", c_uint32),
                ("inertia", c_double), ("created", c_uint32), ("merged", c_uint32),
                ("dropped_small", c_uint32), ("joined", c_uint32), ("split", c_uint32),
                ("pruned", c_uint32), ("evicted", c_uint32), ("combined", c_uint32)]


lora_config_default = _proto("sona_lora_config_default", None, POINTER(LoraConfig), c_int, c_uint32)
lora_create = _proto("sona_lora_create", st, POINTER(LoraConfig), POINTER(c_void_p))
lora_destroy = _proto("sona_lora_destroy", None, P)
lora_last_error = _proto("sona_lora_last_error", c_char_p, P)
lora_forward_batch = _proto("sona_lora_forward_batch", st, P, c_uint32, P, P, P)
lora_accumulate_batch = _proto("sona_lora_accumulate_batch", st, P, c_uint32, P, P, P, P)
lora_pending = _proto("sona_lora_pending", c_uint64, P)
lora_apply_updates = _proto("sona_lora_apply_updates", st, P)
lora_get_weights = _proto("sona_lora_get_weights", st, P, c_int32, P, P)
lora_set_weights = _proto("sona_lora_set_weights", st, P, c_int32, P, P)

index_config_default = _proto("sona_index_config_default", None, POINTER(IndexConfig), c_uint32)
index_create = _proto("sona_index_create", st, POINTER(IndexConfig), POINTER(c_void_p))
index_destroy = _proto("sona_index_destroy", None, P)
index_last_error = _proto("sona_index_last_error", c_char_p, P)
index_size = _proto("sona_index_size", c_uint64, P)
index_insert = _proto("sona_index_insert", st, P, c_uint64, P)
index_remove = _proto("sona_index_remove", st, P, c_uint64)
index_search = _proto("sona_index_search", st, P, P, c_uint32, P, P, POINTER(c_uint32))
index_get_vector = _proto("sona_index_get_vector", st, P, c_uint64, P)

bank_config_default = _proto("sona_bank_config_default", None, POINTER(BankConfig), c_uint32)
bank_create = _proto("sona_bank_create", st, POINTER(BankConfig), POINTER(c_void_p))
bank_destroy = _proto("sona_bank_destroy", None, P)
bank_last_error = _proto("sona_bank_last_error", c_char_p, P)
bank_add_batch = _proto("sona_bank_add_batch", st, P, c_uint32, P, c_uint32, P, P, P)
bank_pending = _proto("sona_bank_pending", c_uint32, P)
bank_extract = _proto("sona_bank_extract", st, P, POINTER(ExtractResult))
bank_search = _proto("sona_bank_search", st, P, P, c_uint32, c_uint32, P, P, POINTER(c_uint32))
bank_pattern_count = _proto("sona_bank_pattern_count", c_uint32, P)
bank_pattern_get = _proto("sona_bank_pattern_get", st, P, c_uint64, POINTER(Pattern), P)


# ---- the cluster: sona_comm and sona_sync (include/sona/comm.h; python/sona/comm.py) ----------

# sona_comm_ops's callbacks. The data pointers are c_void_p (None for NULL), wrapped by comm.py
# as numpy arrays and memoryviews over the library's memory (no copy).
COMM_RANK = ctypes.CFUNCTYPE(c_int, c_void_p, POINTER(c_uint32))
COMM_SIZE = ctypes.CFUNCTYPE(c_int, c_void_p, POINTER(c_uint32))
COMM_ALLREDUCE = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
COMM_ALLGATHER = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, c_void_p)
COMM_DESTROY = ctypes.CFUNCTYPE(None, c_void_p)


class CommOps(Structure):
    """sona_comm_ops (include/sona/comm.h), field for field."""
    _fields_ = [("ctx", c_void_p), ("rank", COMM_RANK), ("size", COMM_SIZE),
                ("allreduce_sum_f32", COMM_ALLREDUCE), ("allgather", COMM_ALLGATHER),
                ("destroy", COMM_DESTROY)]


class SyncConfig(Structure):
    """sona_sync_config: three C enums (int-sized)."""
    _fields_ = [("weighting", c_int), ("merge", c_int), ("method", c_int)]


class SyncResult(Structure):
    """sona_sync_result, field for field (ctypes pads as C does: 4 bytes after tenants_merged,
    global at offset 32, aligned as sona_stats's uint64_t)."""
    _fields_ = [("ranks", c_uint32), ("rank", c_uint32), ("weight", c_double),
                ("merge_error", c_double), ("tenants_merged", c_uint32), ("global_", Stats),
                ("merge_us", c_double)]


# The layouts libsona asserts (src/engine/sync.c: sona_stats is 21 uint64_t, then tenants,
# quality_baseline, last_phi, inputs_out_of_range), checked here too: a field added to a mirror
# out of step with the header fails at import, not as garbage counters. test_comm.py compares
# every offset with a compiler's offsetof where one is available.
assert Stats.tenants.offset == 21 * 8
assert ctypes.sizeof(Stats) == Stats.inputs_out_of_range.offset + 8
assert ctypes.sizeof(SyncConfig) == 3 * ctypes.sizeof(c_int)
assert SyncResult.global_.offset == 32 and ctypes.sizeof(SyncResult) == 32 + ctypes.sizeof(Stats) + 8



def _optional(name, restype, *argtypes):
    """A function a library older than the package may lack: None there (comm.py then raises
    UnavailableError) rather than an import that fails for every other use."""
    return _proto(name, restype, *argtypes) if hasattr(lib, name) else None


comm_ops_default = _optional("sona_comm_ops_default", None, POINTER(CommOps))
comm_create = _optional("sona_comm_create", st, POINTER(CommOps), POINTER(c_void_p))
comm_destroy = _optional("sona_comm_destroy", None, P)
comm_last_error = _optional("sona_comm_last_error", c_char_p, P)
comm_rank = _optional("sona_comm_rank", st, P, POINTER(c_uint32))
comm_size = _optional("sona_comm_size", st, P, POINTER(c_uint32))
comm_allreduce_sum = _optional("sona_comm_allreduce_sum", st, P, P, c_size_t)
comm_allgather = _optional("sona_comm_allgather", st, P, P, c_size_t, P)
sync_config_default = _optional("sona_sync_config_default", None, POINTER(SyncConfig))
sync = _optional("sona_sync", st, P, P, POINTER(SyncConfig), P)


class SyncPeriodic(Structure):
    """sona_sync_periodic: the periodic syncs of an attached comm."""
    _fields_ = [("syncs", c_uint64), ("failed", c_uint64), ("last", c_int),
                ("last_error", c_char * 256)]


sync_attach = _optional("sona_sync_attach", st, P, P, POINTER(SyncConfig), c_uint32)
sync_periodic_get = _optional("sona_sync_periodic_get", st, P, POINTER(SyncPeriodic))

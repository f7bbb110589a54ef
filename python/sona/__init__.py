"""libsona from Python: the SONA engine (per-tenant Micro-LoRA, per-layer Base-LoRA, trajectory
recording and the learning loops) over the shared library, with ctypes and numpy.

    import numpy as np, sona
    with sona.Engine(64, background_thread=False) as e:
        y = e.apply(np.ones(64, np.float32))

Clusters: ``engine.sync(comm)`` merges the engines of every rank through a ``sona.Comm``, the
collectives as Python callables (``Comm.from_torch()`` over torch.distributed,
``sona.comm.local_group(n)`` for n threads in one process); a Comm is used by one thread at a
time, and every rank calls the collectives in the same order (sona.comm).

``sona.library_path`` says which libsona was loaded (SONA_LIBRARY, the package directory, the
repository's build/lib, then the system; see sona._native). Every call releases the GIL.
"""

from . import _native, comm
from .comm import Comm, LocalGroup, Merge, Method, Weighting, local_group
from .engine import (PRESETS, Engine, PatternHit, PeriodicSyncs, Request, Stats, SyncResult,
                     config_fields, default_config, empty, state_config)
from .errors import *  # noqa: F401,F403
from .handles import Bank, Index, Lora, Pattern
from .errors import __all__ as _errors_all

library_path = _native.library_path
library_found_in = _native.library_found_in
library_version = _native.version().decode()

__version__ = "0.1.0"

__all__ = ["Engine", "Request", "Stats", "PatternHit", "Lora", "Index", "Bank", "Pattern",
           "Comm", "LocalGroup", "local_group", "SyncResult", "PeriodicSyncs", "Weighting", "Merge",
           "Method", "PRESETS", "config_fields",
           "default_config", "state_config", "empty", "library_path", "library_found_in",
           "library_version"] + list(_errors_all)

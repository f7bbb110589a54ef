"""Exceptions raised by the sona package: one class per ``sona_status`` (include/sona/common.h).

Every exception carries the library's status code (``.status``, an int equal to the C enum value,
``None`` for errors raised by the binding before any call) and its message (``.message``, also
``str(e)``). Where a builtin exception fits, the class derives from it too, so that callers may
catch ``ValueError``, ``MemoryError``, ``OSError`` or ``LookupError`` as usual.
"""

from __future__ import annotations

__all__ = [
    "SonaError", "NullError", "InvalidArgumentError", "SizeError", "NonFiniteError",
    "OutOfMemoryError", "UnsupportedError", "UnavailableError", "BackendError", "SonaIOError",
    "CorruptError", "VersionError", "FullError", "EmptyError", "NotFoundError", "StateError",
    "STATUS", "error_for",
]

# The C enum sona_status, by name (include/sona/common.h). SONA_OK is 0.
STATUS = {
    "SONA_OK": 0,
    "SONA_E_NULL": 1,
    "SONA_E_INVALID": 2,
    "SONA_E_SIZE": 3,
    "SONA_E_NONFINITE": 4,
    "SONA_E_NOMEM": 5,
    "SONA_E_UNSUPPORTED": 6,
    "SONA_E_UNAVAILABLE": 7,
    "SONA_E_BACKEND": 8,
    "SONA_E_IO": 9,
    "SONA_E_CORRUPT": 10,
    "SONA_E_VERSION": 11,
    "SONA_E_FULL": 12,
    "SONA_E_EMPTY": 13,
    "SONA_E_NOT_FOUND": 14,
    "SONA_E_STATE": 15,
}


class SonaError(Exception):
    """Base class: a libsona call failed (or the binding refused a call before making it)."""

    status: int | None = None

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NullError(SonaError, ValueError):
    """SONA_E_NULL: a required argument was missing."""
    status = STATUS["SONA_E_NULL"]


class InvalidArgumentError(SonaError, ValueError):
    """SONA_E_INVALID: an argument is out of range."""
    status = STATUS["SONA_E_INVALID"]


class SizeError(SonaError, ValueError):
    """SONA_E_SIZE: sizes do not match each other or the engine's width."""
    status = STATUS["SONA_E_SIZE"]


class NonFiniteError(SonaError, ValueError):
    """SONA_E_NONFINITE: NaN or Inf in an input."""
    status = STATUS["SONA_E_NONFINITE"]


class OutOfMemoryError(SonaError, MemoryError):
    """SONA_E_NOMEM: an allocation failed."""
    status = STATUS["SONA_E_NOMEM"]


class UnsupportedError(SonaError):
    """SONA_E_UNSUPPORTED: the backend or CPU variant cannot do this on this host."""
    status = STATUS["SONA_E_UNSUPPORTED"]


class UnavailableError(SonaError):
    """SONA_E_UNAVAILABLE: the backend, module, driver or device is not present."""
    status = STATUS["SONA_E_UNAVAILABLE"]


class BackendError(SonaError):
    """SONA_E_BACKEND: the backend failed while running."""
    status = STATUS["SONA_E_BACKEND"]


class SonaIOError(SonaError, OSError):
    """SONA_E_IO: reading or writing a file failed."""
    status = STATUS["SONA_E_IO"]


class CorruptError(SonaError, ValueError):
    """SONA_E_CORRUPT: a file or buffer failed its checks."""
    status = STATUS["SONA_E_CORRUPT"]


class VersionError(SonaError, ValueError):
    """SONA_E_VERSION: a file was written by an incompatible format version."""
    status = STATUS["SONA_E_VERSION"]


class FullError(SonaError):
    """SONA_E_FULL: a bounded container is full (e.g. every tenant slot is in use)."""
    status = STATUS["SONA_E_FULL"]


class EmptyError(SonaError):
    """SONA_E_EMPTY: nothing to take."""
    status = STATUS["SONA_E_EMPTY"]


class NotFoundError(SonaError, LookupError, ValueError):
    """SONA_E_NOT_FOUND: no such id (tenant, config field, ...)."""
    status = STATUS["SONA_E_NOT_FOUND"]


class StateError(SonaError):
    """SONA_E_STATE: the call is not valid in the object's current state (also: a closed engine,
    a request already ended)."""
    status = STATUS["SONA_E_STATE"]


_BY_STATUS = {cls.status: cls for cls in (
    NullError, InvalidArgumentError, SizeError, NonFiniteError, OutOfMemoryError,
    UnsupportedError, UnavailableError, BackendError, SonaIOError, CorruptError, VersionError,
    FullError, EmptyError, NotFoundError, StateError)}


def error_for(status: int, message: str) -> SonaError:
    """The exception for a non-zero sona_status, carrying message."""
    cls = _BY_STATUS.get(int(status))
    if cls is None:
        err = SonaError(message or f"unknown sona_status {status}")
        err.status = int(status)
        return err
    return cls(message)

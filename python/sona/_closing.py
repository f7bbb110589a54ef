"""What every owner of a C handle in this package shares: close() on leaving a with-block and
in the finalizer, and ``closed``. A subclass keeps its handle in ``self._h`` and defines close()."""

from __future__ import annotations


class Closing:
    _h = None

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._h is None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown, or a close refused: nothing more can be done
            pass

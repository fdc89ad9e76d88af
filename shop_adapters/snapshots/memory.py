"""An in-memory :class:`~shop_adapters.protocols.SnapshotStore` (tests, benchmarks)."""

from __future__ import annotations

import threading

from ..protocols import Position

__all__ = ["MemorySnapshotStore"]


class MemorySnapshotStore:
    """Holds one blob in memory; ``write`` replaces it atomically (under a lock).

    >>> store = MemorySnapshotStore()
    >>> store.read() is None
    True
    >>> store.write(b"v1"); store.read()
    b'v1'
    """

    def __init__(self) -> None:
        self._blob: bytes | None = None
        self._lock = threading.Lock()

    def write(self, blob: bytes, at: tuple[Position, str] | None = None) -> None:
        """Replace the stored blob with a copy of ``blob`` (bytes-like); ``at`` is not checked."""
        data = bytes(blob)
        with self._lock:
            self._blob = data

    def read(self) -> bytes | None:
        """The stored blob, or ``None`` before the first write."""
        with self._lock:
            return self._blob

    def close(self) -> None:
        """Nothing to release; the blob stays readable."""

"""A file :class:`~shop_adapters.protocols.SnapshotStore`: one file, replaced atomically.

``write`` puts the blob in a temporary file in the same directory
(``.<name>.<random>.tmp``), flushes and fsyncs it, renames it over the target
with :func:`os.replace` and fsyncs the directory. A crash at any point leaves
the old file or the new one, never a mix; a crash before the rename may leave a
stray ``.tmp`` file, which is ignored by :meth:`FileSnapshotStore.read` and
removed by the next successful ``write`` if older than an hour. Source: the
POSIX ``rename(2)`` atomicity guarantee, and "Files are hard" / LWN "ext4 and
data loss" on fsyncing the file before and the directory after the rename.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from .._fs import fsync_dir
from ..protocols import Position

__all__ = ["FileSnapshotStore"]

_STALE_TMP_SECONDS = 3600.0


class FileSnapshotStore:
    """The latest snapshot in the file ``path`` (its directory is created if missing).

    ``write`` raises ``OSError`` if the disk refuses; the old snapshot is then
    intact and the temporary file removed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _tmp_prefix(self) -> str:
        return f".{self.path.name}."

    def write(self, blob: bytes, at: tuple[Position, str] | None = None) -> None:
        """Atomically replace the file's content with ``blob`` (temp file, fsync, rename,
        fsync directory); ``at`` is not checked."""
        fd, tmp = tempfile.mkstemp(prefix=self._tmp_prefix(), suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(self.path.parent)
        self._remove_stale_tmp()

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP_SECONDS
        for stray in self.path.parent.glob(self._tmp_prefix() + "*.tmp"):
            with contextlib.suppress(OSError):
                if stray.stat().st_mtime < cutoff:
                    stray.unlink()

    def read(self) -> bytes | None:
        """The file's bytes, or ``None`` if it does not exist."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        """Nothing held open between calls."""

    def __repr__(self) -> str:
        return f"FileSnapshotStore({str(self.path)!r})"

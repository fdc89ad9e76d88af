"""File-system helpers shared by the file log and the file snapshot store."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir"]


def fsync_dir(directory: Path) -> None:
    """``fsync`` a directory, so a file created or renamed in it survives a crash.

    Raises ``OSError`` as ``os.open``/``os.fsync`` do. Source: fsync(2), "calling
    fsync() on a file does not ensure that the entry in the directory ... has
    also reached disk; for that an explicit fsync() on a file descriptor for the
    directory is also needed".
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

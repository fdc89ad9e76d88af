"""One error family for the shell, with familiar names (after PEP 249 and eventsourcing).

- :class:`OperationalError`: the backing service is unreachable or timed out
  (connection lost, Redis restarting). Safe to retry after a back-off; the
  runner reconnects and resumes from its last applied position.
- :class:`IntegrityError`: the log or a store holds something it must not (a
  corrupt record before the end of a file log, a gap in a stream). Never
  skipped silently: the operator must look.
- :class:`GapError`: records after a snapshot's position are missing.
- :class:`PermanentError`: the service refused the request for good (wrong
  password, DB index out of range, a key of another type): retrying cannot help.
- :class:`FencedError`: a snapshot write carried a fencing token older than one
  the store has already seen: another runner holds the lease.
"""

from __future__ import annotations

__all__ = [
    "FencedError",
    "GapError",
    "IntegrityError",
    "OperationalError",
    "PermanentError",
    "ShopError",
]


class ShopError(Exception):
    """Root of every error raised by shop_adapters."""


class OperationalError(ShopError):
    """A transient failure of the backing service; retry after a back-off."""


class IntegrityError(ShopError):
    """Stored data is corrupt or inconsistent; never skipped silently."""


class GapError(IntegrityError):
    """Records between a snapshot's position and the log's first record are gone."""


class FencedError(ShopError):
    """A write was refused because a newer fencing token has been seen."""


class PermanentError(ShopError):
    """The backing service refused a request for a reason that retrying cannot fix:
    wrong credentials (``WRONGPASS``/``NOAUTH``), no permission (``NOPERM``), a
    database index out of range, a key holding another type (``WRONGTYPE``), or
    any other error reply. The command-line tools print it on one line and exit 1."""

"""A bounded chain of past snapshots, for time travel and retention.

Besides the latest snapshot (the :class:`~shop_adapters.protocols.SnapshotStore`),
a runner may keep a history: after each snapshot it writes, it adds the same
blob to a :class:`SnapshotHistory` and prunes it by a :class:`HistoryPolicy`:
the ``last`` most recent, plus one every ``every`` records consumed (the first
snapshot in each span of ``every`` records), at most ``limit`` in all (the
oldest of the every-``every`` ones go first). ``inspect state --at`` starts
from the nearest one at or before its target instead of replaying from the
origin, and ``inspect trim`` never trims the log above the oldest one kept.

A history is a cache like a snapshot: every blob is the envelope, checked
(checksum, domain, anchor) when it is used, never trusted blindly.

- :class:`RedisSnapshotHistory`: the hash ``<stream>:history``, field
  ``<records>:<position>`` -> blob (``HSET``, ``HKEYS``, ``HGET``, ``HDEL``);
- :class:`MemorySnapshotHistory`: a dict, for tests and benchmarks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import redis

from .protocols import Position
from .redis_errors import redis_errors

__all__ = [
    "HistoryEntry",
    "HistoryPolicy",
    "MemorySnapshotHistory",
    "RedisSnapshotHistory",
    "SnapshotHistory",
    "keep",
]


class HistoryEntry(NamedTuple):
    """A past snapshot: its ``position`` and the ``records`` consumed to reach it."""

    position: Position
    records: int


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """Which past snapshots to keep: the ``last`` most recent, plus one every
    ``every`` records, at most ``limit`` in all (``limit`` >= ``last`` >= 1)."""

    last: int = 2
    every: int = 100_000
    limit: int = 12

    def __post_init__(self) -> None:
        if not (1 <= self.last <= self.limit and self.every >= 1):
            raise ValueError(
                f"need 1 <= last <= limit and every >= 1, got last={self.last}, "
                f"every={self.every}, limit={self.limit}"
            )


def keep(entries: list[HistoryEntry], policy: HistoryPolicy) -> set[HistoryEntry]:
    """The entries ``policy`` keeps (see the module docstring).

    >>> es = [HistoryEntry(Position(i, 0), i) for i in (5, 12, 18, 25, 31, 40)]
    >>> sorted(e.records for e in keep(es, HistoryPolicy(last=2, every=10, limit=4)))
    [12, 25, 31, 40]
    """
    ordered = sorted(entries)
    kept = set(ordered[-policy.last :])
    spans: dict[int, HistoryEntry] = {}
    for e in ordered:
        spans.setdefault(e.records // policy.every, e)
    older = sorted(set(spans.values()) - kept, reverse=True)
    kept.update(older[: policy.limit - len(kept)])
    return kept


class SnapshotHistory(Protocol):
    """Past snapshot blobs, by position."""

    def add(self, entry: HistoryEntry, blob: bytes) -> None:
        """Keep ``blob``, the snapshot at ``entry``."""
        ...

    def entries(self) -> list[HistoryEntry]:
        """Every snapshot kept, oldest first."""
        ...

    def read(self, entry: HistoryEntry) -> bytes | None:
        """The blob at ``entry``, or ``None`` if it is no longer kept."""
        ...

    def prune(self, policy: HistoryPolicy) -> int:
        """Drop what ``policy`` does not keep; how many were dropped."""
        ...


class MemorySnapshotHistory:
    """A history in memory."""

    def __init__(self) -> None:
        self._blobs: dict[HistoryEntry, bytes] = {}
        self._lock = threading.Lock()

    def add(self, entry: HistoryEntry, blob: bytes) -> None:
        """See :class:`SnapshotHistory`."""
        with self._lock:
            self._blobs[entry] = bytes(blob)

    def entries(self) -> list[HistoryEntry]:
        """See :class:`SnapshotHistory`."""
        with self._lock:
            return sorted(self._blobs)

    def read(self, entry: HistoryEntry) -> bytes | None:
        """See :class:`SnapshotHistory`."""
        with self._lock:
            return self._blobs.get(entry)

    def prune(self, policy: HistoryPolicy) -> int:
        """See :class:`SnapshotHistory`."""
        with self._lock:
            kept = keep(list(self._blobs), policy)
            dropped = [e for e in self._blobs if e not in kept]
            for e in dropped:
                del self._blobs[e]
            return len(dropped)


def _field(entry: HistoryEntry) -> str:
    return f"{entry.records}:{entry.position}"


def _entry(field: bytes | str) -> HistoryEntry | None:
    text = field.decode("ascii", "replace") if isinstance(field, bytes) else field
    records, _, position = text.partition(":")
    try:
        return HistoryEntry(Position.parse(position), int(records))
    except ValueError:
        return None  # a field someone else wrote: ignored, never read as a snapshot


class RedisSnapshotHistory:
    """A history in the Redis hash ``key`` (``<stream>:history``)."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    def add(self, entry: HistoryEntry, blob: bytes) -> None:
        """``HSET <key> <records>:<position> <blob>``."""
        with redis_errors("HSET (history)", self.key):
            self.client.hset(self.key, _field(entry), bytes(blob))

    def entries(self) -> list[HistoryEntry]:
        """``HKEYS <key>``, parsed and sorted."""
        with redis_errors("HKEYS (history)", self.key):
            fields: Any = self.client.hkeys(self.key)
        return sorted(e for e in map(_entry, fields) if e is not None)

    def read(self, entry: HistoryEntry) -> bytes | None:
        """``HGET <key> <records>:<position>``."""
        with redis_errors("HGET (history)", self.key):
            blob: Any = self.client.hget(self.key, _field(entry))
        return None if blob is None else bytes(blob)

    def prune(self, policy: HistoryPolicy) -> int:
        """``HDEL`` of what ``policy`` does not keep."""
        entries = self.entries()
        kept = keep(entries, policy)
        dropped = [_field(e) for e in entries if e not in kept]
        if dropped:
            with redis_errors("HDEL (history)", self.key):
                self.client.hdel(self.key, *dropped)
        return len(dropped)

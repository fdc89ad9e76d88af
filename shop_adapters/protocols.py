"""The two protocols the runner knows: :class:`EventLog` and :class:`SnapshotStore`.

Everything the runner, the benchmarks and the tests do with storage goes
through these; every implementation (memory, file, Redis) passes one shared
contract suite (``tests/contract_logs.py``, ``tests/contract_snapshots.py``).

Positions
---------
A :class:`Position` is ``(major, minor)``, totally ordered as a tuple. For a
Redis stream it is the entry ID ``ms-seq`` compared numerically (``5-9`` <
``5-10``, never as strings); for file and memory logs it is ``(index, 0)`` with
1-based record indices. :data:`ORIGIN` ``(0, 0)`` lies before every record, so
"read after ORIGIN" reads the whole log. ``str(position)`` is ``"major-minor"``
and :meth:`Position.parse` reads it back.

Records
-------
Logs hold raw wire entries, not events: a :class:`Record` is a position plus
the entry's fields as ``bytes -> bytes`` exactly as stored (the codec in
:mod:`shop_adapters.codec` turns fields into events, or into a dead-letter
reason). The log itself is never modified by readers; entries that cannot be
decoded are copied to the log's dead-letter sink with their position, raw
fields and reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "ANCHOR_FIELD",
    "ORIGIN",
    "OVERSIZE_FIELD",
    "DeadLetter",
    "EventLog",
    "Fields",
    "LogHistory",
    "Position",
    "Record",
    "SnapshotStore",
]

_POSITION_RE = re.compile(r"\A(\d{1,20})-(\d{1,20})\Z")


class Position(NamedTuple):
    """A record's place in a log: ``(major, minor)``, ordered as a tuple.

    >>> Position.parse("5-9") < Position.parse("5-10")
    True
    >>> str(Position(1700000000000, 3))
    '1700000000000-3'
    """

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}-{self.minor}"

    @classmethod
    def parse(cls, text: str | bytes) -> Position:
        """Parse ``"major-minor"`` (a Redis entry ID); raises ``ValueError`` otherwise."""
        if isinstance(text, bytes):
            text = text.decode("ascii", errors="replace")
        m = _POSITION_RE.match(text)
        if m is None:
            raise ValueError(f"a position is 'major-minor' with decimal digits, got {text!r:.80}")
        return cls(int(m.group(1)), int(m.group(2)))


ORIGIN = Position(0, 0)
"""Before the first record of every log."""

Fields = Mapping[bytes, bytes]
"""A raw wire entry: field name to value, both bytes, exactly as stored."""

OVERSIZE_FIELD = b"\x00oversize"
"""In a record a log returns instead of an entry too large to read: the entry's
size in bytes (decimal). Its :data:`ANCHOR_FIELD` carries the entry's anchor.
The shell dead-letters such a record with its size; the entry stays in the log."""
ANCHOR_FIELD = b"\x00anchor"
"""See :data:`OVERSIZE_FIELD`."""


class Record(NamedTuple):
    """One log record: its ``position`` and its raw ``fields`` (a named tuple: a
    catch-up builds one per record, and a tuple is the cheapest to build)."""

    position: Position
    fields: Fields


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry that could not become an event: where it was, what it held, why."""

    position: Position
    fields: Fields
    reason: str


class LogHistory(NamedTuple):
    """What a log can say about its own history, for continuity checks.

    - ``first``, ``last``: the first and last records it holds (:data:`ORIGIN` if empty);
    - ``length``: how many records it holds;
    - ``added``: records ever appended, deleted ones included (``None`` if the
      log cannot say: a Redis stream before 7.0);
    - ``max_deleted``: the highest position known to have been deleted
      (``None`` if none is known).
    """

    first: Position
    last: Position
    length: int
    added: int | None
    max_deleted: Position | None


@runtime_checkable
class EventLog(Protocol):
    """An append-only log of raw entries with totally ordered positions.

    Implementations: ``shop_adapters.logs.memory.MemoryLog``,
    ``shop_adapters.logs.file.FileLog``, ``shop_adapters.logs.redis_stream.RedisStreamLog``.
    """

    def append(self, entries: Sequence[Mapping[str | bytes, str | bytes | int]]) -> list[Position]:
        """Append ``entries`` in order; return their positions (increasing).

        Values are stored as bytes (``str`` as UTF-8, ``int`` as decimal).
        """
        ...

    def read_after(self, position: Position, limit: int) -> list[Record]:
        """Up to ``limit`` records strictly after ``position``, in order; ``[]`` at the end."""
        ...

    def wait_after(self, position: Position, limit: int, timeout_ms: int) -> list[Record]:
        """Like :meth:`read_after`, but if none are there yet, block up to
        ``timeout_ms`` milliseconds for one to be appended (by any writer)."""
        ...

    def last_position(self) -> Position:
        """Position of the last record, or :data:`ORIGIN` for an empty log."""
        ...

    def first_position(self) -> Position:
        """Position of the first record still in the log, or :data:`ORIGIN` if empty.

        Used to detect a gap: records after a snapshot's position that were
        trimmed away by someone else.
        """
        ...

    def read_at(self, position: Position) -> Record | None:
        """The record at exactly ``position``, or ``None`` if the log holds none there."""
        ...

    def history(self) -> LogHistory:
        """First, last, length, records ever added, highest deleted position."""
        ...

    def dead_letter(self, letter: DeadLetter) -> bool:
        """Record ``letter`` in this log's dead-letter sink, at most once per position.

        Returns ``True`` if written, ``False`` if that position was already
        dead-lettered (so a replay after a crash does not duplicate it).
        The log itself is never modified.
        """
        ...

    def dead_letters(self) -> list[DeadLetter]:
        """All dead letters, in position order."""
        ...

    def close(self) -> None:
        """Release connections and file handles."""
        ...


@runtime_checkable
class SnapshotStore(Protocol):
    """Holds the latest encoded snapshot of one log (see :mod:`shop_adapters.codec`).

    A store moves opaque bytes; encoding, versions and checksums are the
    snapshot codec's. ``write`` is atomic: a reader sees the old blob or the new
    one, never a mix. Implementations: ``shop_adapters.snapshots.memory``,
    ``.file`` and ``.redis``.
    """

    def write(self, blob: bytes, at: tuple[Position, str] | None = None) -> None:
        """Atomically replace the stored snapshot with ``blob``.

        ``at``: ``(position, anchor)`` of the record the snapshot was folded to
        (see :func:`shop_adapters.catchup.record_anchor`); a store that can see
        the log (Redis) refuses the write if the log no longer holds that record.
        """
        ...

    def read(self) -> bytes | None:
        """The stored blob, or ``None`` if there is none."""
        ...

    def close(self) -> None:
        """Release connections and file handles."""
        ...

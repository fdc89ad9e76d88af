"""An in-memory :class:`~shop_adapters.protocols.EventLog` for tests and benchmarks.

Positions are ``Position(i, 0)`` with 1-based record indices ``i``. Thread
safe: one :class:`threading.Condition` guards the records, so an append from
another thread wakes :meth:`MemoryLog.wait_after`. Nothing survives the process.

>>> log = MemoryLog()
>>> log.append([{"type": "TopUp", "v": 1}])
[Position(major=1, minor=0)]
>>> log.read_after(ORIGIN, 10)[0].fields
{b'type': b'TopUp', b'v': b'1'}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

from ..errors import IntegrityError
from ..protocols import ORIGIN, DeadLetter, LogHistory, Position, Record
from ._common import check_limit, check_timeout, encode_entries

__all__ = ["MemoryLog"]


def _plain(letter: DeadLetter) -> DeadLetter:
    return DeadLetter(letter.position, dict(letter.fields), letter.reason)


def _refused(where: str, letter: DeadLetter, absent: bool) -> str:
    held = "holds no entry at that position" if absent else "holds another entry there"
    return (
        f"cannot record the dead letter of {letter.position}: {where} already go past it "
        f"and {held}; something else wrote there. Refusing to drop it silently"
    )


class MemoryLog:
    """A list of records in memory; dead letters in a list, at most once per position.

    Like every log here, :meth:`dead_letter` follows the Redis stream's
    explicit-ID rule: a position at or below the highest one already
    dead-lettered is "already written" (``False``) only if that exact dead
    letter is there, else :class:`~shop_adapters.errors.IntegrityError`.
    """

    def __init__(self) -> None:
        self._records: list[Record] = []
        self._dead: list[DeadLetter] = []
        self._cond = threading.Condition()

    def append(self, entries: Sequence[Mapping[str | bytes, str | bytes | int]]) -> list[Position]:
        """Append ``entries``; returns their positions ``Position(i, 0)``, increasing.

        Raises ``TypeError``/``ValueError`` for a bad entry; nothing is appended then.
        """
        encoded = encode_entries(entries)
        with self._cond:
            start = len(self._records) + 1
            positions = [Position(start + k, 0) for k in range(len(encoded))]
            self._records.extend(Record(p, f) for p, f in zip(positions, encoded, strict=True))
            if positions:
                self._cond.notify_all()
        return positions

    def _slice(self, position: Position, limit: int) -> list[Record]:
        # Record i (1-based) is at list index i-1; those strictly after
        # (major, minor) start at index major whatever minor is.
        start = max(position.major, 0)
        return self._records[start : start + limit]

    def read_after(self, position: Position, limit: int) -> list[Record]:
        """Up to ``limit`` (>= 1) records strictly after ``position``; ``[]`` at the end."""
        check_limit(limit)
        with self._cond:
            return self._slice(position, limit)

    def wait_after(self, position: Position, limit: int, timeout_ms: int) -> list[Record]:
        """:meth:`read_after`, blocking up to ``timeout_ms`` ms (0: no wait) for an append."""
        check_limit(limit)
        check_timeout(timeout_ms)
        deadline = time.monotonic() + timeout_ms / 1000
        with self._cond:
            while True:
                found = self._slice(position, limit)
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                self._cond.wait(remaining)

    def last_position(self) -> Position:
        """``Position(n, 0)`` for ``n`` records, :data:`ORIGIN` if empty."""
        with self._cond:
            return self._records[-1].position if self._records else ORIGIN

    def first_position(self) -> Position:
        """``Position(1, 0)``, or :data:`ORIGIN` if empty."""
        with self._cond:
            return self._records[0].position if self._records else ORIGIN

    def read_at(self, position: Position) -> Record | None:
        """The record at ``Position(i, 0)``, or ``None``."""
        with self._cond:
            i = position.major
            if position.minor != 0 or not 0 < i <= len(self._records):
                return None
            return self._records[i - 1]

    def history(self) -> LogHistory:
        """Records ``1..n``; nothing is ever deleted from a memory log."""
        with self._cond:
            n = len(self._records)
            return LogHistory(Position(1, 0) if n else ORIGIN, Position(n, 0), n, n, None)

    def dead_letter(self, letter: DeadLetter) -> bool:
        """Keep ``letter``; ``False`` if the dead letter of that record (same position
        and fields; the reason may be worded otherwise) is already kept.

        Raises ``IntegrityError`` if its position is at or below the highest
        dead-lettered one and does not hold this letter.
        """
        with self._cond:
            if self._dead and letter.position <= self._dead[-1].position:
                kept = next((d for d in self._dead if d.position == letter.position), None)
                if kept is not None and kept.fields == _plain(letter).fields:
                    return False
                raise IntegrityError(_refused("the dead letters", letter, kept is None))
            self._dead.append(_plain(letter))
            return True

    def dead_letters(self) -> list[DeadLetter]:
        """All dead letters, in position order."""
        with self._cond:
            return list(self._dead)

    def close(self) -> None:
        """Nothing to release; the records stay readable."""

"""Retention: records trimmed from a log, kept in a file log, and read back in front of it.

``inspect trim --below-snapshot --archive FILE`` first copies the records it will
trim to the append-only file log ``FILE`` (:func:`archive_below`), each with
its original position in the field :data:`POSITION_FIELD`, then trims the
stream. :class:`ArchivedLog` reads the archive and then the log as one log with
the original positions, so ``inspect verify --archive FILE`` can still rebuild
from the origin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import IntegrityError
from .logs.file import FileLog
from .protocols import ORIGIN, DeadLetter, EventLog, LogHistory, Position, Record

__all__ = ["POSITION_FIELD", "STREAM_FIELD", "ArchivedLog", "archive_below", "find_archived"]

POSITION_FIELD = b"\x00position"
"""The field of an archived record that holds its position in the original log."""
STREAM_FIELD = b"\x00stream"
"""The field of an archived record that names the stream it was trimmed from."""


def _original(record: Record, path: object) -> Record:
    fields = dict(record.fields)
    fields.pop(STREAM_FIELD, None)
    raw = fields.pop(POSITION_FIELD, None)
    if raw is None:
        raise IntegrityError(f"{path}: record {record.position} is not an archived record")
    return Record(Position.parse(raw), fields)


def find_archived(archive: FileLog, position: Position) -> Record | None:
    """The archived record of original ``position`` (binary search: archived
    positions increase), or ``None``."""
    lo, hi = 1, archive.last_position().major
    while lo <= hi:
        mid = (lo + hi) // 2
        stored = archive.read_at(Position(mid, 0))
        assert stored is not None
        record = _original(stored, archive.path)
        if record.position == position:
            return record
        if record.position < position:
            lo = mid + 1
        else:
            hi = mid - 1
    return None


def _stream_of(archive: FileLog) -> str | None:
    last = archive.last_position()
    if last == ORIGIN:
        return None
    tail = archive.read_at(last)
    assert tail is not None
    raw = tail.fields.get(STREAM_FIELD)
    return None if raw is None else raw.decode("utf-8", "replace")


def archive_below(
    log: EventLog, archive: FileLog, below: Position, stream: str, batch: int = 10_000
) -> int:
    """Append to ``archive`` the records of ``log`` (the stream named ``stream``)
    before ``below`` that it does not hold yet; returns how many. Each ``append``
    is synced (the file log's ``batch`` policy) before it returns.

    Then checks that the archive holds every record of ``log`` before ``below``
    (the first and the last of them, with the same fields), so that trimming
    them loses nothing. Raises ``IntegrityError`` (nothing to trim then) if the
    archive holds another stream's records, or does not cover the log's (they
    were trimmed unarchived, or the archive ran ahead of a replaced stream).
    """
    owner = _stream_of(archive)
    if owner is not None and owner != stream:
        raise IntegrityError(
            f"{archive.path} archives the stream {owner!r}, not {stream!r}: use one archive "
            "file per stream"
        )
    last = archive.last_position()
    after = ORIGIN
    if last != ORIGIN:
        tail = archive.read_at(last)
        assert tail is not None
        after = _original(tail, archive.path).position
    copied = 0
    while True:
        records = [r for r in log.read_after(after, batch) if r.position < below]
        if not records:
            break
        entries: list[dict[str | bytes, str | bytes | int]] = []
        for r in records:
            entry: dict[str | bytes, str | bytes | int] = dict(r.fields.items())
            entry[POSITION_FIELD] = str(r.position).encode()
            entry[STREAM_FIELD] = stream.encode()
            entries.append(entry)
        archive.append(entries)
        copied += len(records)
        after = records[-1].position
    _check_covered(log, archive, below)
    return copied


def _check_covered(log: EventLog, archive: FileLog, below: Position) -> None:
    """``IntegrityError`` unless ``archive`` holds the first and the last record of
    ``log`` before ``below``, with their fields."""
    first = log.read_after(ORIGIN, 1)
    if not first or first[0].position >= below:
        return  # nothing to trim
    ends = [first[0]]
    # The last record before ``below`` (reading backwards is not in the protocol).
    last = first[0]
    while batch := [r for r in log.read_after(last.position, 10_000) if r.position < below]:
        last = batch[-1]
    ends.append(last)
    for record in ends:
        archived = find_archived(archive, record.position)
        if archived is None or dict(archived.fields) != dict(record.fields):
            what = "does not hold" if archived is None else "holds other fields for"
            raise IntegrityError(
                f"{archive.path} {what} the record {record.position} of the log, which "
                "would be trimmed: refusing to trim what the archive does not cover"
            )


class ArchivedLog:
    """The records of ``archive`` (see :func:`archive_below`), then those of ``log``
    after the archive's last one, as one read-only log with the original positions."""

    def __init__(self, archive: FileLog, log: EventLog) -> None:
        self.archive = archive
        self.log = log

    def _archived_last(self) -> Position:
        last = self.archive.last_position()
        if last == ORIGIN:
            return ORIGIN
        record = self.archive.read_at(last)
        assert record is not None
        return _original(record, self.archive.path).position

    def append(self, entries: Sequence[Mapping[str | bytes, str | bytes | int]]) -> list[Position]:
        """Refused: an archived log is read-only (``TypeError``)."""
        raise TypeError("an archived log is read-only")

    def read_after(self, position: Position, limit: int) -> list[Record]:
        """From the archive while it has records after ``position``, then from the log."""
        end = self._archived_last()
        if position < end:
            # Archived positions are in order: find the archive index after ``position``.
            out: list[Record] = []
            index = ORIGIN
            while len(out) < limit:
                chunk = self.archive.read_after(index, max(limit, 1_000))
                if not chunk:
                    break
                for r in chunk:
                    original = _original(r, self.archive.path)
                    if original.position > position:
                        out.append(original)
                        if len(out) == limit:
                            break
                index = chunk[-1].position
            if out:
                return out
            position = end
        return self.log.read_after(max(position, end), limit)

    def wait_after(self, position: Position, limit: int, timeout_ms: int) -> list[Record]:
        """:meth:`read_after`, then the log's own wait."""
        found = self.read_after(position, limit)
        return found or self.log.wait_after(max(position, self._archived_last()), limit, timeout_ms)

    def read_at(self, position: Position) -> Record | None:
        """The record at ``position``, archived or not."""
        if position <= self._archived_last():
            before = (
                Position(position.major, position.minor - 1)
                if position.minor
                else Position(position.major - 1, 2**64 - 1)
            )
            found = self.read_after(before, 1)
            return found[0] if found and found[0].position == position else None
        return self.log.read_at(position)

    def last_position(self) -> Position:
        """The log's last position, or the archive's when the log is empty."""
        last = self.log.last_position()
        return last if last != ORIGIN else self._archived_last()

    def first_position(self) -> Position:
        """The archive's first position, or the log's when nothing is archived."""
        if self.archive.last_position() == ORIGIN:
            return self.log.first_position()
        first = self.archive.read_at(Position(1, 0))
        assert first is not None
        return _original(first, self.archive.path).position

    def history(self) -> LogHistory:
        """The log's history with the archived records counted back in: deletions at
        or before the archive's end are covered by it."""
        h = self.log.history()
        archived = self.archive.last_position().major
        end = self._archived_last()
        deleted = h.max_deleted if h.max_deleted is not None and h.max_deleted > end else None
        in_log = h.length
        if end != ORIGIN and h.first != ORIGIN and h.first <= end:
            # Archived but not yet trimmed (a trim interrupted after its archive):
            # those records are counted once.
            position = ORIGIN
            while batch := [r for r in self.log.read_after(position, 10_000) if r.position <= end]:
                in_log -= len(batch)
                position = batch[-1].position
        return LogHistory(
            self.first_position() if archived else h.first,
            self.last_position(),
            archived + in_log,
            h.added,
            deleted,
        )

    def dead_letter(self, letter: DeadLetter) -> bool:
        """The log's dead-letter sink (an archived record's dead letter goes there too)."""
        return self.log.dead_letter(letter)

    def dead_letters(self) -> list[DeadLetter]:
        """The log's dead letters."""
        return self.log.dead_letters()

    def close(self) -> None:
        """Close the archive (the log belongs to the caller)."""
        self.archive.close()

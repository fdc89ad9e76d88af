"""The contract every :class:`~shop_adapters.protocols.EventLog` passes.

Subclass :class:`LogContract` and provide three fixtures (after eventsourcing's
``tests/persistence.py``):

- ``log``: a new, empty log;
- ``other_handle``: a factory returning another handle on the same log (a new
  connection, a new file handle; the same object for a memory log), for the
  tests where a second writer wakes a blocked reader;
- ``reader_blocked``: a probe telling whether a ``wait_after`` on ``log``, in
  another thread, is waiting for a record (a condition variable's waiter, a
  connection blocked in ``XREAD``, a poll that found nothing): what the wake-up
  test waits for before it appends, so it proves the reader was blocked and
  woken, instead of hoping a sleep was long enough.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from reliability_support import wait_until

from shop_adapters.protocols import ORIGIN, DeadLetter, EventLog, Position

Entry = dict[str | bytes, str | bytes | int]


def entries(n: int, start: int = 0) -> list[Entry]:
    return [
        {"type": "TopUp", "v": 1, "data": f'{{"user_id":{i},"amount":5}}'}
        for i in range(start, start + n)
    ]


class LogContract:
    """Behaviour shared by every event log. Not collected itself (no ``Test`` prefix)."""

    @pytest.fixture
    def log(self) -> EventLog:
        raise NotImplementedError("subclasses provide a fresh, empty log")

    @pytest.fixture
    def other_handle(self, log: EventLog) -> Callable[[], EventLog]:
        raise NotImplementedError("subclasses provide a second handle on the same log")

    @pytest.fixture
    def reader_blocked(self, log: EventLog) -> Callable[[], bool]:
        raise NotImplementedError("subclasses say when a wait_after on log is blocked")

    # -- append ----------------------------------------------------------------------

    def test_is_an_event_log(self, log: EventLog) -> None:
        assert isinstance(log, EventLog)

    def test_append_returns_increasing_positions(self, log: EventLog) -> None:
        first = log.append(entries(3))
        second = log.append(entries(2, 3))
        positions = first + second
        assert len(positions) == 5
        assert all(isinstance(p, Position) for p in positions)
        assert positions[0] > ORIGIN
        assert positions == sorted(positions)
        assert len(set(positions)) == 5

    def test_append_nothing_returns_nothing(self, log: EventLog) -> None:
        assert log.append([]) == []
        assert log.last_position() == ORIGIN

    def test_append_refuses_bad_entries_and_appends_none_of_the_batch(self, log: EventLog) -> None:
        with pytest.raises(ValueError, match="at least one field"):
            log.append([{"a": "1"}, {}])
        with pytest.raises(TypeError, match="bytes, str or int"):
            log.append([{"a": "1"}, {"b": True}])  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            log.append([{"a": 1.5}])  # type: ignore[dict-item]
        assert log.read_after(ORIGIN, 10) == []

    def test_values_round_trip_as_bytes(self, log: EventLog) -> None:
        (p,) = log.append([{"s": "prix 5 €", b"raw": b"\xff\x00\x01", "n": 42, "neg": -7, "e": ""}])
        (record,) = log.read_after(ORIGIN, 10)
        assert record.position == p
        assert dict(record.fields) == {
            b"s": "prix 5 €".encode(),
            b"raw": b"\xff\x00\x01",
            b"n": b"42",
            b"neg": b"-7",
            b"e": b"",
        }
        assert all(type(k) is bytes and type(v) is bytes for k, v in record.fields.items())

    # -- read_after --------------------------------------------------------------------

    def test_read_after_origin_reads_everything_in_order(self, log: EventLog) -> None:
        batch = entries(5)
        positions = log.append(batch)
        records = log.read_after(ORIGIN, 100)
        assert [r.position for r in records] == positions
        assert [r.fields[b"data"] for r in records] == [e["data"].encode() for e in batch]  # type: ignore[union-attr]

    def test_read_after_is_exclusive(self, log: EventLog) -> None:
        positions = log.append(entries(4))
        assert [r.position for r in log.read_after(positions[1], 100)] == positions[2:]
        assert log.read_after(positions[-1], 100) == []

    def test_read_after_respects_limit(self, log: EventLog) -> None:
        positions = log.append(entries(10))
        assert [r.position for r in log.read_after(ORIGIN, 3)] == positions[:3]
        assert [r.position for r in log.read_after(positions[2], 3)] == positions[3:6]
        assert [r.position for r in log.read_after(positions[7], 3)] == positions[8:]
        with pytest.raises(ValueError, match="limit"):
            log.read_after(ORIGIN, 0)

    def test_batched_reads_walk_a_long_log(self, log: EventLog) -> None:
        positions: list[Position] = []
        for start in range(0, 2500, 500):
            positions += log.append(entries(500, start))
        seen: list[Position] = []
        cursor = ORIGIN
        while batch := log.read_after(cursor, 1000):
            assert len(batch) <= 1000
            seen += [r.position for r in batch]
            cursor = batch[-1].position
        assert seen == positions
        assert (
            log.read_after(positions[1234], 1)[0].fields[b"data"] == b'{"user_id":1235,"amount":5}'
        )

    # -- empty log, last and first position ------------------------------------------

    def test_empty_log(self, log: EventLog) -> None:
        assert log.read_after(ORIGIN, 10) == []
        assert log.last_position() == ORIGIN
        assert log.first_position() == ORIGIN
        assert log.wait_after(ORIGIN, 10, 0) == []
        assert log.dead_letters() == []

    def test_last_and_first_position(self, log: EventLog) -> None:
        positions = log.append(entries(3))
        assert log.first_position() == positions[0]
        assert log.last_position() == positions[-1]
        more = log.append(entries(2))
        assert log.first_position() == positions[0]
        assert log.last_position() == more[-1]

    # -- read_at and history -------------------------------------------------------------

    def test_read_at_finds_exactly_one_record(self, log: EventLog) -> None:
        positions = log.append(entries(3))
        for i, p in enumerate(positions):
            record = log.read_at(p)
            assert record is not None and record.position == p
            assert dict(record.fields) == dict(log.read_after(ORIGIN, 10)[i].fields)
        assert log.read_at(ORIGIN) is None
        assert log.read_at(Position(positions[-1].major + 1, 0)) is None
        between = Position(positions[0].major, positions[0].minor + 1)
        if between not in positions:
            assert log.read_at(between) is None

    def test_history_of_an_empty_then_a_growing_log(self, log: EventLog) -> None:
        empty = log.history()
        assert (empty.first, empty.last, empty.length, empty.max_deleted) == (
            ORIGIN,
            ORIGIN,
            0,
            None,
        )
        assert empty.added in (None, 0)
        positions = log.append(entries(3)) + log.append(entries(2))
        h = log.history()
        assert (h.first, h.last, h.length, h.max_deleted) == (
            positions[0],
            positions[-1],
            5,
            None,
        )
        assert h.added in (None, 5)  # None: a log that cannot count (Redis < 7)

    # -- wait_after ---------------------------------------------------------------------

    def test_wait_after_returns_at_once_when_records_exist(self, log: EventLog) -> None:
        positions = log.append(entries(3))
        started = time.monotonic()
        records = log.wait_after(positions[0], 10, 10_000)
        assert [r.position for r in records] == positions[1:]
        assert time.monotonic() - started < 5  # not the 10 s time-out

    def test_wait_after_times_out_with_nothing(self, log: EventLog) -> None:
        (p,) = log.append(entries(1))
        started = time.monotonic()
        assert log.wait_after(p, 10, 150) == []
        assert time.monotonic() - started >= 0.1
        assert log.wait_after(p, 10, 0) == []

    def test_wait_after_is_woken_by_another_writer(
        self,
        log: EventLog,
        other_handle: Callable[[], EventLog],
        reader_blocked: Callable[[], bool],
    ) -> None:
        (p,) = log.append(entries(1))
        writer = other_handle()
        assert not reader_blocked()
        appended: list[Position] = []
        appending = threading.Event()
        failed: list[BaseException] = []

        def append_once_the_reader_blocks() -> None:
            try:
                wait_until(reader_blocked, 10, "the reader to block in wait_after")
                appending.set()
                appended.extend(writer.append(entries(2, 1)))
            except BaseException as e:  # reported by the test
                failed.append(e)

        thread = threading.Thread(target=append_once_the_reader_blocks)
        started = time.monotonic()
        thread.start()
        try:
            records = log.wait_after(p, 10, 15_000)
            # Returned with records only after the writer began: it waited, then woke.
            woken_after_append = appending.is_set()
            if records and len(records) < 2:  # the two entries may be seen in two reads
                records += log.wait_after(records[-1].position, 10, 5_000)
        finally:
            thread.join()
        if failed:
            raise failed[0]
        assert woken_after_append
        assert time.monotonic() - started < 12  # woken, not timed out
        assert [r.position for r in records] == appended

    # -- dead letters -----------------------------------------------------------------

    def test_dead_letter_at_most_once_per_position(
        self, log: EventLog, other_handle: Callable[[], EventLog]
    ) -> None:
        positions = log.append([{"type": "Bogus", "data": b"\x00"}, {"a": "1"}, {"b": "2"}])
        first = DeadLetter(
            positions[0], {b"type": b"Bogus", b"data": b"\x00"}, "unknown type 'Bogus'"
        )
        third = DeadLetter(positions[2], {b"b": b"2"}, "bad: é")
        assert log.dead_letter(first) is True
        assert log.dead_letter(first) is False
        assert log.dead_letter(third) is True
        assert log.dead_letter(third) is False
        assert other_handle().dead_letter(first) is False  # also from another handle
        letters = log.dead_letters()
        assert [(d.position, dict(d.fields), d.reason) for d in letters] == [
            (first.position, dict(first.fields), first.reason),
            (third.position, dict(third.fields), third.reason),
        ]
        # the log itself is untouched
        assert [r.position for r in log.read_after(ORIGIN, 10)] == positions

"""The one catch-up loop: read a batch, decode, dead-letter, fold. Generic over the domain.

- :func:`consume`: one batch of records through a domain's decoder and a
  folder; returns what became of it (:class:`Batch`). The runner, ``inspect``
  and the benchmark all fold through it.
- :func:`replay`: the read-only loop over a log, ``read_after`` batches from a
  position up to another, through :func:`consume`.
- :func:`check_continuity`: whether the log still holds the history a state
  was folded from (a rollback, a wipe, a replaced log or a trimmed gap is an
  error, never folded over).
- :func:`record_anchor`: the fingerprint of one record, kept with a state so
  that the record it was folded to can be recognised again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from .domain import Domain, Folder, Outcome, Tally
from .errors import GapError, IntegrityError
from .idempotency import DEFAULT_WINDOW, KEY_FIELD, KeyWindow, oversize_letter
from .protocols import (
    ANCHOR_FIELD,
    ORIGIN,
    OVERSIZE_FIELD,
    DeadLetter,
    EventLog,
    Fields,
    Position,
    Record,
)

__all__ = [
    "Batch",
    "Checkpoint",
    "ReadAhead",
    "Replayed",
    "check_continuity",
    "consume",
    "record_anchor",
    "replay",
]

S = TypeVar("S")
E = TypeVar("E")


def record_anchor(fields: Fields) -> str:
    """SHA-1 hex (40 digits) of a record's fields in stored order, each name and
    value framed as ``<length>:<bytes>``: what identifies the record a state was
    folded to. (SHA-1 because a Redis Lua script can compute it too, with
    ``redis.sha1hex``; it names a record, it does not protect anything.)

    >>> record_anchor({b"type": b"TopUp"})
    '7c1c529e0d54d5fd6884754471840f8d4524c7c0'
    """
    if ANCHOR_FIELD in fields:  # a stand-in for an entry too large to read
        return fields[ANCHOR_FIELD].decode("ascii")
    sha = hashlib.sha1(usedforsecurity=False)
    for name, value in fields.items():
        sha.update(b"%d:%s%d:%s" % (len(name), name, len(value), value))
    return sha.hexdigest()


class ReadAhead:
    """``read_after`` with the next batch already in flight: after returning the
    batch that ends at ``p``, a worker thread asks the log for the batch after
    ``p`` while the caller decodes and folds this one (the read waits on the
    socket or the disk without holding the interpreter lock).

    A call for any other position reads synchronously. An error of the
    read-ahead is raised by the call that would have used it. Peak memory for
    records is two batches. Call :meth:`close` when done.
    """

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead")
        self._ahead: tuple[Position, int, Future[list[Record]]] | None = None

    def read_after(self, position: Position, limit: int) -> list[Record]:
        """The records after ``position`` (see :meth:`EventLog.read_after`)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == position and ahead[1] == limit:
            records = ahead[2].result()
        else:
            if ahead is not None:
                ahead[2].cancel()
            records = self._log.read_after(position, limit)
        if len(records) == limit:  # more may follow: fetch them meanwhile
            last = records[-1].position
            self._ahead = (last, limit, self._pool.submit(self._log.read_after, last, limit))
        return records

    def close(self) -> None:
        """Drop what is in flight and stop the worker."""
        if self._ahead is not None:
            self._ahead[2].cancel()
            self._ahead = None
        self._pool.shutdown(wait=True, cancel_futures=True)


class Checkpoint(NamedTuple):
    """Where a fold stands: its last ``position``, the ``records`` consumed to reach
    it, the ``anchor`` of the record at ``position`` (``None`` at the origin), and
    ``gap_accepted``: the highest deleted record an operator accepted to fold
    over (``--accept-gap``), while the fold has not passed it (else ``None``)."""

    position: Position
    records: int
    anchor: str | None
    gap_accepted: Position | None = None


@dataclass(slots=True)
class Batch:
    """What became of one batch of records (see :func:`consume`).

    ``position``: its last record; ``records``: how many; ``anchor``: the last
    record's :func:`record_anchor`; ``tally``: the requests decided (duplicates
    included); ``dead_letters``: the records that could not be decoded;
    ``outcomes``: ``(position, Outcome)`` for every record in log order, when
    asked for.
    """

    position: Position
    records: int
    anchor: str
    tally: Tally
    dead_letters: list[DeadLetter]
    outcomes: list[tuple[Position, Outcome]] | None = None


def consume(
    domain: Domain[S, E],
    folder: Folder[S, E],
    records: Sequence[Record],
    *,
    outcomes: bool = False,
    keys: KeyWindow | None = None,
    first_index: int = 1,
) -> Batch:
    """Decode ``records`` (non-empty, in log order) and fold the events into ``folder``.

    - ``outcomes``: also give the :class:`~shop_adapters.domain.Outcome` of
      every record, in log order;
    - ``keys``: honour idempotency keys with this window (updated in place;
      see :mod:`shop_adapters.idempotency`); ``first_index`` is the number of
      the first record of the batch counted from the origin (records consumed
      before it, plus one).

    A stand-in for an entry too large to read
    (:data:`~shop_adapters.protocols.OVERSIZE_FIELD`) becomes a dead letter.
    Decoded events are valid, so the fold does not fail half-way.
    """
    last = records[-1]
    check_keys = keys is not None
    for r in records:  # one pass: does any record need the general path?
        fields = r.fields
        if OVERSIZE_FIELD in fields or (check_keys and KEY_FIELD in fields):
            return _consume_each(domain, folder, records, keys, first_index)
    pairs, letters = domain.decode_records(records)
    anchor = record_anchor(last.fields)
    if not outcomes:
        tally = folder.fold([e for _, e in pairs])
        return Batch(last.position, len(records), anchor, tally, letters)
    each = folder.fold_each([e for _, e in pairs])
    out = [(p, o) for (p, _), o in zip(pairs, each, strict=True)]
    if letters:
        out += [(d.position, Outcome("dead_letter", message=d.reason)) for d in letters]
        out.sort(key=_first)
    return Batch(last.position, len(records), anchor, _tally(each), letters, out)


def _tally(outcomes: Sequence[Outcome]) -> Tally:
    accepted: dict[str, int] = {}
    rejected: dict[str, int] = {}
    duplicates = 0
    for o in outcomes:
        status = o.status
        if status == "accepted":
            kind = o.kind or ""
            accepted[kind] = accepted.get(kind, 0) + 1
        elif status == "rejected":
            code = o.code or ""
            rejected[code] = rejected.get(code, 0) + 1
        elif status == "duplicate":
            duplicates += 1
    return Tally(accepted, rejected, duplicates)


def _first(pair: tuple[Position, Outcome]) -> Position:
    return pair[0]


def _consume_each(
    domain: Domain[S, E],
    folder: Folder[S, E],
    records: Sequence[Record],
    keys: KeyWindow | None,
    first_index: int,
) -> Batch:
    """The general path of :func:`consume`: one outcome per record."""
    answers: list[Outcome | None] = [None] * len(records)
    letters: dict[int, DeadLetter] = {}
    if keys is not None:
        screened = keys.screen(records, first_index, answers, letters)
        to_decode = screened.fold
    else:
        to_decode = []
        for slot, record in enumerate(records):
            if OVERSIZE_FIELD in record.fields:
                letters[slot] = oversize_letter(record)
            else:
                to_decode.append(slot)
    pairs, decode_letters = domain.decode_records([records[i] for i in to_decode])
    verdicts = folder.fold_each([e for _, e in pairs])
    if not decode_letters:
        for slot, verdict in zip(to_decode, verdicts, strict=True):
            answers[slot] = verdict
    else:
        by_position = {records[i].position: i for i in to_decode}
        for letter in decode_letters:
            letters[by_position[letter.position]] = letter
        for (position, _), verdict in zip(pairs, verdicts, strict=True):
            answers[by_position[position]] = verdict
    for slot, letter in letters.items():
        answers[slot] = Outcome("dead_letter", message=letter.reason)
    if keys is not None:
        keys.settle_batch(screened, answers)
    done = [a for a in answers if a is not None]
    assert len(done) == len(records)
    out = [(r.position, a) for r, a in zip(records, done, strict=True)]
    last = records[-1]
    return Batch(
        last.position,
        len(records),
        record_anchor(last.fields),
        _tally([a for a in done if a.status != "dead_letter"] if letters else done),
        [letters[i] for i in sorted(letters)],
        out,
    )


@dataclass(slots=True)
class Replayed(Generic[S]):
    """The result of :func:`replay`: the ``state``, the last ``position`` read, its
    ``anchor``, ``records`` read, the ``tally`` of the events, the dead letters
    met and the idempotency ``keys`` window reached."""

    state: S
    position: Position
    anchor: str | None
    records: int
    tally: Tally
    dead_letters: list[DeadLetter] = field(default_factory=list)
    keys: KeyWindow | None = None


def replay(
    log: EventLog,
    domain: Domain[S, Any],
    state: S | None = None,
    after: Position = ORIGIN,
    *,
    until: Position | None = None,
    records_before: int = 0,
    anchor: str | None = None,
    keys: KeyWindow | None = None,
    key_window: int | None = DEFAULT_WINDOW,
    outcomes: list[tuple[Position, Outcome]] | None = None,
    batch_size: int = 10_000,
    gap_accepted: Position | None = None,
) -> Replayed[S]:
    """Read-only fold of the records strictly after ``after`` up to and including
    ``until`` (default: the log's end at the time of reading), from ``state``
    (default ``domain.initial``), which was folded from ``records_before``
    records ending with the one whose anchor is ``anchor``.

    Idempotency keys are honoured as the runner does: ``keys`` continues a
    window (a snapshot's), else a fresh one of ``key_window`` records
    (``None``: keys ignored). With ``outcomes``, the outcome of every record is
    appended to that list. ``gap_accepted``: see :class:`Checkpoint`. Writes
    nothing. Raises ``OperationalError`` from the log and
    ``GapError``/``IntegrityError`` from :func:`check_continuity`.
    """
    check_continuity(log, after, records_before, anchor, gap_accepted)
    folder = domain.folder(domain.initial if state is None else state)
    if keys is None and key_window is not None:
        keys = KeyWindow(key_window)
    position, records, tally = after, 0, Tally()
    dead: list[DeadLetter] = []
    while True:
        batch = log.read_after(position, batch_size)
        if until is not None and batch and batch[-1].position > until:
            batch = [r for r in batch if r.position <= until]
        if not batch:
            return Replayed(folder.persistent(), position, anchor, records, tally, dead, keys)
        done = consume(
            domain,
            folder,
            batch,
            outcomes=outcomes is not None,
            keys=keys,
            first_index=records_before + records + 1,
        )
        position, anchor = done.position, done.anchor
        records += done.records
        tally = tally + done.tally
        dead.extend(done.dead_letters)
        if outcomes is not None and done.outcomes is not None:
            outcomes.extend(done.outcomes)


def check_continuity(
    log: EventLog,
    position: Position,
    records: int = 0,
    anchor: str | None = None,
    gap_accepted: Position | None = None,
) -> None:
    """Raise unless ``log`` still holds the history of a state folded from its first
    ``records`` records up to ``position``, the last of them with ``anchor``
    (:func:`record_anchor`; ``None``: not checked). Deleted records up to
    ``gap_accepted`` were accepted as lost by an operator: not a gap (records
    deleted after it are).

    - At ``ORIGIN`` (a fold from scratch): :class:`GapError` if the log says
      any record was ever deleted (what is left cannot rebuild the state).
    - :class:`IntegrityError` if the log ends before ``position``, has had fewer
      than ``records`` records ever added, or holds at ``position`` a record
      with another anchor or none at all: it was rolled back, wiped or
      replaced since the state was folded.
    - :class:`GapError` if records after ``position`` were deleted (its first
      record is after ``position`` and it cannot show that nothing after
      ``position`` went, or a record after ``position`` was deleted).

    ``OperationalError`` from the log passes through.
    """
    h = log.history()
    max_deleted = h.max_deleted
    if max_deleted is not None and gap_accepted is not None and max_deleted <= gap_accepted:
        max_deleted = None
    if position == ORIGIN:
        deleted = 0 if h.added is None else h.added - h.length
        # After an accepted gap, the lost records count as consumed.
        if max_deleted is None and deleted <= (0 if gap_accepted is None else records):
            return
        what = (
            f"entries up to {h.max_deleted} were deleted"
            if max_deleted is not None
            else f"{deleted} entries before its first record {h.first} were deleted"
            if deleted > 0
            else f"its first record is {h.first}, after records that are missing"
        )
        raise GapError(
            f"the log's history is incomplete: {what}; a replay from scratch cannot "
            "rebuild the state (restore the history, or start from a snapshot taken "
            "after the deleted records)"
        )
    lost = (
        "the log was rolled back (a restart from an older copy), wiped or replaced "
        "since the state was folded"
    )
    rolled_back = h.added is not None and h.added < records
    # Every record folded was added (no rollback) and the log reports a deletion at
    # or after ``position`` (Redis 7): the state's own record going is a deletion.
    deleted_here = not rolled_back and h.max_deleted is not None and h.max_deleted >= position
    decided = not rolled_back and gap_accepted is not None and gap_accepted >= position
    if h.last < position and not decided:
        if deleted_here:
            raise GapError(
                f"the state is at {position} but the log ends at {h.last}: the record the "
                f"state was folded to was deleted (XDEL or XTRIM; deleted up to "
                f"{h.max_deleted}); refusing to go on as if it were there"
            )
        raise IntegrityError(
            f"the state was folded up to {position} but the log ends at {h.last}: {lost}"
        )
    if rolled_back:
        raise IntegrityError(
            f"the state was folded from {records} records but only {h.added} were ever "
            f"added to the log: {lost}"
        )
    if h.first > position:
        # Everything up to the first record is gone. Fine if nothing after
        # ``position`` went with it, which only a count of additions can show.
        if h.added is None or h.added - records != h.length:
            raise GapError(
                f"the state is at {position} but the log's first record is {h.first}: "
                "records after it were trimmed away; refusing to fold over the gap "
                f"(trim with XTRIM MINID {position} or below to keep history contiguous)"
            )
    elif anchor is not None:
        record = log.read_at(position)
        if record is None and decided:
            pass  # its deletion was accepted
        elif record is None and deleted_here:
            raise GapError(
                f"the record at {position} that the state was folded to was deleted "
                f"(XDEL or XTRIM; deleted up to {h.max_deleted}); refusing to fold over the gap"
            )
        elif record is None:
            raise IntegrityError(
                f"the log no longer holds the record at {position} that the state was "
                f"folded to (it holds records from {h.first} to {h.last}): {lost}, or that "
                "one record was deleted"
            )
        elif record_anchor(record.fields) != anchor:
            raise IntegrityError(
                f"the record at {position} is not the one the state was folded to "
                f"(its fields differ): {lost}"
            )
    if max_deleted is not None and max_deleted > position:
        raise GapError(
            f"the state is at {position} but record {h.max_deleted}, after it, was deleted "
            "from the log (XDEL or XTRIM): refusing to fold over the gap"
        )

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
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from .domain import Domain, Folder, Outcome, Tally
from .errors import GapError, IntegrityError
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


class Checkpoint(NamedTuple):
    """Where a fold stands: its last ``position``, the ``records`` consumed to reach
    it, and the ``anchor`` of the record at ``position`` (``None`` at the origin)."""

    position: Position
    records: int
    anchor: str | None


@dataclass(slots=True)
class Batch:
    """What became of one batch of records (see :func:`consume`).

    ``position``: its last record; ``records``: how many; ``anchor``: the last
    record's :func:`record_anchor`; ``tally``: the events folded;
    ``dead_letters``: the records that could not be decoded; ``outcomes``:
    ``(position, Outcome)`` for every record in log order, when asked for.
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
) -> Batch:
    """Decode ``records`` (non-empty, in log order) and fold the events into ``folder``.

    With ``outcomes``, also the :class:`~shop_adapters.domain.Outcome` of every
    record (dead letters included) in log order. Decoded events are valid, so
    the fold does not fail half-way; a decoder or folder that raises leaves the
    folder as the domain leaves it (the shop's folds a batch all or nothing
    only up to the first raising event).
    """
    if any(OVERSIZE_FIELD in r.fields for r in records):
        return _consume_with_oversize(domain, folder, records, outcomes)
    pairs, letters = domain.decode_records(records)
    last = records[-1]
    if not outcomes:
        tally = folder.fold([e for _, e in pairs])
        return Batch(last.position, len(records), record_anchor(last.fields), tally, letters)
    each = folder.fold_each([e for _, e in pairs])
    accepted: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for out in each:
        if out.status == "accepted":
            accepted[out.kind or ""] = accepted.get(out.kind or "", 0) + 1
        else:
            rejected[out.code or ""] = rejected.get(out.code or "", 0) + 1
    by_position = [(p, o) for (p, _), o in zip(pairs, each, strict=True)]
    by_position += [(d.position, Outcome("dead_letter", message=d.reason)) for d in letters]
    if letters:
        by_position.sort(key=lambda po: po[0])
    return Batch(
        last.position,
        len(records),
        record_anchor(last.fields),
        Tally(accepted, rejected),
        letters,
        by_position,
    )


def _consume_with_oversize(
    domain: Domain[S, E], folder: Folder[S, E], records: Sequence[Record], outcomes: bool
) -> Batch:
    """:func:`consume` of a batch holding stand-ins for entries too large to read:
    each is dead-lettered with its size, in log order with the rest."""
    batches: list[Batch] = []
    run: list[Record] = []
    for record in [*records, None]:
        if record is not None and OVERSIZE_FIELD not in record.fields:
            run.append(record)
            continue
        if run:
            batches.append(consume(domain, folder, run, outcomes=outcomes))
            run = []
        if record is not None:
            size = record.fields[OVERSIZE_FIELD].decode("ascii")
            letter = DeadLetter(
                record.position,
                {},
                f"entry too large to read: {size} bytes, over the log's entry limit; it "
                "stays in the log, its fields are not copied here",
            )
            batches.append(
                Batch(
                    record.position,
                    1,
                    record_anchor(record.fields),
                    Tally(),
                    [letter],
                    [(record.position, Outcome("dead_letter", message=letter.reason))]
                    if outcomes
                    else None,
                )
            )
    last = batches[-1]
    out = Batch(last.position, 0, last.anchor, Tally(), [], [] if outcomes else None)
    for b in batches:
        out.records += b.records
        out.tally = out.tally + b.tally
        out.dead_letters += b.dead_letters
        if out.outcomes is not None and b.outcomes is not None:
            out.outcomes += b.outcomes
    return out


@dataclass(slots=True)
class Replayed(Generic[S]):
    """The result of :func:`replay`: the ``state``, the last ``position`` read, its
    ``anchor``, ``records`` read, the ``tally`` of the events and the dead letters met."""

    state: S
    position: Position
    anchor: str | None
    records: int
    tally: Tally
    dead_letters: list[DeadLetter] = field(default_factory=list)


def replay(
    log: EventLog,
    domain: Domain[S, Any],
    state: S | None = None,
    after: Position = ORIGIN,
    *,
    until: Position | None = None,
    records_before: int = 0,
    anchor: str | None = None,
    batch_size: int = 10_000,
) -> Replayed[S]:
    """Read-only fold of the records strictly after ``after`` up to and including
    ``until`` (default: the log's end at the time of reading), from ``state``
    (default ``domain.initial``), which was folded from ``records_before``
    records ending with the one whose anchor is ``anchor``.

    Writes nothing. Raises ``OperationalError`` from the log and
    ``GapError``/``IntegrityError`` from :func:`check_continuity`.
    """
    check_continuity(log, after, records_before, anchor)
    folder = domain.folder(domain.initial if state is None else state)
    position, records, tally = after, 0, Tally()
    dead: list[DeadLetter] = []
    while True:
        batch = log.read_after(position, batch_size)
        if until is not None and batch and batch[-1].position > until:
            batch = [r for r in batch if r.position <= until]
        if not batch:
            return Replayed(folder.persistent(), position, anchor, records, tally, dead)
        done = consume(domain, folder, batch)
        position, anchor = done.position, done.anchor
        records += done.records
        tally = tally + done.tally
        dead.extend(done.dead_letters)


def check_continuity(
    log: EventLog, position: Position, records: int = 0, anchor: str | None = None
) -> None:
    """Raise unless ``log`` still holds the history of a state folded from its first
    ``records`` records up to ``position``, the last of them with ``anchor``
    (:func:`record_anchor`; ``None``: not checked).

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
    if position == ORIGIN:
        deleted = 0 if h.added is None else h.added - h.length
        if h.max_deleted is None and not deleted:
            return
        what = (
            f"entries up to {h.max_deleted} were deleted"
            if h.max_deleted is not None
            else f"{deleted} entries before its first record {h.first} were deleted"
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
    if h.last < position:
        raise IntegrityError(
            f"the state was folded up to {position} but the log ends at {h.last}: {lost}"
        )
    if h.added is not None and h.added < records:
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
        if record is None:
            raise IntegrityError(
                f"the log no longer holds the record at {position} that the state was "
                f"folded to (it holds records from {h.first} to {h.last}): {lost}, or that "
                "one record was deleted"
            )
        if record_anchor(record.fields) != anchor:
            raise IntegrityError(
                f"the record at {position} is not the one the state was folded to "
                f"(its fields differ): {lost}"
            )
    if h.max_deleted is not None and h.max_deleted > position:
        raise GapError(
            f"the state is at {position} but record {h.max_deleted}, after it, was deleted "
            "from the log (XDEL or XTRIM): refusing to fold over the gap"
        )

"""Idempotency keys: a retried append is answered, never applied twice.

A log entry may carry an idempotency key in its field ``key`` (1 to
:data:`MAX_KEY_BYTES` bytes of UTF-8). The first record with a key is folded as
usual and remembered; a later record with the same key is

- a **duplicate** if its entry is the same (the same fields, byte for byte,
  apart from the key): the state is unchanged and its outcome is ``duplicate``,
  naming the first record's position and carrying the first verdict;
- **rejected** with the stable code ``idempotency_key_reused`` if its entry is
  different: it is never applied.

A key that is empty, too long or not UTF-8 makes the record a dead letter.

The window is part of the folded state, defined by the log and not the wall
clock: a key is remembered for the next ``size`` records consumed after the
record that carried it (default :data:`DEFAULT_WINDOW`), then forgotten (a
record with that key is then folded as new). It survives restarts, snapshots
and failover because every snapshot carries it, and its size is recorded in the
snapshot header (a snapshot taken with another size is rebuilt by replay).
Entries are compared by an MD5 fingerprint of their framed fields (an
identifier, not a protection).

>>> window, entry = KeyWindow(size=10), {b"type": b"A", b"key": b"k1"}
>>> window.classify(b"k1", entry, 1) is None
True
>>> window.remember(b"k1", entry, 1, Position(1, 0), Outcome("accepted", "A"))
>>> window.classify(b"k1", entry, 2).status
'duplicate'
>>> window.classify(b"k1", {b"type": b"B", b"key": b"k1"}, 3).code
'idempotency_key_reused'
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Annotated, NamedTuple

import msgspec

from .domain import Outcome
from .protocols import OVERSIZE_FIELD, DeadLetter, Position, Record

_Nat = Annotated[int, msgspec.Meta(ge=0)]


class _Window(msgspec.Struct, forbid_unknown_fields=True):
    size: Annotated[int, msgspec.Meta(ge=1)]
    keys: list[Annotated[str, msgspec.Meta(min_length=1)]]
    index: list[_Nat]
    major: list[_Nat]
    minor: list[_Nat]
    fingerprint: str
    outcomes: list[msgspec.Raw]
    outcome: list[Annotated[int, msgspec.Meta(ge=-1)]]


_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder(_Window).decode

__all__ = [
    "DEFAULT_WINDOW",
    "KEY_FIELD",
    "KEY_REUSED",
    "MAX_KEY_BYTES",
    "KeyWindow",
    "Remembered",
    "Screened",
    "check_key",
]

KEY_FIELD = b"key"
"""The entry field that carries an idempotency key."""
MAX_KEY_BYTES = 200
"""Longest idempotency key, in bytes of UTF-8."""
DEFAULT_WINDOW = 100_000
"""Records a key is remembered for, by default."""
KEY_REUSED = "idempotency_key_reused"
"""The rejection code of a key reused with a different entry."""


def check_key(raw: bytes) -> str | None:
    """Why ``raw`` is not a usable key (a dead-letter reason), or ``None``.

    >>> check_key(b""), check_key(b"\\xff"), check_key(b"order-17")
    ('idempotency key is empty', 'idempotency key is not UTF-8', None)
    """
    if not raw:
        return "idempotency key is empty"
    if len(raw) > MAX_KEY_BYTES:
        return f"idempotency key too long: {len(raw)} bytes, at most {MAX_KEY_BYTES}"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "idempotency key is not UTF-8"
    return None


def oversize_letter(record: Record) -> DeadLetter:
    """The dead letter of a stand-in for an entry too large to read (its fields not copied)."""
    size = record.fields[OVERSIZE_FIELD].decode("ascii")
    return DeadLetter(
        record.position,
        {},
        f"entry too large to read: {size} bytes, over the log's entry limit; it "
        "stays in the log, its fields are not copied here",
    )


def fingerprint(fields: Mapping[bytes, bytes]) -> bytes:
    """MD5 (16 bytes) of the fields but the key, each framed ``<length>:<bytes>``."""
    md5 = hashlib.md5(usedforsecurity=False)
    for name, value in fields.items():
        if name != KEY_FIELD:
            md5.update(b"%d:%s%d:%s" % (len(name), name, len(value), value))
    return md5.digest()


class Remembered(NamedTuple):
    """A remembered key: the ``ordinal`` (records consumed since the origin, the
    record's own included) and ``position`` of the record that carried it first,
    the ``fingerprint`` of its entry and its ``outcome`` (``None`` until known)."""

    ordinal: int
    position: Position
    fingerprint: bytes
    outcome: Outcome | None


# A window entry: (ordinal, position, fingerprint, outcome), a plain tuple: with
# atomic members the garbage collector stops tracking it, so a full window costs
# the collections nothing.
_Entry = tuple[int, Position, bytes, Outcome | None]


def _repeat(key: bytes, first: _Entry, fields: Mapping[bytes, bytes]) -> Outcome:
    """The outcome of a record carrying ``key`` already remembered as ``first``."""
    _, position, print_, o = first
    if fingerprint(fields) == print_:
        if o is None:  # the first record is in the same batch, not folded yet
            return Outcome("duplicate", duplicate_of=position)
        return Outcome("duplicate", o.kind, o.code, o.message, o.detail, position, o.status)
    return Outcome(
        "rejected",
        None,
        KEY_REUSED,
        f"idempotency key {key.decode('utf-8', 'replace')!r} was used at "
        f"{position} for a different entry",
    )


class Screened(NamedTuple):
    """What :meth:`KeyWindow.screen` found in a batch, by slot (index in the batch):
    ``fold`` the slots to decode and fold, in order; ``fresh`` the slots whose key
    was remembered unsettled, with the key and its window entry; ``repeats`` the
    duplicates of a record of this batch: ``(slot, the first's slot, its
    position)``, answered once the first is."""

    fold: list[int]
    fresh: list[tuple[int, bytes, _Entry]]
    repeats: list[tuple[int, int, Position]]


class KeyWindow:
    """The remembered keys of the last ``size`` records (see the module docstring).

    Mutable working state of a fold, like a folder; :meth:`encode` gives its
    canonical bytes for a snapshot and :meth:`decode` reads them back.
    """

    __slots__ = ("_keys", "_order", "size")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if type(size) is not int or size < 1:
            raise ValueError(f"the key window is a positive number of records, got {size!r}")
        self.size = size
        self._keys: dict[bytes, _Entry] = {}
        self._order: deque[tuple[int, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._keys)

    def expire(self, index: int) -> None:
        """Forget the keys record ``index`` no longer sees: those of records before
        ``index - size`` (a key is remembered for the ``size`` records after its own)."""
        horizon = index - self.size - 1
        order, keys = self._order, self._keys
        while order and order[0][0] <= horizon:
            _, key = order.popleft()
            del keys[key]

    def classify(self, key: bytes, fields: Mapping[bytes, bytes], index: int) -> Outcome | None:
        """The outcome of record ``index`` carrying ``key`` if it is a repeat
        (``duplicate`` or rejected ``idempotency_key_reused``), else ``None``
        (fold it, then :meth:`remember` it). Expires older keys first."""
        self.expire(index)
        first = self._keys.get(key)
        return None if first is None else _repeat(key, first, fields)

    def remember(
        self,
        key: bytes,
        fields: Mapping[bytes, bytes],
        index: int,
        position: Position,
        outcome: Outcome | None,
    ) -> None:
        """Remember ``key`` as first carried by record ``index`` at ``position``, with
        its ``outcome`` (``None`` until it is known: see :meth:`settle`)."""
        self._keys[key] = (index, position, fingerprint(fields), outcome)
        self._order.append((index, key))

    def settle(self, key: bytes, index: int, outcome: Outcome | None) -> None:
        """Record the outcome of record ``index``, remembered with ``key`` before it
        was folded (nothing to do if the key has left the window since)."""
        first = self._keys.get(key)
        if first is not None and first[0] == index:
            self._keys[key] = (index, first[1], first[2], outcome)

    def screen(
        self,
        records: Sequence[Record],
        first_index: int,
        answers: list[Outcome | None],
        letters: dict[int, DeadLetter],
    ) -> Screened:
        """One pass over a batch (``records``, the first being record number
        ``first_index``), in log order: a stand-in for an oversize entry or a bad
        key goes to ``letters``, a repeat's outcome to ``answers``, each new key is
        remembered (unsettled); the same as :meth:`classify` then :meth:`remember`
        record by record, without a call per record (the replay hot path)."""
        keys, order = self._keys, self._order
        get, push = keys.get, order.append
        size = self.size
        fold: list[int] = []
        fresh: list[tuple[int, bytes, _Entry]] = []
        repeats: list[tuple[int, int, Position]] = []
        keep = fold.append
        for slot, record in enumerate(records):
            fields = record.fields
            if OVERSIZE_FIELD in fields:
                letters[slot] = oversize_letter(record)
                continue
            key = fields.get(KEY_FIELD)
            if key is None:
                keep(slot)
                continue
            if not (type(key) is bytes and 0 < len(key) <= MAX_KEY_BYTES and key.isascii()):
                why = check_key(key)
                if why is not None:
                    letters[slot] = DeadLetter(record.position, fields, why)
                    continue
            index = first_index + slot
            horizon = index - size - 1
            while order and order[0][0] <= horizon:
                del keys[order.popleft()[1]]
            first = get(key)
            if first is not None:
                repeat = _repeat(key, first, fields)
                answers[slot] = repeat
                if first[3] is None and repeat.status == "duplicate":
                    # Its first record is in this batch: answered once that one is
                    # (by then the key may have left the window, or come back).
                    repeats.append((slot, first[0] - first_index, first[1]))
                continue
            entry = keys[key] = (index, record.position, fingerprint(fields), None)
            push((index, key))
            fresh.append((slot, key, entry))
            keep(slot)
        return Screened(fold, fresh, repeats)

    def settle_batch(self, screened: Screened, answers: list[Outcome | None]) -> None:
        """Settle the outcomes of a batch :meth:`screen` saw, once every record
        but the repeats is answered: every fresh key gets its record's answer,
        and each repeat of a record of the batch the duplicate of that answer."""
        keys = self._keys
        for slot, key, entry in screened.fresh:
            if keys.get(key) is entry:  # else it has left the window since
                keys[key] = (entry[0], entry[1], entry[2], answers[slot])
        for slot, first_slot, position in screened.repeats:
            o = answers[first_slot]
            assert o is not None, "the first record of a key is answered before its repeats"
            answers[slot] = Outcome(
                "duplicate", o.kind, o.code, o.message, o.detail, position, o.status
            )

    # -- snapshots --------------------------------------------------------------------

    def encode(self) -> bytes:
        """Canonical JSON of the window, columns in the order keys were remembered
        (msgspec): ``{"size", "keys", "index", "major", "minor", "fingerprint"
        (32 hex digits a key, joined), "outcomes" (each distinct outcome once, as
        :meth:`Outcome.to_json`), "outcome" (an index into them, -1: not known)}``."""
        order = [Remembered(*self._keys[k]) for _, k in self._order]
        table: dict[bytes, int] = {}
        outcomes: list[bytes] = []
        refs: list[int] = []
        for r in order:
            if r.outcome is None:
                refs.append(-1)
                continue
            blob = _ENCODE(r.outcome.to_json())
            ref = table.get(blob)
            if ref is None:
                ref = table[blob] = len(outcomes)
                outcomes.append(blob)
            refs.append(ref)
        body = _Window(
            self.size,
            [k.decode() for _, k in self._order],
            [r.ordinal for r in order],
            [r.position.major for r in order],
            [r.position.minor for r in order],
            b"".join(r.fingerprint for r in order).hex(),
            [msgspec.Raw(o) for o in outcomes],
            refs,
        )
        return _ENCODE(body)

    @classmethod
    def decode(cls, body: bytes) -> KeyWindow:
        """The window :meth:`encode` wrote; ``ValueError`` naming what is wrong otherwise."""
        try:
            w = _DECODE(body)
            window = cls(w.size)
            n = len(w.keys)
            if not n == len(w.index) == len(w.major) == len(w.minor) == len(w.outcome):
                raise ValueError("the columns of the key window differ in length")
            prints = bytes.fromhex(w.fingerprint)
            if len(prints) != 16 * n:
                raise ValueError("the fingerprints do not match the keys")
            outcomes = [Outcome.from_json(msgspec.json.decode(o)) for o in w.outcomes]
            last = 0
            for i in range(n):
                index = w.index[i]
                if index < last:
                    raise ValueError(f"key indices must grow, got {index}")
                last = index
                ref = w.outcome[i]
                k = w.keys[i].encode()
                window._keys[k] = (
                    index,
                    Position(w.major[i], w.minor[i]),
                    prints[16 * i : 16 * i + 16],
                    None if ref < 0 else outcomes[ref],
                )
                window._order.append((index, k))
        except (msgspec.DecodeError, msgspec.ValidationError, IndexError, KeyError, TypeError) as e:
            raise ValueError(f"not a key window: {e}") from None
        if len(window._keys) != len(window._order):
            raise ValueError("a key appears twice in the key window")
        return window

    def copy(self) -> KeyWindow:
        """An independent copy (cheap: two C-level container copies)."""
        other = KeyWindow(self.size)
        other._keys = self._keys.copy()
        other._order = self._order.copy()
        return other

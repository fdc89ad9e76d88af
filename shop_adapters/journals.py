"""Outcome journals: the output journal beside the input log (LMAX), one answer per record.

For every record it consumes, the runner publishes one
:class:`~shop_adapters.domain.Outcome` under the record's own position, so a
client that appended a request can wait for its answer, and a replay after a
crash adds nothing twice. Outcomes are a pure function of the log: ``inspect
verify`` rebuilds them and compares.

- :class:`RedisOutcomeJournal`: the stream ``<stream>:outcomes``, each entry
  written under the *input* record's ID by one Lua script per batch
  (:data:`WRITE_OUTCOMES`): an ID already there is an outcome already written;
  an ID refused because a higher one is there without an entry at this one is
  an :class:`~shop_adapters.errors.IntegrityError` (something foreign wrote
  there), never dropped silently. Waiting for one answer is an ``XREAD BLOCK``.
- :class:`MemoryOutcomeJournal`: a list, for tests and benchmarks.
- :class:`FileOutcomeJournal`: the file ``<log path>.outcomes`` (framed as the
  file log), for a file log, whose positions are ``(i, 0)``: record ``i`` of the
  journal is the outcome of record ``i`` of the log.

An outcome as stream fields: ``status``, and when set ``kind``, ``code``,
``message``, ``detail`` (JSON), ``duplicate_of`` (``ms-seq``), ``verdict``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec
import redis

from .domain import Outcome
from .errors import IntegrityError
from .logs.file import FileLog
from .protocols import ORIGIN, Position
from .redis_errors import redis_errors

__all__ = [
    "WRITE_OUTCOMES",
    "XADD_OUTCOMES_LUA",
    "FileOutcomeJournal",
    "MemoryOutcomeJournal",
    "OutcomeJournal",
    "RedisOutcomeJournal",
    "outcome_fields",
    "outcome_from_fields",
    "outcome_items",
    "pack_outcomes",
]


class OutcomeJournal(Protocol):
    """Where a runner publishes the outcome of every record it consumes."""

    def write(self, outcomes: Sequence[tuple[Position, Outcome]]) -> None:
        """Publish ``outcomes`` (increasing positions), each at most once.

        An outcome already published at its position is skipped; raises
        ``IntegrityError`` if the journal already goes past a position without
        holding its outcome, ``OperationalError`` if unreachable (retrying is safe).
        """
        ...

    def last_position(self) -> Position:
        """The position of the last outcome published, :data:`ORIGIN` if none."""
        ...

    def read_after(self, position: Position, limit: int) -> list[tuple[Position, Outcome]]:
        """Up to ``limit`` outcomes strictly after ``position``, in order."""
        ...

    def wait_for(self, position: Position, timeout_ms: int) -> Outcome | None:
        """The outcome of the record at ``position``, waiting up to ``timeout_ms``
        for it to be published; ``None`` if it was not."""
        ...


def _text(value: str) -> str:
    """``value`` as stored: its UTF-8, a lone surrogate backslash-escaped."""
    return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode()


def outcome_items(outcome: Outcome) -> list[str]:
    """An outcome as a flat ``[name, value, ...]`` of stream fields (see the module
    docstring), in the order :func:`outcome_fields` gives them.

    >>> outcome_items(Outcome("rejected", "Order", "out_of_stock", "none left"))
    ['status', 'rejected', 'kind', 'Order', 'code', 'out_of_stock', 'message', 'none left']
    """
    out = ["status", outcome.status]
    if outcome.kind is not None:
        out += ("kind", _text(outcome.kind))
    if outcome.code is not None:
        out += ("code", _text(outcome.code))
    if outcome.message is not None:
        out += ("message", _text(outcome.message))
    if outcome.verdict is not None:
        out += ("verdict", _text(outcome.verdict))
    if outcome.detail is not None:
        out += ("detail", json.dumps(outcome.detail, separators=(",", ":")))
    if outcome.duplicate_of is not None:
        out += ("duplicate_of", str(outcome.duplicate_of))
    return out


def outcome_fields(outcome: Outcome) -> dict[bytes, bytes]:
    """An outcome as stream fields (see the module docstring).

    >>> outcome_fields(Outcome("accepted", "Order", detail={"total": 300}))
    {b'status': b'accepted', b'kind': b'Order', b'detail': b'{"total":300}'}
    """
    # The fields of outcome_items, built as bytes directly: this is the per-outcome
    # path of the file and memory journals (going through the str list costs 40% more).
    out = {b"status": outcome.status.encode()}
    for name in ("kind", "code", "message", "verdict"):
        value = getattr(outcome, name)
        if value is not None:
            out[name.encode()] = value.encode("utf-8", "backslashreplace")
    if outcome.detail is not None:
        out[b"detail"] = json.dumps(outcome.detail, separators=(",", ":")).encode()
    if outcome.duplicate_of is not None:
        out[b"duplicate_of"] = str(outcome.duplicate_of).encode()
    return out


def pack_outcomes(outcomes: Sequence[tuple[Position, Outcome]]) -> bytes:
    """A batch for :data:`WRITE_OUTCOMES`: a MessagePack array of
    ``[id, name, value, ...]`` string arrays (Redis's Lua ``cmsgpack`` reads
    strings, not MessagePack's bin type)."""
    return _PACK([[str(p), *outcome_items(o)] for p, o in outcomes])


_PACK = msgspec.msgpack.encode


def outcome_from_fields(fields: Mapping[bytes, bytes]) -> Outcome:
    """The inverse of :func:`outcome_fields`; ``ValueError``/``KeyError`` otherwise."""

    def text(name: bytes) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode("utf-8", "replace")

    detail = fields.get(b"detail")
    dup = fields.get(b"duplicate_of")
    return Outcome.from_json(
        {
            k: v
            for k, v in {
                "status": text(b"status"),
                "kind": text(b"kind"),
                "code": text(b"code"),
                "message": text(b"message"),
                "verdict": text(b"verdict"),
                "detail": None if detail is None else json.loads(detail),
                "duplicate_of": None if dup is None else dup.decode(),
            }.items()
            if v is not None
        }
    )


class MemoryOutcomeJournal:
    """Outcomes in memory, in position order (tests, benchmarks)."""

    def __init__(self) -> None:
        self._items: list[tuple[Position, Outcome]] = []
        self._at: dict[Position, Outcome] = {}
        self._cond = threading.Condition()

    def write(self, outcomes: Sequence[tuple[Position, Outcome]]) -> None:
        """Append those not yet published (see :class:`OutcomeJournal`)."""
        with self._cond:
            for position, outcome in outcomes:
                if position in self._at:
                    continue
                if self._items and position < self._items[-1][0]:
                    raise IntegrityError(
                        f"cannot publish the outcome of {position}: the journal already goes "
                        f"past it (to {self._items[-1][0]}) without it"
                    )
                self._items.append((position, outcome))
                self._at[position] = outcome
            self._cond.notify_all()

    def last_position(self) -> Position:
        """See :class:`OutcomeJournal`."""
        with self._cond:
            return self._items[-1][0] if self._items else ORIGIN

    def read_after(self, position: Position, limit: int) -> list[tuple[Position, Outcome]]:
        """See :class:`OutcomeJournal`."""
        with self._cond:
            return [item for item in self._items if item[0] > position][:limit]

    def wait_for(self, position: Position, timeout_ms: int) -> Outcome | None:
        """See :class:`OutcomeJournal`."""
        with self._cond:
            self._cond.wait_for(lambda: position in self._at, timeout=timeout_ms / 1000)
            return self._at.get(position)


class FileOutcomeJournal:
    """The outcomes of a file log's records, in ``<path>`` (a :class:`FileLog`)."""

    def __init__(self, path: str | Path, *, poll_interval_ms: int = 10) -> None:
        self._log = FileLog(path, poll_interval_ms=poll_interval_ms)

    def write(self, outcomes: Sequence[tuple[Position, Outcome]]) -> None:
        """Append those not yet published; record ``i`` is the outcome of position ``(i, 0)``."""
        n = self._log.last_position().major
        fresh: list[dict[bytes, bytes]] = []
        for position, outcome in outcomes:
            if position.major <= n:
                continue
            if position != Position(n + 1, 0):
                raise IntegrityError(
                    f"cannot publish the outcome of {position} in {self._log.path}: it holds "
                    f"{n} outcomes, and a file journal holds exactly one per record in order"
                )
            fresh.append({b"position": str(position).encode(), **outcome_fields(outcome)})
            n += 1
        self._log.append(fresh)  # type: ignore[arg-type]

    def last_position(self) -> Position:
        """See :class:`OutcomeJournal`."""
        return self._log.last_position()

    def read_after(self, position: Position, limit: int) -> list[tuple[Position, Outcome]]:
        """See :class:`OutcomeJournal`."""
        return [
            (r.position, outcome_from_fields(r.fields))
            for r in self._log.read_after(position, limit)
        ]

    def wait_for(self, position: Position, timeout_ms: int) -> Outcome | None:
        """See :class:`OutcomeJournal` (polls the file)."""
        before = Position(position.major - 1, 0)
        found = self._log.wait_after(before, 1, timeout_ms)
        return outcome_from_fields(found[0].fields) if found else None

    def close(self) -> None:
        """Close the file."""
        self._log.close()


XADD_OUTCOMES_LUA = """
-- Expects `batch`: the outcomes, a MessagePack array of {id, name, value, ...}
-- (pack_outcomes), for the stream KEYS[1]. Each XADD happens under the given ID; one
-- Redis refuses (the stream's top ID is not smaller) is fine only if an entry with
-- exactly that ID is there (written by an earlier run): else returns {-1, id}.
local items, written = cmsgpack.unpack(batch), 0
for k = 1, #items do
  local entry = items[k]
  local ok = redis.pcall('XADD', KEYS[1], unpack(entry))
  if type(ok) == 'table' and ok.err then
    if #redis.call('XRANGE', KEYS[1], entry[1], entry[1]) == 0 then
      return {-1, entry[1]}
    end
  else
    written = written + 1
  end
end
return {written, ''}
"""
"""The loop both outcome scripts share (this one and the fenced one)."""

WRITE_OUTCOMES = (
    "-- KEYS[1]: the journal stream. ARGV[1]: the outcomes.\nlocal batch = ARGV[1]\n"
    + XADD_OUTCOMES_LUA
)
"""The batched, at-most-once write of :class:`RedisOutcomeJournal` (``EVALSHA``)."""


class RedisOutcomeJournal:
    """Outcomes in a Redis stream (``<stream>:outcomes``), each under its record's ID.

    ``max_block_ms``: longest single ``XREAD BLOCK`` of :meth:`wait_for` (the
    client's ``socket_timeout`` must be longer).
    """

    def __init__(self, client: redis.Redis, key: str, *, max_block_ms: int = 1000) -> None:
        self.client = client
        self.key = key
        self.max_block_ms = max_block_ms
        self._script = client.register_script(WRITE_OUTCOMES)

    def write(self, outcomes: Sequence[tuple[Position, Outcome]]) -> None:
        """One ``EVALSHA`` of :data:`WRITE_OUTCOMES` (see :class:`OutcomeJournal`)."""
        if not outcomes:
            return
        batch = pack_outcomes(outcomes)
        with redis_errors("XADD (outcomes)", self.key):
            reply: Any = self._script(keys=[self.key], args=[batch])
        if int(reply[0]) < 0:
            at = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            raise IntegrityError(
                f"cannot publish the outcome of {at} in {self.key}: the stream already goes "
                "past that ID and holds no entry with it; something else wrote there. "
                f"Refusing to drop it silently: inspect {self.key} (XRANGE {self.key} - +)"
            )

    def last_position(self) -> Position:
        """``XREVRANGE <key> + - COUNT 1``."""
        with redis_errors("XREVRANGE", self.key):
            reply: Any = self.client.xrevrange(self.key, "+", "-", count=1)
        return Position.parse(reply[0][0]) if reply else ORIGIN

    def read_after(self, position: Position, limit: int) -> list[tuple[Position, Outcome]]:
        """``XRANGE <key> (<position> + COUNT <limit>``."""
        with redis_errors("XRANGE", self.key):
            reply: Any = self.client.xrange(self.key, f"({position}", "+", count=limit)
        return [(Position.parse(i), outcome_from_fields(_bytes_fields(f))) for i, f in reply]

    def wait_for(self, position: Position, timeout_ms: int) -> Outcome | None:
        """``XREAD BLOCK`` from just before ``position`` until an outcome at or past it
        arrives (outcomes are published in order), then the one at ``position``."""
        before = _before(position)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            remaining = int((deadline - time.monotonic()) * 1000)
            block = max(1, min(remaining, self.max_block_ms))
            with redis_errors("XREAD BLOCK", self.key):
                reply: Any = self.client.xread({self.key: str(before)}, count=1, block=block)
            if reply:
                break
            if remaining <= block:
                return None
        with redis_errors("XRANGE", self.key):
            exact: Any = self.client.xrange(self.key, str(position), str(position))
        return outcome_from_fields(_bytes_fields(exact[0][1])) if exact else None


def _before(position: Position) -> Position:
    if position.minor > 0:
        return Position(position.major, position.minor - 1)
    return Position(max(0, position.major - 1), 2**64 - 1)


def _bytes_fields(raw: Mapping[Any, Any]) -> dict[bytes, bytes]:
    return {
        (k if isinstance(k, bytes) else str(k).encode()): (
            v if isinstance(v, bytes) else str(v).encode()
        )
        for k, v in raw.items()
    }

"""Writes of a runner fenced by its lease: outcomes and dead letters, as snapshots are.

The guarded snapshot write (:data:`shop_adapters.snapshots.redis.FENCED_WRITE`)
refuses a runner that no longer holds its lease. A pool moves logs between
processes, and a paused process may wake up holding records it read before a
takeover; these classes make its other writes refuse it too, in the same Lua
script as the check (the lease key carries the log's hash tag, so it shares the
slot of the journal and the dead-letter stream in a Redis Cluster):

- :class:`FencedOutcomeJournal`: a
  :class:`~shop_adapters.journals.RedisOutcomeJournal` whose batch write
  (:data:`FENCED_OUTCOMES`, one ``EVALSHA``) happens only while ``GET <lease>`` is
  this runner's owner id;
- :class:`FencedStreamLog`: a :class:`~shop_adapters.logs.redis_stream.RedisStreamLog`
  whose dead letters (:data:`FENCED_XADD`) likewise.

Refused writes raise :class:`~shop_adapters.errors.FencedError`, which ends the
runner's run. Both writes were already at most once per record (each entry is
written under the record's own ID); the fence makes a stale writer write nothing
at all, even for a record the new holder has not reached yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from .domain import Outcome
from .errors import FencedError, IntegrityError
from .journals import XADD_OUTCOMES_LUA, RedisOutcomeJournal, pack_outcomes
from .logs.redis_stream import RedisStreamLog
from .protocols import DeadLetter, Position
from .redis_errors import redis_errors

__all__ = ["FENCED_OUTCOMES", "FENCED_XADD", "FencedOutcomeJournal", "FencedStreamLog"]

FENCED_OUTCOMES = (
    """
-- KEYS[1]: the journal stream; KEYS[2]: the lease key. ARGV[1]: the writer's owner id;
-- ARGV[2]: the outcomes. Returns {-2, holder} if the lease is not the writer's
-- (nothing written), else as WRITE_OUTCOMES.
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[1] then
  return {-2, holder or ''}
end
local batch = ARGV[2]
"""
    + XADD_OUTCOMES_LUA
)
"""The fenced batch of :class:`FencedOutcomeJournal` (``EVALSHA``)."""

FENCED_XADD = """
-- KEYS[1]: the stream; KEYS[2]: the lease key. ARGV[1]: the writer's owner id; ARGV[2]:
-- the entry ID; ARGV[3..]: field/value pairs. Returns {1, ''} written, {0, ''} if the ID
-- is refused (the stream's top is not smaller), {-2, holder} if the lease is not the
-- writer's (nothing written).
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[1] then
  return {-2, holder or ''}
end
local args = {'XADD', KEYS[1], ARGV[2]}
for j = 3, #ARGV do args[#args + 1] = ARGV[j] end
local ok = redis.pcall(unpack(args))
if type(ok) == 'table' and ok.err then
  if string.find(ok.err, 'equal or smaller', 1, true) then
    return {0, ''}
  end
  return redis.error_reply(ok.err)
end
return {1, ''}
"""
"""The fenced dead letter of :class:`FencedStreamLog` (``EVALSHA``)."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _fenced(what: str, lease_key: str, holder: Any) -> FencedError:
    who = f"held by {_text(holder)!r}" if holder else "held by nobody (it expired)"
    return FencedError(
        f"{what} not written: this runner no longer holds the lease {lease_key} ({who})"
    )


class FencedOutcomeJournal(RedisOutcomeJournal):
    """A :class:`RedisOutcomeJournal` that writes only while ``lease_key`` holds ``owner``.

    ``write`` is one ``EVALSHA`` of :data:`FENCED_OUTCOMES`; raises
    :class:`~shop_adapters.errors.FencedError` when the lease is another's (nothing
    is written), otherwise as :meth:`RedisOutcomeJournal.write`.
    """

    def __init__(
        self, client: redis.Redis, key: str, lease_key: str, owner: str, **kwargs: Any
    ) -> None:
        super().__init__(client, key, **kwargs)
        self.lease_key = lease_key
        self.owner = owner
        self._fenced = client.register_script(FENCED_OUTCOMES)

    def write(self, outcomes: Sequence[tuple[Position, Outcome]]) -> None:
        """Publish ``outcomes`` (see :meth:`RedisOutcomeJournal.write`), fenced."""
        if not outcomes:
            return
        args: list[bytes | str] = [self.owner, pack_outcomes(outcomes)]
        with redis_errors("XADD (outcomes, fenced)", self.key):
            reply: Any = self._fenced(keys=[self.key, self.lease_key], args=args)
        status = int(reply[0])
        if status == -2:
            raise _fenced(f"outcomes in {self.key}", self.lease_key, reply[1])
        if status < 0:
            raise IntegrityError(
                f"cannot publish the outcome of {_text(reply[1])} in {self.key}: the stream "
                "already goes past that ID and holds no entry with it; something else wrote "
                f"there. Refusing to drop it silently: inspect {self.key} (XRANGE {self.key} - +)"
            )


class FencedStreamLog(RedisStreamLog):
    """A :class:`RedisStreamLog` whose :meth:`dead_letter` writes only while
    ``lease_key`` holds ``owner`` (one ``EVALSHA`` of :data:`FENCED_XADD`)."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        dead_stream: str | None = None,
        *,
        lease_key: str,
        owner: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(client, stream, dead_stream, **kwargs)
        self.lease_key = lease_key
        self.owner = owner
        self._fenced = client.register_script(FENCED_XADD)

    def dead_letter(self, letter: DeadLetter) -> bool:
        """As :meth:`RedisStreamLog.dead_letter` (exactly once per position), fenced:
        raises :class:`~shop_adapters.errors.FencedError` if the lease is another's."""
        if letter.position <= Position(0, 0):
            raise ValueError("cannot dead-letter ORIGIN (0-0): no record lives there")
        args: list[bytes | str] = [self.owner, str(letter.position)]
        args += [b"position", str(letter.position).encode("ascii")]
        args += [b"reason", letter.reason.encode("utf-8", errors="backslashreplace")]
        for name, value in letter.fields.items():
            name_bytes = name if isinstance(name, bytes) else str(name).encode()
            args += [b"field:" + name_bytes, value if isinstance(value, bytes) else str(value)]
        with redis_errors("XADD (dead letter, fenced)", self.dead_stream):
            reply: Any = self._fenced(keys=[self.dead_stream, self.lease_key], args=args)
        status = int(reply[0])
        if status == -2:
            raise _fenced(f"dead letter at {letter.position}", self.lease_key, reply[1])
        if status == 1:
            return True
        # Refused by ID: written before, or something foreign is there (compared by
        # the unfenced path, whose XADD is refused again and writes nothing).
        return super().dead_letter(letter)

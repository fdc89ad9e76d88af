"""Competing consumers on the outcome journal: a Redis consumer group for side effects.

Work with effects outside the system (send a receipt, call a payment
provider) does not belong in a projection, which must be a pure fold. A
:class:`GroupWorker` takes outcomes from ``<stream>:outcomes`` through a Redis
consumer group and hands each to a handler; several workers (processes,
machines) in the same group share the work, each entry going to one of them.

Commands used (Redis >= 6.2; Source: Redis docs for each command):

- ``XGROUP CREATE <journal> <group> <start> MKSTREAM`` once (``BUSYGROUP``, the
  group exists, is fine; ``start`` ``0`` means every outcome, ``$`` only new ones);
  a group that disappears with its stream (a journal set aside by an accepted
  rollback: ``NOGROUP``, or ``UNBLOCKED`` for a worker blocked on it) is created again;
- ``XAUTOCLAIM <journal> <group> <me> <min-idle-ms> <cursor> COUNT n``: entries
  delivered to a worker (any worker, this one included) and not acknowledged for
  ``claim_idle_ms`` are claimed, so a crashed worker's pending entries are taken
  over; Redis counts every delivery;
- ``XPENDING <journal> <group> <first> <last> n <me>``: the delivery count of
  the entries claimed;
- ``XREADGROUP GROUP <group> <me> COUNT n BLOCK ms STREAMS <journal> >``: new
  entries;
- ``XACK <journal> <group> <id> ...``: once per batch, after the handler
  returned for each of them;
- parking, in one ``MULTI``/``EXEC``: ``XADD <stream>:parked:<group> * ...``
  and ``XACK``.

**At-least-once delivery, exactly-once effect.** An entry is acknowledged only
after its handler returned, so a worker that dies mid-batch leaves its
entries pending, and another worker (or itself, restarted) gets them again
after ``claim_idle_ms``: every entry is handled at least once, some more than
once. The handler makes the *effect* happen once by keying it with the
outcome's position, the input record's ID, which never changes
(:mod:`shop_adapters.effects`: a Redis list written with a set of the keys
done, in one script; a file named after the key).

**Parked messages.** An entry delivered more than ``max_deliveries`` times
(its handlers crashed or stalled every time), or whose handler raised on its
``max_deliveries``-th delivery, is *parked*: copied to
``<stream>:parked:<group>`` with the reason, then acknowledged, in one
transaction. It is never retried silently; ``query parked`` lists it, and
:func:`redrive` hands it to the handler again once the cause is fixed. A
parked entry's fields: ``position``, ``group``, ``consumer``, ``deliveries``,
``reason``, ``parked_ms`` and the outcome's own fields as ``field:<name>``.

A handler that raises before the last delivery leaves the entry pending: it
is retried after ``claim_idle_ms`` (the delivery count grows each time).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from .domain import Outcome
from .errors import IntegrityError, OperationalError, PermanentError
from .journals import outcome_from_fields
from .keys import StreamKeys
from .protocols import Position
from .redis_errors import redis_errors
from .retry import RetryPolicy, Stopped

__all__ = [
    "GroupWorker",
    "Handler",
    "ParkedMessage",
    "WorkerConfig",
    "WorkerSummary",
    "default_consumer",
    "parked_key",
    "parked_messages",
    "redrive",
]

_log = logging.getLogger("shop.worker")

_FIELD_PREFIX = b"field:"


class Handler(Protocol):
    """Does the work for one outcome; must make its effect idempotent by
    ``position`` (it may be called again for the same one). Raising means "not
    done": the entry stays pending and is retried, then parked."""

    def __call__(self, position: Position, outcome: Outcome) -> None:
        """Handle ``outcome``, the answer to the record at ``position``."""
        ...


def parked_key(stream: str, group: str) -> str:
    """``<stream>:parked:<group>``: where the group's parked messages go."""
    return f"{stream}:parked:{group}"


def default_consumer() -> str:
    """``<host name>-<process id>``: a consumer name unique on the machine."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How a :class:`GroupWorker` works.

    - ``batch_size``: most entries per read (and per ``XACK``);
    - ``block_ms``: how long one ``XREADGROUP BLOCK`` waits, milliseconds;
    - ``claim_idle_ms``: how long an entry stays pending (delivered, not
      acknowledged) before another worker may claim it, milliseconds: longer
      than a batch ever takes, or entries are handled twice more often;
    - ``max_deliveries``: deliveries after which an entry is parked (>= 1);
    - ``start``: where a new group starts, ``"0"`` (every outcome) or ``"$"``
      (those published from now on);
    - ``retry``: the :class:`~shop_adapters.retry.RetryPolicy` for Redis outages.
    """

    batch_size: int = 100
    block_ms: int = 1_000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    start: str = "0"
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.block_ms < 1 or self.claim_idle_ms < 0:
            raise ValueError("need batch_size >= 1, block_ms >= 1 and claim_idle_ms >= 0")
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1, got {self.max_deliveries}")
        if self.start not in ("0", "$"):
            raise ValueError(f'start is "0" or "$", got {self.start!r}')


@dataclass(frozen=True, slots=True)
class WorkerSummary:
    """What a run did: entries ``handled`` (handler returned), ``claimed`` (taken
    over after ``claim_idle_ms``), ``failed`` (handler raised, left pending),
    ``parked``; ``stop_reason`` (``"idle"`` or ``"stopped"``), ``elapsed_s``."""

    handled: int
    claimed: int
    failed: int
    parked: int
    stop_reason: str
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "handled": self.handled,
            "claimed": self.claimed,
            "failed": self.failed,
            "parked": self.parked,
            "stop_reason": self.stop_reason,
            "elapsed_s": round(self.elapsed_s, 3),
        }


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    """A parked entry: its ``id`` in the parked stream, the outcome's ``position``,
    ``group``, ``consumer`` that parked it, ``deliveries``, ``reason``,
    ``parked_ms`` (Unix time, ms) and the outcome's raw ``fields``."""

    id: Position
    position: Position
    group: str
    consumer: str
    deliveries: int
    reason: str
    parked_ms: int
    fields: Mapping[bytes, bytes]

    def to_json(self) -> dict[str, Any]:
        """``{"id", "position", "group", "consumer", "deliveries", "reason",
        "parked_ms", "outcome"}`` (the outcome as :meth:`Outcome.to_json`, or
        ``null`` if its fields are not an outcome)."""
        try:
            outcome: Any = outcome_from_fields(self.fields).to_json()
        except (ValueError, KeyError, TypeError):
            outcome = None
        return {
            "id": str(self.id),
            "position": str(self.position),
            "group": self.group,
            "consumer": self.consumer,
            "deliveries": self.deliveries,
            "reason": self.reason,
            "parked_ms": self.parked_ms,
            "outcome": outcome,
        }


class GroupWorker:
    """One consumer of a consumer group on ``<stream>:outcomes`` (see the module).

    - ``client``: a ``redis.Redis`` whose ``socket_timeout`` is ``None`` or longer
      than ``config.block_ms``;
    - ``stream``: the log's stream; ``group``: the consumer group's name;
      ``consumer``: this worker's name in the group (default
      :func:`default_consumer`); ``handler``: a :class:`Handler`.

    :meth:`run` raises a :class:`~shop_adapters.errors.PermanentError` at once and
    an ``OperationalError`` only when the retry policy gives up.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        handler: Handler,
        config: WorkerConfig | None = None,
        *,
        consumer: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not group or not (consumer is None or consumer):
            raise ValueError("the group and consumer names must not be empty")
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer or default_consumer()
        self.handler = handler
        self.config = config or WorkerConfig()
        self.journal = StreamKeys.for_stream(stream).outcomes
        self.parked_key = parked_key(stream, group)
        self._logger = logger or _log
        self._stop = threading.Event()
        self._cursor = "0-0"
        self.handled = self.claimed = self.failed = self.parked = 0

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in progress."""
        self._stop.set()

    def ensure_group(self) -> None:
        """``XGROUP CREATE <journal> <group> <start> MKSTREAM``; an existing group is kept."""
        with redis_errors("XGROUP CREATE", self.journal):
            try:
                self.client.xgroup_create(
                    self.journal, self.group, self.config.start, mkstream=True
                )
                self._logger.info(
                    "created the consumer group %s on %s from %s",
                    self.group,
                    self.journal,
                    "the first outcome" if self.config.start == "0" else "now",
                )
            except redis.exceptions.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def run(self, exit_when_idle: bool = False) -> WorkerSummary:
        """Claim, read, handle, acknowledge, until :meth:`stop`; with
        ``exit_when_idle``, return once no entry is new or pending in the group."""
        started = time.monotonic()
        reason = "stopped"
        retry = self.config.retry
        try:
            for attempt in retry.attempts(
                "creating the group", stop=self._stop, logger=self._logger
            ):
                with attempt:
                    self.ensure_group()
        except Stopped:
            self._stop.set()
        while not self._stop.is_set():
            try:
                for attempt in retry.attempts("working", stop=self._stop, logger=self._logger):
                    with attempt:
                        done = self._step(exit_when_idle)
            except Stopped:
                break
            if done:
                reason = "idle"
                break
        return WorkerSummary(
            self.handled,
            self.claimed,
            self.failed,
            self.parked,
            reason,
            time.monotonic() - started,
        )

    def _step(self, exit_when_idle: bool) -> bool:
        """One batch; ``True`` when idle and asked to exit then."""
        try:
            batch = self._claim()
            if not batch:
                block = None if exit_when_idle else self.config.block_ms
                batch = [(p, f, 1) for p, f in self._read_new(block)]
        except PermanentError as e:
            # NOGROUP: the journal (and its group) is gone; UNBLOCKED: it went while
            # this worker was blocked on it (Redis 7).
            if "NOGROUP" not in str(e) and "UNBLOCKED" not in str(e):
                raise
            self._logger.warning(
                "the group %s on %s is gone: creating it again", self.group, self.journal
            )
            self.ensure_group()
            return False
        if batch:
            self._handle(batch)
            return False
        if exit_when_idle:
            if self._pending() == 0:
                return True
            # Entries of another consumer, not idle long enough to claim yet.
            self._stop.wait(min(0.05, self.config.claim_idle_ms / 1000))
        return False

    def _claim(self) -> list[tuple[Position, dict[bytes, bytes] | None, int]]:
        """``XAUTOCLAIM`` entries idle for ``claim_idle_ms``, with their delivery counts."""
        cfg = self.config
        with redis_errors("XAUTOCLAIM", self.journal):
            reply: Any = self.client.xautoclaim(
                self.journal,
                self.group,
                self.consumer,
                cfg.claim_idle_ms,
                start_id=self._cursor,
                count=cfg.batch_size,
            )
        cursor, entries = reply[0], reply[1]
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        claimed = [(Position.parse(i), None if f is None else _fields(f)) for i, f in entries]
        if not claimed:
            return []
        self.claimed += len(claimed)
        self._logger.info(
            "claimed %d pending entries idle for %d ms or more (%s to %s)",
            len(claimed),
            cfg.claim_idle_ms,
            claimed[0][0],
            claimed[-1][0],
        )
        with redis_errors("XPENDING", self.journal):
            pending: Any = self.client.xpending_range(
                self.journal,
                self.group,
                str(claimed[0][0]),
                str(claimed[-1][0]),
                len(claimed),
                consumername=self.consumer,
            )
        counts = {Position.parse(p["message_id"]): int(p["times_delivered"]) for p in pending}
        # An entry no longer pending here was claimed by another worker meanwhile.
        return [(p, f, counts[p]) for p, f in claimed if p in counts]

    def _read_new(self, block: int | None) -> list[tuple[Position, dict[bytes, bytes] | None]]:
        """``XREADGROUP ... STREAMS <journal> >``: entries never delivered to the group."""
        with redis_errors("XREADGROUP", self.journal):
            reply: Any = self.client.xreadgroup(
                self.group,
                self.consumer,
                {self.journal: ">"},
                count=self.config.batch_size,
                block=block,
            )
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            (entries,) = reply.values()
            if (
                entries
                and isinstance(entries[0], list)
                and entries[0]
                and not isinstance(entries[0][0], bytes | str)
            ):
                entries = entries[0]
        else:
            entries = reply[0][1]
        return [(Position.parse(i), None if f is None else _fields(f)) for i, f in entries]

    def _pending(self) -> int:
        """``XPENDING <journal> <group>``: entries delivered and not acknowledged."""
        with redis_errors("XPENDING", self.journal):
            summary: Any = self.client.xpending(self.journal, self.group)
        return int(summary["pending"] if isinstance(summary, dict) else summary[0])

    def _handle(self, batch: Sequence[tuple[Position, dict[bytes, bytes] | None, int]]) -> None:
        """Hand each entry to the handler; ``XACK`` those done, park the hopeless."""
        cfg = self.config
        done: list[str] = []
        for position, fields, deliveries in batch:
            if fields is None:  # deleted from the journal while pending: nothing to do
                done.append(str(position))
                continue
            if deliveries > cfg.max_deliveries:
                self._park(
                    position,
                    fields,
                    deliveries,
                    f"delivered {deliveries} times (more than {cfg.max_deliveries}) without "
                    "an acknowledgement: the workers handling it crashed or stalled each time",
                )
                continue
            try:
                self.handler(position, outcome_from_fields(fields))
            except OperationalError:
                raise  # Redis is unreachable: the batch is retried, nothing is parked for it
            except Exception as e:
                why = f"{type(e).__name__}: {e}"
                if deliveries >= cfg.max_deliveries:
                    self._park(position, fields, deliveries, why)
                else:
                    self.failed += 1
                    self._logger.warning(
                        "the handler failed on %s (delivery %d of %d): %s; it is retried "
                        "after %d ms",
                        position,
                        deliveries,
                        cfg.max_deliveries,
                        why,
                        cfg.claim_idle_ms,
                    )
                continue
            done.append(str(position))
            self.handled += 1
        if done:
            with redis_errors("XACK", self.journal):
                self.client.xack(self.journal, self.group, *done)

    def _park(
        self, position: Position, fields: Mapping[bytes, bytes], deliveries: int, reason: str
    ) -> None:
        """``MULTI``; ``XADD <parked> * ...``; ``XACK``; ``EXEC``: parked exactly once."""
        entry: dict[bytes, bytes | str | int] = {
            b"position": str(position),
            b"group": self.group,
            b"consumer": self.consumer,
            b"deliveries": deliveries,
            b"reason": reason[:2000],
            b"parked_ms": int(time.time() * 1000),
        }
        for name, value in fields.items():
            entry[_FIELD_PREFIX + name] = value
        with redis_errors("MULTI/XADD/XACK (park)", self.parked_key):
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(self.parked_key, entry)  # type: ignore[arg-type]
            pipe.xack(self.journal, self.group, str(position))
            pipe.execute()
        self.parked += 1
        self._logger.error(
            "parked %s in %s after %d deliveries: %s", position, self.parked_key, deliveries, reason
        )


def parked_messages(
    client: redis.Redis, stream: str, group: str, limit: int = 1_000
) -> list[ParkedMessage]:
    """The first ``limit`` parked messages of ``group``, oldest first
    (``XRANGE <stream>:parked:<group> - + COUNT limit``). Raises
    ``IntegrityError`` for an entry that is not a parked message."""
    key = parked_key(stream, group)
    with redis_errors("XRANGE", key):
        reply: Any = client.xrange(key, "-", "+", count=limit)
    out: list[ParkedMessage] = []
    for entry_id, raw in reply:
        f = _fields(raw)
        try:
            out.append(
                ParkedMessage(
                    Position.parse(entry_id),
                    Position.parse(f[b"position"]),
                    f[b"group"].decode(),
                    f[b"consumer"].decode("utf-8", "replace"),
                    int(f[b"deliveries"]),
                    f[b"reason"].decode("utf-8", "replace"),
                    int(f[b"parked_ms"]),
                    {
                        k[len(_FIELD_PREFIX) :]: v
                        for k, v in f.items()
                        if k.startswith(_FIELD_PREFIX)
                    },
                )
            )
        except (KeyError, ValueError) as e:
            raise IntegrityError(
                f"{key} holds an entry {entry_id!r} that is not parked: {e}"
            ) from e
    return out


def redrive(
    client: redis.Redis, stream: str, group: str, position: Position, handler: Handler
) -> int:
    """Hand the parked outcome of ``position`` to ``handler`` once more, then delete
    its parked entries (``XDEL``); returns how many were deleted (0: none parked
    there). The handler's exception propagates and nothing is deleted then."""
    key = parked_key(stream, group)
    found = [m for m in parked_messages(client, stream, group, 10**6) if m.position == position]
    if not found:
        return 0
    handler(position, outcome_from_fields(found[0].fields))
    with redis_errors("XDEL", key):
        return int(client.xdel(key, *[str(m.id) for m in found]))


def _fields(raw: Mapping[Any, Any]) -> dict[bytes, bytes]:
    return {
        (k if isinstance(k, bytes) else str(k).encode()): (
            v if isinstance(v, bytes) else str(v).encode()
        )
        for k, v in raw.items()
    }

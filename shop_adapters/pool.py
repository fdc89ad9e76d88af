"""A pool of runners serving many logs (partitions), generic over the domain.

Each partition (one tenant's log: its stream and companion keys, all with one hash
tag) has exactly one writer, fenced in the store. A pool spreads the partitions over
worker processes, in the manner of Kafka's consumer groups and Axon's segment
claims, with the lease of each log as the claim:

- **Registry.** The partitions are the members of a Redis set (``registry``);
  producers add theirs (:func:`register`, ``SADD``) before their first append.
- **Membership.** Each worker renews its heartbeat every ``tick_s`` in the sorted set
  ``<workers>`` (member: its id; score: expiry, from the server's ``TIME``): one
  ``EVALSHA`` of :data:`HEARTBEAT`, which also drops expired members and returns the
  live ones and their held counts with the registry's size, an epoch counter bumped
  on every hand-over (``INCR``) and the number of halted partitions. The pool's own keys share the
  registry's slot (:class:`PoolKeys`), so that is one command on one node.
- **Fair share.** The active partitions are shared out by :func:`shares`: each
  worker ``partitions // workers`` of them, one more for the first ``partitions %
  workers`` workers by how many they hold now (each heartbeat reports its count in
  the hash ``<held>``); no worker exceeds ``ceil(partitions / workers)``
  (:func:`fair_share`) and the shares add up to the partitions, so a worker that
  joins gets its share even when the ceiling does not change. Above its share a
  worker releases the partitions it ranks lowest; below it, it claims those it
  ranks highest among the ones nobody holds (rendezvous hashing of worker id and
  partition id: workers prefer different partitions, so they rarely race for one).
  When a worker joins, the others release only their excess: only the partitions
  that move change hands. A worker claims nothing on its first tick, so workers
  started together see each other before any takes more than its share. When one
  dies, its heartbeat and leases expire after the lease TTL and the others' shares
  grow to cover its partitions.
- **Claim.** A claim runs in a thread of its own: the runner restores the stored
  snapshot (before the lease, as the single-log runner does), takes the lease
  (:class:`~shop_adapters.lease.Lease`: ``SET NX PX`` and a fencing token, renewed by
  a thread every ``ttl/3``; owner ``<worker id>#<claim number>``), then runs:
  catch-up, follow, snapshots. Its snapshot writes, outcomes and dead letters are
  fenced by the lease in the same Lua script as the write
  (``RedisSnapshotStore.for_lease``, :mod:`shop_adapters.fenced`).
- **Release.** ``Runner.stop()``: the run ends after its batch, writes its final
  snapshot while it still holds the lease, then the lease is deleted and the epoch
  bumped, so the next holder restores that snapshot.
- **Lease lost** (the process paused past its TTL): the runner is abandoned without
  a final snapshot; anything it still tries to write is refused by the store.
- **Failover** (:class:`~shop_adapters.redis_cluster.RoutedLog`): when the master
  serving a partition's slot changes, its runner is abandoned and a new one restores
  the stored snapshot and checks that the log still holds what the old one folded
  (``Runner.expect``); records lost with the old master stop it with
  ``IntegrityError``, and outcomes or dead letters lost with it are written again
  by the re-fold.
- **Memory.** A worker remembers, per partition, the checkpoint (position, records,
  anchor) of what its runners folded; when it claims that partition again, even
  after losing its lease, the new runner expects the log to still hold it. An
  operator's decision recorded in the partition's audit stream (``--accept-gap`` or
  ``--accept-rollback`` of the single-log runner) after it was halted releases that
  expectation.
- **Halted.** A partition whose runner stops for want of history
  (``GapError``/``IntegrityError``) or a permanent refusal is recorded in the hash
  ``<halted>`` (``HSET <id> {"error", "at", "worker"}``) and left alone for
  ``halt_retry_s``, then tried again (an operator may have resolved it meanwhile,
  with the single-log runner's ``--accept-gap``/``--accept-rollback``); the field is
  deleted (``HDEL``) once a runner of it has caught up.

Inside a worker, each claimed partition has its own thread (plus the runner's
snapshot writer, read-ahead and lease renewal threads). A blocking read
(``XREAD BLOCK``) waits on its own connection with the interpreter lock released, so
it never holds up the others; folding is bound by the interpreter lock, so one
worker process folds on about one core, and more cores take more processes
(``benchmarks/pool_bench.py`` measures both).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from logging import ERROR, INFO, WARNING
from typing import Any

import redis

from .catchup import Batch, Checkpoint
from .domain import Domain
from .errors import FencedError, IntegrityError, OperationalError, PermanentError
from .fenced import FencedOutcomeJournal, FencedStreamLog
from .history import RedisSnapshotHistory
from .keys import StreamKeys
from .lease import Lease, default_owner
from .protocols import ORIGIN, EventLog, Position, SnapshotStore
from .redis_cluster import ReplicatedSnapshotStore, ReplicaWait, RoutedLog, pinned
from .redis_errors import redis_errors
from .retry import Stopped, event
from .runner import Runner, RunnerConfig, RunnerObserver
from .snapshots.redis import RedisSnapshotStore

__all__ = [
    "HEARTBEAT",
    "PoolConfig",
    "PoolKeys",
    "PoolView",
    "Worker",
    "fair_share",
    "pool_status",
    "rank",
    "register",
    "shares",
]

_log = logging.getLogger("shop.pool")

HEARTBEAT = """
-- KEYS[1]: workers (sorted set, score = expiry in ms of the server's clock); KEYS[2]: the
-- registry (set); KEYS[3]: the epoch (counter); KEYS[4]: halted (hash); KEYS[5]: held
-- (hash: worker id -> partitions it holds).
-- ARGV[1]: this worker's id; ARGV[2]: its time to live, ms ('0': leave the pool);
-- ARGV[3]: how many partitions it holds.
-- Returns {now ms, {live worker ids}, {their held counts}, registry size, epoch, halted}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(gone) do
  redis.call('HDEL', KEYS[5], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local held = {}
for i, id in ipairs(live) do
  held[i] = redis.call('HGET', KEYS[5], id) or '0'
end
return {now, live, held, redis.call('SCARD', KEYS[2]), redis.call('GET', KEYS[3]) or '0',
        redis.call('HLEN', KEYS[4])}
"""
"""One round trip per tick: heartbeat, membership, and what changed (``EVALSHA``)."""


def _tag(key: str) -> str:
    """The hash tag that places keys in ``key``'s slot: ``key``'s own tag if it has one
    (``{t}...``), else ``{key}`` (a key without a tag hashes as a whole, so ``shops``
    and ``{shops}:workers`` share a slot)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start >= 0 and end > start + 1:
        return key[start : end + 1]
    return "{" + key + "}"


@dataclass(frozen=True, slots=True)
class PoolKeys:
    """The pool's keys, all in the registry's hash slot (one node answers a tick):
    ``registry`` (set of partition ids), ``workers`` (sorted set of heartbeats),
    ``epoch`` (hand-over counter), ``halted`` (hash of halted partitions), ``held``
    (hash: how many partitions each live worker holds, as its last heartbeat said).

    >>> keys = PoolKeys.for_registry("shops")
    >>> keys.registry, keys.workers, keys.epoch, keys.halted
    ('shops', '{shops}:workers', '{shops}:epoch', '{shops}:halted')
    """

    registry: str
    workers: str
    epoch: str
    halted: str
    held: str

    @classmethod
    def for_registry(cls, registry: str) -> PoolKeys:
        """The keys of the pool serving ``registry`` (``ValueError`` if empty)."""
        if not registry:
            raise ValueError("the registry key must not be empty")
        tag = _tag(registry)
        return cls(registry, f"{tag}:workers", f"{tag}:epoch", f"{tag}:halted", f"{tag}:held")


def register(
    client: redis.Redis, registry: str, partition: str, wait: ReplicaWait | None = None
) -> bool:
    """Add ``partition`` to ``registry`` (``SADD``); whether it is new. With ``wait``,
    the ``SADD`` and a ``WAIT`` go over one connection to the registry's master (a
    registration lost in a failover would leave a log nobody serves). Call it before
    the partition's first append. Raises ``OperationalError``/``PermanentError``."""
    if not partition:
        raise ValueError("a partition id must not be empty")
    if wait is None:
        with redis_errors("SADD", registry):
            return bool(client.sadd(registry, partition))
    with redis_errors("SADD", registry), pinned(client, registry) as one:
        added = bool(one.sadd(registry, partition))
        wait.confirm(one, f"SADD {registry}")
    return added


def pool_status(
    client: redis.Redis, keys_for: Callable[[str], StreamKeys], pool_keys: PoolKeys
) -> dict[str, Any]:
    """What the pool looks like now, read-only: ``{"workers": [{"id", "expires_ms"}],
    "partitions": [{"id", "holder", "token", "halted"}], "share": int}`` where
    ``holder`` is the lease owner (``<worker id>#<claim>``) or ``None``, ``token`` the
    last fencing token drawn, ``halted`` the recorded error or ``None``, and ``share``
    the fair share of the live workers. Commands: ``ZRANGE <workers> 0 -1 WITHSCORES``,
    ``TIME``, ``SMEMBERS <registry>``, ``HGETALL <halted>``, then ``GET`` of each lease
    and token key (pipelined). Raises ``OperationalError``/``PermanentError``."""
    with redis_errors("ZRANGE/SMEMBERS/HGETALL", pool_keys.registry):
        seconds, micros = client.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        raw_workers: Any = client.zrange(pool_keys.workers, 0, -1, withscores=True)
        members: Any = client.smembers(pool_keys.registry)
        halted: Any = client.hgetall(pool_keys.halted)
    workers = [
        {"id": _text(w), "expires_ms": int(score)} for w, score in raw_workers if score > now
    ]
    ids = sorted(_text(m) for m in members)
    keys = [keys_for(p) for p in ids]
    with redis_errors("GET (leases)", pool_keys.registry):
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.get(k.lease)
            pipe.get(k.lease_token)
        replies = pipe.execute() if keys else []
    errors = {_text(f): json.loads(_text(v)).get("error") for f, v in halted.items()}
    partitions = [
        {
            "id": p,
            "holder": None if replies[2 * i] is None else _text(replies[2 * i]),
            "token": None if replies[2 * i + 1] is None else int(replies[2 * i + 1]),
            "halted": errors.get(p),
        }
        for i, p in enumerate(ids)
    ]
    active = sum(1 for p in partitions if p["halted"] is None)
    return {"workers": workers, "partitions": partitions, "share": fair_share(active, len(workers))}


def fair_share(partitions: int, workers: int) -> int:
    """How many partitions a worker aims to hold: ``ceil(partitions / workers)``.

    >>> fair_share(16, 3), fair_share(16, 4), fair_share(0, 2), fair_share(5, 0)
    (6, 4, 0, 5)
    """
    return math.ceil(partitions / max(1, workers))


def shares(partitions: int, held: dict[str, int]) -> dict[str, int]:
    """Each live worker's share: ``partitions // workers``, one more for the first
    ``partitions % workers`` of them by how many they hold now (most first; ties by
    id). The shares add up to ``partitions`` and differ by at most one, none exceeds
    :func:`fair_share`, and the workers that hold the most keep the extra ones, so a
    change moves as few partitions as it can. Every worker computes the same answer
    from the same heartbeat view.

    >>> shares(16, {"a": 6, "b": 6, "c": 4})
    {'a': 6, 'b': 5, 'c': 5}
    >>> shares(16, {"a": 6, "b": 5, "c": 5, "d": 0})
    {'a': 4, 'b': 4, 'c': 4, 'd': 4}
    >>> shares(1000, {f"w{i:03}": 10 for i in range(100)} | {f"n{i}": 0 for i in range(5)})["n0"]
    9
    """
    if not held:
        return {}
    base, extra = divmod(partitions, len(held))
    order = sorted(held, key=lambda w: (-held[w], w))
    return {w: base + (1 if i < extra else 0) for i, w in enumerate(order)}


def rank(worker: str, partitions: list[str]) -> list[str]:
    """``partitions`` in ``worker``'s order of preference (rendezvous hashing: the
    highest BLAKE2b of ``worker`` and the id first). Workers differ in their orders,
    so they rarely race for the same free partition; the order of one worker is
    stable, so it releases the same ones first."""

    def score(partition: str) -> bytes:
        return hashlib.blake2b(f"{worker}\0{partition}".encode(), digest_size=8).digest()

    return sorted(partitions, key=score, reverse=True)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """How a pool worker behaves.

    - ``lease_ttl_s``: seconds a partition's lease, and the worker's heartbeat, live
      without renewal (a dead worker's partitions move after about this long);
    - ``tick_s``: seconds between heartbeats and rebalancing rounds;
    - ``halt_retry_s``: seconds before a halted partition is tried again;
    - ``probe_every_s``: while below its share with nothing changing, how often a
      worker looks for partitions whose lease expired (``None``: ``lease_ttl_s``);
    - ``wait``: a :class:`~shop_adapters.redis_cluster.ReplicaWait` for snapshot
      writes (``None``: do not wait for replicas).
    """

    lease_ttl_s: float = 10.0
    tick_s: float = 0.5
    halt_retry_s: float = 60.0
    probe_every_s: float | None = None
    wait: ReplicaWait | None = None

    def __post_init__(self) -> None:
        if not self.lease_ttl_s >= 0.1:
            raise ValueError(f"lease_ttl_s must be >= 0.1 seconds, got {self.lease_ttl_s}")
        if not 0 < self.tick_s < self.lease_ttl_s:
            raise ValueError(
                f"tick_s must be > 0 and below lease_ttl_s ({self.lease_ttl_s}), got {self.tick_s}"
            )
        if not self.halt_retry_s >= 0:
            raise ValueError(f"halt_retry_s must be >= 0 seconds, got {self.halt_retry_s}")


@dataclass(frozen=True, slots=True)
class PoolView:
    """What one tick saw: ``now_ms`` (server clock), ``workers`` (live ids, sorted),
    ``held`` (how many partitions each said it holds), ``registry_size``, ``epoch`` and
    ``halted`` (count)."""

    now_ms: int
    workers: tuple[str, ...]
    held: dict[str, int]
    registry_size: int
    epoch: int
    halted: int


class _ClaimLease(Lease):
    """A :class:`Lease` taken in one attempt (a pool never waits for a partition)."""

    def claim(self, on_lost: Callable[[str], None]) -> int | None:
        """``try_acquire`` and, if taken, start renewing; the token or ``None``."""
        token = self.try_acquire()
        if token is not None:
            self._start_renewing(on_lost)
        return token


class _Observer:
    """Tells the slot when its runner caught up; passes everything on to ``inner``."""

    def __init__(self, slot: _Slot, inner: RunnerObserver | None) -> None:
        self.slot = slot
        self.inner = inner

    def restored(self, seconds: float, position: Position, records: int) -> None:
        if self.inner is not None:
            self.inner.restored(seconds, position, records)

    def batch(self, batch: Batch, seconds: float, records_total: int) -> None:
        if self.inner is not None:
            self.inner.batch(batch, seconds, records_total)

    def snapshot(self, written: bool, seconds: float) -> None:
        if self.inner is not None:
            self.inner.snapshot(written, seconds)

    def phase(self, following: bool) -> None:
        if following:
            self.slot.caught_up()
        if self.inner is not None:
            self.inner.phase(following)


class _Slot:
    """One partition this worker claimed or is claiming; served by its own thread."""

    def __init__(self, worker: Worker, partition: str, seq: int) -> None:
        self.worker = worker
        self.partition = partition
        self.keys = worker.keys_for(partition)
        self.owner = f"{worker.worker_id}#{seq}"
        self.logger = worker.logger.getChild(partition)
        self.lease = _ClaimLease(
            worker.client,
            self.keys.stream,
            ttl_ms=max(100, round(worker.config.lease_ttl_s * 1000)),
            owner=self.owner,
            snapshot_key=self.keys.snapshot,
        )
        self.state = "claiming"
        """``claiming`` (restoring, then taking the lease), ``running``, ``releasing``,
        ``done`` (the thread ended: see :attr:`outcome`)."""
        self.outcome: str | None = None
        """Why the thread ended: ``taken`` (another holds it), ``released``,
        ``lost`` (lease lost), ``halted``, ``failed``."""
        self.token: int | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.claimed_at: float | None = None
        self.caught_up_at: float | None = None
        self._release = threading.Event()
        self._restart: str | None = None
        self._runner: Runner[Any, Any] | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, name=f"pool-{partition}", daemon=True)

    # -- control, from the worker's thread ----------------------------------------------

    def release(self, why: str) -> None:
        """End the run (final snapshot), then give the lease up."""
        with self._lock:
            if self._release.is_set():
                return
            self._release.set()
            if self.state in ("claiming", "running"):
                self.state = "releasing"
            runner = self._runner
        event(
            self.logger,
            INFO,
            "releasing",
            "releasing %s (%s)",
            self.partition,
            why,
            partition=self.partition,
            reason=why,
        )
        if runner is not None:
            runner.stop()

    @property
    def holding(self) -> bool:
        """Whether this slot counts towards the worker's share."""
        return self.state in ("claiming", "running")

    # -- callbacks, from other threads -----------------------------------------------------

    def caught_up(self) -> None:
        if self.caught_up_at is None:
            self.caught_up_at = time.monotonic()
            event(
                self.logger,
                INFO,
                "partition_caught_up",
                "%s caught up %.3f s after the claim began",
                self.partition,
                self.caught_up_at - self.started,
                partition=self.partition,
                seconds=round(self.caught_up_at - self.started, 3),
            )
        self.worker._resumed(self.partition)

    def _lost(self, reason: str) -> None:
        with self._lock:
            runner = self._runner
        if runner is not None:
            runner.abandon(f"lease lost: {reason}")

    def _moved(self, old: str, new: str) -> None:
        with self._lock:
            self._restart = f"the master serving {self.keys.stream} changed from {old} to {new}"
            runner = self._runner
        if runner is not None:
            runner.abandon(self._restart)

    # -- the thread ---------------------------------------------------------------------

    def _new_runner(self, expected: Checkpoint | None) -> Runner[Any, Any]:
        w = self.worker
        client = w.client
        keys = self.keys
        log = RoutedLog(
            FencedStreamLog(
                client, keys.stream, keys.dead, lease_key=self.lease.key, owner=self.owner
            ),
            on_change=self._moved,
        )
        store: SnapshotStore
        if w.config.wait is not None:
            store = ReplicatedSnapshotStore.for_lease_waiting(
                client, keys.snapshot, self.lease, keys.stream, w.config.wait
            )
        else:
            store = RedisSnapshotStore.for_lease(client, keys.snapshot, self.lease, keys.stream)
        journal = FencedOutcomeJournal(client, keys.outcomes, self.lease.key, self.owner)
        inner = w.observer_for(self.partition, log) if w.observer_for is not None else None
        runner: Runner[Any, Any] = Runner(
            log,
            store,
            w.domain,
            w.runner_config,
            journal=journal,
            observer=_Observer(self, inner),
            logger=self.logger,
            history=RedisSnapshotHistory(client, keys.history),
        )
        if expected is not None:
            runner.expect(expected)
        with self._lock:
            self._runner = runner
            self._restart = None
            if self._release.is_set():
                runner.stop()
        return runner

    def _serve(self) -> None:
        try:
            self._serve_inner()
        except (IntegrityError, PermanentError) as e:  # GapError is an IntegrityError
            self.error = e
            self.outcome = "halted"
            self.worker._halt(self, e)
        except Stopped:
            self.outcome = "released"
        except FencedError as e:
            self.error = e
            self.outcome = "lost"
            event(
                self.logger,
                WARNING,
                "fenced",
                "%s: a write was refused by the store: %s",
                self.partition,
                e,
                partition=self.partition,
            )
        except OperationalError as e:
            self.error = e
            self.outcome = "failed"
            event(self.logger, ERROR, "partition_failed", "%s: %s", self.partition, e)
        except Exception as e:  # a thread must not die silently
            self.error = e
            self.outcome = "failed"
            self.logger.exception("%s: unexpected error", self.partition)
        finally:
            self.lease.release()
            self.state = "done"
            self.worker._ended(self)

    def _serve_inner(self) -> None:
        runner = self._new_runner(self.worker._expected(self.partition, self.keys))
        try:
            runner.restore()  # before the lease: no lease expires while it decodes
        except Stopped:
            self.outcome = "released"
            return
        if self._release.is_set():
            self.outcome = "released"
            return
        retry = self.worker.runner_config.retry
        token: int | None = None
        for attempt in retry.attempts(f"claiming {self.partition}", stop=self._release):
            with attempt:
                token = self.lease.claim(self._lost)
        if token is None:
            self.outcome = "taken"
            return
        self.token = token
        self.claimed_at = time.monotonic()
        with self._lock:
            if self.state == "claiming":
                self.state = "running"
        event(
            self.logger,
            INFO,
            "claimed",
            "claimed %s (fencing token %d; restored in %.3f s)",
            self.partition,
            token,
            runner.restore_seconds or 0.0,
            partition=self.partition,
            token=token,
            owner=self.owner,
            restore_s=round(runner.restore_seconds or 0.0, 4),
        )
        while True:
            summary = runner.run()
            # The run passed its history check: what it folded is what to expect next.
            self.worker._remember(self.partition, runner.checkpoint)
            with self._lock:
                restart = self._restart
            if self._release.is_set():
                self.outcome = "released"
                event(
                    self.logger,
                    INFO,
                    "released",
                    "released %s at %s (%s)",
                    self.partition,
                    summary.last_position,
                    summary.stop_reason,
                    partition=self.partition,
                    position=str(summary.last_position),
                    records=summary.total_records,
                )
                return
            if self.lease.token is None:
                self.outcome = "lost"
                event(
                    self.logger,
                    WARNING,
                    "lease_lost",
                    "%s: %s",
                    self.partition,
                    summary.stop_reason,
                    partition=self.partition,
                )
                return
            if restart is None:
                self.outcome = "failed"
                event(
                    self.logger,
                    ERROR,
                    "partition_stopped",
                    "%s stopped: %s",
                    self.partition,
                    summary.stop_reason,
                )
                return
            event(
                self.logger,
                WARNING,
                "restart",
                "%s; restarting from the stored snapshot, expecting what was folded (%s)",
                restart,
                runner.position,
                partition=self.partition,
                position=str(runner.position),
            )
            runner = self._new_runner(runner.checkpoint)


class Worker:
    """One member of a pool (see the module docstring).

    - ``client``: a ``redis.Redis`` or ``RedisCluster``
      (:func:`shop_adapters.redis_cluster.connect`), shared by every partition's runner
      (its connection pools are thread-safe; the client's ``socket_timeout`` must
      exceed ``runner_config.block_ms``);
    - ``keys_for``: the keys of a partition id (the shop: ``StreamKeys.for_shop``);
    - ``domain``: what every partition folds; ``runner_config``: how each runner runs
      (``tune_gc`` is forced off: the process is shared);
    - ``pool_keys``: :class:`PoolKeys`; ``config``: :class:`PoolConfig`;
    - ``worker_id``: default :func:`~shop_adapters.lease.default_owner`;
    - ``observer_for(partition, log)``: a runner observer per partition (metrics), or ``None``.

    :meth:`run` serves until its ``stop`` event is set, then releases everything
    (final snapshots) and leaves the pool.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys_for: Callable[[str], StreamKeys],
        domain: Domain[Any, Any],
        runner_config: RunnerConfig,
        pool_keys: PoolKeys,
        config: PoolConfig | None = None,
        *,
        worker_id: str | None = None,
        observer_for: Callable[[str, EventLog], RunnerObserver | None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.client = client
        self.keys_for = keys_for
        self.domain = domain
        self.runner_config = replace(runner_config, tune_gc=False, progress=False)
        self.pool_keys = pool_keys
        self.config = config or PoolConfig()
        self.worker_id = worker_id or default_owner()
        self.observer_for = observer_for
        self.logger = logger or _log
        self._heartbeat = client.register_script(HEARTBEAT)
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._partitions: list[str] = []
        self._registry_size = -1
        self._halted: dict[str, float] = {}
        self._folded: dict[str, Checkpoint] = {}
        self._halted_count = -1
        self._last_change = time.monotonic()
        self._last_probe = 0.0
        self._seen: tuple[tuple[str, ...], int, int, int] | None = None
        self._target = 0
        self.view: PoolView | None = None
        """What the last tick saw."""
        self.ticks = 0
        self.last_tick = 0.0
        """``time.monotonic()`` of the last tick that reached Redis."""

    # -- what it holds ------------------------------------------------------------------

    def holding(self) -> list[str]:
        """The partitions this worker holds or is claiming, sorted."""
        with self._lock:
            return sorted(p for p, s in self._slots.items() if s.holding)

    def slots(self) -> dict[str, dict[str, Any]]:
        """Each slot's ``state``, ``token``, ``outcome`` and ``caught_up`` (bool)."""
        with self._lock:
            return {
                p: {
                    "state": s.state,
                    "token": s.token,
                    "outcome": s.outcome,
                    "caught_up": s.caught_up_at is not None,
                }
                for p, s in self._slots.items()
            }

    # -- the loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Tick every ``tick_s`` until ``stop`` is set; then :meth:`shutdown`.
        A tick that cannot reach Redis is logged and retried at the next tick."""
        event(
            self.logger,
            INFO,
            "pool_join",
            "worker %s joins the pool of %s",
            self.worker_id,
            self.pool_keys.registry,
            worker=self.worker_id,
            registry=self.pool_keys.registry,
        )
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except OperationalError as e:
                    event(self.logger, WARNING, "tick_failed", "pool tick failed: %s", e)
                stop.wait(self.config.tick_s)
        finally:
            self.shutdown()

    def tick(self) -> PoolView:
        """One round: heartbeat, forget ended claims, release the excess or claim up to
        the fair share. Raises ``OperationalError`` if Redis cannot be reached."""
        view = self._beat(self.config.lease_ttl_s)
        self.view = view
        self.ticks += 1
        self.last_tick = time.monotonic()
        changed = (view.workers, view.registry_size, view.epoch, view.halted) != self._seen
        if changed:
            self._seen = (view.workers, view.registry_size, view.epoch, view.halted)
            self._last_change = time.monotonic()
        if view.registry_size != self._registry_size:
            self._partitions = self._members()
            self._registry_size = view.registry_size
        if view.halted != self._halted_count or view.halted:
            self._halted = self._read_halted() if view.halted else {}
            self._halted_count = view.halted
        active = [p for p in self._partitions if not self._blocked(p, view.now_ms)]
        target = shares(len(active), view.held).get(self.worker_id, 0)
        if target != self._target:
            event(
                self.logger,
                INFO,
                "share",
                "share %d of %d partitions (%d workers)",
                target,
                len(active),
                len(view.workers),
                target=target,
                partitions=len(active),
                workers=len(view.workers),
            )
            self._target = target
        self._rebalance(active, target)
        return view

    def _beat(self, ttl_s: float) -> PoolView:
        k = self.pool_keys
        with self._lock:
            mine = sum(1 for s in self._slots.values() if s.holding)
        with redis_errors("EVALSHA (pool heartbeat)", k.workers):
            raw: Any = self._heartbeat(
                keys=[k.workers, k.registry, k.epoch, k.halted, k.held],
                args=[self.worker_id, round(ttl_s * 1000), mine],
            )
        now, members, counts, size, epoch, halted = raw
        held = {_text(m): int(c) for m, c in zip(members, counts, strict=True)}
        workers = tuple(sorted(held))
        return PoolView(int(now), workers, held, int(size), int(epoch), int(halted))

    def _members(self) -> list[str]:
        with redis_errors("SMEMBERS", self.pool_keys.registry):
            raw: Any = self.client.smembers(self.pool_keys.registry)
        return sorted(_text(m) for m in raw)

    def _read_halted(self) -> dict[str, float]:
        with redis_errors("HGETALL", self.pool_keys.halted):
            raw: Any = self.client.hgetall(self.pool_keys.halted)
        out: dict[str, float] = {}
        for field, value in raw.items():
            try:
                at = float(json.loads(_text(value)).get("at", 0))
            except (ValueError, AttributeError):
                at = 0.0
            out[_text(field)] = at
        return out

    def _blocked(self, partition: str, now_ms: int) -> bool:
        at = self._halted.get(partition)
        return at is not None and now_ms - at < self.config.halt_retry_s * 1000

    def _rebalance(self, active: list[str], target: int) -> None:
        with self._lock:
            for p in [p for p, s in self._slots.items() if s.state == "done"]:
                del self._slots[p]
            held = [p for p, s in self._slots.items() if s.holding]
            busy = set(self._slots)
        order = rank(self.worker_id, active)
        position = {p: i for i, p in enumerate(order)}
        if len(held) > target:
            # Release the least preferred; those still claiming cost nothing to drop.
            def cost(p: str) -> tuple[int, int]:
                slot = self._slots[p]
                return (0 if slot.state == "claiming" else 1, -position.get(p, len(order)))

            for p in sorted(held, key=cost)[: len(held) - target]:
                self._slots[p].release(f"over the fair share of {target}")
            return
        gone = [p for p in held if p not in position]  # removed or halted meanwhile
        for p in gone:
            self._slots[p].release("no longer active")
        room = target - len(held)
        if room <= 0 or self.ticks < 2:
            # A new worker claims nothing on its first tick: workers started together
            # then see each other before anyone claims more than its share.
            return
        now = time.monotonic()
        probe_every = self.config.probe_every_s or self.config.lease_ttl_s
        recent = now - self._last_change < 2 * self.config.lease_ttl_s
        if not recent and now - self._last_probe < probe_every:
            return
        self._last_probe = now
        candidates = [p for p in order if p not in busy]
        free = self._free(candidates)
        for p in free[:room]:
            self._claim(p)

    def _free(self, partitions: list[str]) -> list[str]:
        """Those of ``partitions`` whose lease nobody holds (``GET`` of each lease key,
        pipelined: grouped by node in a cluster), in the given order."""
        if not partitions:
            return []
        keys = [self.keys_for(p).lease for p in partitions]
        with redis_errors("GET (leases)", keys[0]):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            holders = pipe.execute()
        return [p for p, h in zip(partitions, holders, strict=True) if h is None]

    def _claim(self, partition: str) -> None:
        slot = _Slot(self, partition, next(self._seq))
        with self._lock:
            if partition in self._slots:
                return
            self._slots[partition] = slot
        slot.thread.start()

    # -- callbacks from slot threads ----------------------------------------------------

    def _ended(self, slot: _Slot) -> None:
        if slot.outcome in ("released", "lost", "halted", "failed"):
            # Tell the others a partition is free (they look for one at once).
            try:
                with redis_errors("INCR", self.pool_keys.epoch):
                    self.client.incr(self.pool_keys.epoch)
            except (OperationalError, PermanentError):
                pass  # they find it by their periodic probe

    def _halt(self, slot: _Slot, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"
        event(
            slot.logger,
            ERROR,
            "halted",
            "%s halted: %s",
            slot.partition,
            text,
            partition=slot.partition,
            error=type(error).__name__,
        )
        entry = {
            "error": text[:2000],
            "at": self.view.now_ms if self.view else 0,
            "worker": self.worker_id,
        }
        try:
            with redis_errors("HSET", self.pool_keys.halted):
                self.client.hset(self.pool_keys.halted, slot.partition, json.dumps(entry))
        except (OperationalError, PermanentError) as e:
            event(slot.logger, WARNING, "halt_not_recorded", "halt not recorded: %s", e)

    def _remember(self, partition: str, checkpoint: Checkpoint) -> None:
        if checkpoint.position != ORIGIN:
            with self._lock:
                self._folded[partition] = checkpoint

    def _expected(self, partition: str, keys: StreamKeys) -> Checkpoint | None:
        """What this process folded of ``partition`` before (its log must still hold it),
        unless an operator decided since it was halted (an ``--accept-*`` entry in the
        partition's audit stream newer than the halt: ``XREVRANGE <audit> + - COUNT 1``)."""
        with self._lock:
            expected = self._folded.get(partition)
        halted_at = self._halted.get(partition)
        if expected is None or halted_at is None:
            return expected
        try:
            with redis_errors("XREVRANGE", keys.audit):
                last: Any = self.client.xrevrange(keys.audit, "+", "-", count=1)
        except (OperationalError, PermanentError):
            return expected
        if last and Position.parse(last[0][0]).major > halted_at:
            event(
                self.logger,
                INFO,
                "decided",
                "%s: an operator decided since it was halted (%s); not expecting %s",
                partition,
                keys.audit,
                expected.position,
                partition=partition,
            )
            with self._lock:
                self._folded.pop(partition, None)
            return None
        return expected

    def _resumed(self, partition: str) -> None:
        if partition not in self._halted:
            return
        try:
            with redis_errors("HDEL", self.pool_keys.halted):
                self.client.hdel(self.pool_keys.halted, partition)
        except (OperationalError, PermanentError):
            return
        event(
            self.logger, INFO, "resumed", "%s is no longer halted", partition, partition=partition
        )

    # -- leaving ------------------------------------------------------------------------

    def shutdown(self, timeout: float | None = None) -> None:
        """Release every partition (final snapshots, leases deleted), wait for their
        threads (at most ``timeout`` seconds in all; ``None``: as long as it takes), and
        leave the pool (the heartbeat is removed)."""
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            slot.release("the worker is stopping")
        deadline = None if timeout is None else time.monotonic() + timeout
        for slot in slots:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            slot.thread.join(left)
        with contextlib.suppress(OperationalError, PermanentError):
            self._beat(0)  # else the heartbeat expires by itself
        event(
            self.logger,
            INFO,
            "pool_leave",
            "worker %s left the pool",
            self.worker_id,
            worker=self.worker_id,
        )


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

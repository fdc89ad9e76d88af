"""A Redis Cluster as the store: the client, the route of a key, writes that wait for replicas.

- :func:`connect`: a ``redis.Redis`` or a ``RedisCluster`` (redis-py) for a URL,
  asking the server (``INFO cluster``) when not told. The cluster client is built
  with no retries of its own (``retry=Retry(NoBackoff(), 0)``): a lost node, a
  ``CLUSTERDOWN`` during a failover or a slot not yet covered reach the caller at
  once, classified by :func:`shop_adapters.redis_errors.classify` as
  ``OperationalError``, and are retried by the caller's one
  :class:`~shop_adapters.retry.RetryPolicy` (exponential back-off, full jitter), as a
  lost connection is. ``MOVED`` and ``ASK`` are followed by redis-py itself (it
  patches its slot map, or refreshes it with ``CLUSTER SLOTS``). It is typed as
  ``redis.Redis``: it offers the same command methods, scripts
  (``register_script``: ``EVALSHA`` to the node of the keys' slot, all keys in one
  slot) and pipelines (``ClusterPipeline``, grouped by node).
- :func:`route`: the ``host:port`` of the master serving a key now (redis-py's slot
  map; no command sent).
- :class:`RoutedLog`: an :class:`~shop_adapters.protocols.EventLog` that notices when
  the master serving its stream changed (a failover) and says so once, so the runner
  above it checks the log's continuity (or is restarted from its snapshot) before
  it reads on: a promoted replica may lack records the runner already folded.
- :func:`pinned`: a client whose every command goes over one connection to the
  master serving a key; :class:`ReplicaWait` sends ``WAIT <replicas> <timeout>`` on
  it after a write. ``WAIT`` counts the replicas that acknowledged the writes made
  *on that connection*, so it must follow the write on the same connection; redis-py's
  ``RedisCluster.wait()`` goes to a default node instead, and a ``WAIT`` retried on a
  fresh connection would count nothing and succeed at once (so pinned connections
  never retry).
- :class:`ReplicatedStreamLog` and :class:`ReplicatedSnapshotStore`: a
  :class:`~shop_adapters.logs.redis_stream.RedisStreamLog` whose appends, and a
  :class:`~shop_adapters.snapshots.redis.RedisSnapshotStore` whose writes, wait for
  the replicas. A write that fewer replicas than asked acknowledged in time raises
  :class:`NotReplicated` (an ``OperationalError``: the write is in, on the master
  only; retrying it is safe for keyed appends and for snapshots).

What ``WAIT`` buys: replication is asynchronous, so a master can acknowledge a
write and die before any replica has it; the promoted replica then lacks it.
``WAIT`` narrows that window to writes not yet acknowledged; it does not make Redis
strongly consistent (a replica that acknowledged may still lose the write if it
is not the one promoted). Source: Redis ``WAIT`` docs and cluster specification
("Write safety").
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from .errors import OperationalError
from .logs.redis_stream import RedisStreamLog
from .protocols import DeadLetter, LogHistory, Position, Record
from .redis_errors import REDIS_ERRORS, classify, redis_errors
from .snapshots.redis import RedisSnapshotStore

if TYPE_CHECKING:
    from .lease import Lease

__all__ = [
    "NotReplicated",
    "ReplicaWait",
    "ReplicatedSnapshotStore",
    "ReplicatedStreamLog",
    "RoutedLog",
    "connect",
    "is_cluster",
    "pinned",
    "route",
]


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a redis-py ``RedisCluster``."""
    return isinstance(client, RedisCluster)


def connect(
    url: str, block_ms: int = 1_000, *, cluster: bool | None = None, retry: bool = True
) -> redis.Redis:
    """A client for ``url`` with a ``socket_timeout`` of ``block_ms / 1000 + 5`` s.

    ``cluster``: ``True`` a ``RedisCluster`` (no retries of its own, see the
    module; ``require_full_coverage=False``, so the slots of the live masters serve
    while one master fails over), ``False`` a ``redis.Redis`` (``retry=False``: no
    automatic retry), ``None``: ``INFO cluster`` decides (``cluster_enabled:1``).
    The cluster client reads the topology (``CLUSTER SLOTS``) here.

    Raises ``ValueError`` for a malformed URL, ``OperationalError`` if no node
    answers, ``PermanentError`` if Redis refuses (wrong password...).
    """
    common: dict[str, Any] = {
        "socket_timeout": block_ms / 1000 + 5.0,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
    }
    if cluster is None:
        probe = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **common)
        try:
            with redis_errors("INFO cluster"):
                info: Any = probe.info("cluster")
        finally:
            probe.close()
        cluster = str(info.get("cluster_enabled", 0)) == "1"
    if not cluster:
        extra: dict[str, Any] = {} if retry else {"retry": Retry(NoBackoff(), 0)}
        return redis.Redis.from_url(url, **common, **extra)
    try:
        client = RedisCluster.from_url(
            url, retry=Retry(NoBackoff(), 0), require_full_coverage=False, **common
        )
    except REDIS_ERRORS as e:
        raise classify(e, "reading the cluster's topology (CLUSTER SLOTS)") from e
    return cast(redis.Redis, client)


def route(client: redis.Redis, key: str) -> str:
    """``host:port`` of the master serving ``key`` by the client's slot map (no command
    is sent); ``""`` for a plain client (one server: nothing to route)."""
    if not isinstance(client, RedisCluster):
        return ""
    node: Any = client.get_node_from_key(key)
    return str(node.name) if node is not None else ""


def _refresh(client: redis.Redis, key: str) -> None:
    """Let the cluster client learn where ``key`` lives now: a keyed command through it
    follows ``MOVED`` (patching the slot map) or, on a lost node, re-reads the topology."""
    if isinstance(client, RedisCluster):
        with suppress(*REDIS_ERRORS):
            client.exists(key)


_UNRETRIED: weakref.WeakKeyDictionary[Any, redis.ConnectionPool] = weakref.WeakKeyDictionary()
_UNRETRIED_LOCK = threading.Lock()


def _unretried(pool: redis.ConnectionPool) -> redis.ConnectionPool:
    """A pool like ``pool`` (same server, credentials, TLS) whose connections never retry."""
    with _UNRETRIED_LOCK:
        found = _UNRETRIED.get(pool)
        if found is None:
            kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
            found = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
            _UNRETRIED[pool] = found
        return found


@contextmanager
def pinned(client: redis.Redis, key: str) -> Iterator[redis.Redis]:
    """A ``redis.Redis`` bound to one connection (never retried) to the master serving
    ``key``: the client's own server, or the cluster node redis-py routes ``key`` to.
    The connection goes back to a pool (one per server) on exit.

    A Redis error inside (a ``MOVED`` from a node that no longer serves the slot, a
    lost node), raw or already an ``OperationalError``, first makes the cluster client
    refresh its route for ``key``, so the caller's retry goes to the right node; it
    propagates classified (:func:`~shop_adapters.redis_errors.classify`).
    """
    if isinstance(client, RedisCluster):
        node: Any = client.get_node_from_key(key)
        base = client.get_redis_connection(node).connection_pool
    else:
        base = client.connection_pool
    try:
        one = redis.Redis(connection_pool=_unretried(base), single_connection_client=True)
    except REDIS_ERRORS as e:
        _refresh(client, key)
        raise classify(e, f"connecting to the master of {key}", key) from e
    try:
        yield one
    except REDIS_ERRORS as e:
        _refresh(client, key)
        raise classify(e, f"a command on the master of {key}", key) from e
    except OperationalError:
        _refresh(client, key)
        raise
    finally:
        one.close()


class NotReplicated(OperationalError):
    """Fewer replicas than asked acknowledged a write within the time-out (it is on the
    master only, and would be lost if the master failed now)."""


class ReplicaWait:
    """``WAIT <replicas> <timeout_ms>`` after a write, on the connection that wrote.

    - ``replicas``: how many replicas must acknowledge (>= 1);
    - ``timeout_ms``: how long the master waits for them (>= 1; ``WAIT 0`` would wait
      for ever).

    :meth:`confirm` raises :class:`NotReplicated` if fewer acknowledged in time.
    """

    def __init__(self, replicas: int, timeout_ms: int = 1_000) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        if timeout_ms < 1:
            raise ValueError(f"timeout_ms must be >= 1 (WAIT 0 blocks for ever), got {timeout_ms}")
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.waits = 0
        """How many WAITs were sent (a figure for benchmarks)."""
        self.waited_s = 0.0
        """Seconds spent in them, in total."""
        self._lock = threading.Lock()

    @classmethod
    def of(cls, replicas: int, timeout_s: float) -> ReplicaWait | None:
        """From the command line's ``--wait-replicas N --wait-replicas-timeout SECONDS``:
        ``None`` for 0 replicas, else a wait of ``timeout_s`` rounded to ms (at least 1)."""
        return cls(replicas, max(1, round(timeout_s * 1000))) if replicas else None

    def confirm(self, connection: redis.Redis, what: str) -> int:
        """``WAIT`` on ``connection`` (a :func:`pinned` client that just wrote ``what``);
        the number of replicas that acknowledged. Raises :class:`NotReplicated`."""
        started = time.perf_counter()
        with redis_errors(f"WAIT after {what}"):
            reply: Any = connection.execute_command(  # type: ignore[no-untyped-call]
                "WAIT", self.replicas, self.timeout_ms
            )
            acked = int(reply)
        with self._lock:
            self.waits += 1
            self.waited_s += time.perf_counter() - started
        if acked < self.replicas:
            raise NotReplicated(
                f"{what}: {acked} of {self.replicas} replicas acknowledged within "
                f"{self.timeout_ms} ms (WAIT); the write is on the master only for now"
            )
        return acked


class ReplicatedStreamLog(RedisStreamLog):
    """A :class:`RedisStreamLog` whose :meth:`append` waits for replicas.

    Each call pipelines its ``XADD``\\ s and then ``WAIT`` over one pinned connection to
    the stream's master (:func:`pinned`, :class:`ReplicaWait`). Raises
    :class:`NotReplicated` when too few replicas acknowledged (the entries are in the
    log: an append retried with idempotency keys is applied once), else as
    :meth:`RedisStreamLog.append`.
    """

    def __init__(self, client: redis.Redis, stream: str, wait: ReplicaWait, **kwargs: Any) -> None:
        super().__init__(client, stream, **kwargs)
        self.wait = wait

    def append(self, entries: Sequence[Mapping[str | bytes, str | bytes | int]]) -> list[Position]:
        """``XADD <stream> * ...`` for each entry and ``WAIT``, on one connection."""
        if not entries:
            return []
        with pinned(self.client, self.stream) as one:
            positions = RedisStreamLog(
                one, self.stream, self.dead_stream, max_batch_bytes=None
            ).append(entries)
            self.wait.confirm(one, f"XADD of {len(entries)} entries to {self.stream}")
        return positions


class ReplicatedSnapshotStore(RedisSnapshotStore):
    """A :class:`RedisSnapshotStore` whose :meth:`write` waits for replicas.

    The guarded write (its ``EVALSHA``) and ``WAIT`` go over one pinned connection to
    the master of the snapshot key's slot. Since a master's replication stream is one
    sequence, a replica that acknowledged the snapshot also holds every write made
    before it on that master: the records, outcomes and dead letters it covers. Raises
    :class:`NotReplicated` (the snapshot is written on the master; the runner's writer
    retries), else as :meth:`RedisSnapshotStore.write`.
    """

    def __init__(self, client: redis.Redis, key: str, wait: ReplicaWait, **kwargs: Any) -> None:
        super().__init__(client, key, **kwargs)
        self.wait = wait

    @classmethod
    def for_lease_waiting(
        cls, client: redis.Redis, key: str, lease: Lease, stream: str, wait: ReplicaWait
    ) -> ReplicatedSnapshotStore:
        """As :meth:`RedisSnapshotStore.for_lease`, waiting for ``wait.replicas``."""
        return cls(
            client,
            key,
            wait,
            fencing_token=lease.fencing_token,
            lease_key=lease.key,
            owner=lease.owner,
            stream=stream,
        )

    def write(self, blob: bytes, at: tuple[Position, str] | None = None) -> None:
        """The write of :meth:`RedisSnapshotStore.write`, then ``WAIT``, on one connection."""
        with pinned(self.client, self.key) as one:
            RedisSnapshotStore(
                one,
                self.key,
                self.fencing_token,
                lease_key=self.lease_key,
                owner=self.owner,
                stream=self.stream,
            ).write(blob, at)
            self.wait.confirm(one, f"the snapshot write of {self.key}")


class RoutedLog:
    """An :class:`EventLog` over ``log`` that notices when its stream moved to another
    master (a failover, or a slot migration).

    Before each read, :func:`route` is compared with the route seen before; when it
    differs, ``on_change(old, new)`` is called once and the read raises
    :class:`~shop_adapters.errors.OperationalError`, so the runner above treats it as
    an outage: it checks that the log still holds what it folded before reading on
    (and a pool restarts it from its snapshot in ``on_change``). Writes pass through.
    """

    def __init__(
        self,
        log: RedisStreamLog,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.log = log
        self.client = log.client
        self.stream = log.stream
        self.on_change = on_change
        self._seen = route(log.client, log.stream)

    def _check(self) -> None:
        now = route(self.log.client, self.log.stream)
        if now == self._seen:
            return
        old, self._seen = self._seen, now
        if self.on_change is not None:
            self.on_change(old, now)
        raise OperationalError(
            f"the master serving {self.log.stream} changed from {old} to {now} (a failover?): "
            "checking the log before reading on"
        )

    def append(self, entries: Sequence[Mapping[str | bytes, str | bytes | int]]) -> list[Position]:
        """:meth:`RedisStreamLog.append`."""
        return self.log.append(entries)

    def read_after(self, position: Position, limit: int) -> list[Record]:
        """:meth:`RedisStreamLog.read_after`, after the route check."""
        self._check()
        return self.log.read_after(position, limit)

    def wait_after(self, position: Position, limit: int, timeout_ms: int) -> list[Record]:
        """:meth:`RedisStreamLog.wait_after`, after the route check."""
        self._check()
        return self.log.wait_after(position, limit, timeout_ms)

    def last_position(self) -> Position:
        """:meth:`RedisStreamLog.last_position`, after the route check."""
        self._check()
        return self.log.last_position()

    def first_position(self) -> Position:
        """:meth:`RedisStreamLog.first_position`, after the route check."""
        self._check()
        return self.log.first_position()

    def read_at(self, position: Position) -> Record | None:
        """:meth:`RedisStreamLog.read_at`, after the route check."""
        self._check()
        return self.log.read_at(position)

    def history(self) -> LogHistory:
        """:meth:`RedisStreamLog.history`, after the route check."""
        self._check()
        return self.log.history()

    def dead_letter(self, letter: DeadLetter) -> bool:
        """:meth:`RedisStreamLog.dead_letter`."""
        return self.log.dead_letter(letter)

    def dead_letters(self) -> list[DeadLetter]:
        """:meth:`RedisStreamLog.dead_letters`."""
        return self.log.dead_letters()

    def close(self) -> None:
        """Closes nothing: the log and its client belong to the caller."""

    def __repr__(self) -> str:
        return f"RoutedLog({self.log!r}, route={self._seen!r})"

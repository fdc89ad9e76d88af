"""Helpers of the pool tests (``tests/test_pool_*.py``) against a real local Redis Cluster.

- :class:`WorkerProcess`: ``python -m shop_adapters.redis_runner --pool`` as a
  subprocess with JSON logs, parsed line by line by a thread; a test waits on events
  (``claimed``, ``partition_caught_up``...) and on state in Redis, never on sleeps.
- :class:`Producer`: a thread appending keyed shop events to many shops, round robin,
  through :class:`~shop_adapters.shop_domain.client.ShopClient` (appends whose reply
  was lost are retried; the runner applies a key once).
- :func:`verify_shop`: the checks after each fault: the stored snapshot is at the
  stream's end and its digest equals the from-scratch fold; the outcome journal holds
  exactly one outcome per record, equal to the rebuild's; the dead letters are exactly
  the undecodable records.
- :func:`holders`, :func:`tokens`: who holds each shop's lease, and its fencing token.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from reliability_support import RunnerProcess, python_m, run_module, wait_until  # noqa: F401 (for the tests)

from shop_adapters.catchup import replay
from shop_adapters.idempotency import KEY_FIELD
from shop_adapters.inspect_commands import latest_snapshot
from shop_adapters.journals import RedisOutcomeJournal
from shop_adapters.keys import StreamKeys
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.pool import register
from shop_adapters.protocols import ORIGIN
from shop_adapters.redis_cluster import ReplicatedStreamLog, ReplicaWait
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.cli import SHOPS_REGISTRY
from shop_adapters.shop_domain.client import ShopClient
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.redis import RedisSnapshotStore

REPO = Path(__file__).resolve().parent.parent

MALFORMED: tuple[dict[str, str | bytes], ...] = (
    {"type": "TopUp", "v": "1", "data": '{"user_id": -1, "amount": 5}'},
    {"type": "Nonsense", "v": "1", "data": "{}"},
    {"type": "Order", "v": "1", "data": "not json"},
)
"""Entries no decoder accepts (each is dead-lettered)."""


class WorkerProcess(RunnerProcess):
    """A pool worker subprocess (JSON logs on stderr, parsed into :attr:`events`).

    A context manager: SIGCONT then SIGKILL on exit if still alive.
    """

    def __init__(self, url: str, *extra: str, name: str = "w") -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.worker_id: str | None = None
        argv = python_m(
            "shop_adapters.redis_runner",
            "--pool",
            "--redis-url",
            url,
            "--cluster",
            "--log-format",
            "json",
            *extra,
        )
        super().__init__(argv, stdout=subprocess.DEVNULL)

    def _take(self, line: str) -> None:
        super()._take(line)
        try:
            parsed: dict[str, Any] | None = json.loads(line)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            self.events.append(parsed)
            if parsed.get("event") == "pool_join":
                self.worker_id = str(parsed.get("worker"))

    def named(self, name: str) -> list[dict[str, Any]]:
        """The events called ``name`` so far."""
        with self._cond:
            return [e for e in self.events if e.get("event") == name]

    def partitions(self, name: str) -> set[str]:
        """The ``partition`` fields of the events called ``name``."""
        return {str(e["partition"]) for e in self.named(name) if "partition" in e}

    def wait_joined(self, timeout: float = 30.0) -> str:
        wait_until(lambda: self.worker_id is not None or not self.alive(), timeout, "pool_join")
        assert self.worker_id is not None, self.tail()
        return self.worker_id

    def tail(self, n: int = 40) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no final snapshot, no release, the heartbeat stays until it expires."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: final snapshots, leases released. Returns the exit status."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not stop in {timeout} s:\n{self.tail()}"
            ) from None


def shop_ids(n: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(n)]


def preload(
    client: redis.Redis, shops: Sequence[str], events: int, *, malformed_every: int = 0
) -> None:
    """Register each shop and append ``events`` synthetic events to it (keyed), plus a
    malformed entry every ``malformed_every`` events."""
    for i, shop in enumerate(shops):
        register(client, SHOPS_REGISTRY, shop)
        keys = StreamKeys.for_shop(shop)
        log = RedisStreamLog(client, keys.stream)
        entries: list[dict[str | bytes, str | bytes | int]] = []
        for n, event in enumerate(synthetic_events(events, 200, 20, seed=100 + i)):
            entry: dict[str | bytes, str | bytes | int] = dict(encode_event(event))
            entry[KEY_FIELD] = f"preload:{shop}:{n}"
            entries.append(entry)
            if malformed_every and n % malformed_every == malformed_every - 1:
                entries.append(dict(MALFORMED[n % len(MALFORMED)]))
            if len(entries) >= 2_000:
                log.append(entries)
                entries = []
        if entries:
            log.append(entries)


class Producer:
    """Appends keyed synthetic events to every shop, round robin, in a thread, about
    ``rate`` events per second in all, until :meth:`stop`. With ``wait``, each append
    waits for that many replicas (:class:`ReplicatedStreamLog`)."""

    def __init__(
        self,
        client: redis.Redis,
        shops: Sequence[str],
        *,
        rate: float = 800.0,
        chunk: int = 10,
        wait: int = 0,
        tag: str = "p",
    ) -> None:
        self.shops = list(shops)
        self.rate, self.chunk, self.tag = rate, chunk, tag
        self.appended = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._clients = []
        for shop in self.shops:
            register(client, SHOPS_REGISTRY, shop)
            keys = StreamKeys.for_shop(shop)
            sc = ShopClient(client, keys)
            if wait:
                sc.log = ReplicatedStreamLog(client, keys.stream, ReplicaWait(wait, 2_000))
            self._clients.append(sc)
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        sources = [
            iter(synthetic_events(10**9, 200, 20, seed=7 + i)) for i in range(len(self.shops))
        ]
        n = 0
        while not self._stop.is_set():
            for i, client in enumerate(self._clients):
                entries = [
                    client.entry(next(sources[i]), f"{self.tag}:{self.shops[i]}:{n + j}")
                    for j in range(self.chunk)
                ]
                try:
                    client.append(entries, chunk=self.chunk, progress=False)
                except Exception as e:  # recorded; the test decides
                    self.errors.append(e)
                    return
                self.appended += self.chunk
            n += self.chunk
            ahead = self.appended / self.rate - (time.monotonic() - started)
            if ahead > 0:
                self._stop.wait(ahead)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the producer did not stop"
        assert not self.errors, f"the producer failed: {self.errors[0]!r}"


def holders(client: redis.Redis, shops: Iterable[str]) -> dict[str, str | None]:
    """Each shop's lease holder's worker id (the owner without its ``#n``), or ``None``."""
    out: dict[str, str | None] = {}
    for shop in shops:
        raw: Any = client.get(StreamKeys.for_shop(shop).lease)
        out[shop] = None if raw is None else raw.decode().rsplit("#", 1)[0]
    return out


def tokens(client: redis.Redis, shops: Iterable[str]) -> dict[str, int]:
    """Each shop's last fencing token (``<stream>:lease:token``; 0 if none)."""
    return {
        s: int(client.get(StreamKeys.for_shop(s).lease_token) or 0)  # type: ignore[arg-type]
        for s in shops
    }


def fences(client: redis.Redis, shops: Iterable[str]) -> dict[str, int]:
    """Each shop's stored snapshot fence (0 if none)."""
    return {
        s: int(client.hget(StreamKeys.for_shop(s).snapshot, b"fence") or 0)  # type: ignore[arg-type]
        for s in shops
    }


def settled(client: redis.Redis, shops: Sequence[str], workers: Sequence[WorkerProcess]) -> bool:
    """Every shop held by one of ``workers`` (alive), each holding at most its fair share."""
    ids = {w.worker_id for w in workers if w.alive()}
    held = holders(client, shops)
    if any(h not in ids for h in held.values()):
        return False
    share = -(-len(shops) // max(1, len(ids)))
    counts = [sum(1 for h in held.values() if h == i) for i in ids]
    return all(c <= share for c in counts)


def at_end(client: redis.Redis, shop: str) -> bool:
    """Whether the shop's stored snapshot is at its stream's last record."""
    keys = StreamKeys.for_shop(shop)
    log = RedisStreamLog(client, keys.stream)
    snap, _ = latest_snapshot(RedisSnapshotStore(client, keys.snapshot), ShopDomain())
    return snap is not None and snap.position == log.last_position()


@dataclass(frozen=True)
class Verified:
    shop: str
    records: int
    digest: str
    outcomes: int
    dead_letters: int


def verify_shop(client: redis.Redis, shop: str, *, until_snapshot: bool = False) -> Verified:
    """Assert the stored snapshot equals the from-scratch fold (at the stream's end, or,
    with ``until_snapshot``, at its own position), the outcome journal holds one outcome
    per record, equal to the rebuild's, in order, and the dead letters are exactly the
    undecodable records."""
    domain = ShopDomain()
    keys = StreamKeys.for_shop(shop)
    log = RedisStreamLog(client, keys.stream, keys.dead)
    snap, why = latest_snapshot(RedisSnapshotStore(client, keys.snapshot), domain)
    assert snap is not None, f"{shop}: no usable snapshot ({why})"
    rebuilt_outcomes: list[Any] = []
    until = snap.position if until_snapshot else None
    rebuilt = replay(log, domain, until=until, outcomes=rebuilt_outcomes)
    assert snap.position == rebuilt.position, (
        f"{shop}: snapshot at {snap.position}, stream (or fold) at {rebuilt.position}"
    )
    assert snap.records == rebuilt.records, f"{shop}: records {snap.records} != {rebuilt.records}"
    digest = domain.digest(rebuilt.state)
    assert domain.digest(snap.state) == digest, f"{shop}: snapshot digest != from-scratch fold"
    journal = RedisOutcomeJournal(client, keys.outcomes)
    published = journal.read_after(ORIGIN, 10**9)
    if until_snapshot:
        published = [p for p in published if p[0] <= snap.position]
    assert [p for p, _ in published] == [p for p, _ in rebuilt_outcomes], (
        f"{shop}: the journal does not hold exactly one outcome per record "
        f"({len(published)} published, {len(rebuilt_outcomes)} records)"
    )
    assert published == rebuilt_outcomes, f"{shop}: a published outcome differs from its rebuild"
    letters = log.dead_letters()
    if until_snapshot:
        letters = [d for d in letters if d.position <= snap.position]
    assert [d.position for d in letters] == [d.position for d in rebuilt.dead_letters], (
        f"{shop}: dead letters differ from the undecodable records"
    )
    return Verified(shop, rebuilt.records, digest, len(published), len(letters))


def caught_up_by_holders(
    client: redis.Redis, shops: Iterable[str], workers: Sequence[WorkerProcess]
) -> bool:
    """Whether each shop's holder logged ``partition_caught_up`` for it since its last claim."""
    by_id = {w.worker_id: w for w in workers}
    for shop, holder in holders(client, shops).items():
        w = by_id.get(holder)
        if w is None:
            return False
        with w._cond:
            events = [e for e in w.events if e.get("partition") == shop]
        claims = [i for i, e in enumerate(events) if e.get("event") == "claimed"]
        if not claims or not any(
            e.get("event") == "partition_caught_up" for e in events[claims[-1] :]
        ):
            return False
    return True


def drain_and_verify(
    client: redis.Redis, shops: Sequence[str], timeout: float = 90.0
) -> list[Verified]:
    """Wait until every shop's snapshot is at its stream's end, then :func:`verify_shop` each."""
    wait_until(
        lambda: all(at_end(client, s) for s in shops),
        timeout,
        "every shop's snapshot at its stream's end",
    )
    return [verify_shop(client, s) for s in shops]

"""The pool's parts, fast: fair share and ranking, the pool's keys in one slot, the
heartbeat, fenced outcomes and dead letters, waits for replicas, cluster errors as
transient, the ``--shop``/``--pool`` options, and a pool of two in-process workers on
one plain Redis (no cluster needed)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from redis.cluster import key_slot

from shop_adapters import inspector, producer, redis_runner
from shop_adapters.cli_common import setup_logging
from shop_adapters.domain import Outcome
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.errors import FencedError, OperationalError, PermanentError
from shop_adapters.fenced import FencedOutcomeJournal, FencedStreamLog
from shop_adapters.keys import StreamKeys
from shop_adapters.lease import Lease
from shop_adapters.pool import (
    PoolConfig,
    PoolKeys,
    Worker,
    fair_share,
    rank,
    register,
    shares,
)
from shop_adapters.protocols import DeadLetter, Position
from shop_adapters.redis_cluster import NotReplicated, ReplicatedStreamLog, ReplicaWait
from shop_adapters.redis_errors import classify
from shop_adapters.runner import RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.cli import SHOPS_REGISTRY
from tests.cluster_support import (
    Producer,
    drain_and_verify,
    holders,
    preload,
    run_module,
    wait_until,
)

# -- pure ---------------------------------------------------------------------------------


def test_fair_share_is_the_ceiling() -> None:
    assert [fair_share(16, w) for w in (1, 2, 3, 4, 5)] == [16, 8, 6, 4, 4]
    assert fair_share(0, 3) == 0


@pytest.mark.parametrize("partitions", [0, 1, 15, 16, 17, 1000])
@pytest.mark.parametrize("held", [[0], [6, 6, 4], [6, 5, 5, 0], [10] * 100 + [0] * 5])
def test_shares_add_up_differ_by_one_and_stay_under_the_ceiling(
    partitions: int, held: list[int]
) -> None:
    counts = {f"w{i:03}": c for i, c in enumerate(held)}
    got = shares(partitions, counts)
    assert sum(got.values()) == partitions
    assert max(got.values()) - min(got.values()) <= 1
    assert max(got.values()) <= fair_share(partitions, len(counts))


def test_a_joining_worker_gets_its_share_and_only_the_excess_moves() -> None:
    before = {"a": 6, "b": 6, "c": 4}
    assert shares(16, before) == {"a": 6, "b": 5, "c": 5}
    after = shares(16, {"a": 6, "b": 5, "c": 5, "d": 0})
    assert after == {"a": 4, "b": 4, "c": 4, "d": 4}
    # 1,000 shops on 100 workers, 5 more join: the ceiling stays 10, yet they get 9 each.
    big = shares(1000, {f"w{i:03}": 10 for i in range(100)} | {f"n{i}": 0 for i in range(5)})
    assert [big[f"n{i}"] for i in range(5)] == [9] * 5
    moved = sum(10 - big[f"w{i:03}"] for i in range(100))
    assert moved == 45  # exactly what the newcomers take


def test_rank_is_stable_per_worker_and_differs_between_workers() -> None:
    shops = [f"s{i}" for i in range(16)]
    a, b = rank("worker-a", shops), rank("worker-b", shops)
    assert sorted(a) == sorted(shops) and a == rank("worker-a", list(reversed(shops)))
    assert a != b


def test_the_pools_keys_share_the_registrys_slot() -> None:
    for registry in ("shops", "{t}:reg", "a{b}c"):
        keys = PoolKeys.for_registry(registry)
        slots = {
            key_slot(k.encode()) for k in (keys.registry, keys.workers, keys.epoch, keys.halted)
        }
        assert len(slots) == 1, (registry, keys)


def test_every_key_of_a_shop_shares_one_slot() -> None:
    for shop in ("acme", "a:b", "1"):
        assert len({key_slot(k.encode()) for k in StreamKeys.for_shop(shop)}) == 1


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
        redis.exceptions.MasterDownError("MASTERDOWN Link with MASTER is down"),
        redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing"),
        redis.exceptions.MovedError("3999 127.0.0.1:6381"),
        redis.exceptions.AskError("3999 127.0.0.1:6381"),
        redis.exceptions.ClusterError("TTL exhausted."),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.SlotNotCoveredError("Slot 5 is not covered by the cluster."),
        redis.exceptions.RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node"
        ),
    ],
    ids=lambda e: type(e).__name__,
)
def test_cluster_errors_of_a_failover_are_transient(error: Exception) -> None:
    assert isinstance(classify(error, "XADD"), OperationalError)


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.RedisClusterException("EVALSHA - all keys must map to the same key slot"),
        redis.exceptions.ClusterCrossSlotError(
            "CROSSSLOT Keys in request don't hash to the same slot"
        ),
    ],
    ids=lambda e: type(e).__name__,
)
def test_keys_in_two_slots_are_a_permanent_error(error: Exception) -> None:
    assert isinstance(classify(error, "EVALSHA"), PermanentError)


def test_a_cluster_client_on_a_plain_redis_is_a_permanent_error() -> None:
    error = redis.exceptions.RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node: "
        "Cluster mode is not enabled on this node"
    )
    classified = classify(error, "CLUSTER SLOTS")
    assert isinstance(classified, PermanentError)
    assert "drop --cluster" in str(classified)
    moved = classify(redis.exceptions.MovedError("3999 127.0.0.1:6381"), "SADD")
    assert isinstance(moved, OperationalError) and "--no-cluster" in str(moved)


def test_a_wait_for_no_replica_is_refused() -> None:
    with pytest.raises(ValueError, match="replicas"):
        ReplicaWait(0)
    with pytest.raises(ValueError, match="WAIT 0"):
        ReplicaWait(1, 0)
    with pytest.raises(ValueError, match="tick_s"):
        PoolConfig(lease_ttl_s=1.0, tick_s=1.0)


# -- the command lines --------------------------------------------------------------------


def test_shop_and_stream_name_the_log_two_ways() -> None:
    runner = CliRunner()
    for command, args in (
        (redis_runner.main, ["--shop", "a", "--stream", "b"]),
        (inspector.cli, ["--shop", "a", "--stream", "b", "state"]),
        (producer.cli, ["--shop", "a", "--stream", "b", "topup", "1", "2"]),
    ):
        result = runner.invoke(command, args)
        assert result.exit_code == 2, result.output
        assert "--shop and --stream" in result.output


def test_a_shop_id_with_braces_is_refused() -> None:
    result = CliRunner().invoke(redis_runner.main, ["--shop", "a{b}"])
    assert result.exit_code == 2 and "without braces" in result.output


def test_a_pool_worker_serves_every_shop_so_takes_no_stream(tmp_path: Path) -> None:
    archive = tmp_path / "a.log"
    archive.touch()
    for args in (
        ["--stream", "x"],
        ["--shop", "x"],
        ["--exit-when-idle"],
        ["--from-scratch"],
        ["--archive", str(archive)],
        ["--snapshot-in-child"],
    ):
        result = CliRunner().invoke(redis_runner.main, ["--pool", *args])
        assert result.exit_code == 2, result.output
        assert "a --pool worker serves them all" in result.output


# -- against a real redis-server ------------------------------------------------------------


@pytest.fixture
def client(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    yield redis_client


@pytest.mark.redis
def test_the_producer_registers_its_shop_before_appending(
    redis_server: object, client: redis.Redis
) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    result = CliRunner().invoke(
        producer.cli, ["--redis-url", url, "--shop", "acme", "topup", "7", "500"]
    )
    assert result.exit_code == 0, result.output
    assert "shop:{acme}" in result.output
    assert client.smembers(SHOPS_REGISTRY) == {b"acme"}
    assert client.xlen("shop:{acme}") == 1
    state = CliRunner().invoke(inspector.cli, ["--redis-url", url, "--shop", "acme", "state"])
    assert state.exit_code == 0 and "folded 1 records" in state.output, state.output


@pytest.mark.redis
def test_heartbeats_show_the_live_workers_and_expire(client: redis.Redis) -> None:
    keys = PoolKeys.for_registry("reg")
    register(client, "reg", "p1")
    make = lambda wid: Worker(  # noqa: E731
        client,
        StreamKeys.for_shop,
        ShopDomain(),
        RunnerConfig(),
        keys,
        PoolConfig(lease_ttl_s=0.5, tick_s=0.1),
        worker_id=wid,
    )
    a, b = make("a"), make("b")
    view = a._beat(5.0)
    assert view.workers == ("a",) and view.registry_size == 1
    assert b._beat(0.2).workers == ("a", "b")
    wait_until(lambda: a._beat(5.0).workers == ("a",), 5, "b's heartbeat expiring")
    assert a._beat(0).workers == ()  # leaving


@pytest.mark.redis
def test_outcomes_and_dead_letters_are_fenced_by_the_lease(client: redis.Redis) -> None:
    keys = StreamKeys.for_shop("f")
    lease = Lease(client, keys.stream, ttl_ms=10_000, owner="me#1", snapshot_key=keys.snapshot)
    assert lease.try_acquire() == 1
    mine = FencedOutcomeJournal(client, keys.outcomes, keys.lease, "me#1")
    stale = FencedOutcomeJournal(client, keys.outcomes, keys.lease, "old#7")
    at = Position(5, 0)
    mine.write([(at, Outcome("accepted", "TopUp"))])
    mine.write([(at, Outcome("accepted", "TopUp"))])  # once per record
    with pytest.raises(FencedError, match="held by 'me#1'"):
        stale.write([(Position(6, 0), Outcome("accepted", "TopUp"))])
    assert [p for p, _ in mine.read_after(Position(0, 0), 10)] == [at]
    log = FencedStreamLog(client, keys.stream, keys.dead, lease_key=keys.lease, owner="me#1")
    letter = DeadLetter(at, {b"type": b"Nope"}, "unknown event type")
    assert log.dead_letter(letter) is True
    assert log.dead_letter(DeadLetter(at, {b"type": b"Nope"}, "worded otherwise")) is False
    other = FencedStreamLog(client, keys.stream, keys.dead, lease_key=keys.lease, owner="x#1")
    with pytest.raises(FencedError):
        other.dead_letter(DeadLetter(Position(9, 0), {b"a": b"b"}, "r"))
    assert [d.position for d in log.dead_letters()] == [at]
    lease.release()


@pytest.mark.redis
def test_a_wait_for_a_replica_that_is_not_there_fails_in_time(client: redis.Redis) -> None:
    log = ReplicatedStreamLog(client, "w", ReplicaWait(1, 50))
    with pytest.raises(NotReplicated, match="0 of 1 replicas"):
        log.append([{"a": "1"}])
    assert client.xlen("w") == 1  # written on the master, not confirmed


@pytest.mark.redis
@pytest.mark.parametrize("mode", [["--pool"], ["--shop", "s1", "--exit-when-idle"]])
def test_cluster_on_a_plain_redis_exits_at_once(redis_server: RedisServer, mode: list[str]) -> None:
    out = run_module(
        "shop_adapters.redis_runner", "--redis-url", redis_server.url, "--cluster", *mode
    )
    assert out.returncode == 1, out.stderr
    assert "not a Redis Cluster node" in out.stderr and "retry" not in out.stderr


def test_inspect_pool_with_no_live_worker_says_so(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    preload(client, ["idle0", "idle1"], 10)
    text = run_module("shop_adapters.inspector", "--redis-url", redis_server.url, "pool")
    assert text.returncode == 0, text.stderr
    assert "workers: 0 live; shops: 2 registered, 0 held, 0 halted" in text.stdout
    assert "no live worker: a worker that starts takes up to 2" in text.stdout
    assert "fair share" not in text.stdout


def test_a_pool_on_one_plain_redis_shares_and_hands_over(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    setup_logging("text", logging.WARNING)  # to this test's stderr (a CLI test may have
    # pointed the shop loggers at a CliRunner stream that is closed by now)
    shops = [f"p{i}" for i in range(4)]
    preload(client, shops, 500, malformed_every=100)
    keys = PoolKeys.for_registry(SHOPS_REGISTRY)
    config = RunnerConfig(snapshot_interval=0.2, batch_size=200)
    pool = PoolConfig(lease_ttl_s=1.0, tick_s=0.1)
    a = Worker(client, StreamKeys.for_shop, ShopDomain(), config, keys, pool, worker_id="A")
    b = Worker(client, StreamKeys.for_shop, ShopDomain(), config, keys, pool, worker_id="B")
    stop_a, stop_b = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=a.run, args=(stop_a,), daemon=True),
        threading.Thread(target=b.run, args=(stop_b,), daemon=True),
    ]
    feed = Producer(client, shops, rate=300).start()
    try:
        for t in threads:
            t.start()
        wait_until(
            lambda: (
                sorted(h or "" for h in holders(client, shops).values()) == ["A", "A", "B", "B"]
            ),
            30,
            "two shops each",
        )
        shown = run_module(
            "shop_adapters.inspector", "--redis-url", redis_server.url, "pool", "--json"
        )
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert sorted(w["id"] for w in status["workers"]) == ["A", "B"] and status["share"] == 2
        holders_shown = sorted((p["holder"] or "").split("#")[0] for p in status["partitions"])
        assert holders_shown == ["A", "A", "B", "B"]
        text = run_module("shop_adapters.inspector", "--redis-url", redis_server.url, "pool")
        assert "workers: 2 live; shops: 4 registered, 4 held, 0 halted" in text.stdout
        stop_b.set()  # b leaves: final snapshots, leases released; a takes all four
        threads[1].join(30)
        wait_until(lambda: set(holders(client, shops).values()) == {"A"}, 30, "a holding all")
        feed.stop()
        verified = drain_and_verify(client, shops)
        assert all(v.dead_letters == 5 for v in verified)
    finally:
        stop_a.set()
        stop_b.set()
        for t in threads:
            t.join(30)
    assert client.zcard(keys.workers) == 0
    assert all(h is None for h in holders(client, shops).values())


@pytest.mark.redis
def test_the_cluster_command_starts_and_stops_a_local_cluster(tmp_path: object) -> None:
    from tests.cluster_support import run_module

    where = str(tmp_path)
    up = run_module(
        "shop_adapters.cluster", "up", "--dir", where, "--masters", "3", "--replicas", "0"
    )
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.count("master of") == 3 and "--cluster" in up.stdout
        status = run_module("shop_adapters.cluster", "status", "--dir", where)
        assert status.returncode == 0 and status.stdout.count("master of") == 3
    finally:
        down = run_module("shop_adapters.cluster", "down", "--dir", where)
    assert down.returncode == 0 and "stopped 3 of 3 nodes" in down.stdout, down.stderr
    after = run_module("shop_adapters.cluster", "status", "--dir", where)
    assert after.stdout.count(" down") == 3

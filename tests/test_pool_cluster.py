"""A pool of runner processes over a real local Redis Cluster (3 masters) the tests start.

16 shops, 3 workers (``redis_runner --pool``), producers appending to every shop, and
one fault each: a worker SIGKILLed mid catch-up; a worker SIGSTOPped past its lease
TTL and then resumed (the store refuses whatever it tries to write); a fourth worker
joining (only the shops that move change hands, each after its final snapshot).
After each, every shop's stored snapshot is at the end of its stream with the digest
of the from-scratch fold, the outcome journal holds exactly one outcome per record
(equal to the rebuild's), and the dead letters are exactly the undecodable records.
Every wait is on observable state (log events, lease keys, snapshots) with a deadline.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shop_adapters.cluster import LocalCluster
from shop_adapters.keys import StreamKeys
from shop_adapters.pool import PoolKeys
from shop_adapters.redis_cluster import connect
from shop_adapters.shop_domain.cli import SHOPS_REGISTRY
from tests.cluster_support import (
    Producer,
    WorkerProcess,
    caught_up_by_holders,
    drain_and_verify,
    fences,
    holders,
    preload,
    settled,
    shop_ids,
    tokens,
    wait_until,
)

pytestmark = pytest.mark.redis

SHOPS = shop_ids(16)
TTL = 2.0
WORKER_OPTIONS = (
    "--lease-ttl",
    str(TTL),
    "--snapshot-every",
    "2000",
    "--snapshot-interval",
    "1",
    "--batch-size",
    "500",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three masters, no replicas, for the whole module."""
    root: Path = tmp_path_factory.mktemp("cluster")
    with LocalCluster(root, masters=3, replicas=0) as c:
        yield c


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[redis.Redis]:
    """A cluster client on an empty cluster (``FLUSHALL`` on every master)."""
    for port in cluster.ports:
        with cluster.node_client(port) as node:
            node.flushall()
    client = connect(cluster.url, cluster=True)
    try:
        yield client
    finally:
        client.close()


def workers(cluster: LocalCluster, *names: str) -> list[WorkerProcess]:
    return [WorkerProcess(cluster.url, *WORKER_OPTIONS, name=n) for n in names]


def test_the_shops_spread_over_every_master(rc: redis.Redis, cluster: LocalCluster) -> None:
    """The premise: 16 shops land on all three masters, each shop's keys in one slot."""
    masters = set()
    for shop in SHOPS:
        keys = StreamKeys.for_shop(shop)
        slots = {rc.keyslot(k) for k in keys}  # type: ignore[attr-defined]
        assert len(slots) == 1, f"{shop}'s keys span slots {slots}"
        masters.add(cluster.master_of_slot(slots.pop()))
    assert len(masters) == 3
    pool = PoolKeys.for_registry(SHOPS_REGISTRY)
    assert len({rc.keyslot(k) for k in (pool.registry, pool.workers, pool.epoch, pool.halted)}) == 1  # type: ignore[attr-defined]


def test_a_worker_killed_mid_catch_up_is_replaced(rc: redis.Redis, cluster: LocalCluster) -> None:
    preload(rc, SHOPS, 6_000, malformed_every=500)
    producer = Producer(rc, SHOPS, rate=600).start()
    w1, w2, w3 = workers(cluster, "w1", "w2", "w3")
    with w1, w2, w3:
        for w in (w1, w2, w3):
            w.wait_joined()

        def victim_mid_catch_up() -> bool:
            held = {s for s, h in holders(rc, SHOPS).items() if h == w3.worker_id}
            return bool(held - w3.partitions("partition_caught_up"))

        wait_until(victim_mid_catch_up, 60, "w3 holding a shop it has not caught up yet")
        victims = {s for s, h in holders(rc, SHOPS).items() if h == w3.worker_id}
        w3.kill()
        wait_until(lambda: settled(rc, SHOPS, [w1, w2]), 30, "w1 and w2 holding every shop")
        wait_until(
            lambda: caught_up_by_holders(rc, SHOPS, [w1, w2]), 60, "every shop caught up again"
        )
        taken = w1.partitions("claimed") | w2.partitions("claimed")
        assert victims <= taken
        producer.stop()
        verified = drain_and_verify(rc, SHOPS)
        assert w1.stop() == 0 and w2.stop() == 0
    assert sum(v.records for v in verified) >= 16 * 6_000
    assert all(v.dead_letters == 12 for v in verified)  # 6,000 / 500 malformed, once each


def test_a_paused_worker_wakes_up_fenced(rc: redis.Redis, cluster: LocalCluster) -> None:
    preload(rc, SHOPS, 1_000)
    producer = Producer(rc, SHOPS, rate=600).start()
    w1, w2, w3 = workers(cluster, "w1", "w2", "w3")
    with w1, w2, w3:
        for w in (w1, w2, w3):
            w.wait_joined()
        wait_until(lambda: settled(rc, SHOPS, [w1, w2, w3]), 60, "three workers settled")
        wait_until(lambda: caught_up_by_holders(rc, SHOPS, [w1, w2, w3]), 60, "caught up")
        paused = sorted(s for s, h in holders(rc, SHOPS).items() if h == w1.worker_id)
        assert paused
        before = tokens(rc, paused)
        w1.signal(signal.SIGSTOP)
        wait_until(
            lambda: (
                all(h not in (None, w1.worker_id) for h in holders(rc, paused).values())
                and caught_up_by_holders(rc, paused, [w2, w3])
            ),
            30,
            "w2 and w3 taking over the paused worker's shops",
        )
        after = tokens(rc, paused)
        assert all(after[s] > before[s] for s in paused)
        wait_until(
            lambda: all(f == after[s] for s, f in fences(rc, paused).items()),
            30,
            "the new holders' snapshots (fenced with their tokens)",
        )
        w1.signal(signal.SIGCONT)
        # It notices, shop by shop, that it lost them; nothing it tries gets written.
        wait_until(
            lambda: set(paused) <= (w1.partitions("lease_lost") | w1.partitions("fenced")),
            30,
            "the resumed worker giving up every shop it held",
        )
        written = fences(rc, paused)
        assert all(written[s] >= after[s] for s in paused), (
            f"a snapshot fence went back to a stale token: {written} (takeover {after})"
        )
        # It rejoins as a new member and gets a share again.
        wait_until(lambda: settled(rc, SHOPS, [w1, w2, w3]), 60, "three workers settled again")
        producer.stop()
        drain_and_verify(rc, SHOPS)
        for w in (w1, w2, w3):
            assert w.stop() == 0, w.tail()


def test_a_fourth_worker_takes_only_the_shops_that_move(
    rc: redis.Redis, cluster: LocalCluster
) -> None:
    preload(rc, SHOPS, 1_000)
    producer = Producer(rc, SHOPS, rate=600).start()
    w1, w2, w3 = workers(cluster, "w1", "w2", "w3")
    with w1, w2, w3:
        for w in (w1, w2, w3):
            w.wait_joined()
        wait_until(lambda: settled(rc, SHOPS, [w1, w2, w3]), 60, "three workers settled")
        wait_until(lambda: caught_up_by_holders(rc, SHOPS, [w1, w2, w3]), 60, "caught up")
        before, tokens_before = holders(rc, SHOPS), tokens(rc, SHOPS)
        with WorkerProcess(cluster.url, *WORKER_OPTIONS, name="w4") as w4:
            w4.wait_joined()
            everyone = [w1, w2, w3, w4]
            wait_until(
                lambda: (
                    settled(rc, SHOPS, everyone)
                    and sum(1 for h in holders(rc, SHOPS).values() if h == w4.worker_id) == 4
                    and caught_up_by_holders(rc, SHOPS, everyone)
                ),
                60,
                "four workers settled, w4 holding 4 shops",
            )
            after, tokens_after = holders(rc, SHOPS), tokens(rc, SHOPS)
            moved = sorted(s for s in SHOPS if after[s] != before[s])
            assert len(moved) == 4 and all(after[s] == w4.worker_id for s in moved), moved
            assert all(tokens_after[s] == tokens_before[s] for s in SHOPS if s not in moved)
            # Each moved shop was released after its final snapshot, which w4 restored.
            by_id = {w.worker_id: w for w in (w1, w2, w3)}
            for shop in moved:
                old = by_id[before[shop]]
                released = [e for e in old.named("released") if e.get("partition") == shop]
                assert released, f"{shop}: no release by {old.name}"
                restored = [
                    e
                    for e in w4.named("restore")
                    if str(e.get("logger", "")).endswith("." + shop) and "position" in e
                ]
                assert restored and restored[-1]["position"] == released[-1]["position"], shop
            producer.stop()
            drain_and_verify(rc, SHOPS)
            for w in everyone:
                assert w.stop() == 0, w.tail()


@pytest.mark.slow
def test_a_campaign_of_kills_and_replacements(rc: redis.Redis, cluster: LocalCluster) -> None:
    """Slow: five rounds of SIGKILL of a random worker (seeded) and a replacement
    joining, under producers, on 16 shops preloaded with 4,000 events each."""
    rng = random.Random(1234)
    preload(rc, SHOPS, 4_000, malformed_every=400)
    producer = Producer(rc, SHOPS, rate=600).start()
    live = workers(cluster, "w1", "w2", "w3")
    started = list(live)
    try:
        for w in live:
            w.wait_joined()
        for round_ in range(5):
            wait_until(lambda: settled(rc, SHOPS, live), 90, f"settled before round {round_}")
            victim = live.pop(rng.randrange(len(live)))
            victim.kill()
            fresh = WorkerProcess(cluster.url, *WORKER_OPTIONS, name=f"r{round_}")
            started.append(fresh)
            live.append(fresh)
            fresh.wait_joined()
        wait_until(lambda: settled(rc, SHOPS, live), 90, "settled after the campaign")
        wait_until(lambda: caught_up_by_holders(rc, SHOPS, live), 90, "caught up")
        producer.stop()
        drain_and_verify(rc, SHOPS)
        for w in live:
            assert w.stop() == 0, w.tail()
    finally:
        for w in started:
            w.__exit__(None, None, None)


@pytest.mark.slow
def test_the_pool_benchmark_runs_quick(tmp_path: Path) -> None:
    """Slow: ``python -m benchmarks.pool_bench --quick`` runs end to end and checks its
    own answers (every snapshot equals its fold after each throughput run)."""
    from tests.cluster_support import run_module

    result = run_module("benchmarks.pool_bench", "--quick", "--out", str(tmp_path), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "pool.md").read_text()
    assert "Ratio 2 workers / 1 worker" in report and "Takeover after SIGKILL" in report

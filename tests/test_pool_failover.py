"""Failover under a pool: a local Redis Cluster of 3 masters with one replica each.

- A master is SIGKILLed while 3 workers (``--wait-replicas 1``) serve 16 shops and
  producers (waiting for a replica too) append to all of them; its replica is
  promoted, the old master comes back as a replica. Every shop of the dead master is
  restarted from its snapshot by its holder, and at the end every shop's digest
  equals its from-scratch fold with one outcome per record.
- Records a runner folded are lost with their master (its replica was cut off, so
  the promoted one never had them): the runner's continuity check (the log ends
  before what was folded) halts that shop with ``IntegrityError``, recorded in the
  pool's halted hash; its neighbours on the same master go on.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from shop_adapters.cluster import LocalCluster
from shop_adapters.journals import RedisOutcomeJournal
from shop_adapters.keys import StreamKeys
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.pool import PoolKeys
from shop_adapters.redis_cluster import connect
from shop_adapters.shop_domain.cli import SHOPS_REGISTRY
from shop_adapters.shop_domain.wire import encode_event
from shop_core import TopUp
from tests.cluster_support import (
    Producer,
    WorkerProcess,
    at_end,
    caught_up_by_holders,
    drain_and_verify,
    holders,
    preload,
    run_module,
    settled,
    shop_ids,
    verify_shop,
    wait_until,
)

pytestmark = pytest.mark.redis

SHOPS = shop_ids(16, "f")
OPTIONS = ("--lease-ttl", "10", "--snapshot-every", "2000", "--snapshot-interval", "1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root: Path = tmp_path_factory.mktemp("failover-cluster")
    with LocalCluster(root, masters=3, replicas=1) as c:
        yield c


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[redis.Redis]:
    """A cluster client on an empty cluster whose every node is up."""
    for server in cluster.nodes.values():
        if server.pid is None:
            server.start()
    cluster.wait_ok(60)
    for node in cluster.status():
        if node.role == "master":
            with cluster.node_client(node.port) as c:
                c.flushall()
    client = connect(cluster.url, cluster=True)
    try:
        yield client
    finally:
        client.close()


def role(cluster: LocalCluster, port: int) -> str:
    return next(n.role for n in cluster.status() if n.port == port)


def test_a_master_killed_and_its_replica_promoted(rc: redis.Redis, cluster: LocalCluster) -> None:
    preload(rc, SHOPS, 1_000, malformed_every=250)
    producer = Producer(rc, SHOPS, rate=400, wait=1, tag="fo").start()
    names = ("w1", "w2", "w3")
    ws = [WorkerProcess(cluster.url, *OPTIONS, "--wait-replicas", "1", name=n) for n in names]
    w1, w2, w3 = ws
    with w1, w2, w3:
        for w in ws:
            w.wait_joined()
        wait_until(lambda: settled(rc, SHOPS, ws), 60, "three workers settled")
        wait_until(lambda: caught_up_by_holders(rc, SHOPS, ws), 60, "caught up")
        by_master: dict[int, list[str]] = {}
        for shop in SHOPS:
            slot = rc.keyslot(StreamKeys.for_shop(shop).stream)  # type: ignore[attr-defined]
            by_master.setdefault(cluster.master_of_slot(slot), []).append(shop)
        master = max(by_master, key=lambda m: len(by_master[m]))
        victims = set(by_master[master])
        (replica,) = cluster.replicas_of(master)
        appended = producer.appended
        cluster.nodes[master].kill()
        wait_until(lambda: role(cluster, replica) == "master", 30, "the replica promoted")
        cluster.nodes[master].start()  # the old master comes back, as a replica
        cluster.wait_ok(60)
        wait_until(
            lambda: (
                victims
                <= set().union(*(w.partitions("restart") for w in ws))
                | set().union(*(w.partitions("claimed") for w in ws))
            ),
            30,
            "every shop of the dead master restarted from its snapshot",
        )
        restarted = set().union(*(w.partitions("restart") for w in ws))
        assert restarted, "no runner noticed the failover"
        wait_until(lambda: producer.appended > appended + 1_000, 60, "the producers going on")
        producer.stop()
        drain_and_verify(rc, SHOPS)
        assert not rc.hgetall(PoolKeys.for_registry(SHOPS_REGISTRY).halted)
        for w in ws:
            assert w.stop() == 0, w.tail()


def _shops_on(rc: redis.Redis, cluster: LocalCluster, master: int, n: int) -> list[str]:
    found: list[str] = []
    i = 0
    while len(found) < n:
        shop = f"lost{i}"
        slot = rc.keyslot(StreamKeys.for_shop(shop).stream)  # type: ignore[attr-defined]
        if cluster.master_of_slot(slot) == master:
            found.append(shop)
        i += 1
    return found


def test_records_lost_in_a_failover_halt_their_shop(rc: redis.Redis, cluster: LocalCluster) -> None:
    master = next(n.port for n in cluster.status() if n.role == "master")
    (replica,) = cluster.replicas_of(master)
    shops = _shops_on(rc, cluster, master, 3)
    preload(rc, shops, 300)
    options = ("--lease-ttl", "10", "--snapshot-interval", "0.5")
    with WorkerProcess(cluster.url, *options, name="w") as w:
        w.wait_joined()
        wait_until(
            lambda: (
                all(h == w.worker_id for h in holders(rc, shops).values())
                and all(at_end(rc, s) for s in shops)
            ),
            60,
            "the worker holding the three shops, snapshots at their ends",
        )
        # Cut the replica off: stopped, and its link closed by the master.
        replica_pid = cluster.nodes[replica].pid
        assert replica_pid is not None
        os.kill(replica_pid, signal.SIGSTOP)
        try:
            with cluster.node_client(master) as m:
                m.execute_command("CLIENT", "KILL", "TYPE", "replica")
                wait_until(
                    lambda: int(m.info("replication")["connected_slaves"]) == 0,
                    10,
                    "the master without a replica",
                )
            keys = StreamKeys.for_shop(shops[0])
            lost = RedisStreamLog(rc, keys.stream).append(
                [encode_event(TopUp(1, 1)) for _ in range(20)]  # type: ignore[misc]
            )
            journal = RedisOutcomeJournal(rc, keys.outcomes)
            wait_until(lambda: journal.last_position() == lost[-1], 30, "the lost records folded")
            cluster.nodes[master].kill()
        finally:
            os.kill(replica_pid, signal.SIGCONT)
        wait_until(lambda: role(cluster, replica) == "master", 30, "the replica promoted")
        wait_until(lambda: shops[0] in w.partitions("halted"), 60, "the shop halted")
        rc = cast(redis.Redis, cluster.client())  # the test's own client: a fresh slot map
        halted = rc.hgetall(PoolKeys.for_registry(SHOPS_REGISTRY).halted)
        entry = json.loads(halted[shops[0].encode()])  # type: ignore[index]
        assert entry["error"].startswith("IntegrityError") and "rolled back" in entry["error"]
        assert set(halted) == {shops[0].encode()}
        assert RedisStreamLog(rc, keys.stream).last_position() < lost[0]  # they are gone
        # The neighbours restarted on the promoted replica and go on.
        wait_until(
            lambda: set(shops[1:]) <= w.partitions("restart") | w.partitions("claimed"),
            30,
            "restarts",
        )
        for shop in shops[1:]:
            RedisStreamLog(rc, StreamKeys.for_shop(shop).stream).append(
                [encode_event(TopUp(2, 3))]  # type: ignore[list-item]
            )
        wait_until(lambda: all(at_end(rc, s) for s in shops[1:]), 30, "the neighbours folding on")
        for shop in shops[1:]:
            verify_shop(rc, shop)
        verify_shop(rc, shops[0], until_snapshot=True)
        assert w.stop() == 0, w.tail()


def test_the_single_shop_runner_and_inspect_on_the_cluster(
    rc: redis.Redis, cluster: LocalCluster
) -> None:
    """``--shop`` with ``--cluster`` and ``--wait-replicas`` outside a pool: the runner
    drains one shop (its snapshot write waited for the replica), inspect verifies it."""
    preload(rc, ["solo"], 2_000, malformed_every=400)
    common = ["--redis-url", cluster.url, "--cluster", "--shop", "solo"]
    run = run_module(
        "shop_adapters.redis_runner",
        *common,
        "--wait-replicas",
        "1",
        "--exit-when-idle",
        "--log-format",
        "json",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["total_records"] == 2_005 and summary["total_dead_letters"] == 5
    verify = run_module("shop_adapters.inspector", *common, "verify")
    assert verify.returncode == 0, verify.stderr
    assert "ok: snapshot at" in verify.stdout and "2005 of 2005 outcomes" in verify.stdout
    verify_shop(rc, "solo")

"""Snapshots written from a forked child (``RunnerConfig.snapshot_in_child``): the same
snapshots, written while the parent folds on, through the same guarded store."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from reliability_support import run_to_idle, stored_snapshot

from shop_adapters.catchup import replay
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.envelope import decode_snapshot
from shop_adapters.logs.file import FileLog
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.producer import append_events
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.file import FileSnapshotStore
from shop_core import fold, state_digest

SHOP = ShopDomain()


def test_a_child_writes_the_periodic_snapshots_of_a_file_log(tmp_path: Path) -> None:
    events = list(synthetic_events(40_000, 1_000, 50, seed=4))
    log = FileLog(tmp_path / "log")
    append_events(log, events, chunk=5_000)
    store = FileSnapshotStore(tmp_path / "snapshot")
    config = RunnerConfig(
        progress=False,
        snapshot_every=5_000,
        snapshot_interval=None,
        snapshot_in_child=True,
        final_snapshot=False,
    )
    summary = Runner(log, store, SHOP, config).run(exit_when_idle=True)
    assert summary.digest == state_digest(fold(events))
    assert summary.snapshots_written >= 2  # children counted by the parent
    snap = decode_snapshot(store.read() or b"", SHOP).unwrap()
    rebuilt = replay(log, SHOP, until=snap.position)
    assert state_digest(rebuilt.state) == state_digest(snap.state)
    assert rebuilt.records == snap.records and rebuilt.anchor == snap.anchor
    log.close()


@pytest.mark.redis
def test_a_child_writes_through_the_guarded_redis_store(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    events = list(synthetic_events(30_000, 1_000, 50, seed=5))
    append_events(RedisStreamLog(redis_client, "c"), events, chunk=5_000)
    summary = run_to_idle(redis_server.url, "c", "--snapshot-every", "5000", "--snapshot-in-child")
    assert summary["digest"] == state_digest(fold(events))
    snap = stored_snapshot(redis_client, "c")
    assert snap is not None and snap.records == len(events)
    assert len(redis_client.hkeys("c:history")) >= 2  # the children's snapshots, kept

"""A from-scratch fold of a stream whose history was trimmed or deleted is refused
(GapError), never folded silently over what is left; ``inspect`` says so too.

fakeredis reports Redis 7's ``XINFO STREAM`` fields (``entries-added``,
``max-deleted-entry-id``); the session's real redis-server (6.2) shows only
deletions at the tail (``last-generated-id`` beyond the last entry)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
from click.testing import CliRunner
from reliability_support import RunnerProcess, runner_argv

from shop_adapters import inspect_commands, inspector
from shop_adapters.catchup import replay
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.errors import GapError
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.protocols import ORIGIN, LogHistory
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_adapters.snapshots.redis import RedisSnapshotStore
from shop_core import TopUp

SHOP = ShopDomain()


def fill(client: Any, stream: str = "orders", n: int = 10) -> list[bytes]:
    return [client.xadd(stream, encode_event(TopUp(i, 10))) for i in range(1, n + 1)]


@pytest.fixture
def fake7() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(version=7)
    yield client
    client.close()


@pytest.mark.parametrize("how", ["maxlen", "minid", "xdel-head", "xdel-middle", "xdel-tail"])
def test_from_scratch_on_a_stream_missing_records_is_a_gap(
    fake7: fakeredis.FakeRedis, how: str
) -> None:
    ids = fill(fake7)
    if how == "maxlen":
        fake7.xtrim("orders", maxlen=4, approximate=False)
    elif how == "minid":
        fake7.xtrim("orders", minid=ids[3].decode(), approximate=False)
    elif how == "xdel-head":
        fake7.xdel("orders", ids[0])
    elif how == "xdel-middle":
        fake7.xdel("orders", ids[5])
    else:
        fake7.xdel("orders", ids[-1])
    log = RedisStreamLog(fake7, "orders")
    store = MemorySnapshotStore()
    store.write(b"a good snapshot, in another format")
    runner = Runner(log, store, SHOP, RunnerConfig(from_scratch=True, progress=False))
    with pytest.raises(GapError, match="the log's history is incomplete"):
        runner.run(exit_when_idle=True)
    assert store.read() == b"a good snapshot, in another format"  # not overwritten
    with pytest.raises(GapError, match="a replay from scratch cannot rebuild the state"):
        replay(log, SHOP)


def test_a_complete_stream_and_a_missing_one_fold_from_scratch(
    fake7: fakeredis.FakeRedis,
) -> None:
    ids = fill(fake7)
    h = RedisStreamLog(fake7, "orders").history()
    assert h.added == h.length == 10 and h.max_deleted is None
    summary = Runner(
        RedisStreamLog(fake7, "orders"), MemorySnapshotStore(), SHOP, RunnerConfig(progress=False)
    ).run(exit_when_idle=True)
    assert summary.records == 10 and summary.dead_letters == 0
    assert str(summary.last_position) == ids[-1].decode()
    empty = RedisStreamLog(fake7, "nothing")
    assert empty.history() == LogHistory(ORIGIN, ORIGIN, 0, 0, None)
    assert replay(empty, SHOP).position == ORIGIN


def _drain(client: fakeredis.FakeRedis) -> None:
    """Run a runner over ``orders`` until idle (it writes the snapshot)."""
    Runner(
        RedisStreamLog(client, "orders"),
        RedisSnapshotStore(client, "orders:snapshot"),
        SHOP,
        RunnerConfig(progress=False),
    ).run(exit_when_idle=True)


def test_inspect_verify_and_state_report_a_trimmed_history(
    fake7: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = fill(fake7)
    _drain(fake7)
    fake7.xtrim("orders", maxlen=2, approximate=False)
    monkeypatch.setattr(inspect_commands, "make_client", lambda *a, **k: fake7)
    cli = CliRunner()
    verify = cli.invoke(inspector.cli, ["--redis-url", "redis://unused", "verify"])
    assert verify.exit_code == 1
    assert "the stream's history is incomplete" in verify.output
    assert "ends at 0-0" not in verify.output
    # state still works from the snapshot (at the last record, which is still there).
    state = cli.invoke(inspector.cli, ["--redis-url", "redis://unused", "state"])
    assert state.exit_code == 0, state.output
    assert f"position: {ids[-1].decode()}" in state.output


@pytest.mark.redis
def test_from_scratch_after_deleting_the_newest_records_on_a_real_server(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    ids = fill(redis_client)
    first = RunnerProcess(runner_argv(redis_server.url, "orders", "--exit-when-idle"))
    with first:
        assert first.finish(60)[0] == 0, first.stderr[-3000:]
    before = redis_client.hget("orders:snapshot", b"blob")
    redis_client.xdel("orders", ids[-1], ids[-2])
    argv = runner_argv(redis_server.url, "orders", "--exit-when-idle", "--from-scratch")
    with RunnerProcess(argv) as proc:
        code, _out, err = proc.finish(60)
    assert code == 1, err[-3000:]
    assert "GapError" in err and "history is incomplete" in err and ids[-1].decode() in err
    assert "Traceback" not in err
    assert redis_client.hget("orders:snapshot", b"blob") == before


def test_inspect_after_a_minid_trim_at_the_snapshot(
    fake7: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = fill(fake7)
    _drain(fake7)
    snap_at = ids[-1].decode()
    fake7.xtrim("orders", minid=snap_at, approximate=False)  # as the README recommends
    later = fill(fake7, n=3)
    fake7.xdel("orders", later[1])  # a record after the snapshot deleted too
    monkeypatch.setattr(inspect_commands, "make_client", lambda *a, **k: fake7)
    cli = CliRunner()
    verify = cli.invoke(inspector.cli, ["--redis-url", "redis://unused", "verify"])
    assert verify.exit_code == 1
    assert f"cannot verify the snapshot at {snap_at}" in verify.output
    assert "rebuild from scratch is impossible" in verify.output
    assert "--from-scratch" not in verify.output
    at = cli.invoke(inspector.cli, ["--redis-url", "redis://unused", "state", "--at", snap_at])
    assert at.exit_code == 0, at.output
    assert f"position: {snap_at}" in at.output and "from: snapshot" in at.output
    # Folding over the deleted record is still refused.
    beyond = cli.invoke(inspector.cli, ["--redis-url", "redis://unused", "state"])
    assert beyond.exit_code == 1 and "GapError" in beyond.output

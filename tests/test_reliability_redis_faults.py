"""Redis faults under a live runner subprocess: a server restart (AOF on, graceful
or SIGKILL), a killed client connection in the middle of a blocking ``XREAD``,
and a gap in the stream (entries after the snapshot trimmed away by someone
else), which must stop the runner loudly instead of being folded over."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from reliability_support import (
    RunnerProcess,
    fold_digest,
    run_to_idle,
    runner_argv,
    stored_snapshot,
    stream_oracle,
    wait_until,
)

from shop_adapters.embedded_redis import RedisServer
from shop_adapters.protocols import Position
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_core import Event, TopUp

pytestmark = pytest.mark.redis

STREAM = "faults"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server (AOF on) that the test may restart or kill."""
    with RedisServer(data_dir=tmp_path / "redis") as s:
        yield s


def append(client: redis.Redis, events: list[Event]) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for e in events:
        pipe.xadd(STREAM, encode_event(e))  # type: ignore[arg-type]
    ids: list[bytes] = pipe.execute()
    return ids


def follow_argv(url: str) -> list[str]:
    return runner_argv(
        url,
        STREAM,
        "--snapshot-every",
        "1",
        "--log-format",
        "json",
        "--lease-ttl",
        "5",
        "--progress-interval",
        "0.5",
    )


def snapshot_reaches(server: RedisServer, position: bytes) -> bool:
    """Whether the runner's snapshot is at ``position`` (so it applied up to there)."""
    try:
        client = server.client(socket_timeout=2)
        try:
            snap = stored_snapshot(client, STREAM)
        finally:
            client.close()
    except redis.exceptions.ConnectionError:
        return False
    return snap is not None and snap.position == Position.parse(position)


def stop_and_summary(proc: RunnerProcess) -> dict[str, Any]:
    proc.terminate()
    code, out, err = proc.finish(30)
    assert code == 0, f"runner exited {code}:\n{err[-4000:]}"
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert summary["stop_reason"] == "stopped", summary
    return summary


def blocked_xread_clients(client: redis.Redis) -> list[dict[str, Any]]:
    return [
        c for c in client.client_list() if c.get("cmd") == "xread" and "b" in c.get("flags", "")
    ]


@pytest.mark.parametrize("kill", [False, True], ids=["graceful-restart", "sigkill-restart"])
def test_redis_restart_while_following_resumes_and_applies_the_outage_event_once(
    server: RedisServer, kill: bool
) -> None:
    events = list(synthetic_events(2_000, users=100, items=20, seed=11))
    client = server.client()
    append(client, events)
    client.close()
    with RunnerProcess(follow_argv(server.url)) as proc:
        assert proc.wait_for("caught up"), proc.stderr[-4000:]
        admin = server.client()
        wait_until(lambda: bool(blocked_xread_clients(admin)), 20, "a blocked XREAD")
        admin.close()
        server.restart(kill=kill)
        # Appended while the runner is cut off (it is backing off / reconnecting).
        outage = [TopUp(424_242, 1_000_003)]
        client = server.client()
        append(client, outage)
        after = list(synthetic_events(300, users=100, items=20, seed=12))
        last = append(client, after)[-1]
        client.close()
        wait_until(lambda: snapshot_reaches(server, last), 60, "the runner to apply everything")
        summary = stop_and_summary(proc)
    all_events = events + outage + after
    assert summary["digest"] == fold_digest(all_events)
    assert summary["total_records"] == len(all_events)
    assert summary["total_dead_letters"] == 0
    check = server.client()
    assert stream_oracle(check, STREAM).digest == summary["digest"]
    check.close()


@pytest.mark.parametrize("how", ["by-id", "type-normal"])
def test_killed_connection_during_blocking_read_is_survived_exactly_once(
    server: RedisServer, how: str
) -> None:
    events = list(synthetic_events(1_000, users=50, items=10, seed=21))
    admin = server.client()
    append(admin, events)
    with RunnerProcess(follow_argv(server.url)) as proc:
        assert proc.wait_for("caught up"), proc.stderr[-4000:]
        extra: list[Event] = []
        for round_ in range(3):
            wait_until(lambda: bool(blocked_xread_clients(admin)), 20, "a blocked XREAD")
            if how == "by-id":
                (blocked, *_) = blocked_xread_clients(admin)
                assert admin.client_kill_filter(_id=blocked["id"]) == 1
            else:
                assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
            batch = [TopUp(90_000 + round_, 1_000 + round_), *synthetic_events(50, seed=round_)]
            extra += batch
            last = append(admin, batch)[-1]
            wait_until(lambda p=last: snapshot_reaches(server, p), 30, "the runner to apply it")
        summary = stop_and_summary(proc)
    all_events = events + extra
    assert summary["digest"] == fold_digest(all_events)
    assert summary["total_records"] == len(all_events)
    assert summary["total_dead_letters"] == 0
    admin.close()


def _snapshot_then_more(server: RedisServer) -> tuple[redis.Redis, list[bytes], list[bytes]]:
    client = server.client()
    first = append(client, list(synthetic_events(100, users=20, items=5, seed=31)))
    summary = run_to_idle(server.url, STREAM, "--lease-ttl", "1")
    assert summary["last_position"] == first[-1].decode()
    more = append(client, list(synthetic_events(50, users=20, items=5, seed=32)))
    return client, first, more


@pytest.mark.parametrize("trim", ["xtrim-minid", "xdel-prefix"])
def test_gap_after_the_snapshot_stops_the_runner_loudly(server: RedisServer, trim: str) -> None:
    client, first, more = _snapshot_then_more(server)
    before = client.hget(f"{STREAM}:snapshot", b"blob")
    # Someone else removes the snapshot's records and the 10 after it.
    if trim == "xtrim-minid":
        client.xtrim(STREAM, minid=more[10].decode(), approximate=False)
    else:
        client.xdel(STREAM, *first, *more[:10])
    argv = runner_argv(server.url, STREAM, "--exit-when-idle", "--lease-ttl", "1")
    with RunnerProcess(argv) as proc:
        code, _out, err = proc.finish(60)
    assert code == 1, f"expected exit 1 on a gap, got {code}:\n{err[-4000:]}"
    assert "GapError" in err and "trimmed away" in err, err[-4000:]
    assert f"the state is at {first[-1].decode()}" in err
    assert client.hget(f"{STREAM}:snapshot", b"blob") == before  # nothing folded, nothing written
    assert client.xlen(f"{STREAM}:dead") == 0
    client.close()


def test_trimming_only_before_the_snapshot_is_fine(server: RedisServer) -> None:
    client, first, _more = _snapshot_then_more(server)
    # Keeps the snapshot's own record, removes the 99 before it.
    client.xtrim(STREAM, minid=first[-1].decode(), approximate=False)
    assert client.xlen(STREAM) == 51
    summary = run_to_idle(server.url, STREAM, "--lease-ttl", "1")
    assert summary["records"] - summary["dead_letters"] == 50
    assert summary["total_records"] - summary["total_dead_letters"] == 150
    assert summary["digest"] == fold_digest(
        list(synthetic_events(100, users=20, items=5, seed=31))
        + list(synthetic_events(50, users=20, items=5, seed=32))
    )
    client.close()


def test_records_deleted_after_the_snapshot_behind_an_older_first_record_are_a_gap(
    server: RedisServer,
) -> None:
    """XDEL of records after the snapshot while older records stay: the stream's first
    record says nothing, but Redis (>= 7.0) remembers the largest deleted ID."""
    client, _first, more = _snapshot_then_more(server)
    if "max-deleted-entry-id" not in client.xinfo_stream(STREAM):
        pytest.skip("redis-server < 7.0 does not report max-deleted-entry-id")
    client.xdel(STREAM, *more[5:8])
    argv = runner_argv(server.url, STREAM, "--exit-when-idle", "--lease-ttl", "1")
    with RunnerProcess(argv) as proc:
        code, _out, err = proc.finish(60)
    assert code == 1, f"expected exit 1 on a gap, got {code}:\n{err[-4000:]}"
    assert "GapError" in err and more[7].decode() in err, err[-4000:]
    client.close()

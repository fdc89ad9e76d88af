"""The lease's token always exceeds the snapshot's stored fence (a lost or
uncopied ``<stream>:lease:token`` must not wedge snapshots), a garbage fence is
an IntegrityError, and a refused final snapshot under --exit-when-idle exits 1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from redis.backoff import NoBackoff
from redis.retry import Retry
from reliability_support import SHOP, RunnerProcess, runner_argv, wait_until

from shop_adapters import run_command
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.envelope import decode_snapshot
from shop_adapters.errors import FencedError, IntegrityError
from shop_adapters.lease import Lease
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.protocols import Position
from shop_adapters.redis_runner import main as runner_main
from shop_adapters.retry import RetryPolicy
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.snapshots.redis import RedisSnapshotStore
from shop_core import TopUp

pytestmark = pytest.mark.redis


def topups(client: redis.Redis, stream: str, n: int) -> None:
    for i in range(n):
        client.xadd(stream, encode_event(TopUp(i % 7 + 1, 5)))  # type: ignore[arg-type]


def run_idle(url: str, stream: str) -> tuple[int, str, str]:
    argv = runner_argv(url, stream, "--exit-when-idle", "--log-format", "json")
    with RunnerProcess(argv) as proc:
        return proc.finish(60)


def test_a_new_token_exceeds_the_stored_fence_when_the_counter_is_gone(
    redis_client: redis.Redis,
) -> None:
    redis_client.hset("s:snapshot", mapping={b"blob": b"old", b"fence": b"14"})
    lease = Lease(redis_client, "s", ttl_ms=1_000, poll_s=0.01)
    assert lease.try_acquire() == 15
    assert redis_client.get("s:lease:token") == b"15"
    store = RedisSnapshotStore(redis_client, "s:snapshot", fencing_token=lease.fencing_token)
    store.write(b"new")
    assert store.read() == b"new" and store.stored_fence() == 15
    lease.release()
    # A counter ahead of the fence is simply incremented.
    redis_client.set("s:lease:token", b"40")
    assert lease.try_acquire() == 41
    lease.release()


def test_a_garbage_fence_is_an_integrity_error_and_takes_nothing(
    redis_client: redis.Redis,
) -> None:
    redis_client.hset("s:snapshot", mapping={b"blob": b"old", b"fence": b"fourteen"})
    lease = Lease(redis_client, "s", ttl_ms=1_000, poll_s=0.01)
    with pytest.raises(IntegrityError, match=r"'s:snapshot'.*fence"):
        lease.acquire(retry=RetryPolicy(give_up_after=1.0))
    assert redis_client.get("s:lease") is None
    assert redis_client.get("s:lease:token") is None


def test_the_runner_snapshots_after_the_token_counter_was_deleted(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    topups(redis_client, "orders", 20)
    for _ in range(3):  # fence 3
        code, _, err = run_idle(redis_server.url, "orders")
        assert code == 0, err[-3000:]
        topups(redis_client, "orders", 1)
    redis_client.delete("orders:lease:token")
    code, out, err = run_idle(redis_server.url, "orders")
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["snapshots_written"] == 1 and summary["stop_reason"] == "idle"
    assert "fencing token 4" in err
    blob = RedisSnapshotStore(redis_client, "orders:snapshot").read()
    assert str(decode_snapshot(blob or b"", SHOP).unwrap().position) == summary["last_position"]


def test_the_runner_exits_1_on_a_garbage_fence(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    topups(redis_client, "orders", 3)
    redis_client.hset("orders:snapshot", mapping={b"blob": b"x", b"fence": b"garbage"})
    code, _, err = run_idle(redis_server.url, "orders")
    assert code == 1
    assert "IntegrityError" in err and "'orders:snapshot'" in err
    assert "Traceback" not in err


def test_a_fenced_final_snapshot_is_reported_by_the_runner() -> None:
    log = MemoryLog()
    log.append([encode_event(TopUp(1, 5))])  # type: ignore[list-item]

    class Refusing:
        def read(self) -> bytes | None:
            return None

        def write(self, blob: bytes, at: tuple[Position, str] | None = None) -> None:
            raise FencedError("fencing token 1 is older than 14")

        def close(self) -> None:
            pass

    runner = Runner(log, Refusing(), SHOP, RunnerConfig(progress=False))
    summary = runner.run(exit_when_idle=True)
    assert summary.snapshots_written == 0
    assert summary.stop_reason.startswith("abandoned: fenced")
    assert runner.final_snapshot_error is not None
    assert "older than 14" in runner.final_snapshot_error


def test_exit_when_idle_exits_1_when_the_final_snapshot_is_fenced(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    topups(redis_client, "orders", 5)

    class Overtaken(RedisSnapshotStore):
        """Another runner writes a newer fence just before our write."""

        def write(self, blob: bytes, at: tuple[Position, str] | None = None) -> None:
            self.client.hset(self.key, b"fence", b"999")
            super().write(blob, at)

    monkeypatch.setattr(run_command, "RedisSnapshotStore", Overtaken)
    result = CliRunner().invoke(
        runner_main,
        [
            "--redis-url",
            redis_server.url,
            "--exit-when-idle",
            "--no-progress",
            "--log-format",
            "json",
        ],
    )
    assert result.exit_code == 1, result.output
    lines = result.stdout.strip().splitlines()
    assert lines, f"no summary printed; output:\n{result.output[-3000:]}"
    summary = json.loads(lines[-1])
    assert summary["snapshots_written"] == 0 and summary["stop_reason"].startswith("abandoned")
    assert "could not save the state" in result.stderr


def test_a_lease_outlives_a_redis_restart_shorter_than_its_ttl(tmp_path: Path) -> None:
    """Down for about two thirds of the TTL: renewals fail, are retried every 0.25 s
    rather than every TTL / 3, and the lease is renewed before it expires."""
    with RedisServer(data_dir=tmp_path / "redis") as server:
        # No retry inside redis-py: every failed renewal reaches the renewer (as
        # a LOADING reply does whatever the client's retry policy).
        client = server.client(
            socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        lease = Lease(client, "s", ttl_ms=3_000, poll_s=0.01)
        lost: list[str] = []
        token = lease.acquire(on_lost=lost.append)
        acquired = time.monotonic()
        server.stop()  # the AOF holds the lease key and its expiry time
        time.sleep(2.0)  # the outage itself, not a synchronisation
        server.start()
        # Past the TTL counted from the acquisition: only a renewal keeps it.
        wait_until(lambda: time.monotonic() - acquired > 3.5, 10, "the TTL to pass")
        assert lost == [] and lease.token == token
        assert client.get("s:lease") == lease.owner.encode()
        assert lease.longest_gap_s > 2.0  # the outage shows in the renewal gaps
        lease.release()

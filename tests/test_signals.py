"""SIGINT/SIGTERM exit 0 with a final snapshot, even when a second signal comes
during the final snapshot or the shutdown."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from reliability_support import SHOP, RunnerProcess, runner_argv

from shop_adapters import redis_runner
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.envelope import decode_snapshot
from shop_adapters.lease import Lease
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.producer import append_events
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.redis import RedisSnapshotStore

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_two_signals_during_catch_up_exit_0_with_a_valid_snapshot(
    redis_server: RedisServer, redis_client: redis.Redis, signum: int
) -> None:
    log = RedisStreamLog(redis_client, "orders")
    append_events(log, synthetic_events(300_000, 2_000, 100, seed=5), chunk=10_000, progress=False)
    argv = runner_argv(
        redis_server.url,
        "orders",
        *("--batch-size", "500", "--log-format", "json", "--progress-interval", "0.05"),
    )
    with RunnerProcess(argv) as proc:
        # A progress line comes after a folded batch: the runner is in its catch-up.
        assert proc.wait_for('"msg": "progress"'), proc.stderr[-3000:]
        proc.proc.send_signal(signum)
        time.sleep(0.05)  # not a synchronisation: two signals, not one coalesced
        proc.proc.send_signal(signum)
        code, out, err = proc.finish(120)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stop_reason"] == "stopped"
    assert summary["records"] > 0 and summary["lag"] > 0, summary  # stopped mid catch-up
    blob = RedisSnapshotStore(redis_client, "orders:snapshot").read()
    assert blob is not None
    assert str(decode_snapshot(blob, SHOP).unwrap().position) == summary["last_position"]


def test_a_signal_during_the_shutdown_does_not_kill_the_process(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    log = RedisStreamLog(redis_client, "orders")
    append_events(log, synthetic_events(50_000, 2_000, 100, seed=6), chunk=10_000, progress=False)
    argv = runner_argv(redis_server.url, "orders", "--log-format", "json")
    with RunnerProcess(argv) as proc:
        assert proc.wait_for("caught up"), proc.stderr[-3000:]
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_for("run ended"), proc.stderr[-3000:]
        for _ in range(3):  # while the interpreter shuts down (or already gone)
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
        code, out, err = proc.finish(60)
    assert code == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["stop_reason"] == "stopped"


def test_the_second_signal_is_logged_not_fatal(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_client.set("orders:lease", b"someone-else", px=60_000)
    original = Lease.acquire

    def acquire(self: Lease, *args: Any, **kw: Any) -> int | None:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        return original(self, *args, **kw)

    monkeypatch.setattr(Lease, "acquire", acquire)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        result = CliRunner().invoke(redis_runner.main, ["--redis-url", redis_server.url])
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert result.exit_code == 0, result.output
    assert "SIGTERM: already stopping" in result.stderr
    assert "stopped while waiting for the lease" in result.stderr

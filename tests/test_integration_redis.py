"""The runner, producer, inspector and lease against a real redis-server.

Uses the session ``redis_server`` (flushed per test by ``redis_client``) and, for
the restart and password tests, servers of their own. Subprocess tests run the
real CLIs (``python -m ...``, through ``reliability_support``), including
``kill -9`` during catch-up. Every wait is for observable state (a log line, a
key, a journal entry) with a deadline; the one random delay is seeded.
"""

from __future__ import annotations

import json
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from reliability_support import REPO, RunnerProcess, python_m, run_module, wait_until

from shop_adapters import inspector, producer
from shop_adapters.catchup import record_anchor, replay
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.envelope import Snapshot, decode_snapshot, encode_snapshot, read_header
from shop_adapters.errors import FencedError
from shop_adapters.lease import Lease
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.protocols import ORIGIN
from shop_adapters.retry import RetryPolicy
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.retail_csv import map_rows, read_csv
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.redis import RedisSnapshotStore
from shop_core import AddItem, TopUp, fold, state_digest

pytestmark = pytest.mark.redis

RETAIL = "online-retail-2010-12-01-to-07.csv"


def retail_csv() -> Path:
    """The Online Retail week the repository carries (``data/``)."""
    path = REPO / "data" / RETAIL
    assert path.exists(), f"{path} is missing from the repository"
    return path


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10)


SHOP = ShopDomain()


def make_runner(client: redis.Redis, stream: str, **kw: Any) -> Runner:
    kw.setdefault("progress", False)
    return Runner(
        RedisStreamLog(client, stream),
        RedisSnapshotStore(client, f"{stream}:snapshot"),
        SHOP,
        RunnerConfig(retry=RetryPolicy(base=0.05, cap=0.5), **kw),
    )


def produce(url: str, stream: str, n: int, seed: int = 3) -> None:
    log = RedisStreamLog(client_for(url), stream)
    events = synthetic_events(n, users=500, items=50, seed=seed)
    producer.append_events(log, events, chunk=5_000, progress=False)
    log.client.close()


def summary_of(stdout: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


# --- the Online Retail week --------------------------------------------------------------


def test_online_retail_import_then_runner_equals_the_in_memory_fold(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    path = retail_csv()
    result = CliRunner().invoke(
        producer.cli, ["--redis-url", redis_server.url, "import-csv", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert (
        "imported 10807 rows, skipped 6178: "
        "{'cancellation': 183, 'guest': 5994, 'non_positive_price': 1}" in result.output
    )
    assert "events written: {'AddItem': 10807, 'TopUp': 567, 'Order': 567}" in result.output

    summary = make_runner(redis_client, "orders").run(exit_when_idle=True)
    records = RedisStreamLog(redis_client, "orders").read_after(ORIGIN, 100_000)
    pairs, dead = SHOP.decode_records(records)
    assert dead == []
    assert summary.digest == state_digest(fold(e for _, e in pairs))
    assert summary.digest == state_digest(fold(map_rows(read_csv(path)).events))
    assert (summary.records, summary.dead_letters, summary.lag) == (11_941, 0, 0)
    assert summary.accepted == {"AddItem": 10_807, "Order": 567, "TopUp": 567}
    assert summary.rejected == {}

    again = make_runner(redis_client, "orders").run(exit_when_idle=True)
    assert again.records == 0 and again.digest == summary.digest

    verify = CliRunner().invoke(inspector.cli, ["--redis-url", redis_server.url, "verify"])
    assert verify.exit_code == 0 and verify.output.startswith("ok: snapshot at")


# --- crashes and restarts ------------------------------------------------------------------


def test_kill_9_during_catch_up_then_restart_equals_from_scratch(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    n = 150_000
    produce(redis_server.url, "big", n)
    expected = state_digest(fold(synthetic_events(n, users=500, items=50, seed=3)))
    args = ("shop_adapters.redis_runner", "--redis-url", redis_server.url, "--stream", "big")
    args += ("--snapshot-every", "1000", "--log-format", "json", "--lease-ttl", "1")
    store = RedisSnapshotStore(redis_client, "big:snapshot")
    with RunnerProcess(python_m(*args, "--exit-when-idle", "--batch-size", "50")) as victim:
        # Kill it once catch-up has snapshotted a seeded number of records (of 150,000).
        target = random.Random(9).randrange(1_000, 40_001, 1_000)

        def snapshotted() -> int:
            blob = store.read()
            header = None if blob is None else read_header(blob)
            return 0 if header is None else header.records

        wait_until(lambda: snapshotted() >= target, 60, f"a snapshot of {target} records")
        assert victim.alive(), f"the runner ended before the kill:\n{victim.stderr[-3000:]}"
        victim.kill()
        assert victim.proc.returncode == -signal.SIGKILL
    blob = store.read()
    assert blob is not None  # snapshots were written during catch-up
    killed_at = decode_snapshot(blob, SHOP).unwrap()
    assert killed_at.records >= target
    assert ORIGIN < killed_at.position < RedisStreamLog(redis_client, "big").last_position()

    restarted = run_module(*args, "--exit-when-idle")  # waits out the dead runner's lease
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    resumed = summary_of(restarted.stdout)
    assert resumed["restored_from"] is not None
    assert 0 < resumed["records"] < n and resumed["dead_letters"] == 0
    assert resumed["total_records"] == n and resumed["total_dead_letters"] == 0
    assert resumed["digest"] == expected

    scratch = run_module(*args, "--exit-when-idle", "--from-scratch")
    assert scratch.returncode == 0, scratch.stderr[-2000:]
    assert summary_of(scratch.stdout)["digest"] == expected
    assert summary_of(scratch.stdout)["records"] == n


class _GatedLog(RedisStreamLog):
    """A Redis log whose reads after the first batch wait for ``gate``: the test
    restarts Redis in between, so the outage is sure to hit mid catch-up."""

    def __init__(self, client: redis.Redis, stream: str, gate: threading.Event) -> None:
        super().__init__(client, stream)
        self.gate = gate

    def read_after(self, position: Any, limit: int) -> Any:
        if position != ORIGIN:
            self.gate.wait(30)
        return super().read_after(position, limit)


def test_redis_restart_mid_run_loses_and_repeats_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="shop.runner")
    n = 30_000
    with RedisServer(data_dir=tmp_path / "redis") as server:
        produce(server.url, "orders", n)
        client = client_for(server.url)
        gate = threading.Event()
        r = Runner(
            _GatedLog(client, "orders", gate),
            RedisSnapshotStore(client, "orders:snapshot"),
            SHOP,
            RunnerConfig(
                batch_size=2_000,
                snapshot_every=10_000,
                block_ms=100,
                progress=False,
                retry=RetryPolicy(base=0.05, cap=0.5),
            ),
        )
        out: list[Any] = []
        t = threading.Thread(target=lambda: out.append(r.run(exit_when_idle=True)))
        t.start()
        wait_until(lambda: r.position != ORIGIN, 30, "the first batch to be applied")
        assert r.position.major > 0  # the first batch is applied; the rest waits at the gate
        server.restart(kill=True)  # the runner's connection dies mid catch-up
        gate.set()
        t.join(60)
        assert not t.is_alive()
        summary = out[0]
        assert summary.records == n  # nothing lost, nothing applied twice
        assert summary.total_records == n and summary.dead_letters == 0
        assert summary.digest == state_digest(fold(synthetic_events(n, 500, 50, seed=3)))
        last = RedisStreamLog(client, "orders").last_position()
        assert summary.last_position == last
        snap = decode_snapshot(RedisSnapshotStore(client, "orders:snapshot").read() or b"", SHOP)
        assert snap.unwrap().position == last
        client.close()


def test_sigterm_writes_a_final_snapshot_and_exits_0(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    produce(redis_server.url, "orders", 5_000)
    argv = python_m(
        "shop_adapters.redis_runner",
        "--redis-url",
        redis_server.url,
        "--snapshot-interval",
        "3600",
        "--log-format",
        "json",
    )
    with RunnerProcess(argv) as proc:
        assert proc.wait_for("caught up"), proc.stderr[-3000:]
        log = RedisStreamLog(redis_client, "orders")
        (p,) = log.append([encode_event(TopUp(1, 5))])  # type: ignore[list-item]
        # The runner publishes a record's outcome once it has folded it.
        wait_until(
            lambda: bool(redis_client.xrange("orders:outcomes", str(p), str(p))),
            30,
            f"the runner to fold {p}",
        )
        assert redis_client.hget("orders:snapshot", b"blob") is None  # none by time yet
        proc.terminate()
        code, out, err = proc.finish()
    assert code == 0, err[-3000:]
    summary = summary_of(out)
    assert summary["stop_reason"] == "stopped" and summary["snapshots_written"] == 1
    blob = RedisSnapshotStore(redis_client, "orders:snapshot").read()
    assert blob is not None
    assert decode_snapshot(blob, SHOP).unwrap().position == p == log.last_position()
    assert redis_client.get("orders:lease") is None  # released


def test_a_second_runner_waits_for_the_lease_then_takes_over(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    produce(redis_server.url, "orders", 2_000)
    argv = python_m(
        "shop_adapters.redis_runner", "--redis-url", redis_server.url, "--log-format", "json"
    )
    with RunnerProcess(argv) as first:
        # The second starts once the first holds the lease, so which one waits is known.
        assert first.wait_for("caught up"), first.stderr[-3000:]
        second = RunnerProcess(argv)
        assert second.wait_for("waiting for it"), second.stderr[-3000:]
        assert not any("acquired" in line for line in second.lines)
        first.terminate()
        assert first.finish()[0] == 0, first.stderr[-3000:]
        assert second.wait_for("fencing token 2"), second.stderr[-3000:]
        assert second.wait_for("caught up"), second.stderr[-3000:]
        second.terminate()
        code, out, err = second.finish()
        second.__exit__(None, None, None)
    assert code == 0, err[-3000:]
    assert summary_of(out)["records"] == 0  # resumed from the snapshot


def test_a_runner_that_lost_its_lease_is_fenced(redis_client: redis.Redis) -> None:
    a = Lease(redis_client, "orders", ttl_ms=300, poll_s=0.05)
    b = Lease(redis_client, "orders", ttl_ms=300, poll_s=0.05)
    lost: list[str] = []
    assert a.acquire(on_lost=lost.append) == 1
    assert b.try_acquire() is None
    a._stop_renewing.set()  # a "GC pause": a stops renewing without noticing
    assert b.acquire() == 2
    store_a = RedisSnapshotStore(redis_client, "orders:snapshot", fencing_token=lambda: 1)
    store_b = RedisSnapshotStore(redis_client, "orders:snapshot", fencing_token=b.fencing_token)
    store_b.write(b"from b")
    with pytest.raises(FencedError):
        store_a.write(b"from a")
    assert store_b.read() == b"from b"
    b.release()
    assert redis_client.get("orders:lease") is None


def test_the_renewer_reports_a_lost_lease(redis_client: redis.Redis) -> None:
    a = Lease(redis_client, "s", ttl_ms=300, poll_s=0.05)
    lost: list[str] = []
    assert a.acquire(on_lost=lost.append) == 1
    redis_client.set("s:lease", b"someone else")
    wait_until(lambda: bool(lost), 3, "the renewer to report the lease lost")
    assert "someone else" in lost[0]
    assert a.token is None and a.fencing_token() == 0
    a.release()
    assert redis_client.get("s:lease") == b"someone else"  # not ours: left alone


# --- the CLIs --------------------------------------------------------------------------------


def test_producer_single_events_and_bad_input(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    url = ["--redis-url", redis_server.url]
    cli = CliRunner()
    assert cli.invoke(producer.cli, [*url, "topup", "7", "500"]).exit_code == 0
    assert cli.invoke(producer.cli, [*url, "add-item", "cpu", "3", "--price", "100"]).exit_code == 0
    assert cli.invoke(producer.cli, [*url, "order", "7", "cpu:2", "cpu:1"]).exit_code == 0
    for bad in (
        ["topup", "7", "-5"],
        ["topup", "x", "5"],
        ["add-item", "cpu", "1", "--price", "1.5"],
        ["order", "7", "cpu"],
        ["order", "7", "cpu:two"],
        ["order", "7"],
    ):
        result = cli.invoke(producer.cli, [*url, *bad])
        assert result.exit_code == 2, (bad, result.output)
    assert redis_client.xlen("orders") == 3
    state = cli.invoke(inspector.cli, [*url, "state", "--json"])
    assert state.exit_code == 0, state.output
    shown = json.loads(state.output)
    assert shown["users"] == {"7": 200} and shown["items"] == {"cpu": {"price": 100, "stock": 0}}


def test_inspect_state_at_verify_and_dead_letters(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    url = ["--redis-url", redis_server.url]
    log = RedisStreamLog(redis_client, "orders")
    p1, _, p3 = log.append(
        [
            encode_event(TopUp(1, 10)),  # type: ignore[list-item]
            {"type": "TopUp", "v": "1", "data": "{not json"},
            encode_event(AddItem("x", 2, 5)),  # type: ignore[list-item]
        ]
    )
    cli = CliRunner()
    assert cli.invoke(inspector.cli, [*url, "verify"]).exit_code == 1  # no snapshot yet
    summary = make_runner(redis_client, "orders").run(exit_when_idle=True)
    assert summary.dead_letters == 1
    ok = cli.invoke(inspector.cli, [*url, "verify"])
    assert ok.exit_code == 0, ok.output
    at = json.loads(cli.invoke(inspector.cli, [*url, "state", "--json", "--at", str(p1)]).output)
    assert at == {
        "position": str(p1),
        "digest": state_digest(fold([TopUp(1, 10)])),
        "users": {"1": 10},
        "items": {},
    }
    letters = cli.invoke(inspector.cli, [*url, "dead-letters"])
    assert letters.exit_code == 0
    assert f"{p1.major}-{p1.minor + 1}" in letters.output or "{not json" in letters.output
    assert "{not json" in letters.output
    # A snapshot that disagrees with the log is caught by verify.
    store = RedisSnapshotStore(redis_client, "orders:snapshot")
    anchor = record_anchor(log.read_at(p3).fields)  # type: ignore[union-attr]
    wrong = fold([TopUp(1, 11), AddItem("x", 2, 5)])
    store.write(encode_snapshot(Snapshot(wrong, p3, 3, 1, anchor=anchor), SHOP))
    bad = cli.invoke(inspector.cli, [*url, "verify"])
    assert bad.exit_code == 1 and "user 1" in bad.output
    replayed = replay(log, SHOP)
    assert replayed.position == p3 and replayed.state == fold([TopUp(1, 10), AddItem("x", 2, 5)])
    assert redis_client.xlen("orders:dead") == 1  # inspect wrote nothing more


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(data_dir=tmp_path / "pw", password="s3cret-pw") as server:
        yield server


def test_a_password_in_the_url_works_and_is_never_logged(password_server: RedisServer) -> None:
    url = password_server.url
    assert "s3cret-pw" in url
    produced = run_module("shop_adapters.producer", "--redis-url", url, "topup", "1", "5")
    assert produced.returncode == 0, produced.stderr
    ran = run_module("shop_adapters.redis_runner", "--redis-url", url, "--exit-when-idle")
    assert ran.returncode == 0, ran.stderr
    for out in (produced.stdout, produced.stderr, ran.stdout, ran.stderr):
        assert "s3cret-pw" not in out
    assert ":***@" in ran.stderr

"""Operating it: metrics and health, machine-readable logs, history and time travel,
retention with an archive, recovery as a recorded decision, one command, rough edges."""

from __future__ import annotations

import json
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hypothesis import given, settings
from reliability_support import (
    REPO,
    RunnerProcess,
    run_module,
    run_to_idle,
    runner_argv,
    wait_until,
)
from returns.result import Success

from shop_adapters import cli as shop_cli
from shop_adapters import inspector, producer, redis_runner
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.history import HistoryEntry, HistoryPolicy, MemorySnapshotHistory, keep
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.producer import append_events
from shop_adapters.protocols import Position
from shop_adapters.shop_domain.workload import synthetic_events
from shop_core import decide, fold
from shop_core.strategies import histories, orders

pytestmark = pytest.mark.redis


def client_of(server: RedisServer) -> redis.Redis:
    return server.client(socket_timeout=10)


def produce(client: redis.Redis, stream: str, n: int, seed: int = 1) -> Position:
    _n, last = append_events(
        RedisStreamLog(client, stream), synthetic_events(n, 100, 10, seed), chunk=5_000
    )
    assert last is not None
    return last


def inspect(server: RedisServer, stream: str, *args: str) -> Any:
    return run_module(
        "shop_adapters.inspector", "--redis-url", server.url, "--stream", stream, *args
    )


# --- metrics and health --------------------------------------------------------------


def _scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name} in:\n{text[:2000]}")


def test_a_live_runner_serves_metrics_that_move_and_a_health_endpoint(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    produce(redis_client, "m", 3_000)
    argv = runner_argv(redis_server.url, "m", "--metrics-port", "0", "--log-format", "json")
    with RunnerProcess(argv) as runner:
        assert runner.wait_for('"event": "metrics"')
        line = next(ln for ln in runner.lines if '"event": "metrics"' in ln)
        port = json.loads(line)["port"]
        wait_until(lambda: _scrape(port, "/healthz")[0] == 200, 30, "the runner to be healthy")
        _status, health = _scrape(port, "/healthz")
        assert json.loads(health)["runners"][0]["lease_held"] is True
        _s, before = _scrape(port, "/metrics")
        accepted = 'shop_records_total{outcome="accepted",stream="m"}'
        first = _metric(before, accepted)
        assert first > 0 and _metric(before, 'shop_lease_held{stream="m"}') == 1
        assert _metric(before, 'shop_lag_records{stream="m"}') == 0
        produce(redis_client, "m", 2_000, seed=2)
        wait_until(
            lambda: _metric(_scrape(port, "/metrics")[1], accepted) > first,
            30,
            "the accepted count to move",
        )
        _s, after = _scrape(port, "/metrics")
        assert _metric(after, 'shop_batch_duration_seconds_count{stream="m"}') >= 2
        assert _metric(after, 'shop_restore_duration_seconds{stream="m"}') >= 0
        runner.terminate()
        code, _out, err = runner.finish(60)
    assert code == 0
    lines = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    assert lines and all("event" in ln and ln.get("stream") == "m" for ln in lines)
    assert all("runner" in ln for ln in lines)
    acquired = next(ln for ln in lines if ln["event"] == "lease_acquired")
    assert acquired["token"] >= 1
    assert not [ln for ln in lines if ln["event"] == "progress" and ln["records"] == 0]


# --- history and time travel ------------------------------------------------------------


def test_the_history_keeps_the_last_and_one_every_k_records_bounded() -> None:
    history = MemorySnapshotHistory()
    policy = HistoryPolicy(last=2, every=1_000, limit=5)
    for records in range(250, 10_001, 250):
        history.add(HistoryEntry(Position(records, 0), records), b"blob")
        history.prune(policy)
        assert len(history.entries()) <= 5
    kept = [e.records for e in history.entries()]
    assert kept[-2:] == [9_750, 10_000]  # the last two
    assert all(r % 1_000 == 0 for r in kept[:-2])  # the first of their span of 1,000
    assert keep([], policy) == set()


def test_time_travel_starts_from_the_nearest_snapshot_and_says_when_past_the_end(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    produce(redis_client, "t", 12_000)
    run_to_idle(redis_server.url, "t", "--snapshot-every", "2000", "--history-every", "4000")
    positions = [
        r.position for r in RedisStreamLog(redis_client, "t").read_after(Position(0, 0), 20_000)
    ]
    target = positions[7_499]
    shown = inspect(redis_server, "t", "state", "--at", str(target))
    assert shown.returncode == 0, shown.stderr
    # Kept: 2,000 and 4,000 (the first of their spans of 4,000), 8,000, 10,000, 12,000.
    assert "from: snapshot at" in shown.stdout and "folded 3500 records" in shown.stdout
    expected = fold(list(synthetic_events(12_000, 100, 10, 1))[:7_500])
    assert json.loads(inspect(redis_server, "t", "state", "--json", "--at", str(target)).stdout)[
        "users"
    ] == {str(u): expected.users[u].balance for u in sorted(expected.users)}
    ms_only = inspect(redis_server, "t", "state", "--at", str(positions[-1].major))
    assert f"position: {positions[-1]}" in ms_only.stdout
    beyond = inspect(redis_server, "t", "state", "--at", "99999999999999")
    assert beyond.returncode == 0 and "is beyond the end of the log" in beyond.stderr
    at_time = inspect(redis_server, "t", "state", "--at-time", "2100-01-01T00:00:00Z")
    assert f"position: {positions[-1]}" in at_time.stdout
    user = inspect(redis_server, "t", "user", "5")
    assert user.returncode == 0 and user.stdout.startswith("user 5: balance ")
    item = inspect(redis_server, "t", "item", "item-3", "--at", str(target))
    price = expected.items["item-3"].price
    assert item.stdout.startswith(f"item 'item-3': price {price}, stock")
    assert inspect(redis_server, "t", "user", "99999").returncode == 3


# --- retention ---------------------------------------------------------------------------


def test_trim_with_an_archive_then_verify_with_the_archive(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    produce(redis_client, "r", 10_000)
    run_to_idle(
        redis_server.url,
        "r",
        "--snapshot-every",
        "2500",
        "--history-limit",
        "2",
        "--history-last",
        "2",
    )
    archive = tmp_path / "r.archive"
    oldest = min(
        Position.parse(f.decode().split(":", 1)[1]) for f in redis_client.hkeys("r:history")
    )
    trimmed = inspect(redis_server, "r", "trim", "--below-snapshot", "--archive", str(archive))
    assert trimmed.returncode == 0, trimmed.stderr
    assert RedisStreamLog(redis_client, "r").first_position() == oldest  # nothing above it
    without = inspect(redis_server, "r", "verify")
    assert without.returncode == 1 and "GapError" in without.stderr
    with_archive = inspect(redis_server, "r", "verify", "--archive", str(archive))
    assert with_archive.returncode == 0, with_archive.stderr
    assert "10000 records" in with_archive.stdout
    again = inspect(redis_server, "r", "trim", "--below-snapshot", "--archive", str(archive))
    assert "nothing to trim" in again.stdout
    summary = run_to_idle(redis_server.url, "r")  # the runner resumes over the trim
    assert summary["restored_from"] is not None and summary["records"] == 0


# --- recovery as a recorded decision -----------------------------------------------------


def test_accept_rollback_rebuilds_and_is_recorded(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    produce(redis_client, "w", 2_000)
    run_to_idle(redis_server.url, "w")
    redis_client.delete("w")  # the stream was replaced
    produce(redis_client, "w", 100, seed=9)
    with RunnerProcess(runner_argv(redis_server.url, "w", "--exit-when-idle")) as runner:
        code, _out, err = runner.finish(30)
    assert code == 1 and "--accept-rollback --reason" in err
    usage = run_module(
        "shop_adapters.redis_runner",
        "--redis-url",
        redis_server.url,
        "--stream",
        "w",
        "--accept-rollback",
    )
    assert usage.returncode == 2 and "needs --reason" in usage.stderr
    summary = run_to_idle(
        redis_server.url, "w", "--accept-rollback", "--reason", "replaced by hand"
    )
    assert summary["digest"] == run_to_idle(redis_server.url, "w", "--from-scratch")["digest"]
    assert summary["total_records"] == 100
    trail = json.loads(inspect(redis_server, "w", "audit", "--json").stdout)
    assert [d["decision"] for d in trail] == ["accept-rollback"]
    assert trail[0]["reason"] == "replaced by hand" and trail[0]["records"] == "2000"
    assert any(k.startswith(b"w:outcomes:before-rebuild:") for k in redis_client.keys("w:*"))
    assert inspect(redis_server, "w", "verify").returncode == 0


# --- one command -----------------------------------------------------------------------


def test_one_shop_command_runs_every_tool_and_manages_the_embedded_redis(tmp_path: Path) -> None:
    cli = CliRunner()
    assert cli.invoke(shop_cli.main, ["--help"]).exit_code == 0
    for sub in ("run", "produce", "inspect", "redis"):
        assert cli.invoke(shop_cli.main, [sub, "--help"]).exit_code == 0
    data = tmp_path / "d"
    produced = run_module(
        "shop_adapters.cli", "produce", "--data-dir", str(data), "topup", "7", "5"
    )
    assert produced.returncode == 0, produced.stderr
    assert "appended 1 event to orders" in produced.stdout
    status = run_module("shop_adapters.cli", "redis", "status", "--data-dir", str(data), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["running"] is True
    stopped = run_module("shop_adapters.cli", "redis", "stop", "--data-dir", str(data))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    after = run_module("shop_adapters.cli", "redis", "status", "--data-dir", str(data))
    assert after.returncode == 3


# --- rough edges a new user met ----------------------------------------------------------


@settings(max_examples=300, database=None)
@given(histories(), orders())
def test_default_strategies_meet(history: list[Any], order: Any) -> None:
    _MEETINGS.append(isinstance(decide(fold(history), order), Success))


_MEETINGS: list[bool] = []


def test_default_strategies_meet_often_enough() -> None:
    _MEETINGS.clear()
    test_default_strategies_meet()
    assert sum(_MEETINGS) >= 3, f"{sum(_MEETINGS)} of {len(_MEETINGS)} orders accepted"


def test_a_negative_amount_is_explained_not_read_as_an_option() -> None:
    result = CliRunner().invoke(
        producer.cli, ["--redis-url", "redis://127.0.0.1:1", "topup", "7", "-5"]
    )
    assert result.exit_code == 2
    assert "AMOUNT (minor units) must be a non-negative integer, got -5" in result.output


def test_help_texts_carry_no_rest_markup() -> None:
    cli = CliRunner()
    groups = [
        (producer.cli, ["synthetic", "import-csv", "topup", "add-item", "order"]),
        (inspector.cli, ["state", "verify", "dead-letters", "audit", "trim", "user", "item"]),
    ]
    texts = [cli.invoke(redis_runner.main, ["--help"]).output]
    for group, subs in groups:
        texts.append(cli.invoke(group, ["--help"]).output)
        texts += [cli.invoke(group, [s, "--help"]).output for s in subs]
    for text in texts:
        assert "``" not in text and ":class:" not in text and ":func:" not in text, text


def test_the_wheel_carries_no_top_level_benchmarks_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]
    assert "benchmarks" not in packages and all(p.startswith("shop_") for p in packages)


# --- what a new user broke, now refused or repaired ------------------------------------


def test_trim_refuses_an_archive_of_another_stream_or_one_that_does_not_cover(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    for stream, seed in (("a1", 1), ("a2", 2)):
        produce(redis_client, stream, 3_000, seed=seed)
        run_to_idle(redis_server.url, stream, "--history-limit", "0")
        produce(redis_client, stream, 100, seed=seed + 10)
        run_to_idle(redis_server.url, stream, "--history-limit", "0")
    archive = tmp_path / "a2.archive"
    assert (
        inspect(
            redis_server, "a2", "trim", "--below-snapshot", "--archive", str(archive)
        ).returncode
        == 0
    )
    before = redis_client.xlen("a1")
    wrong = inspect(redis_server, "a1", "trim", "--below-snapshot", "--archive", str(archive))
    assert wrong.returncode == 1 and "archives the stream 'a2', not 'a1'" in wrong.stderr
    assert redis_client.xlen("a1") == before  # nothing trimmed


def test_after_a_trim_the_runner_rebuilds_from_the_archive(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    events = list(synthetic_events(6_000, 100, 10, 1))
    produce(redis_client, "b", 6_000)
    run_to_idle(redis_server.url, "b", "--history-limit", "0")
    archive = tmp_path / "b.archive"
    assert (
        inspect(redis_server, "b", "trim", "--below-snapshot", "--archive", str(archive)).returncode
        == 0
    )
    # A new key window sets the snapshot aside: the history before it is in the archive.
    with RunnerProcess(
        runner_argv(redis_server.url, "b", "--exit-when-idle", "--key-window", "50")
    ) as r:
        code, _out, err = r.finish(60)
    assert code == 1 and "--archive FILE" in err
    summary = run_to_idle(redis_server.url, "b", "--key-window", "50", "--archive", str(archive))
    from shop_core import state_digest

    assert summary["digest"] == state_digest(fold(events))
    assert summary["total_records"] == 6_000


def test_time_travel_after_an_accepted_rollback_serves_only_the_new_history(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    produce(redis_client, "v", 3_000)
    run_to_idle(redis_server.url, "v", "--snapshot-every", "1000")
    old = [Position.parse(f.decode().split(":", 1)[1]) for f in redis_client.hkeys("v:history")]
    redis_client.delete("v")
    produce(redis_client, "v", 50, seed=4)
    run_to_idle(redis_server.url, "v", "--accept-rollback", "--reason", "replaced")
    shown = inspect(redis_server, "v", "state", "--json", "--at", str(max(old)))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["position"] != str(max(old))


def test_a_wait_that_times_out_names_the_key_to_retry_with(
    redis_server: RedisServer,
) -> None:
    out = run_module(
        "shop_adapters.producer",
        "--redis-url",
        redis_server.url,
        "--stream",
        "nw",
        "topup",
        "1",
        "5",
        "--wait",
        "--timeout",
        "0.2",
        "--idempotency-key",
        "k-17",
    )
    assert out.returncode == 4
    assert "--idempotency-key k-17" in out.stdout


def test_a_metrics_port_in_use_is_a_usage_error(redis_server: RedisServer) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = run_module(
            "shop_adapters.redis_runner",
            "--redis-url",
            redis_server.url,
            "--stream",
            "mp",
            "--exit-when-idle",
            "--metrics-port",
            str(port),
        )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot serve metrics" in out.stderr


def test_inspect_never_starts_a_new_embedded_redis(tmp_path: Path) -> None:
    out = run_module("shop_adapters.inspector", "--data-dir", str(tmp_path / "none"), "state")
    assert out.returncode == 1 and "no embedded Redis in" in out.stderr
    assert not (tmp_path / "none").exists()

"""Permanent Redis errors are fatal (one line, exit 1), transient ones are retried
(for a bounded time with ``--give-up-after``), and user errors are usage errors."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from reliability_support import RunnerProcess, run_module, runner_argv

from shop_adapters import inspector, producer, redis_runner
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.errors import OperationalError, PermanentError
from shop_adapters.lease import Lease
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.redis_errors import classify
from shop_adapters.retry import RetryPolicy
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_core import TopUp

PASSWORD = "right-horse-battery"
REFUSED = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused


# --- classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (redis.exceptions.AuthenticationError("invalid username-password pair"), PermanentError),
        (redis.exceptions.AuthenticationError("Authentication required."), PermanentError),
        (redis.exceptions.ResponseError("DB index is out of range"), PermanentError),
        (redis.exceptions.ConnectionError("Invalid Database"), PermanentError),
        (redis.exceptions.ResponseError("WRONGTYPE Operation against a key"), PermanentError),
        (redis.exceptions.NoPermissionError("NOPERM this user has no permissions"), PermanentError),
        (redis.exceptions.ResponseError("ERR unknown command"), PermanentError),
        (
            redis.exceptions.ConnectionError("Error 111 connecting. Connection refused."),
            OperationalError,
        ),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), OperationalError),
        (redis.exceptions.BusyLoadingError("LOADING Redis is loading"), OperationalError),
        (
            redis.exceptions.ReadOnlyError("READONLY You can't write against a replica"),
            OperationalError,
        ),
        (redis.exceptions.ResponseError("BUSY Redis is busy running a script"), OperationalError),
    ],
)
def test_permanent_and_transient_redis_errors(
    error: redis.exceptions.RedisError, kind: type
) -> None:
    assert type(classify(error, "XRANGE", "orders")) is kind


def test_a_wrongtype_on_one_of_our_own_keys_says_whose_key_it_is() -> None:
    error = classify(redis.exceptions.ResponseError("WRONGTYPE Operation"), "XRANGE", "x:snapshot")
    assert "'x:snapshot' holds a value of the wrong type" in str(error)
    assert "'x:snapshot' is the snapshot key of the stream 'x'" in str(error)
    assert "inspect it (TYPE x:snapshot)" in str(error)


# --- the runner: give up after a bounded wait ----------------------------------------------


class DeadLog(MemoryLog):
    def read_after(self, position: Any, limit: int) -> Any:
        raise OperationalError("down")

    def last_position(self) -> Any:
        raise OperationalError("down")


def test_the_runner_gives_up_after_give_up_after_seconds_of_failures() -> None:
    runner = Runner(
        DeadLog(),
        MemorySnapshotStore(),
        ShopDomain(),
        RunnerConfig(progress=False, retry=RetryPolicy(base=0.001, cap=0.001, give_up_after=0.0)),
    )
    with pytest.raises(OperationalError, match="gave up after 1 attempt"):
        runner.run(exit_when_idle=True)


def test_the_runner_refuses_a_bad_give_up_after() -> None:
    with pytest.raises(ValueError, match="give_up_after"):
        RetryPolicy(give_up_after=float("nan"))
    with pytest.raises(ValueError, match="give_up_after"):
        RetryPolicy(give_up_after=-1.0)


def test_a_permanent_error_is_not_retried() -> None:
    class Refusing(MemoryLog):
        calls = 0

        def read_after(self, position: Any, limit: int) -> Any:
            Refusing.calls += 1
            raise PermanentError("WRONGTYPE")

    log = Refusing()
    log.append([encode_event(TopUp(1, 1))])  # type: ignore[list-item]
    with pytest.raises(PermanentError):
        Runner(log, MemorySnapshotStore(), ShopDomain(), RunnerConfig(progress=False)).run(
            exit_when_idle=True
        )
    assert Refusing.calls == 1


def test_the_lease_gives_up_when_redis_stays_unreachable() -> None:
    client = redis.Redis.from_url(REFUSED, socket_connect_timeout=1)
    lease = Lease(client, "orders", ttl_ms=1_000, poll_s=0.01)
    with pytest.raises(OperationalError, match="gave up after"):
        lease.acquire(retry=RetryPolicy(base=0.001, cap=0.001, give_up_after=0.0))


# --- usage errors (no Redis reached) --------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--lease-ttl", "nan"],
        ["--snapshot-interval", "nan"],
        ["--snapshot-interval", "inf"],
        ["--progress-interval", "nan"],
        ["--give-up-after", "inf"],
        ["--stream", ""],
    ],
)
def test_bad_runner_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(redis_runner.main, ["--redis-url", REFUSED, *args])
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_empty_stream_is_a_usage_error_in_every_cli() -> None:
    for cli, rest in ((inspector.cli, ["state"]), (producer.cli, ["topup", "1", "1"])):
        result = CliRunner().invoke(cli, ["--redis-url", REFUSED, "--stream", "", *rest])
        assert result.exit_code == 2, result.output
        assert "the stream name must not be empty" in result.output
    rate = CliRunner().invoke(producer.cli, ["--redis-url", REFUSED, "synthetic", "--rate", "nan"])
    assert rate.exit_code == 2 and "not a finite number" in rate.output


# --- against real servers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(data_dir=tmp_path_factory.mktemp("auth"), password=PASSWORD) as server:
        yield server


run = run_module


def url(server: RedisServer, password: str = PASSWORD, db: int = 0) -> str:
    return f"redis://:{password}@127.0.0.1:{server.port}/{db}"


def assert_one_clean_line(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert needle in proc.stderr, proc.stderr[-3000:]


@pytest.mark.redis
@pytest.mark.parametrize("idle", [True, False])
def test_a_wrong_password_or_db_is_fatal_for_the_runner(secured: RedisServer, idle: bool) -> None:
    extra = ["--exit-when-idle"] if idle else []
    wrong = run(*runner_argv(url(secured, "wrong"), "s", *extra)[2:])
    assert_one_clean_line(wrong, "Redis refused the credentials")
    bad_db = run(*runner_argv(url(secured, db=99), "s", *extra)[2:])
    assert_one_clean_line(bad_db, "DB index is out of range")


@pytest.mark.redis
def test_a_wrong_password_or_db_is_fatal_for_inspect_and_the_producer(
    secured: RedisServer,
) -> None:
    for target in (url(secured, "wrong"), url(secured, db=99)):
        for args in (
            ["shop_adapters.inspector", "--redis-url", target, "state"],
            ["shop_adapters.inspector", "--redis-url", target, "verify"],
            ["shop_adapters.inspector", "--redis-url", target, "dead-letters"],
            ["shop_adapters.producer", "--redis-url", target, "topup", "1", "5"],
        ):
            result = run(*args)
            assert_one_clean_line(result, "PermanentError")
            assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


@pytest.mark.redis
def test_the_runner_gives_up_on_an_unreachable_redis_when_exit_when_idle() -> None:
    result = run(*runner_argv(REFUSED, "s", "--exit-when-idle", "--give-up-after", "0.2")[2:])
    assert_one_clean_line(result, "gave up after")


@pytest.mark.redis
def test_the_runner_keeps_retrying_an_unreachable_redis_until_stopped() -> None:
    """Without --exit-when-idle a runner started before Redis retries for ever (Redis
    may still be booting), and a SIGTERM meanwhile ends it cleanly."""
    with RunnerProcess(runner_argv(REFUSED, "s")) as proc:
        assert proc.wait_for("retry 2 in", timeout=30), proc.stderr[-3000:]
        assert proc.alive(), proc.stderr[-3000:]
        proc.terminate()
        code, _out, err = proc.finish(30)
    assert code == 0, err[-3000:]
    assert "checking the Redis server failed" in err and "Connection refused" in err
    assert "stopped before Redis could be reached" in err
    assert "Traceback" not in err


@pytest.mark.redis
@pytest.mark.parametrize("suffix", [":snapshot", ":lease", ":lease:token", ":dead", ":outcomes"])
def test_a_stream_naming_one_of_our_own_keys_is_a_usage_error(
    redis_server: RedisServer, redis_client: redis.Redis, suffix: str
) -> None:
    redis_client.xadd("orders", encode_event(TopUp(1, 5)))  # type: ignore[arg-type]
    redis_client.xadd("orders:dead", {"position": "1-0", "reason": "x"}, id="1-0")
    redis_client.hset("orders:snapshot", b"blob", b"x")
    redis_client.set("orders:lease", b"someone-else", px=60_000)
    redis_client.set("orders:lease:token", b"7")
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    stream = "orders" + suffix
    expected = (
        f"'{stream}' is the name of a companion key of the stream 'orders' "
        f"(its {suffix[1:]}), not a log: did you mean --stream 'orders'?"
    )
    for target in (redis_server.url, REFUSED):  # refused before connecting to anything
        for args in (
            runner_argv(target, stream, "--exit-when-idle", "--lease-ttl", "0.5")[2:],
            [
                "shop_adapters.producer",
                "--redis-url",
                target,
                "--stream",
                stream,
                "topup",
                "1",
                "5",
            ],
            ["shop_adapters.inspector", "--redis-url", target, "--stream", stream, "state"],
        ):
            result = run(*args)
            assert result.returncode == 2, (args, result.stderr[-3000:])
            assert "Traceback" not in result.stderr
            assert expected in " ".join(result.stderr.split()), result.stderr[-3000:]
    assert {k: redis_client.dump(k) for k in redis_client.keys("*")} == before


@pytest.mark.redis
def test_sigterm_while_waiting_for_the_lease_logs_and_exits_0(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.set("orders:lease", b"someone-else", px=120_000)
    with RunnerProcess(runner_argv(redis_server.url, "orders")) as proc:
        assert proc.wait_for("waiting for it", timeout=30), proc.stderr[-3000:]
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(timeout=30)
        proc.wait_for("stopped while waiting", timeout=5)
    assert code == 0, proc.stderr[-3000:]
    assert "stopped while waiting for the lease" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--stream", "o", "topup", "7", "1", "--idempotency-key", "\udcff"], "--idempotency-key"),
        (["--stream", "o", "add-item", "caf\udce9", "3"], "ITEM"),
        (["--stream", "o", "order", "7", "caf\udce9:1"], "LINES"),
        (["--stream", "o\udcff", "topup", "7", "1"], "--stream"),
    ],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error(
    args: list[str], shown: str, tmp_path: Any
) -> None:
    """Undecodable bytes on the command line (Python hands them over as lone
    surrogates): exit 2 naming the argument, before any connection is made."""
    result = CliRunner().invoke(producer.cli, ["--data-dir", str(tmp_path / "d"), *args])
    assert result.exit_code == 2, result.output
    assert f"{shown} " in result.output and "not UTF-8 text" in result.output
    assert not (tmp_path / "d").exists()

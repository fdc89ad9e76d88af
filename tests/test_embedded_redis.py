"""The private redis-server used by tests, benchmarks and the CLIs' default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shop_adapters.embedded_redis import (
    RedisServer,
    ensure_embedded,
    find_redis_server,
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

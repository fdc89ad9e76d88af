"""Shared fixtures. Real-Redis tests use ``redis_server``/``redis_client`` and carry
``@pytest.mark.redis``; they never touch the machine's Redis on port 6379."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from shop_adapters.embedded_redis import RedisServer

# --- Redis --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (AOF on) on a free port, for the whole test session."""
    data_dir: Path = tmp_path_factory.mktemp("redis-server")
    with RedisServer(data_dir=data_dir) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A bytes client (``socket_timeout=None``) on ``redis_server``, after ``FLUSHALL``."""
    client = redis_server.client(socket_timeout=None)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    """A fresh in-process fake Redis (no Lua: fenced snapshot writes are not supported)."""
    client = fakeredis.FakeRedis()
    try:
        yield client
    finally:
        client.close()


# --- Reliability options ------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shop reliability")
    group.addoption(
        "--trials",
        type=int,
        default=None,
        help="crash-anywhere trials of tests/test_reliability_crash.py (default 20)",
    )
    group.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run the tests marked slow (long campaigns, 1M-user states); "
        "the default suite runs their smaller versions",
    )
    group.addoption(
        "--first-seed",
        type=int,
        default=0,
        help="seed of the first crash-anywhere trial (rerun a failing seed with --trials 1)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``slow`` unless ``--slow`` (or ``-m slow``) asks for them."""
    if config.getoption("--slow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

"""Every snapshot store passes :class:`contract_snapshots.SnapshotContract`; then
crash safety (file) and fencing (Redis)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import fakeredis
import pytest
import redis
from contract_snapshots import SnapshotContract
from redis.backoff import NoBackoff
from redis.retry import Retry

from shop_adapters.embedded_redis import RedisServer
from shop_adapters.errors import FencedError, IntegrityError, OperationalError
from shop_adapters.protocols import SnapshotStore
from shop_adapters.snapshots.file import FileSnapshotStore
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_adapters.snapshots.redis import RedisSnapshotStore

# --- the contract, per backend -----------------------------------------------------------


class TestMemorySnapshotStore(SnapshotContract):
    @pytest.fixture
    def store(self) -> MemorySnapshotStore:
        return MemorySnapshotStore()

    @pytest.fixture
    def other_handle(self, store: MemorySnapshotStore) -> Callable[[], SnapshotStore]:
        return lambda: store


class TestFileSnapshotStore(SnapshotContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileSnapshotStore:
        return FileSnapshotStore(tmp_path / "snapshots" / "orders.snap")

    @pytest.fixture
    def other_handle(self, store: FileSnapshotStore) -> Callable[[], SnapshotStore]:
        return lambda: FileSnapshotStore(store.path)


class TestFakeRedisSnapshotStore(SnapshotContract):
    @pytest.fixture
    def server(self) -> fakeredis.FakeServer:
        return fakeredis.FakeServer()

    @pytest.fixture
    def store(self, server: fakeredis.FakeServer) -> RedisSnapshotStore:
        return RedisSnapshotStore(fakeredis.FakeRedis(server=server), "orders:snapshot")

    @pytest.fixture
    def other_handle(self, server: fakeredis.FakeServer) -> Callable[[], SnapshotStore]:
        return lambda: RedisSnapshotStore(fakeredis.FakeRedis(server=server), "orders:snapshot")


@pytest.mark.redis
class TestRedisSnapshotStore(SnapshotContract):
    @pytest.fixture
    def store(self, redis_client: redis.Redis) -> RedisSnapshotStore:
        return RedisSnapshotStore(redis_client, "orders:snapshot")

    @pytest.fixture
    def other_handle(self, redis_server: RedisServer) -> Callable[[], SnapshotStore]:
        return lambda: RedisSnapshotStore(redis_server.client(), "orders:snapshot")


@pytest.mark.redis
class TestFencedRedisSnapshotStore(SnapshotContract):
    """The same contract through the fenced (Lua) write path, on the real server
    (fakeredis runs no Lua without the optional ``lupa`` package)."""

    @pytest.fixture
    def store(self, redis_client: redis.Redis) -> RedisSnapshotStore:
        return RedisSnapshotStore(redis_client, "orders:snapshot", fencing_token=lambda: 1)

    @pytest.fixture
    def other_handle(self, redis_server: RedisServer) -> Callable[[], SnapshotStore]:
        return lambda: RedisSnapshotStore(
            redis_server.client(), "orders:snapshot", fencing_token=lambda: 1
        )


# --- file: a crash leaves the old snapshot or the new one --------------------------------


def test_file_store_ignores_a_stray_temp_file_from_a_crash(tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path / "orders.snap")
    store.write(b"old")
    stray = tmp_path / ".orders.snap.crashed.tmp"
    stray.write_bytes(b"half a new snap")  # what a crash before the rename leaves
    assert store.read() == b"old"
    store.write(b"new")
    assert store.read() == b"new"
    assert stray.exists()  # a recent stray file is left alone (it may be a live write)
    os.utime(stray, (0, 0))
    store.write(b"newer")
    assert not stray.exists()  # an hour-old one is cleaned up
    assert store.read() == b"newer"


def test_file_store_write_failing_before_the_rename_keeps_the_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileSnapshotStore(tmp_path / "orders.snap")
    store.write(b"old")

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        store.write(b"new")
    monkeypatch.undo()
    assert store.read() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["orders.snap"]


# --- Redis: one key, fencing, errors -------------------------------------------------------


def test_unfenced_write_is_one_hash_key(fake_redis: fakeredis.FakeRedis) -> None:
    RedisSnapshotStore(fake_redis, "snap").write(b"\x00blob")
    assert fake_redis.keys("*") == [b"snap"]
    assert fake_redis.hgetall("snap") == {b"blob": b"\x00blob"}


def test_redis_store_refuses_a_decoding_client() -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        RedisSnapshotStore(fakeredis.FakeRedis(decode_responses=True), "snap")


def test_redis_store_reports_a_key_of_the_wrong_type(fake_redis: fakeredis.FakeRedis) -> None:
    fake_redis.set("snap", b"a string, not a hash")
    with pytest.raises(IntegrityError, match="not a hash"):
        RedisSnapshotStore(fake_redis, "snap").read()


@pytest.mark.redis
def test_older_fencing_token_after_a_newer_one_is_refused(redis_client: redis.Redis) -> None:
    token = {"value": 5}
    old_runner = RedisSnapshotStore(redis_client, "snap", fencing_token=lambda: 5)
    new_runner = RedisSnapshotStore(redis_client, "snap", fencing_token=lambda: token["value"])
    old_runner.write(b"from 5")
    new_runner.write(b"from 5 again")  # an equal token may write (same lease)
    token["value"] = 7
    new_runner.write(b"from 7")
    with pytest.raises(FencedError, match="5 is older than 7"):
        old_runner.write(b"stale")
    assert new_runner.read() == b"from 7"
    assert new_runner.stored_fence() == 7
    assert redis_client.hgetall("snap") == {b"blob": b"from 7", b"fence": b"7"}


@pytest.mark.redis
def test_fencing_compares_tokens_beyond_float_precision(redis_client: redis.Redis) -> None:
    big = 2**60
    RedisSnapshotStore(redis_client, "snap", fencing_token=lambda: big + 1).write(b"newer")
    with pytest.raises(FencedError):
        RedisSnapshotStore(redis_client, "snap", fencing_token=lambda: big).write(b"older")
    RedisSnapshotStore(redis_client, "snap", fencing_token=lambda: 10 * big).write(b"newest")
    assert redis_client.hget("snap", "blob") == b"newest"


@pytest.mark.redis
def test_fencing_token_must_be_a_non_negative_int(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="fencing_token"):
        RedisSnapshotStore(redis_client, "snap", fencing_token=lambda: -1).write(b"x")


def test_redis_store_connection_errors_become_operational_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = redis.Redis(port=port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
    store = RedisSnapshotStore(client, "snap")
    for call in (lambda: store.write(b"x"), store.read):
        with pytest.raises(OperationalError) as info:
            call()
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)

"""Every event log passes :class:`contract_logs.LogContract`; then backend-specific behaviour."""

from __future__ import annotations

import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import msgpack
import pytest
import redis
from contract_logs import LogContract, entries
from redis.backoff import NoBackoff
from redis.retry import Retry
from reliability_support import wait_until

from shop_adapters.embedded_redis import RedisServer
from shop_adapters.errors import IntegrityError, OperationalError
from shop_adapters.logs.file import FileLog, TornRecordWarning, frame
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.protocols import ORIGIN, DeadLetter, EventLog, Position, Record

# --- the contract, per backend -----------------------------------------------------------


def _fake_redis_blocked(log: RedisStreamLog) -> Callable[[], bool]:
    """Whether a connection of ``log``'s fakeredis client is blocked in a command."""

    def blocked() -> bool:
        connections = list(log.client.connection_pool._in_use_connections)  # type: ignore[attr-defined]
        return any(getattr(getattr(c, "_sock", None), "_blocked", False) for c in connections)

    return blocked


def _found_nothing(log: FileLog) -> Callable[[], bool]:
    """A file log's reader polls the file size once a read found nothing: wrap its
    ``read_after`` (which ``wait_after`` calls first) to see that moment."""
    polling = threading.Event()
    read_after = log.read_after

    def spy(position: Position, limit: int) -> list[Record]:
        found = read_after(position, limit)
        if not found:
            polling.set()
        return found

    log.read_after = spy  # type: ignore[method-assign]
    return polling.is_set


def blocked_xread_clients(client: redis.Redis) -> list[dict[str, Any]]:
    """The connections blocked in ``XREAD`` (``CLIENT LIST``: cmd=xread, flag b)."""
    return [
        c for c in client.client_list() if c.get("cmd") == "xread" and "b" in c.get("flags", "")
    ]


class TestMemoryLog(LogContract):
    @pytest.fixture
    def log(self) -> MemoryLog:
        return MemoryLog()

    @pytest.fixture
    def other_handle(self, log: MemoryLog) -> Callable[[], EventLog]:
        return lambda: log

    @pytest.fixture
    def reader_blocked(self, log: MemoryLog) -> Callable[[], bool]:
        return lambda: bool(log._cond._waiters)  # type: ignore[attr-defined]


class TestFileLog(LogContract):
    @pytest.fixture(params=["always", "batch", "never"])
    def log(self, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FileLog]:
        log = FileLog(tmp_path / "orders.log", fsync=request.param)
        yield log
        log.close()

    @pytest.fixture
    def other_handle(self, log: FileLog) -> Iterator[Callable[[], EventLog]]:
        opened: list[FileLog] = []

        def make() -> EventLog:
            opened.append(FileLog(log.path))
            return opened[-1]

        yield make
        for handle in opened:
            handle.close()

    @pytest.fixture
    def reader_blocked(self, log: FileLog) -> Callable[[], bool]:
        return _found_nothing(log)


class TestFakeRedisStreamLog(LogContract):
    @pytest.fixture
    def server(self) -> fakeredis.FakeServer:
        return fakeredis.FakeServer()

    @pytest.fixture
    def log(self, server: fakeredis.FakeServer) -> RedisStreamLog:
        return RedisStreamLog(fakeredis.FakeRedis(server=server), "orders")

    @pytest.fixture
    def other_handle(self, server: fakeredis.FakeServer) -> Callable[[], EventLog]:
        return lambda: RedisStreamLog(fakeredis.FakeRedis(server=server), "orders")

    @pytest.fixture
    def reader_blocked(self, log: RedisStreamLog) -> Callable[[], bool]:
        return _fake_redis_blocked(log)


@pytest.mark.redis
class TestRedisStreamLog(LogContract):
    @pytest.fixture
    def log(self, redis_client: redis.Redis) -> RedisStreamLog:
        return RedisStreamLog(redis_client, "orders")

    @pytest.fixture
    def other_handle(self, redis_server: RedisServer) -> Iterator[Callable[[], EventLog]]:
        opened: list[RedisStreamLog] = []

        def make() -> EventLog:
            opened.append(RedisStreamLog.from_url(redis_server.url, "orders"))
            return opened[-1]

        yield make
        for handle in opened:
            handle.close()

    @pytest.fixture
    def reader_blocked(self, redis_server: RedisServer) -> Iterator[Callable[[], bool]]:
        admin = redis_server.client()
        yield lambda: bool(blocked_xread_clients(admin))
        admin.close()


# --- Redis streams: IDs, replies, blocking, errors ---------------------------------------


class RedisStreamBehaviour:
    """Run against fakeredis and the real server (fixtures ``client`` and ``make_client``)."""

    @pytest.fixture
    def client(self) -> redis.Redis:
        raise NotImplementedError

    @pytest.fixture
    def make_client(self) -> Callable[..., redis.Redis]:
        raise NotImplementedError

    def test_ids_compare_numerically_not_as_strings(self, client: redis.Redis) -> None:
        client.xadd("s", {"n": "9"}, id="5-9")
        client.xadd("s", {"n": "10"}, id="5-10")
        client.xadd("s", {"n": "11"}, id="10-0")
        log = RedisStreamLog(client, "s")
        assert [r.position for r in log.read_after(ORIGIN, 10)] == [
            Position(5, 9),
            Position(5, 10),
            Position(10, 0),
        ]
        assert [r.fields for r in log.read_after(Position(5, 9), 10)] == [
            {b"n": b"10"},
            {b"n": b"11"},
        ]
        assert log.wait_after(Position(5, 10), 10, 0)[0].position == Position(10, 0)
        assert log.last_position() == Position(10, 0)
        assert log.first_position() == Position(5, 9)

    def test_str_replies_give_the_same_records(
        self, client: redis.Redis, make_client: Callable[..., redis.Redis]
    ) -> None:
        RedisStreamLog(client, "s").append([{"type": "TopUp", "data": "é", "v": 1}])
        text = RedisStreamLog(make_client(decode_responses=True), "s")
        (record,) = text.read_after(ORIGIN, 10)
        assert record.fields == {b"type": b"TopUp", b"data": "é".encode(), b"v": b"1"}
        assert text.wait_after(ORIGIN, 10, 0) == [record]
        assert text.last_position() == text.first_position() == record.position
        assert text.dead_letter(DeadLetter(record.position, record.fields, "why")) is True
        assert text.dead_letter(DeadLetter(record.position, record.fields, "why")) is False
        (letter,) = text.dead_letters()
        assert (letter.position, letter.fields, letter.reason) == (
            record.position,
            record.fields,
            "why",
        )

    def test_missing_stream_reads_as_empty(self, client: redis.Redis) -> None:
        log = RedisStreamLog(client, "nothing-here")
        assert log.read_after(ORIGIN, 10) == []
        assert log.last_position() == log.first_position() == ORIGIN
        assert log.wait_after(ORIGIN, 10, 50) == []
        assert log.dead_letters() == []
        assert client.exists("nothing-here") == 0

    def test_dead_letter_reuses_the_original_entry_id(self, client: redis.Redis) -> None:
        log = RedisStreamLog(client, "orders")
        p1, p2 = log.append([{"a": "1"}, {"b": "2"}])
        assert log.dead_letter(DeadLetter(p2, {b"b": b"2"}, "late"))
        assert not log.dead_letter(DeadLetter(p2, {b"b": b"2"}, "late, worded otherwise"))
        # An earlier position that is not there can no longer be written: never dropped.
        with pytest.raises(IntegrityError, match="already goes past that ID"):
            log.dead_letter(DeadLetter(p1, {b"a": b"1"}, "earlier position refused"))
        ((entry_id, fields),) = client.xrange("orders:dead")
        assert Position.parse(entry_id) == p2
        assert fields == {b"position": str(p2).encode(), b"reason": b"late", b"field:b": b"2"}
        assert client.xlen("orders") == 2  # never altered

    def test_custom_dead_stream(self, client: redis.Redis) -> None:
        log = RedisStreamLog(client, "orders", dead_stream="graveyard")
        (p,) = log.append([{"a": "1"}])
        assert log.dead_letter(DeadLetter(p, {b"a": b"1"}, "x"))
        assert client.xlen("graveyard") == 1

    def test_socket_timeout_must_outlast_the_block(
        self, make_client: Callable[..., redis.Redis]
    ) -> None:
        with pytest.raises(ValueError, match="socket_timeout"):
            RedisStreamLog(make_client(socket_timeout=1.0), max_block_ms=1000)
        with pytest.raises(ValueError, match="socket_timeout"):
            RedisStreamLog(make_client(socket_timeout=0.5))
        RedisStreamLog(make_client(socket_timeout=None), max_block_ms=60_000)
        RedisStreamLog(make_client(socket_timeout=5.0), max_block_ms=1000)

    def test_origin_cannot_be_dead_lettered(self, client: redis.Redis) -> None:
        with pytest.raises(ValueError, match="ORIGIN"):
            RedisStreamLog(client).dead_letter(DeadLetter(ORIGIN, {}, "x"))


class TestFakeRedisStreamBehaviour(RedisStreamBehaviour):
    @pytest.fixture
    def server(self) -> fakeredis.FakeServer:
        return fakeredis.FakeServer()

    @pytest.fixture
    def client(self, server: fakeredis.FakeServer) -> redis.Redis:
        return fakeredis.FakeRedis(server=server)

    @pytest.fixture
    def make_client(self, server: fakeredis.FakeServer) -> Callable[..., redis.Redis]:
        return lambda **kw: fakeredis.FakeRedis(server=server, **kw)


@pytest.mark.redis
class TestRealRedisStreamBehaviour(RedisStreamBehaviour):
    @pytest.fixture
    def client(self, redis_client: redis.Redis) -> redis.Redis:
        return redis_client

    @pytest.fixture
    def make_client(self, redis_server: RedisServer) -> Iterator[Callable[..., redis.Redis]]:
        made: list[redis.Redis] = []

        def make(**kw: object) -> redis.Redis:
            made.append(redis_server.client(**kw))
            return made[-1]

        yield make
        for c in made:
            c.close()

    def test_blocking_read_is_woken_by_xadd_on_another_connection(
        self, client: redis.Redis, make_client: Callable[..., redis.Redis]
    ) -> None:
        log = RedisStreamLog(client, "orders", max_block_ms=30_000)
        (p,) = log.append(entries(1))
        other = make_client()
        assert blocked_xread_clients(other) == []
        appending = threading.Event()
        failed: list[BaseException] = []

        def xadd_once_blocked() -> None:
            try:
                # The reader's connection is in XREAD BLOCK on the server: now append.
                wait_until(lambda: len(blocked_xread_clients(other)) == 1, 10, "XREAD BLOCK")
                appending.set()
                other.xadd("orders", {"late": "1"})
            except BaseException as e:  # reported by the test
                failed.append(e)

        thread = threading.Thread(target=xadd_once_blocked)
        started = time.monotonic()
        thread.start()
        records = log.wait_after(p, 10, 20_000)
        woken_after_append = appending.is_set()
        thread.join()
        if failed:
            raise failed[0]
        assert woken_after_append
        assert [r.fields for r in records] == [{b"late": b"1"}]
        assert time.monotonic() - started < 10
        assert blocked_xread_clients(other) == []  # the reader's XREAD has returned

    def test_long_wait_is_sliced_below_the_socket_timeout(
        self, client: redis.Redis, make_client: Callable[..., redis.Redis]
    ) -> None:
        # socket_timeout 0.6 s, slices of 300 ms: an 900 ms wait must not raise TimeoutError.
        log = RedisStreamLog(make_client(socket_timeout=0.6), "orders", max_block_ms=300)
        assert log.wait_after(ORIGIN, 10, 900) == []

    def test_connection_errors_become_operational_errors(self) -> None:
        with socket.socket() as s:  # a port with nothing listening
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client = redis.Redis(port=port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
        log = RedisStreamLog(client, "orders")
        for call in (
            lambda: log.append(entries(1)),
            lambda: log.read_after(ORIGIN, 1),
            lambda: log.wait_after(ORIGIN, 1, 10),
            log.last_position,
            log.first_position,
            lambda: log.dead_letter(DeadLetter(Position(1, 0), {}, "x")),
            log.dead_letters,
        ):
            with pytest.raises(OperationalError) as info:
                call()
            assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)

    def test_stream_survives_a_server_restart(self, tmp_path: Path) -> None:
        with RedisServer(data_dir=tmp_path) as server:
            log = RedisStreamLog.from_url(server.url, "orders")
            positions = log.append(entries(3))
            server.restart(kill=True)
            assert [r.position for r in log.read_after(ORIGIN, 10)] == positions
            log.close()


# --- file log: torn tails, corruption, dead-letter file ---------------------------------


def _frames(path: Path) -> list[tuple[int, int]]:
    """``(offset, total size)`` of each record frame in a file log."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        out.append((pos, 8 + length))
        pos += 8 + length
    return out


def _fields(entry: dict[str | bytes, str | bytes | int]) -> dict[bytes, bytes]:
    return {
        (k if isinstance(k, bytes) else k.encode()): (
            v if isinstance(v, bytes) else str(v).encode()
        )
        for k, v in entry.items()
    }


def _write_log(path: Path, batch: list[dict[str | bytes, str | bytes | int]]) -> list[Position]:
    with FileLog(path) as log:
        return log.append(batch)


def test_file_log_truncated_at_every_byte_of_the_last_record_loses_only_it(tmp_path: Path) -> None:
    source = tmp_path / "source.log"
    _write_log(source, entries(3))
    data = source.read_bytes()
    last_offset, last_size = _frames(source)[-1]
    assert last_offset + last_size == len(data)
    for cut in range(last_offset, len(data)):
        path = tmp_path / f"cut-{cut}.log"
        path.write_bytes(data[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("error", TornRecordWarning)
            log = FileLog(path)  # a reader neither warns nor truncates: maybe a live append
        with log:
            records = log.read_after(ORIGIN, 10)
            assert [r.position for r in records] == [Position(1, 0), Position(2, 0)]
            assert [r.fields[b"data"] for r in records] == [e["data"].encode() for e in entries(2)]  # type: ignore[union-attr]
            assert path.stat().st_size == cut
            if cut == last_offset:
                assert log.append(entries(1, 7)) == [Position(3, 0)]
            else:  # the next append, under the lock, truncates the torn tail
                with pytest.warns(TornRecordWarning, match=f"byte offset {last_offset}"):
                    assert log.append(entries(1, 7)) == [Position(3, 0)]
            assert path.stat().st_size == len(data)
        with FileLog(path) as reopened:
            assert reopened.last_position() == Position(3, 0)
            assert reopened.read_after(Position(2, 0), 1)[0].fields == _fields(entries(1, 7)[0])


def test_file_log_record_cut_inside_a_utf8_character_is_torn(tmp_path: Path) -> None:
    path = tmp_path / "orders.log"
    _write_log(path, [{"a": "1"}, {"note": "€€€ end"}])
    data = path.read_bytes()
    euro = data.rindex("€".encode())
    for cut in (euro + 1, euro + 2):
        path.write_bytes(data[:cut])
        with FileLog(path) as log:
            assert [r.fields for r in log.read_after(ORIGIN, 10)] == [{b"a": b"1"}]
            with pytest.warns(TornRecordWarning):
                assert log.append([{"b": "2"}]) == [Position(2, 0)]
            assert [r.fields for r in log.read_after(ORIGIN, 10)] == [{b"a": b"1"}, {b"b": b"2"}]


def test_file_log_bad_crc_on_the_last_record_is_torn(tmp_path: Path) -> None:
    path = tmp_path / "orders.log"
    _write_log(path, entries(3))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with FileLog(path) as log:
        assert log.last_position() == Position(2, 0)
        with pytest.warns(TornRecordWarning, match="bad crc32c"):
            assert log.append(entries(1)) == [Position(3, 0)]


def test_file_log_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    path = tmp_path / "orders.log"
    _write_log(path, entries(2))
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(b"\0" * 100)
    with FileLog(path) as log:
        assert log.last_position() == Position(2, 0)
        assert path.stat().st_size == size + 100  # a reader leaves the tail alone
        with pytest.warns(TornRecordWarning, match=f"byte offset {size}"):
            (p,) = log.append(entries(1))
        assert p == Position(3, 0)
    assert path.stat().st_size == size + _frames(path)[-1][1]


def test_file_log_corrupt_middle_record_raises_naming_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "orders.log"
    _write_log(path, entries(3))
    offset, size = _frames(path)[1]
    data = bytearray(path.read_bytes())
    data[offset + size - 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=rf"{path}.*byte offset {offset}\b.*crc32c"):
        FileLog(path)
    assert path.read_bytes() == bytes(data)  # nothing truncated or skipped


@pytest.mark.parametrize(
    "payload",
    [{b"type": 1}, {"type": b"TopUp"}, {b"type": "TopUp"}, [b"type", b"TopUp"], {1: b"x"}],
    ids=["int value", "str name", "str value", "array", "int name"],
)
def test_file_log_record_not_a_map_of_bytes_is_an_integrity_error(
    tmp_path: Path, payload: Any
) -> None:
    # A well-framed record (its CRC matches) that is not what append writes:
    # the runner stops naming its offset, never folds or anchors it.
    path = tmp_path / "orders.log"
    _write_log(path, entries(1))
    offset = path.stat().st_size
    with path.open("ab") as f:
        f.write(frame(msgpack.packb(payload, use_bin_type=True)))
    with FileLog(path) as log:
        assert log.last_position() == Position(2, 0)
        assert len(log.read_after(ORIGIN, 1)) == 1
        with pytest.raises(IntegrityError, match=rf"byte offset {offset}\b.*not a map of bytes"):
            log.read_after(ORIGIN, 10)
        with pytest.raises(IntegrityError, match=rf"byte offset {offset}\b"):
            log.read_at(Position(2, 0))


def test_file_dead_letter_nested_too_deep_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "orders.log"
    _write_log(path, entries(1))
    (tmp_path / "orders.log.dead").write_bytes(frame(b"\x91" * 100_000 + b"\x00"))
    with pytest.raises(IntegrityError, match=r"orders.log.dead: record at byte offset 0\b"):
        FileLog(path)


def test_file_log_impossible_length_before_the_end_raises(tmp_path: Path) -> None:
    path = tmp_path / "orders.log"
    _write_log(path, entries(3))
    offset, _ = _frames(path)[1]
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=rf"byte offset {offset}\b.*impossible length"):
        FileLog(path)


def test_file_log_sees_records_appended_by_another_handle(tmp_path: Path) -> None:
    path = tmp_path / "orders.log"
    with FileLog(path) as reader, FileLog(path) as writer:
        assert reader.last_position() == ORIGIN
        writer.append(entries(2))
        assert reader.last_position() == Position(2, 0)
        assert reader.append(entries(1)) == [Position(3, 0)]  # appends after the other's
        assert [r.position for r in writer.read_after(ORIGIN, 10)] == [
            Position(i, 0) for i in (1, 2, 3)
        ]


def test_file_dead_letters_survive_reopen_and_stay_at_most_once(tmp_path: Path) -> None:
    path = tmp_path / "orders.log"
    with FileLog(path) as log:
        p1, p2 = log.append([{"a": "1"}, {"b": "2"}])
        assert log.dead_letter(DeadLetter(p1, {b"a": b"1"}, "one"))
    assert (tmp_path / "orders.log.dead").exists()
    with FileLog(path) as log:
        assert not log.dead_letter(DeadLetter(p1, {b"a": b"1"}, "one again"))
        assert log.dead_letter(DeadLetter(p2, {b"b": b"2"}, "two"))
        assert [(d.position, d.reason) for d in log.dead_letters()] == [(p1, "one"), (p2, "two")]


def test_file_log_refuses_use_after_close(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "orders.log")
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.read_after(ORIGIN, 1)
    with pytest.raises(ValueError, match="closed"):
        log.append(entries(1))


def test_file_log_refuses_an_unknown_fsync_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        FileLog(tmp_path / "orders.log", fsync="sometimes")  # type: ignore[arg-type]

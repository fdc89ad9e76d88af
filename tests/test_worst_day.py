"""The worst day, round two: each failure an operator met, against real redis-servers.

The invariant everywhere: the runner folds exactly what the log holds, or stops with
a clear error; it never writes a snapshot it is not entitled to write. Numbers refer
to the items of the reliability issue (failures to remove).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from reliability_support import (
    RunnerProcess,
    run_module,
    run_to_idle,
    runner_argv,
    stored_snapshot,
    wait_until,
)

from shop_adapters.catchup import check_continuity, record_anchor
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.errors import FencedError, IntegrityError
from shop_adapters.lease import Lease
from shop_adapters.logs.file import FileLog
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.producer import append_events
from shop_adapters.protocols import ORIGIN, OVERSIZE_FIELD, DeadLetter, Position
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.retail_csv import map_rows, read_csv
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_adapters.snapshots.redis import RedisSnapshotStore
from shop_core import TopUp, fold, state_digest

pytestmark = pytest.mark.redis

SHOP = ShopDomain()
CSV = Path(__file__).resolve().parent.parent / "data" / "online-retail-2010-12-01-to-07.csv"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for one test (these tests flush, kill and reconfigure it)."""
    with RedisServer(data_dir=tmp_path / "redis") as s:
        yield s


def client_of(server: RedisServer) -> redis.Redis:
    return server.client(socket_timeout=10)


def produce(client: redis.Redis, stream: str, n: int, seed: int = 1) -> Position:
    _n, last = append_events(
        RedisStreamLog(client, stream), synthetic_events(n, 200, 20, seed), chunk=5_000
    )
    assert last is not None
    return last


# --- 1. a large state and the lease ------------------------------------------------


def test_a_snapshot_write_is_refused_by_redis_unless_the_writer_holds_the_lease(
    server: RedisServer,
) -> None:
    client = client_of(server)
    (position,) = RedisStreamLog(client, "s").append([encode_event(TopUp(1, 5))])
    anchor = record_anchor(RedisStreamLog(client, "s").read_at(position).fields)  # type: ignore[union-attr]
    lease = Lease(client, "s", ttl_ms=60_000)
    assert lease.try_acquire() is not None
    store = RedisSnapshotStore.for_lease(client, "s:snapshot", lease, "s")
    store.write(b"ours", (position, anchor))
    assert store.read() == b"ours"

    client.delete("s:lease")  # expired, evicted or deleted while we were stalled
    with pytest.raises(FencedError, match=r"no longer holds the lease .*held by nobody"):
        store.write(b"late", (position, anchor))
    client.set("s:lease", "someone-else")
    with pytest.raises(FencedError, match="held by 'someone-else'"):
        store.write(b"late", (position, anchor))
    assert store.read() == b"ours"

    client.set("s:lease", lease.owner)
    with pytest.raises(IntegrityError, match="holds another record"):
        store.write(b"wrong anchor", (position, "0" * 40))
    client.xdel("s", str(position))
    with pytest.raises(IntegrityError, match="holds no record"):
        store.write(b"gone", (position, anchor))
    assert store.read() == b"ours"


@pytest.mark.parametrize("users", [150_000, pytest.param(1_000_000, marks=pytest.mark.slow)])
def test_a_large_state_restores_follows_and_stops_without_losing_its_lease(
    server: RedisServer, users: int
) -> None:
    """Old failure: decoding the snapshot (stdlib json) stalled the renewer past the
    TTL, and every start went "acquired, restored, lease lost". Now the snapshot is
    read and decoded before the lease is taken and encoded with a compiled codec:
    with a 1 s TTL (the old failure needed 2 s at 1M users) the runner restores,
    follows, snapshots on SIGTERM and never loses its lease."""
    client = client_of(server)
    log = RedisStreamLog(client, "big")
    for start in range(0, users, 50_000):
        log.append([encode_event(TopUp(u, 100)) for u in range(start, start + 50_000)])
    run_to_idle(server.url, "big", timeout=900)  # fold once: a snapshot of `users` users
    argv = runner_argv(server.url, "big", "--lease-ttl", "1")
    with RunnerProcess(argv) as runner:
        assert runner.wait_for("caught up", timeout=600), runner.stderr[-3000:]
        log.append([encode_event(TopUp(1, 1))])
        wait_until(
            lambda: "lease lost" in runner.stderr or client.xlen("big:outcomes") == users + 1,
            120,
            "the follower to answer the new record",
        )
        runner.terminate()
        code, _out, err = runner.finish(timeout=120)
    assert code == 0, err[-3000:]
    assert "lease lost" not in err and "refused" not in err, err[-3000:]
    assert "restored snapshot" in err
    snap = stored_snapshot(client, "big")
    assert snap is not None and snap.records == users + 1


# --- 2. a partial import is completed, never skipped or doubled --------------------


def test_an_interrupted_import_is_completed_and_a_second_import_changes_nothing(
    server: RedisServer,
) -> None:
    client = client_of(server)
    url = ["--redis-url", server.url, "--stream", "week"]
    result = map_rows(read_csv(CSV))
    single = state_digest(fold(result.events))
    # The import died after 4,000 of its 11,941 events (the keys went with them).
    log = RedisStreamLog(client, "week")
    for start in range(0, 4_000, 1_000):
        log.append(
            [
                {**encode_event(e), "key": k}
                for e, k in zip(
                    result.events[start : start + 1_000],
                    result.keys[start : start + 1_000],
                    strict=True,
                )
            ]
        )
    done = run_module("shop_adapters.producer", *url, "import-csv", str(CSV))
    assert done.returncode == 0, done.stderr
    assert run_to_idle(server.url, "week")["digest"] == single
    again = run_module("shop_adapters.producer", *url, "import-csv", str(CSV))
    assert again.returncode == 0, again.stderr
    summary = run_to_idle(server.url, "week")
    assert summary["digest"] == single
    assert summary["duplicates"] == len(result.events)
    assert summary["accepted"] == {} and summary["rejected"] == {}


# --- 3. Redis configured to lose data -------------------------------------------------


def test_a_redis_that_may_evict_keys_is_refused_by_runner_and_producer(
    server: RedisServer,
) -> None:
    client = client_of(server)
    client.config_set("maxmemory", "200mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    url = ["--redis-url", server.url, "--stream", "s"]
    producer = run_module("shop_adapters.producer", *url, "topup", "1", "5")
    assert producer.returncode == 1
    assert "maxmemory-policy allkeys-lru" in producer.stderr
    with RunnerProcess(runner_argv(server.url, "s", "--exit-when-idle")) as runner:
        code, _out, err = runner.finish(30)
    assert code == 1 and "maxmemory-policy allkeys-lru" in err and "--allow-eviction" in err
    assert client.exists("s") == 0  # nothing was written
    forced = run_module("shop_adapters.producer", *url, "--allow-eviction", "topup", "1", "5")
    assert forced.returncode == 0, forced.stderr
    client.config_set("maxmemory-policy", "noeviction")
    assert run_to_idle(server.url, "s")["records"] == 1


def test_entries_the_runner_had_seen_going_missing_are_found_live_and_at_restart(
    server: RedisServer,
) -> None:
    client = client_of(server)
    produce(client, "s", 3_000)
    run_to_idle(server.url, "s")
    client.delete("s")  # evicted (or deleted) after the runner folded it
    produce(client, "s", 10, seed=2)
    with RunnerProcess(runner_argv(server.url, "s", "--exit-when-idle")) as runner:
        code, _out, err = runner.finish(30)
    assert code == 1
    assert "IntegrityError" in err and "--accept-rollback" in err

    # Live: the stream vanishes under a following runner.
    client.flushall()
    produce(client, "t", 2_000)
    with RunnerProcess(runner_argv(server.url, "t")) as runner:
        assert runner.wait_for("caught up")
        client.delete("t")
        code, _out, err = runner.finish(30)
    assert code == 1 and "IntegrityError" in err, err[-2000:]


# --- 4. rolled back or wiped -------------------------------------------------------------


def test_a_redis_restarted_from_an_older_rdb_stops_the_runner(tmp_path: Path) -> None:
    with RedisServer(data_dir=tmp_path / "rdb", appendonly=False) as server:
        client = client_of(server)
        produce(client, "s", 5_000)
        client.save()  # the copy the server will come back from
        produce(client, "s", 2_000, seed=3)
        with RunnerProcess(runner_argv(server.url, "s", "--lease-ttl", "2")) as runner:
            assert runner.wait_for("caught up")
            server.restart(kill=True)  # back from the older dump.rdb
            client = client_of(server)
            produce(client, "s", 1, seed=4)  # one XADD before the runner reconnects
            code, _out, err = runner.finish(60)
        assert code == 1, err[-3000:]
        assert "IntegrityError" in err and "rolled back" in err
        snap = stored_snapshot(client, "s")
        assert snap is None or snap.records <= 5_000  # never the folded 7,000 on 5,001


def test_flushall_while_following_stops_the_runner_and_writes_nothing(
    server: RedisServer,
) -> None:
    client = client_of(server)
    produce(client, "s", 3_000)
    with RunnerProcess(runner_argv(server.url, "s", "--snapshot-interval", "0.2")) as runner:
        assert runner.wait_for("caught up")
        client.flushall()
        code, _out, err = runner.finish(30)
    assert code == 1, err[-3000:]
    assert "IntegrityError" in err
    assert client.exists("s:snapshot") == 0, "a snapshot was written into the emptied key space"


# --- 5. lower IDs while live ---------------------------------------------------------------


def test_a_stream_recreated_with_lower_ids_while_following_is_detected(
    server: RedisServer,
) -> None:
    client = client_of(server)
    produce(client, "s", 1_000)
    with RunnerProcess(runner_argv(server.url, "s")) as runner:
        assert runner.wait_for("caught up")
        client.delete("s")
        client.xadd("s", encode_event(TopUp(1, 1)), id="1-1")  # type: ignore[arg-type]
        client.xadd("s", encode_event(TopUp(1, 2)), id="1-2")  # type: ignore[arg-type]
        code, _out, err = runner.finish(30)
    assert code == 1 and "IntegrityError" in err, err[-2000:]


# --- 6. dead letters are never dropped silently -----------------------------------------


def test_a_foreign_entry_in_the_dead_stream_stops_the_runner(server: RedisServer) -> None:
    client = client_of(server)
    client.xadd("s:dead", {"by": "hand"}, id="99999999999999-0")
    RedisStreamLog(client, "s").append([{"type": "Nonsense", "v": "1", "data": "{}"}])
    with RunnerProcess(runner_argv(server.url, "s", "--exit-when-idle")) as runner:
        code, _out, err = runner.finish(30)
    assert code == 1, err
    assert "IntegrityError" in err and "s:dead" in err and "Refusing to drop" in err
    assert client.xlen("s:dead") == 1
    assert client.hget("s:snapshot", "blob") is None


def test_a_dead_letter_already_written_is_recognised_by_its_record() -> None:
    log = MemoryLog()
    (p,) = log.append([{"a": "1"}])
    assert log.dead_letter(DeadLetter(p, {b"a": b"1"}, "reason worded by v1"))
    assert not log.dead_letter(DeadLetter(p, {b"a": b"1"}, "reason worded by v2"))
    with pytest.raises(IntegrityError, match="holds another entry there"):
        log.dead_letter(DeadLetter(p, {b"a": b"2"}, "another record"))


# --- 7. memory under huge entries -------------------------------------------------------


def test_huge_entries_are_read_within_the_byte_budget_and_dead_lettered(
    server: RedisServer,
) -> None:
    client = client_of(server)
    log = RedisStreamLog(client, "s", max_batch_bytes=4 << 20, max_entry_bytes=1 << 20)
    huge = {"type": "TopUp", "data": b"x" * (3 << 20)}  # over the entry limit: not read
    large = {"type": "TopUp", "data": b"y" * (600 << 10)}  # read, within the byte budget
    log.append([encode_event(TopUp(1, 5))])
    for _ in range(6):
        log.append([huge, large])
    log.append([large, large])
    log.append([encode_event(TopUp(1, 6))])
    batches = []
    position = ORIGIN
    while records := log.read_after(position, 10_000):
        batches.append(records)
        position = records[-1].position
    sizes = [sum(len(k) + len(v) for r in b for k, v in r.fields.items()) for b in batches]
    assert max(sizes) <= 4 << 20 and len(batches) > 1
    assert sum(len(b) for b in batches) == 16
    stand_ins = [r for b in batches for r in b if OVERSIZE_FIELD in r.fields]
    size = str(sum(len(k) + len(v) for k, v in huge.items())).encode()
    assert len(stand_ins) == 6 and all(r.fields[OVERSIZE_FIELD] == size for r in stand_ins)
    summary = Runner(log, MemorySnapshotStore(), SHOP, RunnerConfig(progress=False)).run(
        exit_when_idle=True
    )
    assert summary.dead_letters == 14
    assert summary.digest == state_digest(fold([TopUp(1, 5), TopUp(1, 6)]))
    letters = log.dead_letters()
    too_large = [d for d in letters if "entry too large to read" in d.reason]
    assert len(too_large) == 6 and all(not d.fields for d in too_large)
    assert client.xlen("s") == 16  # the entries stay in the log


# --- 8. the file log ---------------------------------------------------------------------


def _file_log(tmp_path: Path, n: int) -> FileLog:
    log = FileLog(tmp_path / "orders.log")
    append_events(log, synthetic_events(n, 20, 5, seed=1), chunk=500)
    return log


def test_a_file_truncated_under_a_reader_is_an_integrity_error_naming_file_and_offset(
    tmp_path: Path,
) -> None:
    log = _file_log(tmp_path, 1_000)
    assert len(log.read_after(ORIGIN, 10)) == 10
    size = (tmp_path / "orders.log").stat().st_size
    os.truncate(tmp_path / "orders.log", size // 2)
    with pytest.raises(IntegrityError, match=r"orders\.log.*byte offset \d+"):
        log.read_after(ORIGIN, 1_000)
    log.close()


def test_a_file_truncated_and_regrown_under_a_follower_stops_it(tmp_path: Path) -> None:
    log = _file_log(tmp_path, 1_000)
    runner = Runner(log, MemorySnapshotStore(), SHOP, RunnerConfig(progress=False, block_ms=20))
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            runner.run()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=follow)
    thread.start()
    wait_until(lambda: runner.position == Position(1_000, 0), 30, "the follower caught up")
    path = tmp_path / "orders.log"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated by someone...
    other = FileLog(path)  # ...and written again by another writer
    append_events(other, synthetic_events(2_000, 20, 5, seed=9), chunk=500)
    thread.join(30)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], IntegrityError), errors
    other.close()
    log.close()


def test_a_writer_stopped_inside_append_never_blocks_a_reader(tmp_path: Path) -> None:
    log = _file_log(tmp_path, 100)
    fd = os.open(tmp_path / "orders.log", os.O_WRONLY | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer holding the lock, stopped mid-append
    os.write(fd, b"\x10\x00\x00")  # and a few bytes of a record it never finished
    try:
        opened: list[FileLog] = []
        thread = threading.Thread(target=lambda: opened.append(FileLog(tmp_path / "orders.log")))
        thread.start()
        thread.join(5)
        assert opened, "opening a file log waited for the writer's lock"
        reader = opened[0]
        assert reader.last_position() == Position(100, 0)
        assert len(reader.read_after(ORIGIN, 1_000)) == 100
        reader.close()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    log.close()


class _FullDisk(MemorySnapshotStore):
    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def write(self, blob: bytes, at: Any = None) -> None:
        self.attempts += 1
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_logs_one_line_per_snapshot_failure_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = MemoryLog()
    append_events(log, synthetic_events(5_000, 20, 5, seed=1), chunk=100)
    store = _FullDisk()
    with caplog.at_level(logging.WARNING, logger="shop.runner"):
        summary = Runner(
            log, store, SHOP, RunnerConfig(progress=False, batch_size=100, snapshot_every=100)
        ).run(exit_when_idle=True)
    failures = [r for r in caplog.records if "No space left on device" in r.getMessage()]
    assert failures and not any(r.exc_info for r in caplog.records)
    # 50 snapshots were due; the writer backed off instead of trying each one.
    assert store.attempts < 20
    assert summary.digest == state_digest(fold(list(synthetic_events(5_000, 20, 5, seed=1))))


# --- 9. an interrupted from-scratch rebuild never rewinds the snapshot ------------------


def test_an_interrupted_rebuild_from_scratch_does_not_rewind_the_stored_snapshot() -> None:
    log = MemoryLog()
    append_events(log, synthetic_events(20_000, 100, 10, seed=1), chunk=1_000)
    store = MemorySnapshotStore()
    Runner(log, store, SHOP, RunnerConfig(progress=False)).run(exit_when_idle=True)
    stored = store.read()
    config = RunnerConfig(progress=False, from_scratch=True, batch_size=500, snapshot_every=500)
    rebuild = Runner(log, store, SHOP, config)
    original_consume = rebuild._consume

    def consume_then_stop(records: Any) -> None:
        original_consume(records)
        if rebuild.position >= Position(10_000, 0):
            rebuild.stop()

    rebuild._consume = consume_then_stop  # type: ignore[method-assign]
    summary = rebuild.run(exit_when_idle=True)
    assert summary.stop_reason == "stopped" and summary.last_position < Position(20_000, 0)
    assert store.read() == stored, "the rebuild overwrote a snapshot further on than itself"
    done = Runner(log, store, SHOP, config).run(exit_when_idle=True)
    assert done.last_position == Position(20_000, 0) and done.snapshots_written >= 1


# --- 10. messages that mislead ------------------------------------------------------------


def test_a_lease_lost_says_why(server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    client = client_of(server)
    lost: list[str] = []
    lease = Lease(client, "s", ttl_ms=300, poll_s=0.01)
    assert lease.acquire(on_lost=lost.append) is not None
    client.delete("s:lease")
    wait_until(lambda: bool(lost), 5, "the renewer to notice")
    assert "gone: it expired, was evicted or was deleted" in lost[0]
    other = Lease(client, "t", ttl_ms=300, poll_s=0.01)
    lost.clear()
    assert other.acquire(on_lost=lost.append) is not None
    client.set("t:lease", "the-other-runner")
    wait_until(lambda: bool(lost), 5, "the renewer to notice")
    assert "held by 'the-other-runner'" in lost[0]
    lease.release()
    other.release()


def test_a_fence_of_nineteen_digits_is_accepted_and_exceeded(server: RedisServer) -> None:
    client = client_of(server)
    client.hset("s:snapshot", "fence", "999999999999999999")  # 18 digits
    lease = Lease(client, "s", ttl_ms=10_000)
    token = lease.try_acquire()
    assert token == 10**18
    lease.release()
    assert Lease(client, "s", ttl_ms=10_000).try_acquire() == 10**18 + 1


def test_options_that_could_only_crash_are_usage_errors(server: RedisServer) -> None:
    code = run_module(
        "shop_adapters.redis_runner", "--redis-url", server.url, "--lease-ttl", "1e15"
    )
    assert code.returncode == 2 and "Traceback" not in code.stderr
    reused = run_module(
        "shop_adapters.redis_runner", "--redis-url", server.url, "--stream", "orders:snapshot"
    )
    assert reused.returncode == 2 and "did you mean --stream 'orders'" in reused.stderr
    client = client_of(server)
    assert client.exists("orders:snapshot:lease:token") == 0  # refused before writing


def test_a_companion_key_of_the_wrong_type_is_named_without_circular_advice(
    server: RedisServer,
) -> None:
    client = client_of(server)
    client.set("wt:dead", "not a stream")
    RedisStreamLog(client, "wt").append([{"type": "Nonsense", "v": "1", "data": "{}"}])
    with RunnerProcess(runner_argv(server.url, "wt", "--exit-when-idle")) as runner:
        code, _out, err = runner.finish(30)
    assert code == 1
    assert "'wt:dead' is the dead key of the stream 'wt'" in err
    assert "did you mean --stream 'wt'" not in err


def test_a_producer_refused_by_maxmemory_says_how_many_events_landed(
    server: RedisServer,
) -> None:
    client = client_of(server)
    client.config_set("maxmemory-policy", "noeviction")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used + 3_000_000))
    out = run_module(
        "shop_adapters.producer",
        "--redis-url",
        server.url,
        "synthetic",
        "--events",
        "200000",
        "--chunk",
        "1000",
    )
    assert out.returncode == 1
    assert "entries were appended before the failure" in out.stderr, out.stderr
    assert "maxmemory" in out.stderr


def test_gap_after_a_snapshot_names_the_decision_and_verify_does_not_promise_a_resume(
    server: RedisServer,
) -> None:
    client = client_of(server)
    last = produce(client, "s", 2_000)
    run_to_idle(server.url, "s")
    later = produce(client, "s", 500, seed=5)
    client.xdel("s", str(later))  # a record after the snapshot, deleted by someone
    client.xadd("s", encode_event(TopUp(3, 3)))  # type: ignore[arg-type]
    with RunnerProcess(runner_argv(server.url, "s", "--exit-when-idle")) as runner:
        code, _out, err = runner.finish(30)
    assert code == 1 and "GapError" in err and "--accept-gap --reason" in err
    verify = run_module(
        "shop_adapters.inspector", "--redis-url", server.url, "--stream", "s", "verify"
    )
    assert "still resumes" not in verify.stdout + verify.stderr
    accepted = run_to_idle(
        server.url, "s", "--accept-gap", "--reason", "record deleted by the test"
    )
    assert accepted["restored_from"] == str(last)
    trail = run_module(
        "shop_adapters.inspector", "--redis-url", server.url, "--stream", "s", "audit", "--json"
    )
    (decision,) = json.loads(trail.stdout)
    assert decision["decision"] == "accept-gap"
    assert decision["reason"] == "record deleted by the test"
    assert decision["at"] == str(last)


def test_an_accepted_gap_is_accepted_once_and_a_later_gap_still_stops(
    server: RedisServer,
) -> None:
    """The records deleted at the end of the stream: after --accept-gap the next
    plain starts run (with and without new records), and a record deleted
    later still stops the runner."""
    client = client_of(server)
    produce(client, "g", 300)
    last = produce(client, "g", 3, seed=7)
    client.xdel("g", str(last))
    with RunnerProcess(runner_argv(server.url, "g", "--exit-when-idle")) as runner:
        code, _out, err = runner.finish(30)
    assert code == 1 and "GapError" in err
    run_to_idle(server.url, "g", "--accept-gap", "--reason", "last record deleted by the test")
    again = run_to_idle(server.url, "g")
    assert "accept_gap" not in again["_stderr"] and again["records"] == 0
    produce(client, "g", 5, seed=8)
    after = run_to_idle(server.url, "g")
    assert after["records"] == 5
    doomed = produce(client, "g", 5, seed=9)
    client.xadd("g", encode_event(TopUp(3, 3)))  # type: ignore[arg-type]
    client.xdel("g", str(doomed))
    with RunnerProcess(runner_argv(server.url, "g", "--exit-when-idle")) as runner:
        code, _out, err = runner.finish(30)
    assert code == 1 and "GapError" in err and str(doomed) in err
    trail = run_module(
        "shop_adapters.inspector", "--redis-url", server.url, "--stream", "g", "audit", "--json"
    )
    assert [d["decision"] for d in json.loads(trail.stdout)] == ["accept-gap"]


@pytest.mark.parametrize("after", [0, 10])
def test_the_snapshots_own_record_deleted_is_a_gap_accepted_once(
    server: RedisServer, after: int
) -> None:
    """XDEL of the record the snapshot was folded to (the last one, or with records
    after it): a GapError, not a rollback; --accept-gap goes on from the snapshot
    and the next plain starts run."""
    client = client_of(server)
    last = produce(client, "o", 300)
    run_to_idle(server.url, "o")
    if after:
        produce(client, "o", after, seed=2)
    client.xdel("o", str(last))
    with RunnerProcess(runner_argv(server.url, "o", "--exit-when-idle")) as runner:
        code, _out, err = runner.finish(30)
    assert code == 1 and "GapError" in err and "was deleted" in err, err
    accepted = run_to_idle(server.url, "o", "--accept-gap", "--reason", "own record deleted")
    assert accepted["records"] == after
    if not after:
        # Nothing to anchor a snapshot to until a record arrives: said, and asked again.
        assert accepted["snapshots_written"] == 0 and "gap_not_recorded" in accepted["_stderr"]
        produce(client, "o", 5, seed=3)
        with RunnerProcess(runner_argv(server.url, "o", "--exit-when-idle")) as runner:
            code, _out, err = runner.finish(30)
        assert code == 1 and "GapError" in err
        accepted = run_to_idle(server.url, "o", "--accept-gap", "--reason", "again")
        assert accepted["records"] == 5
    assert accepted["snapshots_written"] == 1
    again = run_to_idle(server.url, "o")
    assert again["records"] == 0
    produce(client, "o", 5, seed=4)
    assert run_to_idle(server.url, "o")["records"] == 5


def test_an_accepted_trim_gap_counts_the_lost_records_and_is_not_met_again(
    server: RedisServer,
) -> None:
    client = client_of(server)
    produce(client, "t", 200)
    run_to_idle(server.url, "t")
    produce(client, "t", 100, seed=3)
    tail = produce(client, "t", 10, seed=4)
    client.xtrim("t", minid=str(tail))  # everything before the last record, unread ones too
    with RunnerProcess(runner_argv(server.url, "t", "--exit-when-idle")) as runner:
        code, _out, err = runner.finish(30)
    assert code == 1 and "GapError" in err
    accepted = run_to_idle(server.url, "t", "--accept-gap", "--reason", "trimmed by the test")
    assert accepted["lag"] == 0
    produce(client, "t", 5, seed=5)
    after = run_to_idle(server.url, "t")
    assert after["records"] == 5 and after["lag"] == 0


def test_the_continuity_check_reads_the_anchor_of_the_last_record() -> None:
    log = MemoryLog()
    (p,) = log.append([{"a": "1"}])
    check_continuity(log, p, 1, record_anchor({b"a": b"1"}))
    with pytest.raises(IntegrityError, match="not the one the state was folded to"):
        check_continuity(log, p, 1, record_anchor({b"a": b"2"}))
    with pytest.raises(IntegrityError, match="only 1 were ever added"):
        check_continuity(log, p, 2, record_anchor({b"a": b"1"}))
    with pytest.raises(IntegrityError, match="log ends at"):
        check_continuity(log, Position(5, 0), 5, None)

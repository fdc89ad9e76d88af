"""Every request gets an answer, and a retry never applies twice: the outcome journal,
idempotency keys, the client's safe retries and ``--wait``."""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_support import RunnerProcess, run_module, runner_argv, wait_until

from shop_adapters.catchup import replay
from shop_adapters.domain import Outcome
from shop_adapters.embedded_redis import RedisServer, stop_embedded
from shop_adapters.errors import IntegrityError
from shop_adapters.idempotency import KEY_REUSED, KeyWindow
from shop_adapters.journals import (
    FileOutcomeJournal,
    MemoryOutcomeJournal,
    OutcomeJournal,
    RedisOutcomeJournal,
)
from shop_adapters.keys import StreamKeys
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.protocols import ORIGIN, Position
from shop_adapters.retry import RetryPolicy
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.client import ShopClient
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_core import AddItem, Order, TopUp, fold, state_digest
from shop_core.strategies import histories

SHOP = ShopDomain()


def keyed(events: list[Any], prefix: str = "k") -> list[dict[str, Any]]:
    return [{**encode_event(e), "key": f"{prefix}{i}"} for i, e in enumerate(events)]


def fold_log(entries: list[dict[str, Any]], window: int = 1_000) -> tuple[str, list[Outcome]]:
    log = MemoryLog()
    log.append(entries)
    outcomes: list[tuple[Position, Outcome]] = []
    result = replay(log, SHOP, key_window=window, outcomes=outcomes)
    return state_digest(result.state), [o for _, o in outcomes]


# --- laws ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(histories(), st.data())
def test_duplicates_inserted_anywhere_within_the_window_change_nothing(
    history: list[Any], data: st.DataObject
) -> None:
    originals = keyed(history)
    with_duplicates = list(originals)
    for _ in range(data.draw(st.integers(0, 10))):
        if not originals:
            break
        i = data.draw(st.integers(0, len(originals) - 1))
        at = with_duplicates.index(originals[i]) + 1
        j = data.draw(st.integers(at, len(with_duplicates)))
        with_duplicates.insert(j, dict(originals[i]))
    digest, answers = fold_log(originals)
    digest_dup, answers_dup = fold_log(with_duplicates)
    assert digest_dup == digest == state_digest(fold(history))
    firsts = [a for a in answers_dup if a.status != "duplicate"]
    assert firsts == answers
    duplicates = [a for a in answers_dup if a.status == "duplicate"]
    assert len(duplicates) == len(with_duplicates) - len(originals)
    assert all(d.duplicate_of is not None and d.verdict is not None for d in duplicates)


@settings(max_examples=60, deadline=None)
@given(histories(), st.data())
def test_a_key_reused_with_another_event_never_changes_the_state(
    history: list[Any], data: st.DataObject
) -> None:
    originals = keyed(history)
    reused = list(originals)
    for _ in range(data.draw(st.integers(1, 5))):
        if not originals:
            break
        i = data.draw(st.integers(0, len(originals) - 1))
        other = {**encode_event(TopUp(1, data.draw(st.integers(1, 10**6)))), "key": f"k{i}"}
        if other == originals[i]:
            continue
        at = reused.index(originals[i]) + 1
        reused.insert(data.draw(st.integers(at, len(reused))), other)
    digest, answers = fold_log(originals)
    digest_reused, answers_reused = fold_log(reused)
    assert digest_reused == digest
    refused = [a for a in answers_reused if a.code == KEY_REUSED]
    assert len(refused) == len(reused) - len(originals)
    assert [a for a in answers_reused if a.code != KEY_REUSED] == answers


def _key_statuses_model(entries: list[dict[str, Any]], window: int) -> list[str]:
    """Status of each entry, one record at a time, straight from the module's rules."""
    remembered: dict[str, tuple[int, dict[str, Any], str]] = {}  # key -> (ordinal, rest, status)
    statuses: list[str] = []
    for ordinal, entry in enumerate(entries, start=1):
        remembered = {k: v for k, v in remembered.items() if v[0] > ordinal - window - 1}
        key = entry.get("key")
        rest = {k: v for k, v in entry.items() if k != "key"}
        if key == "":
            statuses.append("dead_letter")
        elif key is None:
            statuses.append("folded")
        elif key in remembered:
            statuses.append("duplicate" if remembered[key][1] == rest else "rejected")
        else:
            remembered[key] = (ordinal, rest, "folded")
            statuses.append("folded")
    return statuses


@settings(max_examples=80, deadline=None)
@given(histories(), st.data())
def test_keys_give_the_same_answers_whatever_the_batching(
    history: list[Any], data: st.DataObject
) -> None:
    """Repeats within a batch, keys leaving the window mid-batch, bad keys: any
    batch size gives the answers of one record at a time, and the model's."""
    pool = ["a", "b", "c", "", None]
    entries: list[dict[str, Any]] = []
    for event in history:
        key = data.draw(st.sampled_from(pool))
        entry = {**encode_event(event), **({} if key is None else {"key": key})}
        entries.append(entry)
        if entries and data.draw(st.booleans()):
            entries.append(dict(data.draw(st.sampled_from(entries))))  # a retry
    window = data.draw(st.integers(1, 6))
    batch = data.draw(st.integers(1, max(1, len(entries))))
    log = MemoryLog()
    if entries:
        log.append(entries)
    one: list[tuple[Position, Outcome]] = []
    many: list[tuple[Position, Outcome]] = []
    first = replay(log, SHOP, key_window=window, outcomes=one, batch_size=1)
    second = replay(log, SHOP, key_window=window, outcomes=many, batch_size=batch)
    assert many == one
    assert state_digest(second.state) == state_digest(first.state)
    assert second.keys is not None and first.keys is not None
    assert second.keys.encode() == first.keys.encode()
    seen = [
        o.status
        if o.status in ("duplicate", "dead_letter")
        else "rejected"
        if o.code == KEY_REUSED
        else "folded"
        for _, o in one
    ]
    assert seen == _key_statuses_model(entries, window)


def test_beyond_the_window_a_repeated_key_is_applied_again() -> None:
    entries = keyed([TopUp(1, 5)]) + keyed([TopUp(2, 1)] * 3, "filler") + keyed([TopUp(1, 5)])
    digest, answers = fold_log(entries, window=3)
    assert answers[-1].status == "accepted"
    assert digest == state_digest(fold([TopUp(1, 10), TopUp(2, 3)]))
    _digest, inside = fold_log(entries, window=4)
    assert inside[-1].status == "duplicate" and inside[-1].duplicate_of == Position(1, 0)


def test_bad_keys_are_dead_letters_with_a_reason() -> None:
    entries = [
        {**encode_event(TopUp(1, 5)), "key": ""},
        {**encode_event(TopUp(1, 5)), "key": "x" * 201},
        {**encode_event(TopUp(1, 5)), "key": b"\xff"},
    ]
    digest, answers = fold_log(entries)
    assert digest == state_digest(fold([]))
    assert [a.message for a in answers] == [
        "idempotency key is empty",
        "idempotency key too long: 201 bytes, at most 200",
        "idempotency key is not UTF-8",
    ]


def test_a_duplicate_in_the_same_batch_carries_the_first_verdict() -> None:
    order = Order(1, (("cpu", 1),))
    entries = [
        *keyed([TopUp(1, 500), AddItem("cpu", 5, 100)]),
        {**encode_event(order), "key": "o"},
        {**encode_event(order), "key": "o"},
    ]
    digest, answers = fold_log(entries)
    assert digest == state_digest(fold([TopUp(1, 500), AddItem("cpu", 5, 100), order]))
    assert answers[-1] == Outcome(
        "duplicate",
        "Order",
        None,
        None,
        {"total": 100, "user": 1, "lines": [["cpu", 1, 100]]},
        Position(3, 0),
        "accepted",
    )


def test_the_key_window_round_trips_through_a_snapshot() -> None:
    window = KeyWindow(10)
    window.remember(b"a", {b"x": b"1"}, 1, Position(1, 0), Outcome("accepted", "TopUp"))
    window.remember(b"b", {b"x": b"2"}, 2, Position(2, 0), Outcome("rejected", "Order", "e", "m"))
    again = KeyWindow.decode(window.encode())
    assert again.encode() == window.encode()
    assert again.classify(b"b", {b"x": b"2"}, 3).verdict == "rejected"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        KeyWindow.decode(
            b'{"size": 10, "keys": [["a", 2, "2-0", "00", null], ["a", 3, "3-0", "00", null]]}'
        )


# --- journals ------------------------------------------------------------------------


@pytest.fixture(params=["memory", "file", "redis"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OutcomeJournal]:
    if request.param == "memory":
        yield MemoryOutcomeJournal()
    elif request.param == "file":
        j = FileOutcomeJournal(tmp_path / "o.log.outcomes")
        yield j
        j.close()
    else:
        client = request.getfixturevalue("redis_client")
        yield RedisOutcomeJournal(client, "s:outcomes")


@pytest.mark.redis
def test_a_journal_publishes_each_outcome_once(journal: OutcomeJournal) -> None:
    a = (Position(1, 0), Outcome("accepted", "TopUp"))
    b = (Position(2, 0), Outcome("rejected", "Order", "out_of_stock", "none", None))
    c = (
        Position(3, 0),
        Outcome("duplicate", "Order", None, None, {"total": 5}, Position(1, 0), "accepted"),
    )
    journal.write([a, b])
    journal.write([a, b, c])  # a replay after a crash: nothing twice
    assert journal.read_after(ORIGIN, 10) == [a, b, c]
    assert journal.last_position() == Position(3, 0)
    assert journal.wait_for(Position(2, 0), 100) == b[1]
    assert journal.wait_for(Position(4, 0), 100) is None


@given(
    st.text(max_size=40),
    st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3),
)
@settings(max_examples=50, deadline=None)
def test_outcome_fields_are_the_text_as_utf8_whatever_it_holds(
    message: str, detail: dict[str, Any]
) -> None:
    """Any text (non-ASCII; a lone surrogate is stored backslash-escaped) and any
    JSON detail: the stream fields, and the packed batch the Redis journal sends,
    hold the UTF-8 of each value."""
    import msgspec

    from shop_adapters.journals import outcome_fields, pack_outcomes

    outcome = Outcome("rejected", "Order", "c\u00e9", message, detail, None, None)
    expected = {
        b"status": b"rejected",
        b"kind": b"Order",
        b"code": "c\u00e9".encode(),
        b"message": message.encode("utf-8", "backslashreplace"),
        b"detail": json.dumps(detail, separators=(",", ":")).encode(),
    }
    assert outcome_fields(outcome) == expected
    (packed,) = msgspec.msgpack.decode(pack_outcomes([(Position(5, 1), outcome)]))
    assert packed[0] == "5-1"
    flat = [v for pair in expected.items() for v in pair]
    assert [v.encode() for v in packed[1:]] == flat


@pytest.mark.redis
def test_the_redis_journal_stores_non_ascii_and_surrogates_as_text(
    redis_client: redis.Redis,
) -> None:
    journal = RedisOutcomeJournal(redis_client, "nonascii:outcomes")
    plain = (
        Position(1, 0),
        Outcome("rejected", "Order", "unknown_item", "no «café» ☕", {"items": ["café"]}),
    )
    odd = (Position(2, 0), Outcome("rejected", "Order", "x", "lone \udcff"))
    journal.write([plain, odd])
    (first, second) = journal.read_after(ORIGIN, 10)
    assert first == plain
    assert second[1].message == "lone \\udcff"
    raw = redis_client.xrange("nonascii:outcomes", "2-0", "2-0")[0][1]
    assert raw[b"message"] == "lone \udcff".encode("utf-8", "backslashreplace")


@pytest.mark.redis
def test_a_foreign_entry_in_the_redis_journal_is_an_integrity_error(
    redis_client: redis.Redis,
) -> None:
    journal = RedisOutcomeJournal(redis_client, "s:outcomes")
    redis_client.xadd("s:outcomes", {"by": "hand"}, id="9-0")
    with pytest.raises(IntegrityError, match="Refusing to drop"):
        journal.write([(Position(5, 0), Outcome("accepted", "TopUp"))])
    journal.write([(Position(9, 0), Outcome("accepted", "TopUp"))])  # 9-0 holds an entry


def test_a_crash_restarted_run_publishes_the_journal_of_an_uninterrupted_one() -> None:
    events = list(synthetic_events(6_000, 300, 20, seed=3))
    entries = keyed(events) + keyed(events[:500])  # a retried import: 500 duplicates
    log = MemoryLog()
    log.append(entries)
    whole = MemoryOutcomeJournal()
    config = RunnerConfig(progress=False, batch_size=700, snapshot_every=1_400)
    Runner(log, MemorySnapshotStore(), SHOP, config, journal=whole).run(exit_when_idle=True)
    rng = random.Random(7)
    store, crashed = MemorySnapshotStore(), MemoryOutcomeJournal()
    for _ in range(4):
        runner = Runner(log, store, SHOP, config, journal=crashed)
        stop_at = rng.randint(1, len(entries))

        def crash_after(
            records: Any, runner: Any = runner, stop_at: int = stop_at, go: Any = runner._consume
        ) -> None:
            go(records)
            if runner.checkpoint.records >= stop_at:
                runner.abandon("crash")  # no final snapshot, like a SIGKILL

        runner._consume = crash_after  # type: ignore[method-assign]
        runner.run(exit_when_idle=True)
    Runner(log, store, SHOP, config, journal=crashed).run(exit_when_idle=True)
    assert crashed.read_after(ORIGIN, 10**6) == whole.read_after(ORIGIN, 10**6)
    assert len(whole.read_after(ORIGIN, 10**6)) == len(entries)


# --- a reply lost on the wire ------------------------------------------------------------


class DropOneReply:
    """A TCP proxy to Redis that forwards everything but the reply to the first
    command containing ``XADD``: that connection is closed after the server took it."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._serve, args=(conn, upstream), daemon=True).start()

    def _serve(self, conn: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := conn.recv(1 << 16):
                upstream.sendall(data)
                reply = upstream.recv(1 << 16)
                if b"XADD" in data and not self.dropped.is_set():
                    self.dropped.set()  # the server appended; the client never hears it
                    return
                conn.sendall(reply)
        except OSError:
            pass
        finally:
            conn.close()
            upstream.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.redis
def test_an_append_whose_reply_is_lost_is_retried_and_applied_exactly_once(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    proxy = DropOneReply(redis_server.port)
    try:
        through = redis.Redis(port=proxy.port, socket_timeout=5, retry=None)
        client = ShopClient(
            through,
            StreamKeys.for_stream("s"),
            retry=RetryPolicy(base=0.01, cap=0.05, max_attempts=5),
        )
        client.submit(TopUp(7, 500), key="topup-7", wait=False)
        assert proxy.dropped.is_set()
    finally:
        proxy.close()
    assert redis_client.xlen("s") == 2  # the lost one landed, and the retry too
    journal = RedisOutcomeJournal(redis_client, "s:outcomes")
    summary = Runner(
        RedisStreamLog(redis_client, "s"),
        MemorySnapshotStore(),
        SHOP,
        RunnerConfig(progress=False),
        journal=journal,
    ).run(exit_when_idle=True)
    assert summary.digest == state_digest(fold([TopUp(7, 500)]))
    assert summary.accepted == {"TopUp": 1} and summary.duplicates == 1
    (first, _), (_second, dup) = journal.read_after(ORIGIN, 10)
    assert dup.status == "duplicate" and dup.duplicate_of == first and dup.verdict == "accepted"


# --- SIGKILL campaign: the journal equals its rebuild --------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_the_journal_after_sigkills_at_random_moments_equals_a_rebuild(
    redis_server: RedisServer, redis_client: redis.Redis, seed: int
) -> None:
    rng = random.Random(seed)
    stream = f"j{seed}"
    events = list(synthetic_events(30_000, 500, 20, seed))
    entries = keyed(events, f"{seed}:")
    entries[rng.randrange(len(entries))] = {
        "type": "Nonsense",
        "v": "1",
        "data": "{}",
        "key": "bad",
    }
    entries += [dict(e) for e in rng.sample(entries[:5_000], 300)]  # retried appends
    log = RedisStreamLog(redis_client, stream)
    for start in range(0, len(entries), 5_000):
        log.append(entries[start : start + 5_000])
    argv = runner_argv(
        redis_server.url,
        stream,
        "--batch-size",
        "700",
        "--snapshot-every",
        "2100",
        "--lease-ttl",
        "1",
    )
    for _ in range(3):
        with RunnerProcess(argv) as runner:
            target = rng.randint(1, len(entries))
            wait_until(
                lambda t=target, r=runner: (
                    not r.alive() or redis_client.xlen(f"{stream}:outcomes") >= t
                ),
                120,
                "the runner to publish some outcomes",
            )
            runner.kill()
    done = run_module("shop_adapters.redis_runner", *argv[3:], "--exit-when-idle", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert redis_client.xlen(f"{stream}:outcomes") == len(entries)
    verify = run_module(
        "shop_adapters.inspector", "--redis-url", redis_server.url, "--stream", stream, "verify"
    )
    assert verify.returncode == 0, verify.stderr
    assert f"{len(entries)} of {len(entries)} outcomes published, all equal" in verify.stdout


# --- --wait from the command line, on the embedded Redis ----------------------------------


@pytest.mark.redis
def test_order_wait_prints_the_verdict_with_a_runner_following(tmp_path: Path) -> None:
    data = tmp_path / "data"
    common = ["--data-dir", str(data), "--stream", "w"]
    try:
        with RunnerProcess(
            [sys.executable, "-m", "shop_adapters.redis_runner", *common, "--no-progress"]
        ) as runner:
            assert runner.wait_for("caught up", timeout=60), runner.stderr
            produce = lambda *args: run_module("shop_adapters.producer", *common, *args)  # noqa: E731
            assert produce("topup", "7", "500", "--wait").returncode == 0
            assert produce("add-item", "cpu", "3", "--price", "100", "--wait").returncode == 0
            rejected = produce("order", "7", "cpu:5", "--wait")
            assert rejected.returncode == 3
            assert "rejected: out_of_stock" in rejected.stdout
            accepted = produce("order", "7", "cpu:2", "--wait", "--json", "--idempotency-key", "o1")
            assert accepted.returncode == 0, accepted.stderr
            answer = json.loads(accepted.stdout)
            assert answer["outcome"] == "accepted" and answer["detail"] == {
                "total": 200,
                "user": 7,
                "lines": [["cpu", 2, 100]],
            }
            again = produce("order", "7", "cpu:2", "--wait", "--json", "--idempotency-key", "o1")
            repeat = json.loads(again.stdout)
            assert again.returncode == 0
            assert repeat["outcome"] == "duplicate"
            assert repeat["duplicate_of"] == answer["position"]
            runner.terminate()
            assert runner.finish(60)[0] == 0
        late = run_module(
            "shop_adapters.producer", *common, "topup", "7", "1", "--wait", "--timeout", "0.5"
        )
        assert late.returncode == 4
        assert "the event is in the log at" in late.stdout
    finally:
        stop_embedded(data)

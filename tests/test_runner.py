"""The runner over the memory log and store: restore, gap check, catch-up, follow,
snapshots, reconnect, stop, fencing. No Redis needed."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from reliability_support import wait_until
from returns.result import Success

import shop_adapters.retry as retry_module
from shop_adapters.catchup import record_anchor, replay
from shop_adapters.envelope import Snapshot, decode_snapshot, encode_snapshot
from shop_adapters.errors import FencedError, GapError, IntegrityError, OperationalError
from shop_adapters.idempotency import DEFAULT_WINDOW, KeyWindow
from shop_adapters.logs._common import encode_entry
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.protocols import ORIGIN, LogHistory, Position, Record
from shop_adapters.retry import RetryPolicy
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_core import (
    EMPTY,
    AddItem,
    Event,
    Order,
    ShopState,
    TopUp,
    fold,
    fold_with_outcomes,
    state_digest,
)

BAD = {"type": "TopUp", "v": "1", "data": '{"user_id": -1, "amount": 5}'}


def make_log(events: Sequence[Event], bad_every: int | None = None) -> MemoryLog:
    log = MemoryLog()
    entries: list[Mapping[str | bytes, str | bytes | int]] = []
    for i, e in enumerate(events, 1):
        entries.append(encode_event(e))  # type: ignore[arg-type]
        if bad_every and i % bad_every == 0:
            entries.append(BAD)  # type: ignore[arg-type]
    log.append(entries)
    return log


SHOP = ShopDomain()


def runner(log: Any, store: Any, max_attempts: int | None = None, **kw: Any) -> Runner:
    kw.setdefault("progress", False)
    kw.setdefault("retry", RetryPolicy(base=0.001, cap=0.01, max_attempts=max_attempts))
    return Runner(log, store, SHOP, RunnerConfig(**kw))


def stored(store: MemorySnapshotStore) -> Snapshot:
    blob = store.read()
    assert blob is not None
    result = decode_snapshot(blob, SHOP)
    assert isinstance(result, Success)
    snap: Snapshot = result.unwrap()
    return snap


def snapshot_blob(state: ShopState, position: Position, records: int) -> bytes:
    """A snapshot of ``state`` folded from the first ``records`` records of a log of
    ``EVENTS`` (one record each) up to ``position``, anchored on that record."""
    anchor = record_anchor(encode_entry(encode_event(EVENTS[position.major - 1])))
    keys = KeyWindow(DEFAULT_WINDOW)  # the runner's default: no key seen yet
    return encode_snapshot(Snapshot(state, position, records, anchor=anchor, keys=keys), SHOP)


EVENTS = list(synthetic_events(5_000, users=50, items=10, seed=7))


def test_catch_up_folds_every_event_and_dead_letters_the_rest() -> None:
    log = make_log(EVENTS, bad_every=500)
    store = MemorySnapshotStore()
    summary = runner(log, store, batch_size=333).run(exit_when_idle=True)
    state, outcomes = fold_with_outcomes(EVENTS)
    assert summary.digest == state_digest(state)
    assert summary.records - summary.dead_letters == 5_000
    assert summary.dead_letters == 10
    assert [d.position for d in log.dead_letters()] == [Position(i * 501, 0) for i in range(1, 11)]
    assert summary.accepted.get("Order", 0) == outcomes.orders_accepted
    assert summary.rejected == outcomes.rejections
    assert summary.last_position == log.last_position()
    assert summary.lag == 0
    assert summary.stop_reason == "idle"
    snap = stored(store)
    assert snap.position == log.last_position() and snap.state == state
    assert snap.records == 5_010 and snap.dead_letters == 10
    assert sum(snap.tally.accepted.values()) + sum(snap.tally.rejected.values()) == 5_000
    assert snap.anchor == record_anchor(log.read_after(Position(5_009, 0), 1)[0].fields)


def test_restart_from_snapshot_replays_nothing_then_only_new_records() -> None:
    log = make_log(EVENTS[:3_000])
    store = MemorySnapshotStore()
    runner(log, store).run(exit_when_idle=True)
    again = runner(log, store).run(exit_when_idle=True)
    assert again.records == 0 and again.restored_from == log.last_position()
    assert again.snapshots_written == 0
    log.append([encode_event(e) for e in EVENTS[3_000:]])  # type: ignore[misc]
    third = runner(log, store).run(exit_when_idle=True)
    assert third.records - third.dead_letters == 2_000
    assert third.total_records - third.total_dead_letters == 5_000
    assert third.digest == state_digest(fold(EVENTS))


def test_a_corrupt_snapshot_is_set_aside_and_the_state_rebuilt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = make_log(EVENTS)
    store = MemorySnapshotStore()
    store.write(b"\x80\x04K\x01.")  # a pickle: never unpickled
    with caplog.at_level(logging.WARNING, logger="shop.runner"):
        summary = runner(log, store).run(exit_when_idle=True)
    assert "snapshot set aside" in caplog.text and "pickle" in caplog.text
    assert summary.records - summary.dead_letters == 5_000 and summary.restored_from is None
    assert summary.digest == state_digest(fold(EVENTS))
    assert stored(store).position == log.last_position()


def test_from_scratch_ignores_the_snapshot() -> None:
    log = make_log(EVENTS)
    store = MemorySnapshotStore()
    runner(log, store).run(exit_when_idle=True)
    summary = runner(log, store, from_scratch=True).run(exit_when_idle=True)
    assert summary.records - summary.dead_letters == 5_000 and summary.restored_from is None


class TrimmedLog(MemoryLog):
    """A memory log whose records up to ``trimmed`` were removed by someone else."""

    def __init__(self, trimmed: int) -> None:
        super().__init__()
        self.trimmed = trimmed

    def read_after(self, position: Position, limit: int) -> list[Record]:
        return super().read_after(max(position, Position(self.trimmed, 0)), limit)

    def read_at(self, position: Position) -> Record | None:
        return None if position.major <= self.trimmed else super().read_at(position)

    def first_position(self) -> Position:
        last = self.last_position()
        return Position(self.trimmed + 1, 0) if last.major > self.trimmed else ORIGIN

    def history(self) -> LogHistory:
        whole = super().history()
        kept = max(0, whole.length - self.trimmed)
        return LogHistory(
            self.first_position(),
            whole.last,
            kept,
            whole.added,
            Position(self.trimmed, 0) if self.trimmed else None,
        )


def test_gap_after_the_snapshot_is_refused_loudly() -> None:
    log = TrimmedLog(trimmed=200)
    log.append([encode_event(e) for e in EVENTS[:1_000]])  # type: ignore[misc]
    store = MemorySnapshotStore()
    store.write(snapshot_blob(fold(EVENTS[:100]), Position(100, 0), 100))
    r = runner(log, store)
    with pytest.raises(GapError, match="trimmed"):
        r.run(exit_when_idle=True)
    assert r.state == fold(EVENTS[:100])  # nothing folded over the gap
    # A snapshot at or after the first record left is fine (XTRIM MINID <snapshot>).
    store.write(snapshot_blob(fold(EVENTS[:201]), Position(201, 0), 201))
    summary = runner(log, store).run(exit_when_idle=True)
    assert summary.digest == state_digest(fold(EVENTS[:1_000]))
    assert summary.restored_from == Position(201, 0) and summary.records == 799


def test_a_snapshot_ahead_of_the_log_is_refused() -> None:
    log = make_log(EVENTS[:10])
    store = MemorySnapshotStore()
    store.write(snapshot_blob(fold(EVENTS[:20]), Position(20, 0), 20))
    with pytest.raises(IntegrityError, match="folded up to 20-0 but the log ends at 10-0"):
        runner(log, store).run(exit_when_idle=True)


class FlakyLog:
    """Delegates to a memory log; each read or dead-letter fails with probability ``p``."""

    def __init__(self, inner: MemoryLog, p: float, seed: int = 1) -> None:
        self.inner = inner
        self.p = p
        self.rng = random.Random(seed)
        self.calls = 0
        self.failures = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.rng.random() < self.p:
            self.failures += 1
            raise OperationalError("connection reset (test)")

    def read_after(self, position: Position, limit: int) -> list[Record]:
        self._maybe_fail()
        return self.inner.read_after(position, limit)

    def wait_after(self, position: Position, limit: int, timeout_ms: int) -> list[Record]:
        self._maybe_fail()
        return self.inner.wait_after(position, limit, timeout_ms)

    def dead_letter(self, letter: Any) -> bool:
        self._maybe_fail()
        return self.inner.dead_letter(letter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_reconnects_and_resumes_without_losing_or_repeating_a_record() -> None:
    inner = make_log(EVENTS, bad_every=97)
    log = FlakyLog(inner, p=0.3)
    summary = runner(log, MemorySnapshotStore(), batch_size=100).run(exit_when_idle=True)
    assert log.failures > 10
    assert summary.records - summary.dead_letters == 5_000
    assert summary.dead_letters == len(inner.dead_letters()) == 5_000 // 97
    assert summary.digest == state_digest(fold(EVENTS))


def test_the_reconnect_log_names_the_position_before_the_first_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = make_log([TopUp(1, 5), TopUp(2, 5)])

    class OneOutage:
        failed = False

        def read_after(self, position: Position, limit: int) -> list[Record]:
            if position == Position(2, 0) and not OneOutage.failed:
                OneOutage.failed = True
                inner.append([encode_event(TopUp(3, 5))])  # type: ignore[list-item]
                raise OperationalError("connection reset (test)")
            return inner.read_after(position, limit)

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

    with caplog.at_level(logging.INFO, logger="shop.runner"):
        summary = runner(OneOutage(), MemorySnapshotStore(), batch_size=2).run(exit_when_idle=True)
    assert summary.records - summary.dead_letters == 3
    lines = [r.getMessage() for r in caplog.records if "reconnected" in r.getMessage()]
    assert lines == ["reconnected; resuming after 2-0"]


def test_gives_up_after_max_attempts() -> None:
    log = FlakyLog(make_log(EVENTS), p=1.0)
    with pytest.raises(OperationalError):
        runner(log, MemorySnapshotStore(), max_attempts=4).run(exit_when_idle=True)
    assert log.calls == log.failures == 4  # the first attempt and 3 retries


def test_snapshots_every_n_records_in_the_background() -> None:
    log = make_log(EVENTS)
    store = MemorySnapshotStore()
    writes: list[Position] = []
    real_write = store.write

    def write(blob: bytes, at: tuple[Position, str] | None = None) -> None:
        time.sleep(0.01)  # slow serialisation must not matter for correctness
        real_write(blob, at)
        snap = stored(store)
        assert at == (snap.position, snap.anchor)  # the store is told which record it is
        writes.append(snap.position)

    store.write = write  # type: ignore[method-assign]
    summary = runner(log, store, snapshot_every=500, snapshot_interval=None).run(
        exit_when_idle=True
    )
    assert 1 <= summary.snapshots_written == len(writes) <= 11
    assert writes == sorted(writes) and writes[-1] == log.last_position()
    for p in writes:  # every snapshot sits on a batch boundary: fold(log[..p])
        assert p.major % 500 == 0


def test_follows_the_tail_and_stop_writes_a_final_snapshot() -> None:
    log = make_log(EVENTS[:1_000])
    store = MemorySnapshotStore()
    r = runner(log, store, snapshot_interval=None, block_ms=50)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(r.run(exit_when_idle=False)))
    t.start()
    # Caught up and following: blocked in wait_after on the log's condition.
    wait_until(
        lambda: r.position == Position(1_000, 0) and bool(log._cond._waiters),  # type: ignore[attr-defined]
        5,
        "the runner to catch up and wait for more",
    )
    log.append([encode_event(e) for e in EVENTS[1_000:]])  # type: ignore[misc]
    wait_until(lambda: r.position == Position(5_000, 0), 5, "the runner to fold the tail")
    r.stop()
    t.join(5)
    assert not t.is_alive()
    summary = result[0]
    assert summary.stop_reason == "stopped" and summary.records == 5_000
    assert summary.snapshots_written == 1
    assert stored(store).position == Position(5_000, 0)
    assert stored(store).state == fold(EVENTS)


class FencedStore(MemorySnapshotStore):
    def write(self, blob: bytes, at: tuple[Position, str] | None = None) -> None:
        raise FencedError("token 1 is older than 2 (test)")


def test_a_fenced_snapshot_write_abandons_the_run_without_a_final_snapshot() -> None:
    log = make_log(EVENTS)
    summary = runner(log, FencedStore(), snapshot_every=100, batch_size=100).run(
        exit_when_idle=True
    )
    assert summary.stop_reason.startswith("abandoned: fenced")
    assert summary.snapshots_written == 0
    assert summary.records < 5_000


def test_stop_before_run_still_restores_and_exits() -> None:
    log = make_log(EVENTS[:10])
    r = runner(log, MemorySnapshotStore())
    r.stop()
    summary = r.run()
    assert summary.stop_reason == "stopped" and summary.records == 0


def test_replay_is_read_only_and_stops_at_until() -> None:
    log = make_log(EVENTS[:100], bad_every=10)
    first = replay(log, SHOP, until=Position(55, 0))
    # Records 1..55 hold 50 events and 5 bad entries (every 11th record).
    assert first.position == Position(55, 0) and first.tally.events == 50
    assert len(first.dead_letters) == 5 and first.records == 55
    assert first.anchor == record_anchor(log.read_after(Position(54, 0), 1)[0].fields)
    assert first.state == fold(EVENTS[:50])
    assert log.dead_letters() == []
    rest = replay(
        log, SHOP, first.state, first.position, records_before=first.records, anchor=first.anchor
    )
    assert rest.position == log.last_position() and rest.state == fold(EVENTS[:100])


@pytest.mark.parametrize(("draw", "bound"), [("high", "window"), ("low", "zero")])
def test_retry_backoff_is_capped_and_fully_jittered(
    monkeypatch: pytest.MonkeyPatch, draw: str, bound: str
) -> None:
    """Retry ``n`` waits ``uniform(0, min(cap, base * 2**(n-1)))`` seconds."""
    monkeypatch.setattr(random, "uniform", lambda a, b: b if draw == "high" else a)
    slept: list[float] = []
    monkeypatch.setattr(retry_module.time, "sleep", slept.append)
    policy = RetryPolicy(base=0.1, cap=2.0, max_attempts=40)
    with pytest.raises(OperationalError, match="down"):
        for attempt in policy.attempts("reading"):
            with attempt:
                raise OperationalError("down")
    assert len(slept) == 39
    windows = [min(2.0, 0.1 * 2 ** (n - 1)) for n in range(1, 40)]
    if bound == "window":
        assert slept == pytest.approx(windows)
        assert slept[2] == pytest.approx(0.4) and max(slept) == 2.0
    else:
        assert slept == [0.0] * 39


def test_rejected_orders_and_outcomes_are_counted() -> None:
    events: list[Event] = [
        TopUp(1, 100),
        AddItem("cpu", 1, 60),
        Order(1, (("cpu", 1),)),
        Order(1, (("cpu", 1),)),  # out of stock
        Order(2, (("cpu", 1),)),  # unknown user
    ]
    summary = runner(make_log(events), MemorySnapshotStore()).run(exit_when_idle=True)
    assert summary.accepted == {"AddItem": 1, "Order": 1, "TopUp": 1}
    assert summary.rejected == {"out_of_stock": 1, "unknown_user": 1}
    assert summary.to_dict()["last_position"] == "5-0"
    assert fold(events) != EMPTY

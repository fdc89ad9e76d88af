"""The projector, views and workers against a real redis-server, in process.

The views after a run equal the pure fold of the journal; a second run, a
second projector racing the first, a reply lost on the wire, a version bump
and a replaced journal all keep that true (or stop with a clear error); the
consumer group parks what it cannot handle and never repeats an effect.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from read_model_support import (
    expected_views,
    journal_outcomes,
    publish,
    stored_views,
    wait_until,
)

from shop_adapters.consumer_group import (
    GroupWorker,
    WorkerConfig,
    parked_messages,
    redrive,
)
from shop_adapters.domain import Outcome
from shop_adapters.effects import DirectorySink, RedisListSink
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.errors import IntegrityError
from shop_adapters.journals import RedisOutcomeJournal
from shop_adapters.projections import Doc, ProjectionError
from shop_adapters.projector_engine import Projector, ProjectorConfig
from shop_adapters.protocols import Position
from shop_adapters.query import cli as query_cli
from shop_adapters.retry import RetryPolicy
from shop_adapters.shop_domain.projections import SalesPerItem, shop_projections
from shop_adapters.shop_domain.receipts import ReceiptHandler
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.view_store import RedisViewStore, ViewKeys

pytestmark = pytest.mark.redis

FAST = ProjectorConfig(batch_size=500, block_ms=50, progress_interval=None)


def project(client: redis.Redis, stream: str, config: ProjectorConfig = FAST, **kw: Any) -> Any:
    return Projector(client, stream, shop_projections(), config, **kw).run(exit_when_idle=True)


def assert_views_equal_the_fold(client: redis.Redis, stream: str) -> None:
    outcomes = journal_outcomes(client, stream)
    expected = expected_views(outcomes)
    for name, (position, docs) in stored_views(client, stream).items():
        assert position == outcomes[-1][0], name
        assert docs == expected[name], name


def test_the_views_equal_the_fold_and_a_second_run_applies_nothing(
    redis_client: redis.Redis,
) -> None:
    publish(redis_client, "s", synthetic_events(6_000, 200, 15, seed=1))
    first = project(redis_client, "s")
    assert all(v.rebuilt and v.outcomes == 6_000 for v in first.views)
    assert_views_equal_the_fold(redis_client, "s")
    again = project(redis_client, "s")
    assert [v.outcomes for v in again.views] == [0] * 5
    publish(redis_client, "s", synthetic_events(3_000, 200, 15, seed=2))  # more, later
    more = project(redis_client, "s")
    assert all(v.outcomes == 3_000 and not v.rebuilt for v in more.views)
    assert_views_equal_the_fold(redis_client, "s")
    # Nothing is left beside the live views.
    keys = {k.decode() for k in redis_client.keys("s:view:*")}
    assert keys == {f"s:view:{p.name}" for p in shop_projections()}


def test_two_projectors_racing_on_the_same_views_apply_each_outcome_once(
    redis_client: redis.Redis,
) -> None:
    publish(redis_client, "s", synthetic_events(2_000, 100, 10, seed=3))
    project(redis_client, "s")
    publish(redis_client, "s", synthetic_events(12_000, 100, 10, seed=4))
    small = ProjectorConfig(batch_size=97, block_ms=50, progress_interval=None)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            project(redis_client, "s", small)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert_views_equal_the_fold(redis_client, "s")


def test_a_write_whose_reply_was_lost_is_not_applied_twice(redis_client: redis.Redis) -> None:
    """The script ran, the projector never heard: it re-reads and goes on."""
    publish(redis_client, "s", synthetic_events(3_000, 100, 10, seed=5))
    projector = Projector(redis_client, "s", shop_projections(), FAST)
    real = projector.store.write
    calls = {"n": 0}

    def lossy(writes: Sequence[Any]) -> list[bool]:
        results = real(writes)
        calls["n"] += 1
        if calls["n"] == 3:
            from shop_adapters.errors import OperationalError

            raise OperationalError("Redis unavailable during EVALSHA: connection reset")
        return results

    projector.store.write = lossy  # type: ignore[method-assign]
    projector.config = ProjectorConfig(
        batch_size=500,
        block_ms=50,
        progress_interval=None,
        retry=RetryPolicy(base=0.01, cap=0.01),
    )
    projector.run(exit_when_idle=True)
    assert calls["n"] > 3
    assert_views_equal_the_fold(redis_client, "s")


class SalesV2(SalesPerItem):
    """A new version: counts units only."""

    version = 2

    def evolve(self, docs: Mapping[str, Doc | None], position: Position, outcome: Outcome) -> Any:
        lines = outcome.detail["lines"]  # type: ignore[index]
        return {
            f"i:{i}": {"units": (docs[f"i:{i}"] or {"units": 0})["units"] + q} for i, q, _ in lines
        }


def test_a_new_version_is_built_beside_the_old_one_and_switched_in(
    redis_client: redis.Redis,
) -> None:
    publish(redis_client, "s", synthetic_events(4_000, 100, 10, seed=6))
    Projector(redis_client, "s", [SalesPerItem()], FAST).run(exit_when_idle=True)
    store = RedisViewStore(redis_client, "s")
    old_cp, old_docs = store.read_view("sales")
    assert old_cp is not None and "revenue" in next(iter(old_docs.values()))
    summary = Projector(redis_client, "s", [SalesV2()], FAST).run(exit_when_idle=True)
    assert summary.views[0].rebuilt
    cp, docs = store.read_view("sales")
    assert cp is not None and cp.version == 2 and cp.generation != old_cp.generation
    assert docs == expected_views(journal_outcomes(redis_client, "s"), [SalesV2()])["sales"]
    keys = ViewKeys.of("s", "sales")
    assert not redis_client.exists(keys.rebuild, keys.retired)
    # The old code meets a newer view: it leaves it alone.
    with pytest.raises(IntegrityError, match="newer version"):
        Projector(redis_client, "s", [SalesPerItem()], FAST).run(exit_when_idle=True)
    assert store.read_view("sales")[0] == cp


def test_a_replaced_journal_stops_the_projector_until_the_view_is_rebuilt(
    redis_client: redis.Redis,
) -> None:
    publish(redis_client, "s", synthetic_events(2_000, 100, 10, seed=7))
    project(redis_client, "s")
    # An accepted rollback sets the journal aside; another history is published.
    redis_client.rename("s:outcomes", "s:outcomes:before-rebuild:1")
    redis_client.delete("s")
    publish(redis_client, "s", synthetic_events(1_000, 100, 10, seed=8))
    with pytest.raises(IntegrityError, match="--rebuild --projection sales"):
        project(redis_client, "s")
    rebuilt = project(redis_client, "s", ProjectorConfig(**{**FAST_KW, "rebuild": ALL}))
    assert all(v.rebuilt for v in rebuilt.views)
    assert_views_equal_the_fold(redis_client, "s")


FAST_KW: dict[str, Any] = {"batch_size": 500, "block_ms": 50, "progress_interval": None}
ALL = frozenset(p.name for p in shop_projections())


def test_outcomes_deleted_after_a_views_position_stop_the_projector(
    redis_client: redis.Redis,
) -> None:
    publish(redis_client, "s", synthetic_events(2_000, 100, 10, seed=12))
    project(redis_client, "s")
    position = journal_outcomes(redis_client, "s")[-1][0]
    redis_client.xtrim("s:outcomes", minid=str(position))  # before every view's position
    publish(redis_client, "s", synthetic_events(500, 100, 10, seed=13))
    project(redis_client, "s")  # the live views go on
    publish(redis_client, "s", synthetic_events(100, 100, 10, seed=14))  # not projected yet
    redis_client.xdel("s:outcomes", str(journal_outcomes(redis_client, "s")[-50][0]))
    with pytest.raises(IntegrityError, match="were deleted from s:outcomes"):
        project(redis_client, "s")


def test_a_journal_entry_that_is_not_an_outcome_stops_the_projector_at_it(
    redis_client: redis.Redis,
) -> None:
    journal = RedisOutcomeJournal(redis_client, "s:outcomes")
    journal.write([(Position(1, 0), Outcome("accepted", "TopUp"))])
    redis_client.xadd("s:outcomes", {"by": "hand"}, id="2-0")
    with pytest.raises(IntegrityError, match="the entry 2-0 of s:outcomes is not an outcome"):
        project(redis_client, "s")


def test_an_outcome_a_projection_cannot_apply_stops_it_without_skipping(
    redis_client: redis.Redis,
) -> None:
    journal = RedisOutcomeJournal(redis_client, "s:outcomes")
    old = Outcome("accepted", "Order", detail={"total": 300})  # before outcomes carried lines
    journal.write([(Position(1, 0), Outcome("accepted", "TopUp")), (Position(2, 0), old)])
    with pytest.raises(ProjectionError, match="at 2-0"):
        Projector(redis_client, "s", [SalesPerItem()], FAST).run(exit_when_idle=True)
    # Nothing went live: the build stopped before the poison, readers see no view.
    assert RedisViewStore(redis_client, "s").read_view("sales") == (None, {})


# --- the consumer group --------------------------------------------------------------------


def accepted_orders(client: redis.Redis, stream: str) -> set[str]:
    return {
        str(p)
        for p, o in journal_outcomes(client, stream)
        if o.status == "accepted" and o.kind == "Order"
    }


def receipts(client: redis.Redis, key: str) -> list[str]:
    return [json.loads(r)["receipt"] for r in client.lrange(key, 0, -1)]


def test_a_handler_that_keeps_failing_is_parked_after_n_deliveries(
    redis_client: redis.Redis,
) -> None:
    publish(redis_client, "s", synthetic_events(1_500, 50, 8, seed=9))
    orders = sorted(accepted_orders(redis_client, "s"), key=Position.parse)
    poison = orders[len(orders) // 2]
    sink = RedisListSink(redis_client, "s:receipts")
    real = ReceiptHandler(sink)

    def handler(position: Position, outcome: Outcome) -> None:
        if str(position) == poison:
            raise RuntimeError("the receipt printer is on fire")
        real(position, outcome)

    config = WorkerConfig(batch_size=50, block_ms=50, claim_idle_ms=20, max_deliveries=3)
    worker = GroupWorker(redis_client, "s", "receipts", handler, config, consumer="w1")
    summary = worker.run(exit_when_idle=True)
    assert summary.parked == 1 and summary.failed == 2
    (parked,) = parked_messages(redis_client, "s", "receipts")
    assert str(parked.position) == poison and parked.deliveries == 3
    assert parked.reason == "RuntimeError: the receipt printer is on fire"
    assert parked.to_json()["outcome"]["kind"] == "Order"
    assert sorted(receipts(redis_client, "s:receipts")) == sorted(set(orders) - {poison})
    assert redis_client.xpending("s:outcomes", "receipts")["pending"] == 0
    # Once the cause is fixed, re-driving it writes the receipt and empties the park.
    assert redrive(redis_client, "s", "receipts", parked.position, real) == 1
    assert sorted(receipts(redis_client, "s:receipts")) == sorted(orders)
    assert parked_messages(redis_client, "s", "receipts") == []


def test_an_entry_whose_workers_crashed_each_time_is_parked_unhandled(
    redis_client: redis.Redis,
) -> None:
    journal = RedisOutcomeJournal(redis_client, "s:outcomes")
    order = Outcome("accepted", "Order", detail={"total": 5, "user": 1, "lines": [["x", 1, 5]]})
    journal.write([(Position(1, 0), order), (Position(2, 0), order)])
    redis_client.xgroup_create("s:outcomes", "receipts", "0")
    # Three workers took 1-0 and died without acknowledging it.
    redis_client.xreadgroup("receipts", "dead-1", {"s:outcomes": ">"}, count=1)
    for name in ("dead-2", "dead-3"):
        redis_client.xclaim("s:outcomes", "receipts", name, 0, ["1-0"])
    handled: list[Position] = []
    config = WorkerConfig(block_ms=50, claim_idle_ms=0, max_deliveries=3)
    worker = GroupWorker(
        redis_client, "s", "receipts", lambda p, o: handled.append(p), config, consumer="w"
    )
    assert worker.run(exit_when_idle=True).parked == 1
    assert handled == [Position(2, 0)]  # the poison was never handed to the handler again
    (parked,) = parked_messages(redis_client, "s", "receipts")
    assert parked.position == Position(1, 0) and parked.deliveries == 4
    assert "crashed or stalled each time" in parked.reason


def test_redelivered_entries_never_repeat_an_effect(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    publish(redis_client, "s", synthetic_events(1_000, 50, 8, seed=10))
    orders = accepted_orders(redis_client, "s")
    files = DirectorySink(tmp_path / "receipts")
    handler = ReceiptHandler(files)
    for group in ("g1", "g2"):  # two groups: every outcome handled twice
        GroupWorker(redis_client, "s", group, handler, WorkerConfig(block_ms=50), consumer="w").run(
            exit_when_idle=True
        )
    assert handler.written == len(orders) and handler.repeated == len(orders)
    assert {p.stem for p in (tmp_path / "receipts").glob("*.json")} == orders


def test_a_group_lost_with_its_journal_is_created_again(redis_client: redis.Redis) -> None:
    """An accepted rollback renames the journal aside, its group with it."""
    journal = RedisOutcomeJournal(redis_client, "s:outcomes")
    journal.write([(Position(1, 0), Outcome("accepted", "TopUp"))])
    seen: list[Position] = []
    worker = GroupWorker(
        redis_client, "s", "g", lambda p, o: seen.append(p), WorkerConfig(block_ms=20)
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(lambda: seen == [Position(1, 0)], 30, "the first outcome")
        redis_client.rename("s:outcomes", "s:outcomes:before-rebuild:1")
        journal.write([(Position(1, 0), Outcome("accepted", "TopUp"))])
        wait_until(lambda: len(seen) == 2, 30, "the outcome of the new journal")
    finally:
        worker.stop()
        thread.join(30)
    assert seen == [Position(1, 0), Position(1, 0)]


# --- queries from the command line -----------------------------------------------------------


def test_the_query_commands_answer_from_the_views(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    publish(redis_client, "orders", synthetic_events(3_000, 40, 6, seed=11))
    runner = CliRunner()
    base = ["--redis-url", redis_server.url]
    missing = runner.invoke(query_cli, [*base, "top-items", "--json"])
    assert missing.exit_code == 0 and json.loads(missing.stdout)["items"] == []
    project(redis_client, "orders")
    outcomes = journal_outcomes(redis_client, "orders")
    views = expected_views(outcomes)

    top = json.loads(runner.invoke(query_cli, [*base, "top-items", "--json"]).stdout)
    assert top["position"] == str(outcomes[-1][0])
    best = max(views["sales"].items(), key=lambda kv: (kv[1]["revenue"], kv[0]))
    assert top["items"][0] == {"item": best[0][2:], **best[1]}
    days = json.loads(
        runner.invoke(query_cli, [*base, "top-items", "--since", "2000-01-01", "--json"]).stdout
    )
    assert [r["item"] for r in days["items"]] == [r["item"] for r in top["items"]]

    user = max(views["customers"], key=lambda k: views["customers"][k]["count"])[2:]
    hist = json.loads(runner.invoke(query_cli, [*base, "history", user, "--json"]).stdout)
    doc = views["customers"][f"u:{user}"]
    assert hist["history"]["orders"] == list(reversed(doc["orders"]))
    assert hist["history"]["spent"] == views["top_customers"].get(f"u:{user}", {}).get("spent", 0)

    rej = json.loads(runner.invoke(query_cli, [*base, "rejections", "--json"]).stdout)
    assert rej["by_reason"] == {k[2:]: n for k, n in views["rejections"].items() if k[:2] == "c:"}
    cust = json.loads(runner.invoke(query_cli, [*base, "top-customers", "--json"]).stdout)
    spent = sorted((d["spent"] for d in views["top_customers"].values()), reverse=True)
    assert [c["spent"] for c in cust["customers"]] == spent[:10]

    status = json.loads(runner.invoke(query_cli, [*base, "status", "--json"]).stdout)
    assert {s["name"]: s["live"]["lag"] for s in status} == {p.name: 0 for p in shop_projections()}
    text = runner.invoke(query_cli, [*base, "history", user])
    assert text.exit_code == 0 and f"user {user}: {doc['count']} orders" in text.stdout
    assert runner.invoke(query_cli, [*base, "parked", "--json"]).stdout.strip() == "[]"

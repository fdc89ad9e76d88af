"""The read side under faults, with real processes and a real redis-server.

- The projector SIGKILLed at random moments while a runner and a producer are
  live: after it catches up, every view equals the fold of the outcome journal
  (seeded trials; ``--slow`` runs 20 more).
- A rebuild while the runner, the producer and a projector are live: a reader
  polling the views throughout never sees a partial one (each read equals the
  fold of the journal up to the position it carries, and positions never go
  back).
- Two workers in a consumer group, one SIGKILLed in the middle of a batch:
  each accepted order gets exactly one receipt.
- A poison outcome is parked after N deliveries, through the command line.

Every wait is on observable state (Redis keys, log lines) with a deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from typing import Any

import pytest
import redis
from read_model_support import (
    Proc,
    expected_views,
    journal_outcomes,
    publish,
    run_module,
    stored_views,
    wait_until,
)

from shop_adapters.domain import Outcome
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.journals import RedisOutcomeJournal
from shop_adapters.projections import fold
from shop_adapters.protocols import Position
from shop_adapters.shop_domain.projections import shop_projections
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.view_store import RedisViewStore, ViewCheckpoint

pytestmark = pytest.mark.redis

NAMES = [p.name for p in shop_projections()]


def runner(url: str, stream: str) -> Proc:
    return Proc(
        "shop_adapters.redis_runner",
        *("--redis-url", url, "--stream", stream, "--no-progress", "--lease-ttl", "1"),
        *("--batch-size", "500"),
    )


def producer(url: str, stream: str, events: int, seed: int, rate: int) -> Proc:
    return Proc(
        "shop_adapters.producer",
        *("--redis-url", url, "--stream", stream, "synthetic", "--events", str(events)),
        *("--users", "300", "--items", "20", "--seed", str(seed), "--rate", str(rate)),
        *("--chunk", "200"),
    )


def projector(url: str, stream: str, *extra: str) -> Proc:
    return Proc(
        "shop_adapters.projector",
        *("--redis-url", url, "--stream", stream, "--batch-size", "300", *extra),
    )


def applied(client: redis.Redis, stream: str) -> int:
    """Outcomes applied by the views, live or being built (observable progress)."""
    pipe = client.pipeline(transaction=False)
    for name in NAMES:
        for suffix in ("", ":rebuild"):
            pipe.hget(f"{stream}:view:{name}{suffix}", "@outcomes")
    return sum(int(v) for v in pipe.execute() if v is not None)


def drained(client: redis.Redis, stream: str) -> bool:
    """Whether the runner has published the outcome of every record."""
    return int(client.xlen(f"{stream}:outcomes")) == int(client.xlen(stream)) > 0


def finish_and_check(client: redis.Redis, url: str, stream: str) -> None:
    """Let a projector catch up (--exit-when-idle), then compare every view with the fold."""
    done = run_module(
        "shop_adapters.projector",
        *("--redis-url", url, "--stream", stream, "--exit-when-idle"),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = journal_outcomes(client, stream)
    expected = expected_views(outcomes)
    for name, (position, docs) in stored_views(client, stream).items():
        assert position == outcomes[-1][0], name
        assert docs == expected[name], f"view {name} differs from the fold of the journal"
    leftovers = {k.decode() for k in client.keys(f"{stream}:view:*")}
    assert leftovers == {f"{stream}:view:{n}" for n in NAMES}


# --- SIGKILL of the projector at random moments ---------------------------------------------


def sigkill_trial(server: RedisServer, client: redis.Redis, seed: int) -> None:
    rng = random.Random(seed)
    stream = f"kill{seed}"
    publish(client, stream, synthetic_events(8_000, 300, 20, seed))
    with (
        runner(server.url, stream) as run,
        producer(server.url, stream, 12_000, seed + 1_000, 6_000) as produce,
    ):
        for kill in range(3):
            with projector(server.url, stream) as proj:
                moment = rng.choice(["start", "progress", "progress"])
                if moment == "progress":
                    target = applied(client, stream) + rng.randint(1, 4_000 * len(NAMES))
                    wait_until(
                        lambda t=target, p=proj: not p.alive() or applied(client, stream) >= t,
                        60,
                        f"trial {seed}, kill {kill}: the projector to apply some outcomes",
                    )
                assert proj.alive(), proj.stderr[-2000:]
                proj.kill()
        code, _, err = produce.finish(120)
        assert code == 0, err[-2000:]
        wait_until(lambda: drained(client, stream), 120, "the runner to publish every outcome")
        run.terminate()
        assert run.finish(60)[0] == 0
    finish_and_check(client, server.url, stream)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_views_equal_the_fold_after_sigkills_of_the_projector(
    redis_server: RedisServer, redis_client: redis.Redis, seed: int
) -> None:
    sigkill_trial(redis_server, redis_client, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
def test_views_equal_the_fold_after_sigkills_of_the_projector_long(
    redis_server: RedisServer, redis_client: redis.Redis, seed: int
) -> None:
    sigkill_trial(redis_server, redis_client, seed)


# --- a rebuild while everything is live, under a polling reader -------------------------------


class Reader:
    """Polls whole views (``HGETALL``) on its own connection; keeps each distinct read."""

    def __init__(self, server: RedisServer, stream: str, names: list[str]) -> None:
        self.store = RedisViewStore(server.client(socket_timeout=10), stream)
        self.names = names
        self.reads: dict[str, list[tuple[ViewCheckpoint, dict[str, Any]]]] = {n: [] for n in names}
        self.polls = 0
        self.missing_after_seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in self.names:
                checkpoint, docs = self.store.read_view(name)
                self.polls += 1
                reads = self.reads[name]
                if checkpoint is None:
                    if reads:
                        self.missing_after_seen.append(name)
                    continue
                last = reads[-1][0] if reads else None
                if last is None or (last.position, last.generation) != (
                    checkpoint.position,
                    checkpoint.generation,
                ):
                    reads.append((checkpoint, docs))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.store.client.close()


def test_a_rebuild_while_the_runner_is_live_is_never_seen_half_done(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    stream = "live"
    watched = ["sales", "customers", "rejections"]
    publish(redis_client, stream, synthetic_events(30_000, 300, 20, seed=21))
    with (
        runner(redis_server.url, stream) as run,
        projector(redis_server.url, stream) as live,
    ):
        store = RedisViewStore(redis_client, stream)
        wait_until(
            lambda: all(store.checkpoint(f"{stream}:view:{n}") is not None for n in NAMES),
            90,
            "the live projector to build the views",
        )
        before = {n: store.checkpoint(f"{stream}:view:{n}") for n in NAMES}
        reader = Reader(redis_server, stream, watched)
        try:
            with (
                producer(redis_server.url, stream, 10_000, 22, 4_000) as produce,
                projector(redis_server.url, stream, "--rebuild") as rebuild,
            ):
                wait_until(
                    lambda: all(
                        (cp := store.checkpoint(f"{stream}:view:{n}")) is not None
                        and cp.generation != before[n].generation  # type: ignore[union-attr]
                        for n in NAMES
                    ),
                    120,
                    "every rebuilt view to be switched in",
                )
                assert rebuild.wait_for("switched in", 5), rebuild.stderr[-2000:]
                code, _, err = produce.finish(120)
                assert code == 0, err[-2000:]
                wait_until(lambda: drained(redis_client, stream), 120, "the runner to drain")
                last = journal_outcomes(redis_client, stream)[-1][0]
                wait_until(
                    lambda: all(
                        store.checkpoint(f"{stream}:view:{n}").position == last  # type: ignore[union-attr]
                        for n in NAMES
                    ),
                    60,
                    "the projectors to catch up",
                )
                rebuild.terminate()
                assert rebuild.finish(60)[0] == 0
            live.terminate()
            assert live.finish(60)[0] == 0, live.stderr[-2000:]
        finally:
            reader.stop()
        run.terminate()
        assert run.finish(60)[0] == 0

    outcomes = journal_outcomes(redis_client, stream)
    assert not reader.missing_after_seen, "a view disappeared for a reader"
    for p in shop_projections():
        if p.name not in watched:
            continue
        reads = reader.reads[p.name]
        generations = [cp.generation for cp, _ in reads]
        assert before[p.name].generation in generations  # type: ignore[union-attr]
        assert generations[-1] != before[p.name].generation  # type: ignore[union-attr]
        positions = [cp.position for cp, _ in reads]
        assert positions == sorted(positions), f"{p.name} went back in time for a reader"
        # Each read equals the fold of the journal up to its position: never partial.
        view: dict[str, Any] = {}
        i = 0
        for checkpoint, docs in reads:
            j = i
            while j < len(outcomes) and outcomes[j][0] <= checkpoint.position:
                j += 1
            view = fold(p, outcomes[i:j], view)
            i = j
            assert checkpoint.outcomes == i, f"{p.name} at {checkpoint.position}"
            assert docs == view, f"{p.name}: a reader saw a partial view at {checkpoint.position}"
    assert min(len(reader.reads[n]) for n in watched) >= 3
    finish_and_check(redis_client, redis_server.url, stream)


# --- competing consumers ----------------------------------------------------------------------


def worker(url: str, stream: str, consumer: str, *extra: str) -> Proc:
    return Proc(
        "shop_adapters.worker",
        *("--redis-url", url, "--stream", stream, "--consumer", consumer),
        *("--batch-size", "400", "--claim-after", "1", *extra),
    )


def test_two_workers_one_killed_mid_batch_write_each_receipt_exactly_once(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    stream = "work"
    publish(redis_client, stream, synthetic_events(30_000, 300, 20, seed=31))
    orders = {
        str(p)
        for p, o in journal_outcomes(redis_client, stream)
        if o.status == "accepted" and o.kind == "Order"
    }
    done = f"{stream}:receipts:done"

    def mid_batch() -> bool:
        """Worker a holds entries it has not acknowledged, some already receipted."""
        try:
            pending = redis_client.xpending_range(
                f"{stream}:outcomes", "receipts", "-", "+", 1_000, consumername="a"
            )
        except redis.exceptions.ResponseError:  # NOGROUP: no worker has started yet
            return False
        ids = [p["message_id"] for p in pending]
        return bool(ids) and any(redis_client.smismember(done, ids))

    with worker(redis_server.url, stream, "a") as a, worker(redis_server.url, stream, "b") as b:

        def frozen_mid_batch() -> bool:
            """Freeze worker a (SIGSTOP) while it is in mid-batch; else let it go on."""
            if not a.alive():
                return True
            if not mid_batch():
                return False
            os.kill(a.proc.pid, signal.SIGSTOP)
            if mid_batch():
                return True
            os.kill(a.proc.pid, signal.SIGCONT)
            return False

        wait_until(frozen_mid_batch, 60, "worker a to be in mid-batch")
        assert mid_batch(), "worker a was not killed in the middle of a batch"
        a.kill()

        def finished() -> bool:
            (group,) = redis_client.xinfo_groups(f"{stream}:outcomes")
            return group["pending"] == 0 and group["lag"] == 0

        wait_until(finished, 120, "worker b to handle everything, a's pending entries too")
        assert b.wait_for("claimed", 5), b.stderr[-2000:]
        b.terminate()
        code, _, err = b.finish(60)
        assert code == 0, err[-2000:]
    written = [json.loads(r)["receipt"] for r in redis_client.lrange(f"{stream}:receipts", 0, -1)]
    assert len(written) == len(set(written)), "a receipt was written twice"
    assert set(written) == orders
    assert redis_client.scard(done) == len(orders)


def test_a_poison_outcome_is_parked_after_n_deliveries_by_the_worker_command(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    stream = "poison"
    good = Outcome("accepted", "Order", detail={"total": 5, "user": 1, "lines": [["x", 1, 5]]})
    poison = Outcome("accepted", "Order", detail={"total": 5})  # no user, no lines
    RedisOutcomeJournal(redis_client, f"{stream}:outcomes").write(
        [(Position(1, 0), good), (Position(2, 0), poison), (Position(3, 0), good)]
    )
    started = time.monotonic()
    done = run_module(
        "shop_adapters.worker",
        *("--redis-url", redis_server.url, "--stream", stream, "--exit-when-idle"),
        *("--max-deliveries", "3", "--claim-after", "0.2", "--log-format", "json"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["parked"] == 1 and summary["failed"] == 2
    assert time.monotonic() - started < 60
    listed = run_module(
        "shop_adapters.query",
        *("--redis-url", redis_server.url, "--stream", stream, "parked", "--json"),
    )
    (parked,) = json.loads(listed.stdout)
    assert parked["position"] == "2-0" and parked["deliveries"] == 3
    assert parked["reason"].startswith("ValueError: the accepted order at 2-0 has no user")
    assert parked["outcome"] == poison.to_json()
    receipts = [json.loads(r)["receipt"] for r in redis_client.lrange(f"{stream}:receipts", 0, -1)]
    assert receipts == ["1-0", "3-0"]
    again = run_module(  # parked means never retried silently: a new run does nothing more
        "shop_adapters.worker",
        *("--redis-url", redis_server.url, "--stream", stream, "--exit-when-idle"),
        *("--log-format", "json"),
    )
    assert json.loads(again.stdout.strip().splitlines()[-1])["handled"] == 0

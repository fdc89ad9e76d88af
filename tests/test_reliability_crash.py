"""Crash anywhere: the runner, SIGKILLed at random moments and restarted, loses nothing
and applies nothing twice.

Each trial (seeded; ``--trials N``, ``--first-seed S``) uses its own stream on one
shared private redis-server:

1. a few thousand entries (valid v1 events from the synthetic workload, ~3 %
   malformed) are appended before the runner starts, so it has a catch-up;
2. a producer thread keeps appending more, in small seeded chunks;
3. the runner subprocess (small ``--snapshot-every``, small batches, short
   lease) is started and SIGKILLed 2 to 4 times: at a random moment after
   spawning, a random moment into its catch-up, or while it follows the tail;
   snapshots are written in the background throughout, so kills land before,
   during and after snapshot writes;
4. once the producer is done, a last runner drains the stream
   (``--exit-when-idle``).

Checked: its digest equals the fold of the producer's valid events (and the
fold of the decoded stream); the cumulative counters count every record once;
the stored snapshot is at the stream's end with the same state; the dead
stream holds exactly the malformed positions, each once, each with a reason.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from reliability_support import (
    MALFORMED,
    RunnerProcess,
    dead_letters,
    fold_digest,
    run_to_idle,
    runner_argv,
    stored_snapshot,
    stream_keys,
    stream_oracle,
)

from shop_adapters.embedded_redis import RedisServer
from shop_adapters.protocols import Position
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_core import Event

pytestmark = pytest.mark.redis

DEFAULT_TRIALS = 20


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        trials = metafunc.config.getoption("trials") or DEFAULT_TRIALS
        first = metafunc.config.getoption("first_seed")
        metafunc.parametrize("seed", range(first, first + trials))


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server (AOF on) for every trial; each trial has its own stream."""
    with RedisServer(data_dir=tmp_path_factory.mktemp("crash-redis")) as server:
        yield server


def workload(seed: int, n: int) -> tuple[list[dict[str, str | bytes]], list[Event], list[int]]:
    """``n`` entries: valid v1 events with ~3 % malformed ones mixed in.

    Returns ``(entries, valid events in order, indices of the malformed entries)``.
    """
    rng = random.Random(seed * 7919 + 1)
    events = list(synthetic_events(n, users=300, items=40, seed=seed))
    entries: list[dict[str, str | bytes]] = []
    valid: list[Event] = []
    bad: list[int] = []
    for event in events:
        if rng.random() < 0.03:
            bad.append(len(entries))
            entries.append(dict(rng.choice(MALFORMED)))
        entries.append(encode_event(event))  # type: ignore[arg-type]
        valid.append(event)
    return entries, valid, bad


class Producer(threading.Thread):
    """Appends ``entries`` in seeded chunks with small pauses, on its own connection."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        entries: list[dict[str, str | bytes]],
        rng: random.Random,
    ) -> None:
        super().__init__(daemon=True, name="producer")
        self.client = client
        self.stream = stream
        self.entries = entries
        self.chunks: list[int] = []
        self.pauses: list[float] = []
        left = len(entries)
        while left > 0:
            k = min(left, rng.randint(1, 40))
            self.chunks.append(k)
            self.pauses.append(rng.uniform(0.0, 0.02))
            left -= k
        self.ids: list[bytes] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            i = 0
            for k, pause in zip(self.chunks, self.pauses, strict=True):
                pipe = self.client.pipeline(transaction=False)
                for entry in self.entries[i : i + k]:
                    pipe.xadd(self.stream, entry)  # type: ignore[arg-type]
                self.ids.extend(pipe.execute())
                i += k
                time.sleep(pause)
        except BaseException as e:  # reported by the test
            self.error = e


def append_all(
    client: redis.Redis, stream: str, entries: list[dict[str, str | bytes]]
) -> list[bytes]:
    ids: list[bytes] = []
    for start in range(0, len(entries), 2_000):
        pipe = client.pipeline(transaction=False)
        for entry in entries[start : start + 2_000]:
            pipe.xadd(stream, entry)  # type: ignore[arg-type]
        ids.extend(pipe.execute())
    return ids


def test_runner_killed_anywhere_loses_nothing_and_applies_nothing_twice(
    crash_server: RedisServer, seed: int, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    stream = f"crash:{seed}"
    client = crash_server.client()
    client.delete(*stream_keys(stream))
    preload = rng.randint(1_000, 8_000)
    live = rng.randint(500, 2_500)
    entries, valid, bad = workload(seed, preload + live)
    split = preload  # entries index just after the preload-th valid event
    for i in bad:
        if i < split:
            split += 1
    snapshot_every = rng.choice([3, 10, 50, 250])
    batch_size = rng.choice([8, 64, 500])
    kills = rng.randint(2, 4)
    # When to kill: (phase to wait for, then a random delay in seconds). Catch-up is
    # fast, so a kill "in catch-up" comes at most 60 ms after the restore line.
    delays = {"spawn": 0.6, "catch-up": 0.06, "follow": 0.4}
    plan = [(m := rng.choice(list(delays)), rng.uniform(0.0, delays[m])) for _ in range(kills)]
    context = (
        f"seed={seed} (rerun: pytest {Path(__file__).name} --first-seed {seed} --trials 1): "
        f"preload={preload} live={live} snapshot_every={snapshot_every} batch={batch_size} "
        f"plan={[(m, round(d, 3)) for m, d in plan]}"
    )
    argv = runner_argv(
        crash_server.url,
        stream,
        "--snapshot-every",
        str(snapshot_every),
        "--snapshot-interval",
        "0.05",
        "--batch-size",
        str(batch_size),
        "--lease-ttl",
        "0.3",
        "--progress-interval",
        "0.2",
    )
    ids = append_all(client, stream, entries[:split])
    producer = Producer(crash_server.client(), stream, entries[split:], rng)
    producer.start()
    try:
        for mode, delay in plan:
            with RunnerProcess(argv) as proc:
                if mode == "catch-up":
                    proc.wait_for("no snapshot", "restored snapshot", "set aside")
                elif mode == "follow":
                    proc.wait_for("caught up")
                time.sleep(delay)
                assert proc.alive(), f"{context}: runner died by itself:\n{proc.stderr[-4000:]}"
                proc.kill()
        producer.join(120)
        assert not producer.is_alive(), f"{context}: producer did not finish"
        assert producer.error is None, f"{context}: producer failed: {producer.error!r}"
        ids.extend(producer.ids)

        summary = run_to_idle(crash_server.url, stream, "--lease-ttl", "0.3")
    finally:
        producer.join(120)
        client.close()

    client = crash_server.client()
    try:
        expected_digest = fold_digest(valid)
        oracle = stream_oracle(client, stream)
        bad_positions = [Position.parse(ids[i]) for i in bad]
        assert oracle.digest == expected_digest, f"{context}: stream does not hold the workload"
        assert summary["digest"] == expected_digest, (
            f"{context}: digest after crashes differs from a from-scratch fold; "
            f"summary={ {k: v for k, v in summary.items() if k != '_stderr'} }"
        )
        events_counted = summary["total_records"] - summary["total_dead_letters"]
        assert events_counted == len(valid), f"{context}: events counted {summary}"
        assert summary["total_records"] == len(entries), f"{context}: records counted {summary}"
        assert summary["total_dead_letters"] == len(bad), f"{context}: dead letters counted"
        assert summary["last_position"] == str(oracle.last), context
        snap = stored_snapshot(client, stream)
        assert snap is not None and snap.position == oracle.last, context
        assert snap.records == len(entries), context
        assert snap.dead_letters == len(bad), context
        letters = dead_letters(client, stream)
        positions = [d.position for d in letters]
        assert len(positions) == len(set(positions)), f"{context}: duplicate dead letters"
        assert positions == bad_positions == oracle.dead_positions, (
            f"{context}: dead letters {positions[:10]}... != malformed {bad_positions[:10]}..."
        )
        assert all(d.reason for d in letters), context
        for d, i in zip(letters, bad, strict=True):
            assert d.fields == {
                k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in entries[i].items()
            }, f"{context}: dead letter at {d.position} does not hold the raw entry"
    finally:
        client.delete(*stream_keys(stream))
        client.close()

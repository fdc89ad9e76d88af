"""The 1,000,000-user row: restore, snapshot write, peak RSS and bytes per user of a big state.

:mod:`benchmarks.replay_vs_snapshot` runs :func:`measure_big_state` once per
run (``--big-users``, default 1,000,000; 0 skips it).

The log: one ``TopUp`` for each of ``users`` users (user ``u`` gets
``100 + (7919 u mod 9901)``), an ``AddItem`` for each of 100 items, then a
tail of 1,000 events of the synthetic workload over the same users and items,
appended to a Redis stream when Redis is among the backends (the command
line's log), else to a file log. The snapshot is taken after the head (every
event but the tail), with an empty idempotency window of the runner's
default size, as the runner would write it.

Figures (each the best of ``repeat`` runs unless said):

- **snapshot write**: ``encode_snapshot`` (of which the body,
  ``ShopDomain.encode_state``) + ``store.write`` of the blob, for a file store
  and a Redis store (the Redis one guarded by the stream, as the runner's
  writes are: a Lua script checks the record the snapshot names);
- **restore**: the real runner's :meth:`Runner.restore` from each store,
  timed by the runner itself (``restore_seconds``: ``store.read`` +
  ``decode_snapshot``); also ``store.read`` alone, ``decode_snapshot`` and the
  body's ``decode_state`` alone, so that a miss names its cause;
- **peak RSS of a runner process holding it**: a child process
  (:mod:`benchmarks._replay_child` ``hold``) runs the real runner over the
  log with a copy of the snapshot: restore, catch up the tail, write its
  final snapshot. ``VmHWM`` after the restore, once caught up, and at the
  end (so including one snapshot write); and of an idle child that imported
  the same modules and opened the log;
- **bytes per user**: of the state, ``tracemalloc`` bytes still allocated
  after ``decode_state`` of the body (what a restore builds), divided by the
  number of users; of the snapshot, its length divided by the number of users.

Every restored state must have the digest of the fold of the same events.
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from shop_adapters.catchup import record_anchor
from shop_adapters.envelope import Snapshot, decode_snapshot, encode_snapshot
from shop_adapters.idempotency import DEFAULT_WINDOW, KeyWindow
from shop_adapters.keys import StreamKeys
from shop_adapters.protocols import EventLog, Position, SnapshotStore
from shop_adapters.runner import Runner
from shop_adapters.shop_domain.workload import synthetic_events
from shop_core import EMPTY, AddItem, Event, TopUp, state_digest

from ._common import DOMAIN, QUIET, REPO, best, best_self_timed, load_events, runner_config

__all__ = ["big_events", "measure_big_state"]

TAIL = 1_000
ITEMS = 100


def big_events(users: int, seed: int = 42) -> list[Event]:
    """A top-up for each of ``users`` users, 100 items, then 1,000 synthetic events."""
    events: list[Event] = [TopUp(u, 100 + (7919 * u) % 9901) for u in range(1, users + 1)]
    events += [AddItem(f"item-{i}", 1_000, 100 + 37 * i) for i in range(ITEMS)]
    events += list(synthetic_events(TAIL, users, ITEMS, seed))
    return events


@contextmanager
def _big_log(
    backend: str, workdir: Path, redis_url: str | None
) -> Iterator[tuple[EventLog, dict[str, SnapshotStore], str, Callable[[str], str]]]:
    """The log, the stores by name, the log's location for a child, and a function
    giving a store's location for a child."""
    if backend == "redis":
        import redis

        from shop_adapters.logs.redis_stream import RedisStreamLog
        from shop_adapters.snapshots.file import FileSnapshotStore
        from shop_adapters.snapshots.redis import RedisSnapshotStore

        assert redis_url is not None
        client = redis.Redis.from_url(redis_url)
        keys = StreamKeys.for_stream("bench:big:orders")
        client.delete(*keys)
        d = Path(tempfile.mkdtemp(prefix="big-", dir=workdir))
        log = RedisStreamLog(client, keys.stream, keys.dead)
        stores: dict[str, SnapshotStore] = {
            "file": FileSnapshotStore(d / "snapshot.bin"),
            "redis": RedisSnapshotStore(client, keys.snapshot, stream=keys.stream),
        }
        where = {"file": str(d / "snapshot.bin"), "redis": keys.snapshot}
        try:
            yield log, stores, f"{redis_url}#{keys.stream}", where.__getitem__
        finally:
            log.close()
            client.delete(*keys, f"{keys.snapshot}:child")
            client.close()
            shutil.rmtree(d, ignore_errors=True)
    else:
        from shop_adapters.logs.file import FileLog
        from shop_adapters.snapshots.file import FileSnapshotStore

        d = Path(tempfile.mkdtemp(prefix="big-", dir=workdir))
        flog = FileLog(d / "orders.log", fsync="never")
        fstores: dict[str, SnapshotStore] = {"file": FileSnapshotStore(d / "snapshot.bin")}
        try:
            yield flog, fstores, str(d / "orders.log"), lambda _name: str(d / "snapshot.bin")
        finally:
            flog.close()
            shutil.rmtree(d, ignore_errors=True)


def _retained(fn: Callable[[], Any]) -> tuple[int, Any]:
    """``tracemalloc`` bytes still allocated after ``fn()`` (its result kept alive)."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        result = fn()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before, result


def measure_big_state(
    users: int,
    *,
    backend: str,
    workdir: Path,
    redis_url: str | None,
    repeat: int = 3,
    seed: int = 42,
    window: int | None = DEFAULT_WINDOW,
    progress: bool = False,
) -> dict[str, Any]:
    """The big-state figures (see the module docstring); ``backend`` is where the log
    lives for the runner child: ``redis`` or ``file``."""
    started = time.perf_counter()
    events = big_events(users, seed)
    head = len(events) - TAIL
    out: dict[str, Any] = {"users": users, "events": len(events), "tail": TAIL}
    out["backend"] = backend
    failures: list[str] = []
    with _big_log(backend, workdir, redis_url) as (log, stores, log_location, store_location):
        positions = load_events(log, events, progress, f"{users:,} users ({backend})")
        folder = DOMAIN.folder(EMPTY)
        tally = folder.fold(events[:head])
        state = folder.persistent()
        after = DOMAIN.folder(state)
        after.fold(events[head:])
        expected = state_digest(after.persistent())
        del after
        at = positions[head - 1]
        record = log.read_at(at)
        assert record is not None
        snapshot = Snapshot(
            state,
            at,
            head,
            0,
            tally,
            record_anchor(record.fields),
            None if window is None else KeyWindow(window),
        )
        encode_s, blob = best(partial(encode_snapshot, snapshot, DOMAIN), repeat)
        body_s, body = best(partial(DOMAIN.encode_state, state), repeat)
        del snapshot
        out |= {
            "snapshot_bytes": len(blob),
            "body_bytes": len(body),
            "snapshot_bytes_per_user": len(blob) / users,
            "encode_s": encode_s,
            "encode_state_s": body_s,
        }
        out["stores"] = {}
        anchored = (at, record_anchor(record.fields))
        digest = state_digest(state)
        del state, folder
        for name, store in stores.items():
            write_s, _ = best(partial(store.write, blob, anchored), repeat)
            read_s, _ = best(store.read, repeat)
            restore_s, runner = best_self_timed(partial(_restore, log, store, window), repeat)
            if DOMAIN.digest(runner.state) != digest:
                failures.append(f"{users:,} users: restore from the {name} store: another state")
            del runner
            out["stores"][name] = {
                "write_s": encode_s + write_s,
                "store_write_s": write_s,
                "read_s": read_s,
                "restore_s": restore_s,
            }
        out["decode_snapshot_s"], _ = best(partial(decode_snapshot, blob, DOMAIN, window), repeat)
        out["decode_state_s"], _ = best(partial(DOMAIN.decode_state, body), repeat)
        state_bytes, restored = _retained(partial(DOMAIN.decode_state, body))
        del restored, blob, body
        out["state_bytes"] = state_bytes
        out["state_bytes_per_user"] = state_bytes / users
        gc.collect()
        child_store = store_location("redis" if backend == "redis" else "file")
        rss = _child(["hold", backend, log_location, child_store, str(window or 0)])
        base = _child(["baseline", backend, log_location])
        if rss["digest"] != expected:
            failures.append(f"{users:,} users: the runner child reached another state")
        out["rss"] = rss
        out["rss_baseline"] = base
    out["failures"] = failures
    out["seconds"] = time.perf_counter() - started
    return out


def _restore(
    log: EventLog, store: SnapshotStore, window: int | None
) -> tuple[float, Runner[Any, Any]]:
    runner = Runner(log, store, DOMAIN, runner_config(key_window=window), logger=QUIET)
    runner.restore()
    assert runner.restore_seconds is not None
    if runner.position == Position(0, 0):
        raise RuntimeError("the runner did not restore the big snapshot (set aside?)")
    return runner.restore_seconds, runner


def _child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks._replay_child", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks._replay_child {' '.join(args[:2])}: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result

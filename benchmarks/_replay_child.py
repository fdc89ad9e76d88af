"""Child processes of the benchmarks: a runner alone in a fresh interpreter.

``python -m benchmarks._replay_child MODE ARGS...`` prints one JSON line.
A child holds nothing but what the mode needs (not the parent's pre-built
events), so its peak RSS and its fork are a runner's own.

- ``baseline BACKEND LOCATION``: import, open the log, read nothing; for the
  RSS of an idle runner process;
- ``replay BACKEND LOCATION [BATCH]``: the real runner from scratch,
  read-only (:func:`benchmarks._common.runner_replay`); ``{"events",
  "digest", "seconds", "maxrss_bytes"}``;
- ``hold BACKEND LOCATION STORE [WINDOW]``: the real runner restoring from a
  copy of the snapshot ``STORE`` (a file path, or a key of the same Redis),
  with the key window ``WINDOW`` (0: keys off), catching up and writing its
  final snapshot (to the copy); ``VmHWM`` after the restore, once caught up
  and at the end, ``VmRSS`` at the end;
- ``writer LOG STORE EVERY MODE [BATCH] [WINDOW]``: the real runner from
  scratch over the file log ``LOG`` with a fresh file store ``STORE``,
  snapshotting every ``EVERY`` records (``MODE``: ``none``, ``thread`` or
  ``child``, i.e. ``snapshot_in_child``); its catch-up rate, batch times
  (between the runner observer's batch reports: read wait + decode + fold +
  outcomes + the snapshot hand-off) and, in ``child`` mode, the time of each
  ``os.fork`` as the parent sees it (``os.fork`` wrapped in this process).

``BACKEND``/``LOCATION``: ``file PATH`` or ``redis URL#STREAM``. ``VmHWM`` is
read from ``/proc/self/status`` (:func:`benchmarks._common.peak_rss`).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shop_adapters.catchup import Batch
from shop_adapters.idempotency import DEFAULT_WINDOW
from shop_adapters.protocols import EventLog, Position, SnapshotStore
from shop_adapters.runner import Runner
from shop_core import EMPTY, state_digest

from ._common import DOMAIN, QUIET, peak_rss, quantile, runner_config, runner_replay


def _open(backend: str, location: str) -> EventLog:
    if backend == "file":
        from shop_adapters.logs.file import FileLog

        return FileLog(location)
    if backend == "redis":
        import redis

        from shop_adapters.logs.redis_stream import RedisStreamLog

        url, _, stream = location.partition("#")
        return RedisStreamLog(redis.Redis.from_url(url), stream=stream)
    raise SystemExit(f"backend must be file or redis, got {backend!r}")


def _store_copy(backend: str, location: str, source: str) -> SnapshotStore:
    """A store holding a copy of the snapshot at ``source``, for this child alone."""
    if backend == "file":
        from shop_adapters.snapshots.file import FileSnapshotStore

        target = source + ".child"
        shutil.copyfile(source, target)
        return FileSnapshotStore(target)
    import redis

    from shop_adapters.snapshots.redis import RedisSnapshotStore

    url, _, stream = location.partition("#")
    client = redis.Redis.from_url(url)
    target = source + ":child"
    client.copy(source, target, replace=True)
    return RedisSnapshotStore(client, target, stream=stream)


def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class _Marks:
    """A runner observer noting the peak RSS after the restore and once caught up,
    and the time of every batch report."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.batches: list[float] = []

    def restored(self, seconds: float, position: Position, records: int) -> None:
        self.peaks.setdefault("restored", peak_rss())

    def batch(self, batch: Batch, seconds: float, records_total: int) -> None:
        self.batches.append(time.perf_counter())

    def snapshot(self, written: bool, seconds: float) -> None:
        """Not used."""

    def phase(self, following: bool) -> None:
        if following:
            self.peaks.setdefault("caught_up", peak_rss())


def _hold(backend: str, location: str, source: str, window: int | None) -> dict[str, Any]:
    log = _open(backend, location)
    store = _store_copy(backend, location, source)
    marks = _Marks()
    runner = Runner(
        log,
        store,
        DOMAIN,
        runner_config(key_window=window, final_snapshot=True),
        observer=marks,
        logger=QUIET,
    )
    summary = runner.run(exit_when_idle=True)
    out = {
        "digest": summary.digest,
        "records": summary.records,
        "restored_from": None if summary.restored_from is None else str(summary.restored_from),
        "restore_s": runner.restore_seconds,
        "catch_up_s": runner.catch_up_seconds,
        "final_snapshot": runner.final_snapshot_error is None,
        "peak_restored": marks.peaks.get("restored", 0),
        "peak_caught_up": marks.peaks.get("caught_up", 0),
        "peak_end": peak_rss(),
        "rss_end": _vm("VmRSS"),
    }
    log.close()
    store.close()
    return out


def _writer(
    log_path: str, store_path: str, every: int, mode: str, batch: int, window: int | None
) -> dict[str, Any]:
    from shop_adapters.logs.file import FileLog
    from shop_adapters.snapshots.file import FileSnapshotStore

    Path(store_path).unlink(missing_ok=True)
    forks: list[float] = []
    if mode == "child":
        real_fork = os.fork

        def timed_fork() -> int:
            t0 = time.perf_counter()
            pid = real_fork()
            if pid:
                forks.append(time.perf_counter() - t0)
            return pid

        os.fork = timed_fork
    log = FileLog(log_path)
    store = FileSnapshotStore(store_path)
    writes: list[float] = []
    lock = threading.Lock()

    class _Observer(_Marks):
        def snapshot(self, written: bool, seconds: float) -> None:
            with lock:
                writes.append(seconds)

    observer = _Observer()
    runner = Runner(
        log,
        store,
        DOMAIN,
        runner_config(
            batch=batch,
            key_window=window,
            snapshot_every=None if mode == "none" else every,
            snapshot_in_child=mode == "child",
        ),
        observer=observer,
        logger=QUIET,
    )
    summary = runner.run(exit_when_idle=True)
    assert runner.catch_up_seconds is not None
    steps = [b - a for a, b in itertools.pairwise(observer.batches)]
    log.close()
    store.close()
    return {
        "mode": mode,
        "snapshot_every": None if mode == "none" else every,
        "events": summary.records,
        "digest": summary.digest,
        "catch_up_s": runner.catch_up_seconds,
        "rate": summary.records / runner.catch_up_seconds,
        "batch_p50_ms": 1e3 * statistics.median(steps) if steps else 0.0,
        "batch_p99_ms": 1e3 * quantile(steps, 0.99) if steps else 0.0,
        "batch_max_ms": 1e3 * max(steps) if steps else 0.0,
        "snapshots_due": summary.records // every if mode != "none" else 0,
        "snapshots_written": summary.snapshots_written,
        "write_mean_ms": 1e3 * statistics.fmean(writes) if writes else None,
        "fork_mean_ms": 1e3 * statistics.fmean(forks) if forks else None,
        "fork_max_ms": 1e3 * max(forks) if forks else None,
        "forks": len(forks),
    }


def main(argv: list[str]) -> int:
    """Run ``MODE`` (see the module docstring) and print its JSON line."""
    mode = argv[0]
    out: dict[str, Any]
    if mode == "hold":
        backend, location, source = argv[1:4]
        window = int(argv[4]) if len(argv) > 4 else DEFAULT_WINDOW
        out = _hold(backend, location, source, window or None)
    elif mode == "writer":
        log_path, store_path, every, how = argv[1:5]
        batch = int(argv[5]) if len(argv) > 5 else 10_000
        window = int(argv[6]) if len(argv) > 6 else DEFAULT_WINDOW
        out = _writer(log_path, store_path, int(every), how, batch, window or None)
    elif mode in ("baseline", "replay"):
        backend, location = argv[1:3]
        batch = int(argv[3]) if len(argv) > 3 else 10_000
        log = _open(backend, location)
        state, n = EMPTY, 0
        t0 = time.perf_counter()
        if mode == "replay":
            _seconds, result = runner_replay(log, batch=batch)
            state, n = result.state, result.records
        seconds = time.perf_counter() - t0
        log.close()
        out = {
            "events": n,
            "digest": state_digest(state),
            "seconds": seconds,
            "maxrss_bytes": peak_rss(),
        }
    else:
        raise SystemExit(f"unknown mode {mode!r}: baseline, replay, hold or writer")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Benchmark: full replay versus snapshot restore, beside their limits and a peer.

Run: ``python -m benchmarks.replay_vs_snapshot [--sizes 10k,100k,1M] [--with-10m]
[--backends memory,file,redis] [--seed 42] [--out benchmarks/results] [--quick]``

Workload: ``shop_adapters.workload.synthetic_events(n, users=10_000, items=100,
seed)``. Every figure is the best of ``--repeat`` runs (restore: at least 5)
with ``time.perf_counter`` after ``gc.collect()`` and ``gc.freeze()`` (the
harness's own objects, such as the pre-built events, are not traversed by the
GC during timing; the GC stays on); nothing else runs in this process
meanwhile. The answer is checked before anything is timed: the reference
state is ``shop_core.fold`` of the pre-built events, which must agree with the
plain-dict baseline; every replay and every restore must give the reference's
``state_digest`` or the run fails (exit status 1, and the report says FAIL).

For each size ``n`` and backend (memory, file, Redis):

- **append**: encode (``codec.encode_event``) and append the events in
  batches of 10,000 (timed once, separately; not part of replay);
- **replay**: the real :class:`shop_adapters.runner.Runner` of the shop from
  scratch, read-only (no snapshot written), timed by the runner itself: its
  catch-up loop of ``read_after`` batches of ``--batch`` records through
  ``shop_adapters.catchup.consume`` (decode, fold into the domain's folder,
  a ``shop_core.Transient``), under the runner's GC settings; also reported:
  the naive loop, ``shop_core.fold`` per batch with the default GC;
- **snapshot write**: ``encode_snapshot`` + ``store.write`` of the state after
  ``n - tail`` events (``tail`` = 1,000, or ``n // 2`` below 2,000 events);
  seconds and bytes;
- **restore**: the same runner restoring from the store (its own
  ``restore_seconds``: ``store.read`` + ``decode_snapshot``) and catching up the
  last ``tail`` events;
- **speedup**: replay seconds / restore seconds.

Limits (ceilings), measured in the same run, each beside the figure it bounds:

- **raw read**: records fetched with no decode or fold: ``read_after`` for the
  memory and file logs; for Redis, plain ``XRANGE`` batches through the same
  redis-py client (the adapter's own ``read_after`` rate is reported too);
- **decode only**: ``decode_records`` on records already read (reading is not
  timed);
- **dict fold**: ``benchmarks.baseline.fold_dicts`` on pre-decoded events (the
  ceiling of ``shop_core.fold`` on the same events, also reported);
- **snapshot store only**: ``store.write`` / ``store.read`` of the encoded bytes
  (ceilings of snapshot write and of restore, with the raw read of the tail).

Peer: the ``eventsourcing`` library (see :mod:`benchmarks.peer_eventsourcing`),
POPO and SQLite, at sizes up to ``--peer-max`` (it is about 20 times slower).

Memory: peak RSS (VmHWM) of a replay in a child process (:mod:`benchmarks._replay_child`)
for the largest size up to 1M, file and Redis logs, against an idle child that
opened the same log; and bytes per user of the folded state: ``tracemalloc``
traced bytes still allocated after ``fold`` (so: the state's maps, records and
ints) divided by the number of users, against the same for the dict baseline.

Snapshotting on the hot path: the runner (``shop_adapters.runner.Runner``)
catches up the largest size up to 1M with and without ``snapshot_every``
10,000; a proxy around the log timestamps every ``read_after``, giving the
fold phase's rate and the per-batch times (a stall would show as a long batch).

Output: ``<out>/latest.md``, ``<out>/latest.json``, ``<out>/replay_vs_restore.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from shop_adapters.catchup import Replayed, record_anchor
from shop_adapters.domain import Tally
from shop_adapters.envelope import Snapshot, encode_snapshot
from shop_adapters.protocols import ORIGIN, EventLog, Position, Record, SnapshotStore
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_core import EMPTY, Event, ShopState, fold, state_digest

from .baseline import as_dicts, fold_dicts

__all__ = ["main", "parse_sizes", "runner_replay"]

DOMAIN = ShopDomain()
_QUIET = logging.getLogger("shop.benchmark.runner")
_QUIET.setLevel(logging.WARNING)
BACKENDS = ("memory", "file", "redis")
TAIL = 1_000
APPEND_BATCH = 10_000
MEMORY_MAX = 1_000_000


# --- the measured loop: the real runner -----------------------------------------------


def runner_replay(
    log: EventLog, store: SnapshotStore | None = None, batch: int = 10_000
) -> tuple[float, Replayed[ShopState]]:
    """Run the real :class:`~shop_adapters.runner.Runner` of the shop over ``log``
    until it is idle, restoring from ``store`` (``None``: from scratch).

    Returns ``(seconds, result)``: the runner's own restore plus catch-up time
    (:attr:`Runner.restore_seconds` + :attr:`Runner.catch_up_seconds`: reading
    and decoding the snapshot, then the catch-up loop of ``read_after``
    batches through :func:`shop_adapters.catchup.consume`, under the runner's
    GC settings), and the state it reached. No snapshot is written (a
    read-only run) and the summary's digest is not part of the time.
    """
    runner = Runner(
        log,
        store if store is not None else MemorySnapshotStore(),
        DOMAIN,
        RunnerConfig(
            batch_size=batch,
            snapshot_interval=None,
            progress=False,
            progress_interval=None,
            final_snapshot=False,
        ),
        logger=_QUIET,
    )
    summary = runner.run(exit_when_idle=True)
    assert runner.restore_seconds is not None and runner.catch_up_seconds is not None
    result = Replayed(
        runner.state,
        summary.last_position,
        None,
        summary.records,
        Tally(summary.accepted, summary.rejected),
    )
    return runner.restore_seconds + runner.catch_up_seconds, result


def replay_fold_per_batch(
    log: EventLog, state: ShopState = EMPTY, after: Position = ORIGIN, batch: int = 10_000
) -> tuple[ShopState, Position, int]:
    """The naive loop, for comparison: ``shop_core.fold`` per batch (an immutable
    state committed after every batch) and the interpreter's default GC settings."""
    position = after
    n = 0
    decode = DOMAIN.decode_records
    while records := log.read_after(position, batch):
        pairs, _dead = decode(records)
        state = fold((e for _, e in pairs), state)
        position = records[-1].position
        n += len(records)
    return state, position, n


def _raw_read(log: EventLog, after: Position = ORIGIN, batch: int = 10_000) -> int:
    position = after
    n = 0
    while records := log.read_after(position, batch):
        position = records[-1].position
        n += len(records)
    return n


def _xrange_read(client: Any, stream: str, after: Position = ORIGIN, batch: int = 10_000) -> int:
    """Plain XRANGE batches (exclusive start), nothing built from the replies."""
    start = b"(" + str(after).encode()
    n = 0
    while entries := client.xrange(stream, min=start, max="+", count=batch):
        start = b"(" + entries[-1][0]
        n += len(entries)
    return n


def _decode_only(log: EventLog, batch: int) -> float:
    """Seconds spent in ``decode_records`` alone over the whole log."""
    position = ORIGIN
    spent = 0.0
    while records := log.read_after(position, batch):
        t0 = time.perf_counter()
        DOMAIN.decode_records(records)
        spent += time.perf_counter() - t0
        position = records[-1].position
    return spent


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best seconds of ``repeat`` calls and the last result.

    Before each call: ``gc.collect()`` then ``gc.freeze()``, so the objects the
    harness holds (the pre-built events, the loaded memory log) are not
    traversed by the collections the measured code triggers, as in a runner
    process that holds only its state; the cyclic GC stays enabled.
    """
    best = float("inf")
    result: Any = None
    for _ in range(max(1, repeat)):
        gc.collect()
        gc.freeze()
        try:
            t0 = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.unfreeze()
    return best, result


def _best_self_timed(fn: Callable[[], tuple[float, Any]], repeat: int) -> tuple[float, Any]:
    """As :func:`_best` for a ``fn`` that times itself: returns ``(seconds, result)``."""
    best = float("inf")
    result: Any = None
    for _ in range(max(1, repeat)):
        gc.collect()
        gc.freeze()
        try:
            seconds, result = fn()
            best = min(best, seconds)
        finally:
            gc.unfreeze()
    return best, result


# --- results ---------------------------------------------------------------------------


@dataclass
class SizeResult:
    """Backend-independent figures for one history length ``n``."""

    n: int
    users: int
    digest: str
    fold_s: float
    dict_fold_s: float


@dataclass
class BackendResult:
    """One backend at one history length; seconds are best-of-repeat."""

    backend: str
    n: int
    tail: int
    append_s: float
    replay_s: float
    replay_transient_s: float
    raw_read_s: float
    adapter_read_s: float
    decode_s: float
    snapshot_encode_s: float
    snapshot_store_write_s: float
    snapshot_bytes: int
    restore_s: float
    restore_ceiling_s: float
    replay_digest: str
    restore_digest: str
    expected_digest: str

    @property
    def ok(self) -> bool:
        """Replay and restore both reached the reference state."""
        return self.replay_digest == self.restore_digest == self.expected_digest

    @property
    def snapshot_write_s(self) -> float:
        """Encode + store write."""
        return self.snapshot_encode_s + self.snapshot_store_write_s

    @property
    def speedup(self) -> float:
        """Replay seconds / restore seconds."""
        return self.replay_s / self.restore_s


@dataclass
class Results:
    """Everything one run measured, plus where and how."""

    meta: dict[str, Any]
    sizes: list[SizeResult] = field(default_factory=list)
    runs: list[BackendResult] = field(default_factory=list)
    peers: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    writer: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "meta": self.meta,
            "sizes": [asdict(s) for s in self.sizes],
            "runs": [asdict(r) | {"ok": r.ok} for r in self.runs],
            "peers": self.peers,
            "memory": self.memory,
            "writer": self.writer,
            "failures": self.failures,
        }


# --- backends --------------------------------------------------------------------------


@dataclass
class _Opened:
    log: EventLog
    store: SnapshotStore
    raw_read: Callable[[Position, int], int]
    child_location: str | None  # for the RSS child, or None if it cannot reopen the log
    cleanup: Callable[[], None]


@contextlib.contextmanager
def _open_backend(name: str, n: int, workdir: Path, redis_url: str | None) -> Iterator[_Opened]:
    if name == "memory":
        from shop_adapters.logs.memory import MemoryLog
        from shop_adapters.snapshots.memory import MemorySnapshotStore

        mlog = MemoryLog()
        yield _Opened(
            mlog,
            MemorySnapshotStore(),
            lambda after, batch: _raw_read(mlog, after, batch),
            None,
            lambda: None,
        )
        mlog.close()
    elif name == "file":
        from shop_adapters.logs.file import FileLog
        from shop_adapters.snapshots.file import FileSnapshotStore

        d = Path(tempfile.mkdtemp(prefix=f"file-{n}-", dir=workdir))
        flog = FileLog(d / "orders.log")
        fstore = FileSnapshotStore(d / "snapshot.bin")
        try:
            yield _Opened(
                flog,
                fstore,
                lambda after, batch: _raw_read(flog, after, batch),
                str(d / "orders.log"),
                flog.close,
            )
        finally:
            flog.close()
            fstore.close()
            _rmtree(d)
    elif name == "redis":
        import redis

        from shop_adapters.logs.redis_stream import RedisStreamLog
        from shop_adapters.snapshots.redis import RedisSnapshotStore

        assert redis_url is not None
        client = redis.Redis.from_url(redis_url)
        stream = f"bench:{n}:orders"
        key = f"bench:{n}:snapshot"
        client.delete(stream, key)
        rlog = RedisStreamLog(client, stream=stream)
        rstore = RedisSnapshotStore(client, key)
        try:
            yield _Opened(
                rlog,
                rstore,
                lambda after, batch: _xrange_read(client, stream, after, batch),
                f"{redis_url}#{stream}",
                lambda: None,
            )
        finally:
            rlog.close()
            rstore.close()
            # The log's own keys (stream, dead letters, ...) share the prefix.
            for k in client.scan_iter(match=f"bench:{n}:*"):
                client.delete(k)
            client.close()
    else:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --- the run ---------------------------------------------------------------------------


def _chunks(events: Sequence[Event], size: int) -> Iterator[Sequence[Event]]:
    for i in range(0, len(events), size):
        yield events[i : i + size]


def _load(log: EventLog, events: Sequence[Event], bar: bool, label: str) -> list[Position]:
    positions: list[Position] = []
    with tqdm(
        total=len(events), desc=f"load {label}", unit="ev", leave=False, disable=not bar
    ) as progress:
        for chunk in _chunks(events, APPEND_BATCH):
            entries: list[Any] = [encode_event(e) for e in chunk]
            positions.extend(log.append(entries))
            progress.update(len(chunk))
    return positions


def _tail(n: int) -> int:
    return TAIL if n >= 2 * TAIL else n // 2


def _measure_backend(
    opened: _Opened,
    events: Sequence[Event],
    size: SizeResult,
    backend: str,
    a: argparse.Namespace,
) -> BackendResult:
    n = len(events)
    log, store = opened.log, opened.store
    t0 = time.perf_counter()
    positions = _load(log, events, a.progress, f"{backend} {n:,}")
    append_s = time.perf_counter() - t0
    if len(positions) != n:
        raise RuntimeError(f"{backend}: appended {n} events, got {len(positions)} positions")

    # Check the answer first, then time.
    _s, first = runner_replay(log, batch=a.batch)
    if first.records != n:
        raise RuntimeError(f"{backend}: replay read {first.records} records, expected {n}")
    replay_s, replayed = _best_self_timed(lambda: runner_replay(log, batch=a.batch), a.repeat)
    replay_digest = state_digest(replayed.state)
    del replayed, first
    transient_s, (tstate, _pos, _count) = _best(
        lambda: replay_fold_per_batch(log, batch=a.batch), a.repeat
    )
    if state_digest(tstate) != replay_digest:
        raise RuntimeError(f"{backend}: replay with fold per batch gives another state")
    del tstate
    raw_read_s, raw_n = _best(lambda: opened.raw_read(ORIGIN, a.batch), a.repeat)
    if raw_n != n:
        raise RuntimeError(f"{backend}: raw read {raw_n} records, expected {n}")
    adapter_read_s, _ = _best(lambda: _raw_read(log, ORIGIN, a.batch), a.repeat)
    decode_s = min(_decode_only(log, a.batch) for _ in range(max(1, a.repeat)))

    tail = _tail(n)
    head = n - tail
    folder = DOMAIN.folder(EMPTY)
    tally = folder.fold(events[:head])
    at = log.read_at(positions[head - 1])
    if at is None:
        raise RuntimeError(f"{backend}: no record at {positions[head - 1]}")
    snapshot = Snapshot(
        folder.persistent(), positions[head - 1], head, 0, tally, record_anchor(at.fields)
    )
    encode_s, blob = _best(lambda: encode_snapshot(snapshot, DOMAIN), a.repeat)
    write_s, _ = _best(lambda: store.write(blob), a.repeat)
    restore_s, restored = _best_self_timed(
        lambda: runner_replay(log, store, a.batch), max(a.repeat, 5)
    )
    if restored.records != tail:
        raise RuntimeError(
            f"{backend}: restore caught up {restored.records} records, expected {tail}"
        )
    snap_pos = positions[head - 1]
    restore_ceiling_s, _ = _best(
        lambda: (store.read(), opened.raw_read(snap_pos, a.batch)), max(a.repeat, 5)
    )
    return BackendResult(
        backend=backend,
        n=n,
        tail=tail,
        append_s=append_s,
        replay_s=replay_s,
        replay_transient_s=transient_s,
        raw_read_s=raw_read_s,
        adapter_read_s=adapter_read_s,
        decode_s=decode_s,
        snapshot_encode_s=encode_s,
        snapshot_store_write_s=write_s,
        snapshot_bytes=len(blob),
        restore_s=restore_s,
        restore_ceiling_s=restore_ceiling_s,
        replay_digest=replay_digest,
        restore_digest=state_digest(restored.state),
        expected_digest=size.digest,
    )


def _rss_child(backend: str, location: str, batch: int) -> dict[str, Any]:
    """Peak RSS of a replay child and of an idle child on the same log."""
    out: dict[str, Any] = {"backend": backend}
    for mode in ("baseline", "replay"):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks._replay_child", mode, backend, location, str(batch)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _bytes_per_user(events: Sequence[Event]) -> dict[str, Any]:
    """``tracemalloc`` bytes retained by the folded state (and by the dict baseline) per user."""

    def retained(fn: Callable[[], Any]) -> tuple[int, Any]:
        gc.collect()
        tracemalloc.start()
        try:
            result = fn()
            gc.collect()
            current, _peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return current, result

    ours, state = retained(lambda: fold(events))
    users = len(state.users)
    base, dicts = retained(lambda: fold_dicts(events))
    del dicts
    return {
        "n": len(events),
        "users": users,
        "items": len(state.items),
        "state_bytes": ours,
        "dict_bytes": base,
        "bytes_per_user": ours / users,
        "dict_bytes_per_user": base / users,
    }


class _TimedLog:
    """An ``EventLog`` proxy that timestamps every ``read_after`` (for batch times)."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self.calls: list[tuple[float, float, int]] = []  # (start, end, records)

    def read_after(self, position: Position, limit: int) -> list[Record]:
        t0 = time.perf_counter()
        records = self._log.read_after(position, limit)
        self.calls.append((t0, time.perf_counter(), len(records)))
        return records

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


class _TimedStore:
    """A ``SnapshotStore`` proxy that times every ``write`` (in the writer thread)."""

    def __init__(self, store: SnapshotStore) -> None:
        self._store = store
        self.writes: list[tuple[float, int, str]] = []  # (seconds, bytes, thread name)

    def write(self, blob: bytes) -> None:
        t0 = time.perf_counter()
        self._store.write(blob)
        self.writes.append((time.perf_counter() - t0, len(blob), threading.current_thread().name))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _writer_run(
    log: EventLog, store: SnapshotStore, every: int | None, batch: int
) -> dict[str, Any]:
    timed_log = _TimedLog(log)
    timed_store = _TimedStore(store)
    runner = Runner(
        timed_log,  # type: ignore[arg-type]
        timed_store,  # type: ignore[arg-type]
        DOMAIN,
        RunnerConfig(
            snapshot_every=every,
            snapshot_interval=None,
            batch_size=batch,
            from_scratch=True,
            progress=False,
            progress_interval=None,
        ),
        logger=_QUIET,
    )
    gc.collect()
    gc.freeze()  # as in _best: the harness's pre-built events are not the runner's
    try:
        summary = runner.run(exit_when_idle=True)
    finally:
        gc.unfreeze()
    calls = timed_log.calls
    fold_s = calls[-1][1] - calls[0][0]  # first read to the last (empty) read's return
    # One batch = from one read's start to the next read's start.
    batches = [b[0] - a[0] for a, b in itertools.pairwise(calls) if a[2]]
    background = [w for w in timed_store.writes if w[2] == "snapshot-writer"]
    return {
        "snapshot_every": every,
        "events": summary.records,
        "digest": summary.digest,
        "fold_s": fold_s,
        "rate": summary.records / fold_s,
        "batch_p50_ms": 1e3 * statistics.median(batches),
        "batch_p99_ms": 1e3 * _quantile(batches, 0.99),
        "batch_max_ms": 1e3 * max(batches),
        "snapshots_submitted": summary.records // every if every else 0,
        "snapshots_background": len(background),
        "snapshot_write_mean_ms": 1e3 * statistics.fmean(w[0] for w in background)
        if background
        else 0.0,
        "snapshot_bytes": background[-1][1] if background else 0,
    }


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def parse_sizes(text: str) -> list[int]:
    """``"10k,100k,1M"`` -> ``[10000, 100000, 1000000]`` (suffixes k and M, or plain ints).

    >>> parse_sizes("500, 2k,1M")
    [500, 2000, 1000000]
    """
    out: list[int] = []
    for part in text.split(","):
        p = part.strip()
        if not p:
            continue
        mult = 1
        if p[-1] in "kK":
            mult, p = 1_000, p[:-1]
        elif p[-1] in "mM":
            mult, p = 1_000_000, p[:-1]
        value = int(float(p) * mult)
        if value < 2:
            raise argparse.ArgumentTypeError(f"a size must be at least 2, got {part!r}")
        out.append(value)
    if not out:
        raise argparse.ArgumentTypeError("no sizes given")
    return sorted(set(out))


def _parse_backends(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"backends must be among {', '.join(BACKENDS)}; got {text!r}"
        )
    return [b for b in BACKENDS if b in names]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.replay_vs_snapshot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", type=parse_sizes, default=None, help="default 10k,100k,1M")
    p.add_argument("--with-10m", action="store_true", help="add 10M to the sizes")
    p.add_argument("--backends", type=_parse_backends, default=list(BACKENDS))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--quick", action="store_true", help="sizes 10k,100k, repeat 1, small peer")
    p.add_argument("--repeat", type=int, default=None, help="best of R (default 3; quick 1)")
    p.add_argument("--batch", type=int, default=10_000, help="records per read_after")
    p.add_argument(
        "--peer-max", type=int, default=None, help="largest size for eventsourcing (100k)"
    )
    p.add_argument("--snapshot-every", type=int, default=10_000, help="for the runner comparison")
    p.add_argument(
        "--redis-url", default=None, help="use this Redis instead of starting a private one"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _machine() -> dict[str, Any]:
    import platform
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    libs = {}
    for lib in ("eventsourcing", "redis", "hiredis", "orjson", "pyrsistent", "msgpack"):
        with contextlib.suppress(Exception):
            libs[lib] = version(lib)
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
        "commit": commit,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the report and the plot; 0 if every digest matched, else 1."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    a = _parser().parse_args(args_list)
    if a.sizes is None:
        a.sizes = [10_000, 100_000] if a.quick else [10_000, 100_000, 1_000_000]
    if a.with_10m:
        a.sizes = sorted({*a.sizes, 10_000_000})
    if a.repeat is None:
        a.repeat = 1 if a.quick else 3
    if a.peer_max is None:
        a.peer_max = 20_000 if a.quick else 100_000
    from datetime import UTC, datetime

    meta = _machine() | {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.replay_vs_snapshot"
        + (" " + shlex.join(args_list) if args_list else ""),
        "sizes": a.sizes,
        "backends": a.backends,
        "seed": a.seed,
        "users": a.users,
        "items": a.items,
        "repeat": a.repeat,
        "batch": a.batch,
        "peer_max": a.peer_max,
        "snapshot_every": a.snapshot_every,
    }
    results = Results(meta=meta)
    a.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shop-bench-")))
        redis_url = a.redis_url
        if "redis" in a.backends:
            if redis_url is None:
                from shop_adapters.embedded_redis import RedisServer

                server = stack.enter_context(RedisServer(appendonly=False))
                redis_url = server.url
                meta["redis_server"] = "private redis-server (RedisServer, appendonly no, no RDB)"
            else:
                meta["redis_server"] = "given by --redis-url"
            meta["redis_version"] = _redis_version(redis_url)
        _run(a, results, workdir, redis_url)
    from .replay_report import write_report

    paths = write_report(results, a.out)
    for p in paths:
        print(f"wrote {p}")
    if results.failures:
        for f in results.failures:
            print(f"FAIL: {f}", file=sys.stderr)
        return 1
    return 0


def _redis_version(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()


def _run(a: argparse.Namespace, results: Results, workdir: Path, redis_url: str | None) -> None:
    memory_n = max((s for s in a.sizes if s <= MEMORY_MAX), default=min(a.sizes))
    steps = len(a.sizes) * (len(a.backends) + 1) + 2
    steps += sum(2 for s in a.sizes if s <= a.peer_max)
    overall = tqdm(total=steps, desc="benchmark", unit="step", disable=not a.progress)
    say = overall.write if a.progress else print
    try:
        for n in a.sizes:
            overall.set_postfix_str(f"{n:,} events: workload")
            events = list(synthetic_events(n, a.users, a.items, a.seed))
            reference = fold(events)
            if as_dicts(reference) != fold_dicts(events):
                results.failures.append(f"n={n}: shop_core.fold and the dict baseline disagree")
            fold_s, _ = _best(lambda ev=events: fold(ev), a.repeat)  # type: ignore[misc]
            dict_fold_s, _ = _best(lambda ev=events: fold_dicts(ev), a.repeat)  # type: ignore[misc]
            size = SizeResult(n, len(reference.users), state_digest(reference), fold_s, dict_fold_s)
            del reference
            results.sizes.append(size)
            say(f"n={n:,}: fold {n / fold_s:,.0f} ev/s, dict fold {n / dict_fold_s:,.0f} ev/s")
            overall.update(1)
            for backend in a.backends:
                overall.set_postfix_str(f"{n:,} events: {backend}")
                with _open_backend(backend, n, workdir, redis_url) as opened:
                    r = _measure_backend(opened, events, size, backend, a)
                    results.runs.append(r)
                    if not r.ok:
                        results.failures.append(
                            f"{backend} n={n}: digests differ (replay {r.replay_digest[:12]}, "
                            f"restore {r.restore_digest[:12]}, expected {r.expected_digest[:12]})"
                        )
                    say(
                        f"n={n:,} {backend}: replay {r.replay_s:.3f}s ({n / r.replay_s:,.0f} ev/s, "
                        f"raw read {n / r.raw_read_s:,.0f}), restore {r.restore_s * 1e3:.1f} ms, "
                        f"speedup {r.speedup:,.0f}x, digests {'ok' if r.ok else 'DIFFER'}"
                    )
                    if n == memory_n and opened.child_location is not None:
                        overall.set_postfix_str(f"{n:,} events: {backend} peak RSS")
                        opened.cleanup()  # the child opens the log itself
                        rss = _rss_child(backend, opened.child_location, a.batch)
                        if rss["replay"]["digest"] != size.digest:
                            results.failures.append(f"RSS child {backend} n={n}: digest differs")
                        results.memory.setdefault("rss", []).append(rss | {"n": n})
                overall.update(1)
            if n <= a.peer_max and n > 2:
                from .peer_eventsourcing import measure_peer

                for persistence in ("popo", "sqlite"):
                    overall.set_postfix_str(f"{n:,} events: eventsourcing {persistence}")
                    pr = measure_peer(
                        events, persistence, a.repeat, workdir=str(workdir), tail=_tail(n)
                    )
                    if not pr.replay_digest == pr.restore_digest == size.digest:
                        results.failures.append(f"eventsourcing {persistence} n={n}: digest")
                    results.peers.append(asdict(pr) | {"ok": pr.replay_digest == size.digest})
                    say(
                        f"n={n:,} eventsourcing {persistence}: replay {n / pr.replay_s:,.0f} "
                        f"ev/s, restore {pr.restore_s * 1e3:.1f} ms"
                    )
                    overall.update(1)
            if n == memory_n:
                overall.set_postfix_str(f"{n:,} events: bytes per user")
                results.memory["state"] = _bytes_per_user(events)
                overall.update(1)
                overall.set_postfix_str(f"{n:,} events: runner with/without snapshots")
                results.writer = _writer_comparison(events, a, workdir, size.digest, results)
                overall.update(1)
            del events
            gc.collect()
    finally:
        overall.close()


def _writer_comparison(
    events: Sequence[Event],
    a: argparse.Namespace,
    workdir: Path,
    digest: str,
    results: Results,
) -> dict[str, Any]:
    """Runner catch-up with and without background snapshots, over a file log if chosen."""
    try:
        import shop_adapters.runner  # noqa: F401
    except ImportError as e:
        return {"skipped": f"shop_adapters.runner not importable: {e}"}
    backend = "file" if "file" in a.backends else "memory"
    out: dict[str, Any] = {"backend": backend, "n": len(events), "runs": []}
    with _open_backend(backend, len(events), workdir, None) as opened:
        _load(opened.log, events, a.progress, f"{backend} (runner)")
        # The runner caps its batch at snapshot_every: use the same batch for both.
        batch = min(a.batch, a.snapshot_every)
        out["batch"] = batch
        best: dict[Any, dict[str, Any]] = {}
        for _ in range(max(1, a.repeat)):
            for every in (None, a.snapshot_every):  # alternate, keep the best of each
                r = _writer_run(opened.log, opened.store, every, batch)
                if r["digest"] != digest:
                    results.failures.append(f"runner (snapshot_every={every}): digest differs")
                if every not in best or r["rate"] > best[every]["rate"]:
                    best[every] = r
        out["runs"] = [best[None], best[a.snapshot_every]]
    return out


if __name__ == "__main__":
    raise SystemExit(main())

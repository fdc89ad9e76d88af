"""Benchmark: replay and restore of the real runner, beside their limits and a peer.

Needs the ``bench`` extra (``pip install -e '.[bench]'``; ``./scripts/test``
installs it). Default run (12 to 15 minutes on 2 cores; the report ends with
the wall and CPU seconds of every part):
``python -m benchmarks.replay_vs_snapshot``. Quick check (about 3 minutes,
writes to a temporary folder): ``python -m benchmarks.replay_vs_snapshot --quick``.
Heavier variants behind options: ``--with-10m`` (10M events: about 10 GB and
an hour), ``--sizes``, ``--repeat``, ``--big-users``, ``--keys-events``,
``--live-seconds``.

Workload: ``shop_adapters.shop_domain.workload.synthetic_events(n, users=10_000,
items=100, seed)``. Every figure is the best of ``--repeat`` runs (restore: at
least 5) with ``time.perf_counter`` after ``gc.collect()`` and ``gc.freeze()``
(the harness's own objects, such as the pre-built events, are not traversed
by the GC during timing; the GC stays on). Every answer is checked: the
reference state is ``shop_core.fold`` of the pre-built events, which must
agree with the plain-dict baseline; every replay, restore, peer, child
process and time travel must give the reference's ``state_digest`` or the
run fails (exit status 1, and the report says FAIL).

The runner is configured as ``python -m shop_adapters.redis_runner`` is
(:func:`benchmarks._common.runner_config`): idempotency keys honoured with
the default window (``--key-window``), read-ahead, batches of ``--batch``;
the outcome journal off unless said (it is on in the command line: see
*journal*). The machine may be noisy: the report's claims are ratios to
baselines measured in the same run, not absolute rates.

For each size ``n`` (default 10k, 100k, 1M) and backend (memory, file, Redis):

- **append**: encode and append the events in batches of 10,000 (timed once);
- **replay**: the real :class:`~shop_adapters.runner.Runner` from scratch,
  read-only, timed by itself (restore + catch-up seconds); and the naive loop
  (``shop_core.fold`` per batch, default GC; one run) for comparison;
- **journal**: the same replay publishing every outcome to a fresh outcome
  journal of the backend (memory, ``<log>.outcomes`` file,
  ``<stream>:outcomes`` stream), as the command line does;
- **limits**: raw read (no decode or fold; Redis: plain ``XRANGE`` through
  the same client), the adapter's ``read_after``, ``decode_records`` alone on
  records already read, the plain-dict fold of decoded events;
- **snapshot write** (``encode_snapshot`` + ``store.write``) of the state
  after ``n - tail`` events (tail 1,000) and **restore** (the runner's own
  restore + catch-up of the tail), beside the store's own read and write.
  The limits are the best of at most 2 runs: ceilings beside a claim.

At the largest size up to 1M (``--sizes``):

- **per-event breakdown** (:mod:`benchmarks._stages`), per backend, journal
  off and on: read, waiting, decode, fold, keys and outcomes, publish;
- **peak RSS** of a replay in a child process (file and Redis logs);
- **bytes per user** of the folded state (``tracemalloc``, the first 100k
  events) against dicts;
- **snapshotting on the hot path**: the runner in a child process over a
  file log, snapshotting every ``--snapshot-every`` records from a thread
  and from a forked child, against no snapshots (best of ``--repeat``,
  alternating);
- **idempotency keys** (:mod:`benchmarks.idempotency_keys`), on the first
  ``--keys-events`` (300k) of them;
- **time travel** (:mod:`benchmarks.time_travel`), on Redis if it is run.

Once: the **1,000,000-user** state (:mod:`benchmarks.big_state`,
``--big-users``), the **live** figures (:mod:`benchmarks.live`: a runner
process following a producer process; append-to-outcome latency at 1,000 and
10,000 events/s), and the **peer**, the ``eventsourcing`` library
(:mod:`benchmarks.peer_eventsourcing`) up to ``--peer-max`` events.

Output: ``<out>/latest.md``, ``<out>/latest.json``, ``<out>/replay_vs_restore.png``;
``<out>`` is ``benchmarks/results`` unless ``--out``, and a new temporary
folder with ``--quick`` (the committed results are never overwritten by a
quick run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from shop_adapters.catchup import record_anchor
from shop_adapters.envelope import Snapshot, encode_snapshot
from shop_adapters.history import MemorySnapshotHistory, SnapshotHistory
from shop_adapters.idempotency import DEFAULT_WINDOW, KeyWindow
from shop_adapters.journals import OutcomeJournal
from shop_adapters.protocols import ORIGIN, EventLog, Position, SnapshotStore
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_core import EMPTY, Event, ShopState, fold, state_digest

from ._common import (
    DOMAIN,
    REPO,
    best,
    best_self_timed,
    load_events,
    machine,
    runner_replay,
    show_progress,
)
from ._stages import staged_replay
from .baseline import as_dicts, fold_dicts

__all__ = [
    "BackendResult",
    "Results",
    "SizeResult",
    "main",
    "options",
    "parse_sizes",
    "runner_replay",
]

BACKENDS = ("memory", "file", "redis")
TAIL = 1_000
MEMORY_MAX = 1_000_000
BYTES_EVENTS = 100_000
RESULTS = REPO / "benchmarks" / "results"


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
    replay_journal_s: float
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
    journal_digest: str
    restore_digest: str
    expected_digest: str

    @property
    def ok(self) -> bool:
        """Replay (journal on and off) and restore all reached the reference state."""
        return (
            self.replay_digest == self.journal_digest == self.restore_digest == self.expected_digest
        )

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
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    peers: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    writer: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, Any] = field(default_factory=dict)
    travel: dict[str, Any] = field(default_factory=dict)
    big: dict[str, Any] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "meta": self.meta,
            "sizes": [asdict(s) for s in self.sizes],
            "runs": [asdict(r) | {"ok": r.ok} for r in self.runs],
            "breakdown": self.breakdown,
            "peers": self.peers,
            "memory": self.memory,
            "writer": self.writer,
            "keys": self.keys,
            "travel": self.travel,
            "big": self.big,
            "live": self.live,
            "failures": self.failures,
        }


# --- backends --------------------------------------------------------------------------


@dataclass
class _Opened:
    log: EventLog
    store: SnapshotStore
    stream: str
    raw_read: Callable[[Position, int], int]
    child_location: str | None  # for the RSS child, or None if it cannot reopen the log
    cleanup: Callable[[], None]
    # A fresh, empty outcome journal of this backend, and how to drop it.
    new_journal: Callable[[], tuple[OutcomeJournal, Callable[[], None]]]
    # A fresh, empty snapshot store and history (for the time-travel chain).
    new_chain: Callable[[], tuple[SnapshotStore, SnapshotHistory]]
    redis_url: str | None = None


@contextlib.contextmanager
def _open_backend(name: str, n: int, workdir: Path, redis_url: str | None) -> Iterator[_Opened]:
    def memory_chain() -> tuple[SnapshotStore, SnapshotHistory]:
        return MemorySnapshotStore(), MemorySnapshotHistory()

    if name == "memory":
        from shop_adapters.journals import MemoryOutcomeJournal
        from shop_adapters.logs.memory import MemoryLog

        mlog = MemoryLog()
        yield _Opened(
            mlog,
            MemorySnapshotStore(),
            "memory",
            lambda after, batch: _raw_read(mlog, after, batch),
            None,
            lambda: None,
            lambda: (MemoryOutcomeJournal(), lambda: None),
            memory_chain,
        )
        mlog.close()
    elif name == "file":
        from shop_adapters.journals import FileOutcomeJournal
        from shop_adapters.logs.file import FileLog
        from shop_adapters.snapshots.file import FileSnapshotStore

        d = Path(tempfile.mkdtemp(prefix=f"file-{n}-", dir=workdir))
        flog = FileLog(d / "orders.log")
        fstore = FileSnapshotStore(d / "snapshot.bin")
        journals = iter(range(1_000_000))

        def file_journal() -> tuple[OutcomeJournal, Callable[[], None]]:
            path = d / f"orders.log.outcomes.{next(journals)}"
            journal = FileOutcomeJournal(path)

            def drop() -> None:
                journal.close()
                path.unlink(missing_ok=True)

            return journal, drop

        try:
            yield _Opened(
                flog,
                fstore,
                str(d / "orders.log"),
                lambda after, batch: _raw_read(flog, after, batch),
                str(d / "orders.log"),
                flog.close,
                file_journal,
                memory_chain,
            )
        finally:
            flog.close()
            fstore.close()
            _rmtree(d)
    elif name == "redis":
        import redis

        from shop_adapters.journals import RedisOutcomeJournal
        from shop_adapters.keys import StreamKeys
        from shop_adapters.logs.redis_stream import RedisStreamLog
        from shop_adapters.snapshots.redis import RedisSnapshotStore

        assert redis_url is not None
        client = redis.Redis.from_url(redis_url)
        keys = StreamKeys.for_stream(f"bench:{n}:orders")
        client.delete(*keys)
        rlog = RedisStreamLog(client, keys.stream, keys.dead)
        rstore = RedisSnapshotStore(client, keys.snapshot)

        def redis_journal() -> tuple[OutcomeJournal, Callable[[], None]]:
            def drop() -> None:
                client.delete(keys.outcomes)

            drop()
            return RedisOutcomeJournal(client, keys.outcomes), drop

        def redis_chain() -> tuple[SnapshotStore, SnapshotHistory]:
            from shop_adapters.history import RedisSnapshotHistory

            client.delete(keys.snapshot, keys.history)
            return RedisSnapshotStore(client, keys.snapshot), RedisSnapshotHistory(
                client, keys.history
            )

        try:
            yield _Opened(
                rlog,
                rstore,
                keys.stream,
                lambda after, batch: _xrange_read(client, keys.stream, after, batch),
                f"{redis_url}#{keys.stream}",
                lambda: None,
                redis_journal,
                redis_chain,
                redis_url,
            )
        finally:
            rlog.close()
            rstore.close()
            client.delete(*keys)
            client.close()
    else:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --- the run ---------------------------------------------------------------------------


def _tail(n: int) -> int:
    return TAIL if n >= 2 * TAIL else n // 2


def _journal_replay(opened: _Opened, batch: int, window: int | None) -> tuple[float, Any]:
    journal, drop = opened.new_journal()
    try:
        return runner_replay(opened.log, batch=batch, key_window=window, journal=journal)
    finally:
        drop()


def _measure_backend(
    opened: _Opened,
    events: Sequence[Event],
    size: SizeResult,
    backend: str,
    a: argparse.Namespace,
) -> tuple[BackendResult, list[Position]]:
    n = len(events)
    log, store = opened.log, opened.store
    window = a.key_window
    t0 = time.perf_counter()
    positions = load_events(log, events, a.progress, f"{backend} {n:,}")
    append_s = time.perf_counter() - t0
    if len(positions) != n:
        raise RuntimeError(f"{backend}: appended {n} events, got {len(positions)} positions")

    # Every timed run's answer is checked: its record count here, its digest by the caller.
    replay_s, replayed = best_self_timed(
        lambda: runner_replay(log, batch=a.batch, key_window=window), a.repeat
    )
    if replayed.records != n:
        raise RuntimeError(f"{backend}: replay read {replayed.records} records, expected {n}")
    replay_digest = state_digest(replayed.state)
    del replayed
    journal_s, journaled = best_self_timed(
        lambda: _journal_replay(opened, a.batch, window), a.repeat
    )
    journal_digest = state_digest(journaled.state)
    del journaled
    # The naive loop is a comparison, not a claim: one run.
    transient_s, (tstate, _pos, _count) = best(lambda: replay_fold_per_batch(log, batch=a.batch), 1)
    if state_digest(tstate) != replay_digest:
        raise RuntimeError(f"{backend}: replay with fold per batch gives another state")
    del tstate
    limits = min(a.repeat, 2)  # the limits are ceilings beside a claim, not claims: best of 2
    raw_read_s, raw_n = best(lambda: opened.raw_read(ORIGIN, a.batch), limits)
    if raw_n != n:
        raise RuntimeError(f"{backend}: raw read {raw_n} records, expected {n}")
    if backend == "redis":  # elsewhere the raw read is the adapter's read_after
        adapter_read_s, _ = best(lambda: _raw_read(log, ORIGIN, a.batch), limits)
    else:
        adapter_read_s = raw_read_s
    decode_s = min(_decode_only(log, a.batch) for _ in range(limits))

    tail = _tail(n)
    head = n - tail
    folder = DOMAIN.folder(EMPTY)
    tally = folder.fold(events[:head])
    at = log.read_at(positions[head - 1])
    if at is None:
        raise RuntimeError(f"{backend}: no record at {positions[head - 1]}")
    snapshot = Snapshot(
        folder.persistent(),
        positions[head - 1],
        head,
        0,
        tally,
        record_anchor(at.fields),
        None if window is None else KeyWindow(window),
    )
    encode_s, blob = best(lambda: encode_snapshot(snapshot, DOMAIN), a.repeat)
    write_s, _ = best(lambda: store.write(blob), a.repeat)
    restore_s, restored = best_self_timed(
        lambda: runner_replay(log, store, a.batch, key_window=window), max(a.repeat, 5)
    )
    if restored.records != tail:
        raise RuntimeError(
            f"{backend}: restore caught up {restored.records} records, expected {tail}"
        )
    snap_pos = positions[head - 1]
    restore_ceiling_s, _ = best(
        lambda: (store.read(), opened.raw_read(snap_pos, a.batch)), max(a.repeat, 5)
    )
    result = BackendResult(
        backend=backend,
        n=n,
        tail=tail,
        append_s=append_s,
        replay_s=replay_s,
        replay_journal_s=journal_s,
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
        journal_digest=journal_digest,
        restore_digest=state_digest(restored.state),
        expected_digest=size.digest,
    )
    return result, positions


def _breakdown(
    opened: _Opened, backend: str, n: int, a: argparse.Namespace
) -> list[dict[str, Any]]:
    """One instrumented catch-up with the journal off and one with it on."""
    rows = []
    for journal_on in (False, True):
        journal, drop = opened.new_journal() if journal_on else (None, lambda: None)
        try:
            stages = staged_replay(
                opened.log, batch=a.batch, key_window=a.key_window, journal=journal
            )
        finally:
            drop()
        rows.append({"backend": backend, "n": n, "journal": journal_on} | stages.to_json())
    return rows


def _rss_child(backend: str, location: str, batch: int) -> dict[str, Any]:
    """Peak RSS of a replay child and of an idle child on the same log."""
    out: dict[str, Any] = {"backend": backend}
    for mode in ("baseline", "replay"):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks._replay_child", mode, backend, location, str(batch)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
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


def _writer_comparison(
    events: Sequence[Event], a: argparse.Namespace, workdir: Path, digest: str, results: Results
) -> dict[str, Any]:
    """The runner in a child process over a file log: no snapshots, snapshots written
    by a thread, by a forked child (best of ``repeat`` each, alternating)."""
    from shop_adapters.logs.file import FileLog

    d = Path(tempfile.mkdtemp(prefix="writer-", dir=workdir))
    try:
        log_path = d / "orders.log"
        with FileLog(log_path, fsync="never") as flog:
            load_events(flog, events, a.progress, "file (snapshotting)")
        batch = min(a.batch, a.snapshot_every)  # the runner caps its batch at snapshot_every
        best_runs: dict[str, dict[str, Any]] = {}
        for _ in range(max(1, a.repeat)):
            for mode in ("none", "thread", "child"):
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks._replay_child",
                        "writer",
                        str(log_path),
                        str(d / f"snapshot-{mode}.bin"),
                        str(a.snapshot_every),
                        mode,
                        str(batch),
                        str(a.key_window or 0),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=REPO,
                )
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                if r["digest"] != digest:
                    results.failures.append(f"runner (snapshots: {mode}): digest differs")
                if mode not in best_runs or r["rate"] > best_runs[mode]["rate"]:
                    best_runs[mode] = r
        return {
            "backend": "file",
            "n": len(events),
            "batch": batch,
            "snapshot_every": a.snapshot_every,
            "runs": [best_runs[m] for m in ("none", "thread", "child")],
        }
    finally:
        _rmtree(d)


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


def _one_size(text: str) -> int:
    if text.strip() == "0":
        return 0
    return parse_sizes(text)[0]


def _parse_backends(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"backends must be among {', '.join(BACKENDS)}; got {text!r}"
        )
    return [b for b in BACKENDS if b in names]


def _window(text: str) -> int | None:
    if text.strip().lower() in ("none", "off", "0"):
        return None
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.replay_vs_snapshot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", type=parse_sizes, default=None, help="default 10k,100k,1M")
    p.add_argument(
        "--with-10m",
        action="store_true",
        help="add 10M to the sizes (its backends only: several GB and most of an hour)",
    )
    p.add_argument("--backends", type=_parse_backends, default=list(BACKENDS))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=100)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report (default benchmarks/results; --quick: a new "
        "temporary folder)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="sizes 10k,100k, repeat 1, peer up to 20k, 100k users, short live runs",
    )
    p.add_argument("--repeat", type=int, default=None, help="best of R (default 3; quick 1)")
    p.add_argument("--batch", type=int, default=10_000, help="records per read_after")
    p.add_argument(
        "--key-window",
        type=_window,
        default=DEFAULT_WINDOW,
        help=f"the runner's idempotency window in records (default {DEFAULT_WINDOW:,}, as "
        "the command line; 'none': keys ignored)",
    )
    p.add_argument(
        "--peer-max",
        type=_one_size,
        default=None,
        help="largest size for eventsourcing (default 100k; quick 20k; 0: none)",
    )
    p.add_argument(
        "--snapshot-every", type=_one_size, default=10_000, help="for the runner comparison"
    )
    p.add_argument(
        "--big-users",
        type=_one_size,
        default=None,
        help="users of the big-state row (default 1M; quick 100k; 0 skips it)",
    )
    p.add_argument(
        "--keys-events",
        type=_one_size,
        default=300_000,
        help="events of the keys section (default 300k: the 100,000-key window is full for "
        "two thirds of the run; at most the largest size up to 1M)",
    )
    p.add_argument("--no-keys", dest="keys", action="store_false", help="skip the keys section")
    p.add_argument(
        "--no-travel", dest="travel", action="store_false", help="skip the time-travel row"
    )
    p.add_argument(
        "--history-every",
        type=_one_size,
        default=100_000,
        help="time travel: the chains keep one snapshot every this many records (100k)",
    )
    p.add_argument("--no-live", dest="live", action="store_false", help="skip the live figures")
    p.add_argument(
        "--live-seconds",
        type=float,
        default=None,
        help="seconds of each sustained live phase (default 10; quick 3)",
    )
    p.add_argument(
        "--live-rates",
        default="1000,10000",
        help="append-to-outcome latency at these rates, events/s (default 1000,10000)",
    )
    p.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis instead of starting a private one (its bench:* keys are "
        "deleted; port 6379, a machine's shared Redis, is refused)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: only when stderr is a terminal)",
    )
    return p


def options(argv: Sequence[str]) -> argparse.Namespace:
    """The command line's options with the defaults filled in (``--quick`` ones
    included): sizes, repeat, peer size, big-state users, live seconds, whether to
    draw progress bars and where to write (a new temporary folder for ``--quick``
    without ``--out``, never the committed results)."""
    a = _parser().parse_args(list(argv))
    if a.sizes is None:
        a.sizes = [10_000, 100_000] if a.quick else [10_000, 100_000, 1_000_000]
    if a.with_10m:
        a.sizes = sorted({*a.sizes, 10_000_000})
    if a.repeat is None:
        a.repeat = 1 if a.quick else 3
    if a.peer_max is None:
        a.peer_max = 20_000 if a.quick else 100_000
    if a.big_users is None:
        a.big_users = 100_000 if a.quick else 1_000_000
    if a.live_seconds is None:
        a.live_seconds = 3.0 if a.quick else 10.0
    a.progress = show_progress(a.progress)
    if a.redis_url is not None:
        from urllib.parse import urlsplit

        if (urlsplit(a.redis_url).port or 6379) == 6379:
            raise SystemExit(
                "--redis-url: port 6379 is refused (a machine's shared Redis); the "
                "benchmark deletes its bench:* keys. Leave it out to start a private one."
            )
    if a.out is None:
        a.out = _quick_out() if a.quick else RESULTS
    return a


def _quick_out() -> Path:
    """A new folder name under the system's temporary directory (created when written)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"shop-bench-quick-{stamp}-{os.getpid()}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the report and the plot; 0 if every digest matched, else 1."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    a = options(args_list)
    if a.peer_max:
        try:
            import eventsourcing  # noqa: F401  (the peer; checked before hours of work)
        except ImportError:
            print(
                "the peer library is missing: pip install -e '.[bench]' "
                "(or --peer-max 0 to leave the peer out)",
                file=sys.stderr,
            )
            return 2
    from datetime import UTC, datetime

    meta = machine() | {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.replay_vs_snapshot"
        + (" " + shlex.join(args_list) if args_list else ""),
        "quick": a.quick,
        "sizes": a.sizes,
        "backends": a.backends,
        "seed": a.seed,
        "users": a.users,
        "items": a.items,
        "repeat": a.repeat,
        "batch": a.batch,
        "key_window": a.key_window,
        "peer_max": a.peer_max,
        "snapshot_every": a.snapshot_every,
        "durations": {},
        "cpu_seconds": {},
    }
    results = Results(meta=meta)
    started = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shop-bench-")))
        redis_url = a.redis_url
        if "redis" in a.backends or a.live:
            if redis_url is None:
                from shop_adapters.embedded_redis import RedisServer

                server = stack.enter_context(RedisServer(appendonly=False))
                redis_url = server.url
                meta["redis_server"] = "private redis-server (RedisServer, appendonly no, no RDB)"
            else:
                meta["redis_server"] = "given by --redis-url"
            meta["redis_version"] = _redis_version(redis_url)
        _run(a, results, workdir, redis_url)
        if redis_url is not None and a.redis_url is None:
            meta["cpu_seconds"]["redis-server"] = _redis_cpu(redis_url)
    meta["durations"]["total"] = time.perf_counter() - started
    meta["cpu_seconds"]["total"] = _Clock._cpu()
    from .replay_report import write_report

    paths = write_report(results, a.out)
    for p in paths:
        print(f"wrote {p}")
    if results.failures:
        for f in results.failures:
            print(f"FAIL: {f}", file=sys.stderr)
        return 1
    return 0


def _redis_cpu(url: str) -> float:
    """CPU seconds (user + system) the private redis-server has used so far."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        info: Any = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


def _redis_version(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()


class _Clock:
    """Wall seconds per part of the run into ``durations``, and CPU seconds (this
    process and its finished children, user + system) into ``cpu``: on a shared
    machine the CPU seconds are the better guide to how long a quiet run takes."""

    def __init__(self, durations: dict[str, float], cpu: dict[str, float]) -> None:
        self.durations = durations
        self.cpu = cpu

    @staticmethod
    def _cpu() -> float:
        import resource

        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), self._cpu()
        try:
            yield
        finally:
            self.durations[name] = self.durations.get(name, 0.0) + time.perf_counter() - t0
            self.cpu[name] = self.cpu.get(name, 0.0) + self._cpu() - c0


def _run(a: argparse.Namespace, results: Results, workdir: Path, redis_url: str | None) -> None:
    memory_n = max((s for s in a.sizes if s <= MEMORY_MAX), default=min(a.sizes))
    travel_backend = next((b for b in ("redis", "memory", "file") if b in a.backends), None)
    steps = len(a.sizes) * (len(a.backends) + 1) + 2 + 2 + bool(a.big_users) + a.live
    steps += sum(2 for s in a.sizes if s <= a.peer_max)
    overall = tqdm(total=steps, desc="benchmark", unit="step", disable=not a.progress)
    say = overall.write if a.progress else print
    clock = _Clock(results.meta["durations"], results.meta["cpu_seconds"])
    try:
        for n in a.sizes:
            with clock.part(f"{n}: workload and fold"):
                overall.set_postfix_str(f"{n:,} events: workload")
                events = list(synthetic_events(n, a.users, a.items, a.seed))
                reference = fold(events)
                if as_dicts(reference) != fold_dicts(events):
                    results.failures.append(f"n={n}: shop_core.fold and the dict baseline disagree")
                fold_s, _ = best(lambda ev=events: fold(ev), a.repeat)  # type: ignore[misc]
                dict_fold_s, _ = best(lambda ev=events: fold_dicts(ev), a.repeat)  # type: ignore[misc]
                size = SizeResult(
                    n, len(reference.users), state_digest(reference), fold_s, dict_fold_s
                )
                del reference
                results.sizes.append(size)
            say(f"n={n:,}: fold {n / fold_s:,.0f} ev/s, dict fold {n / dict_fold_s:,.0f} ev/s")
            overall.update(1)
            for backend in a.backends:
                overall.set_postfix_str(f"{n:,} events: {backend}")
                with _open_backend(backend, n, workdir, redis_url) as opened:
                    with clock.part(f"{n}: {backend}"):
                        r, positions = _measure_backend(opened, events, size, backend, a)
                    results.runs.append(r)
                    if not r.ok:
                        results.failures.append(
                            f"{backend} n={n}: digests differ (replay {r.replay_digest[:12]}, "
                            f"journal {r.journal_digest[:12]}, restore {r.restore_digest[:12]}, "
                            f"expected {r.expected_digest[:12]})"
                        )
                    say(
                        f"n={n:,} {backend}: replay {n / r.replay_s:,.0f} ev/s "
                        f"(raw read {n / r.raw_read_s:,.0f}; journal on "
                        f"{n / r.replay_journal_s:,.0f}), restore {r.restore_s * 1e3:.1f} ms, "
                        f"digests {'ok' if r.ok else 'DIFFER'}"
                    )
                    if n == memory_n:
                        with clock.part(f"{n}: {backend} breakdown"):
                            overall.set_postfix_str(f"{n:,} events: {backend} breakdown")
                            rows = _breakdown(opened, backend, n, a)
                        for row in rows:
                            if row["digest"] != size.digest:
                                results.failures.append(f"breakdown {backend} n={n}: digest")
                        results.breakdown.extend(rows)
                    if n == memory_n and a.travel and backend == travel_backend:
                        from .time_travel import default_policies, measure_time_travel

                        overall.set_postfix_str(f"{n:,} events: time travel")
                        with clock.part("time travel"):
                            results.travel = measure_time_travel(
                                opened.log,
                                opened.new_chain,
                                events,
                                positions,
                                stream=opened.stream,
                                repeat=min(a.repeat, 2),
                                batch=a.batch,
                                snapshot_every=a.snapshot_every,
                                policies=default_policies(a.history_every),
                                redis_url=opened.redis_url,
                            )
                        results.failures.extend(results.travel["failures"])
                        say(
                            f"time travel on {n:,} events: "
                            + ", ".join(
                                f"{c['ratio']:.1%} ({c['name']})" for c in results.travel["chains"]
                            )
                            + " of the time of from-scratch folds to the same targets"
                        )
                        overall.update(1)
                    if n == memory_n and opened.child_location is not None:
                        overall.set_postfix_str(f"{n:,} events: {backend} peak RSS")
                        opened.cleanup()  # the child opens the log itself
                        with clock.part(f"{n}: {backend} RSS"):
                            rss = _rss_child(backend, opened.child_location, a.batch)
                        if rss["replay"]["digest"] != size.digest:
                            results.failures.append(f"RSS child {backend} n={n}: digest differs")
                        results.memory.setdefault("rss", []).append(rss | {"n": n})
                    del positions
                overall.update(1)
            if 2 < n <= a.peer_max:
                from .peer_eventsourcing import measure_peer

                for persistence in ("popo", "sqlite"):
                    overall.set_postfix_str(f"{n:,} events: eventsourcing {persistence}")
                    with clock.part(f"{n}: peer"):
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
                with clock.part("bytes per user"):
                    # The state holds at most --users users: 100k events reach them all.
                    results.memory["state"] = _bytes_per_user(events[:BYTES_EVENTS])
                overall.update(1)
                overall.set_postfix_str(f"{n:,} events: snapshotting (none, thread, child)")
                with clock.part("snapshotting"):
                    results.writer = _writer_comparison(events, a, workdir, size.digest, results)
                runs = results.writer["runs"]
                say(
                    "snapshot every {:,}: thread {:.0%}, child {:.0%} of no snapshots".format(
                        a.snapshot_every,
                        runs[1]["rate"] / runs[0]["rate"],
                        runs[2]["rate"] / runs[0]["rate"],
                    )
                )
                overall.update(1)
                if a.keys:
                    from .idempotency_keys import measure_keys

                    overall.set_postfix_str(f"{n:,} events: idempotency keys")
                    with clock.part("keys"):
                        results.keys = measure_keys(
                            events[: a.keys_events],
                            repeat=a.repeat,
                            batch=a.batch,
                            window=a.key_window or DEFAULT_WINDOW,
                            seed=a.seed,
                            users=a.users,
                            items=a.items,
                        )
                    if not results.keys["ok"]:
                        results.failures.append("idempotency keys: the states differ")
                    say(f"keys on every event: {results.keys['ratio']:.0%} of the rate without")
                overall.update(1)
            del events
            gc.collect()
        if a.big_users:
            from .big_state import measure_big_state

            overall.set_postfix_str(f"{a.big_users:,} users")
            with clock.part("big state"):
                results.big = measure_big_state(
                    a.big_users,
                    backend="redis" if "redis" in a.backends else "file",
                    workdir=workdir,
                    redis_url=redis_url,
                    repeat=a.repeat,
                    seed=a.seed,
                    window=a.key_window,
                    progress=a.progress,
                )
            results.failures.extend(results.big["failures"])
            store = results.big["stores"]["redis" if "redis" in results.big["stores"] else "file"]
            say(
                f"{a.big_users:,} users: restore {store['restore_s']:.2f} s, write "
                f"{store['write_s']:.2f} s, runner peak RSS "
                f"{results.big['rss']['peak_end'] / 2**20:,.0f} MiB"
            )
            overall.update(1)
        if a.live:
            from .live import measure_live, parse_rates

            overall.set_postfix_str("live")
            assert redis_url is not None
            with clock.part("live"):
                results.live = measure_live(
                    redis_url,
                    seconds=a.live_seconds,
                    rates=parse_rates(a.live_rates),
                    seed=a.seed,
                    users=a.users,
                    items=a.items,
                    workdir=workdir,
                )
            results.failures.extend(results.live.get("failures", []))
            overall.update(1)
    finally:
        overall.close()


if __name__ == "__main__":
    raise SystemExit(main())

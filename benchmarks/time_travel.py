"""Time travel: the state at a past position from the nearest snapshot of a chain.

:mod:`benchmarks.replay_vs_snapshot` runs :func:`measure_time_travel` on its
largest log (1,000,000 events by default), on Redis when that backend is run
(the stream, ``<stream>:snapshot`` and ``<stream>:history`` as the command
line names them), else in memory.

1. **The targets**: the record at each eighth of the log (1/8 ... 7/8) and the
   last one. *From scratch*: :func:`shop_adapters.inspect_commands.state_at`,
   the function behind ``inspect state --at``, with no snapshot and no
   history, so it folds from the origin (one run each: they are the long ones).
2. **The chains**: the real :class:`~shop_adapters.runner.Runner` folds the
   log from scratch with ``snapshot_every`` records between snapshots and a
   :class:`~shop_adapters.history.HistoryPolicy`, keeping the history the way
   ``python -m shop_adapters.redis_runner`` does, once for each of two
   policies: the history's own defaults (the last 2, plus one every 100,000
   records, at most 12: a 1M-event log is covered) and the command line's
   (the same, at most 8: the oldest 100,000-record spans of a 1M-event log
   are dropped). *Time travel*: ``state_at`` with the log, the latest
   snapshot and that history: it starts from the nearest snapshot at or
   before the target and folds the records after it (best of ``repeat``).

   Both must give the digest of ``shop_core.fold`` of the events up to the
   target. The ratio is time travel / from scratch.
3. **The command** (Redis only): ``python -m shop_adapters.inspector state
   --at POSITION --json`` once, for the middle target, as a process (on the
   last chain built): its wall time includes the interpreter's start and
   imports; its digest is checked.

The claim (issue 15) is evaluated per chain on the sum over the targets:
time travel answers in under a tenth of the time of the from-scratch folds.
Each target's ratio is reported too: a target before the oldest snapshot a
history keeps is folded from the origin.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from shop_adapters.domain import Domain
from shop_adapters.history import HistoryPolicy, MemorySnapshotHistory, SnapshotHistory
from shop_adapters.inspect_commands import state_at
from shop_adapters.protocols import EventLog, Position, SnapshotStore
from shop_adapters.runner import Runner
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_core import Event, fold, state_digest

from ._common import DOMAIN, QUIET, REPO, best, runner_config

__all__ = [
    "CLI_POLICY",
    "TravelContext",
    "default_policies",
    "measure_time_travel",
    "targets",
]

CLI_POLICY = HistoryPolicy(last=2, every=100_000, limit=8)
"""The history ``python -m shop_adapters.redis_runner`` keeps by default."""


@dataclass
class TravelContext:
    """What :func:`state_at` reads from the command's context: the stream's name,
    the domain, its log, latest snapshot store and history."""

    stream: str
    domain: Domain[Any, Any]
    log: EventLog
    store: SnapshotStore
    history: SnapshotHistory


def targets(n: int) -> list[int]:
    """Record counts to travel to: each eighth of ``n`` records, and ``n``.

    >>> targets(1_000_000)[:2], targets(1_000_000)[-1]
    ([125000, 250000], 1000000)
    >>> targets(5)
    [1, 2, 3, 4, 5]
    """
    return sorted({max(1, k * n // 8) for k in range(1, 8)} | {n})


def default_policies(every: int = 100_000) -> list[tuple[str, HistoryPolicy]]:
    """The two chains measured: the history's own defaults (at most 12 snapshots: a
    1M-event log is covered at every 100,000) and the command line's (at most 8)."""
    return [
        ("HistoryPolicy() defaults", HistoryPolicy(last=2, every=every, limit=12)),
        ("the command line's defaults", HistoryPolicy(last=2, every=every, limit=8)),
    ]


def measure_time_travel(
    log: EventLog,
    new_chain: Callable[[], tuple[SnapshotStore, SnapshotHistory]],
    events: Sequence[Event],
    positions: Sequence[Position],
    *,
    stream: str,
    repeat: int = 3,
    batch: int = 10_000,
    snapshot_every: int = 10_000,
    policies: Sequence[tuple[str, HistoryPolicy]] | None = None,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """Time from-scratch folds to the targets of ``log`` (holding ``events`` at
    ``positions``), then, for each chain ``policies`` describe (built by the real
    runner into a fresh store and history from ``new_chain``), time travel to the
    same targets (see the module docstring)."""
    n = len(events)
    failures: list[str] = []
    scratch = TravelContext(stream, DOMAIN, log, MemorySnapshotStore(), MemorySnapshotHistory())
    rows: list[dict[str, Any]] = []
    expected: dict[int, str] = {}
    for records in targets(n):
        at = positions[records - 1]
        expected[records] = state_digest(fold(events[:records]))
        scratch_s, slow = best(partial(state_at, cast(Any, scratch), at), 1)
        if state_digest(slow.result.state) != expected[records]:
            failures.append(f"from-scratch fold to {at}: digest differs")
        rows.append({"records": records, "position": str(at), "scratch_s": scratch_s})
        del slow
    chains = []
    for name, policy in policies or default_policies():
        store, history = new_chain()
        t0 = time.perf_counter()
        runner = Runner(
            log,
            store,
            DOMAIN,
            runner_config(
                batch=batch, snapshot_every=snapshot_every, history=policy, final_snapshot=True
            ),
            history=history,
            logger=QUIET,
        )
        summary = runner.run(exit_when_idle=True)
        chain_s = time.perf_counter() - t0
        travel = TravelContext(stream, DOMAIN, log, store, history)
        travels = []
        for row in rows:
            at = positions[row["records"] - 1]
            travel_s, found = best(partial(state_at, cast(Any, travel), at), repeat)
            ok = state_digest(found.result.state) == expected[row["records"]]
            if not ok:
                failures.append(f"time travel to {at} ({name}): digest differs")
            travels.append(
                {
                    "records": row["records"],
                    "start": str(found.start),
                    "folded": found.result.records,
                    "travel_s": travel_s,
                    "ratio": travel_s / row["scratch_s"],
                    "ok": ok,
                }
            )
            del found
        travel_sum = sum(t["travel_s"] for t in travels)
        chains.append(
            {
                "name": name,
                "policy": {"last": policy.last, "every": policy.every, "limit": policy.limit},
                "chain": [e.records for e in history.entries()],
                "chain_build_s": chain_s,
                "snapshots_written": summary.snapshots_written,
                "rows": travels,
                "travel_s": travel_sum,
                "ratio": travel_sum / sum(r["scratch_s"] for r in rows),
                "worst_ratio": max(t["ratio"] for t in travels),
            }
        )
    out: dict[str, Any] = {
        "n": n,
        "backend": "redis" if redis_url else "memory",
        "snapshot_every": snapshot_every,
        "targets": rows,
        "scratch_s": sum(r["scratch_s"] for r in rows),
        "chains": chains,
        "failures": failures,
    }
    if redis_url is not None:  # against the last chain built, still in Redis
        middle = rows[len(rows) // 2]
        out["command"] = _command(redis_url, stream, middle["position"]) | {
            "chain": chains[-1]["name"]
        }
        if out["command"]["digest"] != expected[middle["records"]]:
            failures.append("inspect state --at: digest differs")
    return out


def _command(redis_url: str, stream: str, position: str) -> dict[str, Any]:
    """``inspect state --at`` as a process: wall seconds and its digest."""
    argv = [
        sys.executable,
        "-m",
        "shop_adapters.inspector",
        "--redis-url",
        redis_url,
        "--stream",
        stream,
        "state",
        "--at",
        position,
        "--json",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO)
    wall = time.perf_counter() - t0
    digest = ""
    if proc.returncode == 0:
        digest = json.loads(proc.stdout)["digest"]
    return {
        "argv": ["python", *argv[1:3], "--redis-url", "URL", *argv[5:]],
        "wall_s": wall,
        "returncode": proc.returncode,
        "digest": digest,
        "stderr": proc.stderr.strip()[-300:],
    }

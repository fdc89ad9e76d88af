"""What the benchmarks share: the real runner's configuration, timing helpers, peak RSS.

Every measured loop goes through :class:`shop_adapters.runner.Runner` configured
by :func:`runner_config`: read-only unless told otherwise (no periodic, no final
snapshot), no progress bar or progress lines, idempotency keys honoured with
the runner's default window (as ``python -m shop_adapters.redis_runner`` does).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shop_adapters.catchup import Replayed
from shop_adapters.domain import Tally
from shop_adapters.history import HistoryPolicy
from shop_adapters.idempotency import DEFAULT_WINDOW
from shop_adapters.journals import OutcomeJournal
from shop_adapters.protocols import EventLog, Position, SnapshotStore
from shop_adapters.runner import Runner, RunnerConfig, RunnerObserver
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_core import Event, ShopState

__all__ = [
    "DOMAIN",
    "QUIET",
    "REPO",
    "best",
    "best_self_timed",
    "load_events",
    "machine",
    "peak_rss",
    "quantile",
    "runner_config",
    "runner_replay",
    "show_progress",
]

DOMAIN = ShopDomain()
"""The shop domain every benchmark folds with (no price list)."""

QUIET = logging.getLogger("shop.benchmark.runner")
"""The benchmarks' runners log here: warnings only."""
QUIET.setLevel(logging.WARNING)

REPO = Path(__file__).resolve().parent.parent
"""The repository's root (where ``python -m benchmarks...`` runs children)."""

APPEND_BATCH = 10_000
"""Entries per ``append`` call when a benchmark loads a log."""


def load_events(log: EventLog, events: Sequence[Event], bar: bool, label: str) -> list[Position]:
    """Append ``events`` (v1 wire entries, no keys) to ``log`` in batches of
    :data:`APPEND_BATCH`; a progress bar on stderr when ``bar``. Their positions."""
    from tqdm import tqdm

    positions: list[Position] = []
    with tqdm(
        total=len(events), desc=f"load {label}", unit="ev", leave=False, disable=not bar
    ) as progress:
        for i in range(0, len(events), APPEND_BATCH):
            chunk = events[i : i + APPEND_BATCH]
            entries: list[Any] = [encode_event(e) for e in chunk]
            positions.extend(log.append(entries))
            progress.update(len(chunk))
    return positions


def runner_config(
    *,
    batch: int = 10_000,
    key_window: int | None = DEFAULT_WINDOW,
    snapshot_every: int | None = None,
    snapshot_in_child: bool = False,
    final_snapshot: bool = False,
    history: HistoryPolicy | None = None,
    from_scratch: bool = False,
) -> RunnerConfig:
    """A :class:`RunnerConfig` for a benchmark: no snapshot by time, no progress output;
    ``key_window`` as the command line's default unless given."""
    return RunnerConfig(
        snapshot_every=snapshot_every,
        snapshot_interval=None,
        batch_size=batch,
        progress=False,
        progress_interval=None,
        final_snapshot=final_snapshot,
        key_window=key_window,
        snapshot_in_child=snapshot_in_child,
        history=history,
        from_scratch=from_scratch,
    )


def runner_replay(
    log: EventLog,
    store: SnapshotStore | None = None,
    batch: int = 10_000,
    *,
    key_window: int | None = DEFAULT_WINDOW,
    journal: OutcomeJournal | None = None,
    observer: RunnerObserver | None = None,
) -> tuple[float, Replayed[ShopState]]:
    """Run the real :class:`~shop_adapters.runner.Runner` of the shop over ``log``
    until it is idle, restoring from ``store`` (``None``: from scratch).

    Returns ``(seconds, result)``: the runner's own restore plus catch-up time
    (:attr:`Runner.restore_seconds` + :attr:`Runner.catch_up_seconds`: reading
    and decoding the snapshot, then the catch-up loop of ``read_after``
    batches through :func:`shop_adapters.catchup.consume`, under the runner's
    GC settings, publishing every outcome to ``journal`` when one is given),
    and the state it reached. No snapshot is written and the summary's digest
    is not part of the time.
    """
    runner = Runner(
        log,
        store if store is not None else MemorySnapshotStore(),
        DOMAIN,
        runner_config(batch=batch, key_window=key_window),
        journal=journal,
        observer=observer,
        logger=QUIET,
    )
    summary = runner.run(exit_when_idle=True)
    assert runner.restore_seconds is not None and runner.catch_up_seconds is not None
    result = Replayed(
        runner.state,
        summary.last_position,
        None,
        summary.records,
        Tally(summary.accepted, summary.rejected, summary.duplicates),
    )
    return runner.restore_seconds + runner.catch_up_seconds, result


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best seconds of ``repeat`` calls and the last result.

    Before each call: ``gc.collect()`` then ``gc.freeze()``, so the objects the
    harness holds (the pre-built events, a loaded memory log) are not
    traversed by the collections the measured code triggers, as in a runner
    process that holds only its state; the cyclic GC stays enabled.
    """
    result: Any = None

    def timed() -> tuple[float, Any]:
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    seconds, result = best_self_timed(timed, repeat)
    return seconds, result


def best_self_timed(fn: Callable[[], tuple[float, Any]], repeat: int) -> tuple[float, Any]:
    """As :func:`best` for a ``fn`` that times itself: returns ``(seconds, result)``."""
    fastest = float("inf")
    result: Any = None
    for _ in range(max(1, repeat)):
        gc.collect()
        gc.freeze()
        try:
            seconds, result = fn()
            fastest = min(fastest, seconds)
        finally:
            gc.unfreeze()
    return fastest, result


def quantile(xs: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank, no interpolation); ``nan`` if empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def peak_rss() -> int:
    """This process's peak resident set size in bytes.

    ``VmHWM`` from ``/proc/self/status`` where it exists (Linux): it starts
    afresh at ``exec``, whereas ``ru_maxrss`` carries the parent's high-water
    mark across fork + exec there. Elsewhere ``getrusage(RUSAGE_SELF).ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def show_progress(asked: bool | None) -> bool:
    """Whether to draw progress bars: as ``asked``, else only when stderr is a terminal
    (so a log file or a CI console never receives the bars' escape codes)."""
    return sys.stderr.isatty() if asked is None else asked


def machine() -> dict[str, Any]:
    """Where the run happens: CPU, cores, load, Python, libraries, commit."""
    import platform
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    libs = {}
    for lib in ("eventsourcing", "redis", "hiredis", "msgspec", "orjson", "pyrsistent", "msgpack"):
        with contextlib.suppress(Exception):
            libs[lib] = version(lib)
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        ).stdout.strip()
    load: list[float] = []
    with contextlib.suppress(OSError, AttributeError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_at_start": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
        "commit": commit,
    }

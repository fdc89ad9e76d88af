"""Helpers of the read-model tests (``tests/test_read_models_*.py``).

- :class:`Proc`: a ``python -m ...`` subprocess whose stderr lines are collected
  by a thread (so a test can wait for a log line), SIGKILLed on exit from its ``with``;
- :func:`wait_until`: poll a condition with a deadline (a safety net, never a
  timing assertion);
- :func:`publish`: fold events through an in-process runner that publishes
  the outcome journal, as ``redis_runner`` does;
- :func:`journal_outcomes`, :func:`expected_views`, :func:`stored_views`: the
  oracle (the pure fold of the journal) and what the projector stored.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis
from reliability_support import RunnerProcess, python_m, wait_until  # noqa: F401 (wait_until: for the tests)

from shop_adapters.domain import Outcome
from shop_adapters.journals import RedisOutcomeJournal
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.projections import Projection, fold
from shop_adapters.projector_engine import decode_outcomes
from shop_adapters.protocols import ORIGIN, Position
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain, encode_event
from shop_adapters.shop_domain.projections import shop_projections
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_adapters.view_store import RedisViewStore
from shop_core import Event

REPO = Path(__file__).resolve().parent.parent


class Proc(RunnerProcess):
    """``python -m <module> <args>`` from the repository; stderr collected in :attr:`lines`."""

    def __init__(self, module: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        super().__init__(python_m(module, *args), env)

    def wait_for(self, needle: str, timeout: float = 60.0) -> bool:  # type: ignore[override]
        """Whether a stderr line containing ``needle`` appears within ``timeout`` s."""
        return super().wait_for(needle, timeout=timeout)

    def finish(self, timeout: float = 120.0) -> tuple[int, str, str]:
        """:meth:`RunnerProcess.finish`, with more time by default."""
        return super().finish(timeout)


def run_module(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` from the repository, output captured as text, no check."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def publish(client: redis.Redis, stream: str, events: Iterable[Event]) -> None:
    """Append ``events`` (v1, in chunks) to ``stream`` and fold them with an
    in-process runner that publishes ``<stream>:outcomes``."""
    log = RedisStreamLog(client, stream)
    chunk: list[dict[str, Any]] = []
    for event in events:
        chunk.append(encode_event(event))
        if len(chunk) == 5_000:
            log.append(chunk)
            chunk = []
    if chunk:
        log.append(chunk)
    Runner(
        log,
        MemorySnapshotStore(),
        ShopDomain(),
        RunnerConfig(progress=False, tune_gc=False, progress_interval=None),
        journal=RedisOutcomeJournal(client, f"{stream}:outcomes"),
    ).run(exit_when_idle=True)


def journal_outcomes(client: redis.Redis, stream: str) -> list[tuple[Position, Outcome]]:
    """Every outcome of ``<stream>:outcomes``, in order."""
    journal = RedisStreamLog(client, f"{stream}:outcomes", max_batch_bytes=None)
    out: list[tuple[Position, Outcome]] = []
    position = ORIGIN
    while batch := journal.read_after(position, 10_000):
        out += decode_outcomes(batch, journal.stream)
        position = batch[-1].position
    return out


def expected_views(
    outcomes: Sequence[tuple[Position, Outcome]],
    projections: Sequence[Projection] | None = None,
) -> dict[str, dict[str, Any]]:
    """The pure fold of ``outcomes`` for each projection, by name."""
    return {p.name: fold(p, outcomes) for p in projections or shop_projections()}


def stored_views(client: redis.Redis, stream: str) -> dict[str, tuple[Position | None, Any]]:
    """Each shop view as stored: ``{name: (position or None, documents)}``."""
    store = RedisViewStore(client, stream)
    out: dict[str, tuple[Position | None, Any]] = {}
    for p in shop_projections():
        checkpoint, docs = store.read_view(p.name)
        out[p.name] = (None if checkpoint is None else checkpoint.position, docs)
    return out

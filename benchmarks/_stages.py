"""Where the real runner's time goes: a per-event breakdown of one catch-up.

:func:`staged_replay` runs :class:`shop_adapters.runner.Runner` from scratch
over a log with thin timing proxies around what it calls (no change to the
runner itself):

- **read**: ``log.read_after`` (a proxy around the log). The runner reads
  ahead (:class:`shop_adapters.catchup.ReadAhead`): the next batch is read in
  a worker thread while this one is folded, so this time overlaps the others
  and is not part of their sum;
- **decode**: ``domain.decode_records`` (a proxy around the domain);
- **fold**: the folder's ``fold`` or ``fold_each`` (``fold_each`` when the
  runner asks for outcomes or honours keys);
- **publish**: the outcome journal's ``write`` (a proxy around the journal);
- **keys and outcomes**: the rest of each batch's step as the runner's own
  observer reports it (:meth:`RunnerObserver.batch`: ``consume`` + the flush
  of dead letters and outcomes) minus decode, fold and publish: idempotency
  key classification, outcome objects, tallies, the record anchor;
- **waiting for reads and the loop**: the runner's catch-up seconds minus
  the batches' steps: the main thread waiting for a read that was not ready,
  plus the loop's own work (snapshot checks, progress).

The stages of the main thread add up to the runner's catch-up time. Every
proxy costs two ``perf_counter`` calls per batch (of 10,000 records).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from shop_adapters.catchup import Batch
from shop_adapters.domain import Domain, Outcome, Tally
from shop_adapters.journals import OutcomeJournal
from shop_adapters.protocols import DeadLetter, EventLog, Position, Record
from shop_adapters.runner import Runner
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_core import Event, ShopState

from ._common import DOMAIN, QUIET, runner_config

__all__ = ["Stages", "staged_replay"]


@dataclass
class Stages:
    """Seconds per stage of one catch-up of ``records`` records (see the module)."""

    records: int = 0
    total_s: float = 0.0
    read_s: float = 0.0
    decode_s: float = 0.0
    fold_s: float = 0.0
    publish_s: float = 0.0
    batch_s: float = 0.0
    digest: str = ""

    @property
    def bookkeeping_s(self) -> float:
        """The batch steps minus decode, fold and publish (keys, outcomes, anchors)."""
        return max(0.0, self.batch_s - self.decode_s - self.fold_s - self.publish_s)

    @property
    def waiting_s(self) -> float:
        """Catch-up minus the batch steps (waiting for reads, the loop)."""
        return max(0.0, self.total_s - self.batch_s)

    def per_event_us(self) -> dict[str, float]:
        """Every stage in microseconds per record."""
        n = max(1, self.records)
        return {
            "read": 1e6 * self.read_s / n,
            "waiting": 1e6 * self.waiting_s / n,
            "decode": 1e6 * self.decode_s / n,
            "fold": 1e6 * self.fold_s / n,
            "bookkeeping": 1e6 * self.bookkeeping_s / n,
            "publish": 1e6 * self.publish_s / n,
            "total": 1e6 * self.total_s / n,
        }

    def to_json(self) -> dict[str, Any]:
        """Seconds, and microseconds per event under ``us``."""
        return asdict(self) | {"us": self.per_event_us()}


class _TimedLog:
    """``read_after`` timed (from whichever thread calls it); the rest passed through."""

    def __init__(self, log: EventLog, stages: Stages) -> None:
        self._log = log
        self._stages = stages
        self._lock = threading.Lock()

    def read_after(self, position: Position, limit: int) -> list[Record]:
        t0 = time.perf_counter()
        records = self._log.read_after(position, limit)
        spent = time.perf_counter() - t0
        with self._lock:
            self._stages.read_s += spent
        return records

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


class _TimedFolder:
    def __init__(self, folder: Any, stages: Stages) -> None:
        self._folder = folder
        self._stages = stages

    def fold(self, events: Sequence[Event]) -> Tally:
        t0 = time.perf_counter()
        out: Tally = self._folder.fold(events)
        self._stages.fold_s += time.perf_counter() - t0
        return out

    def fold_each(self, events: Sequence[Event]) -> list[Outcome]:
        t0 = time.perf_counter()
        out: list[Outcome] = self._folder.fold_each(events)
        self._stages.fold_s += time.perf_counter() - t0
        return out

    def persistent(self) -> ShopState:
        state: ShopState = self._folder.persistent()
        return state


class _TimedDomain:
    """The shop domain with ``decode_records`` and the folder's folds timed."""

    def __init__(self, domain: Domain[ShopState, Event], stages: Stages) -> None:
        self._domain = domain
        self._stages = stages

    def decode_records(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[Position, Event]], list[DeadLetter]]:
        t0 = time.perf_counter()
        out = self._domain.decode_records(records)
        self._stages.decode_s += time.perf_counter() - t0
        return out

    def folder(self, state: ShopState) -> _TimedFolder:
        return _TimedFolder(self._domain.folder(state), self._stages)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._domain, name)


class _TimedJournal:
    def __init__(self, journal: OutcomeJournal, stages: Stages) -> None:
        self._journal = journal
        self._stages = stages

    def write(self, outcomes: Sequence[tuple[Position, Outcome]]) -> None:
        t0 = time.perf_counter()
        self._journal.write(outcomes)
        self._stages.publish_s += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)


class _BatchObserver:
    """A :class:`~shop_adapters.runner.RunnerObserver` adding up the batch steps."""

    def __init__(self, stages: Stages) -> None:
        self._stages = stages

    def restored(self, seconds: float, position: Position, records: int) -> None:
        """Not timed here."""

    def batch(self, batch: Batch, seconds: float, records_total: int) -> None:
        self._stages.batch_s += seconds
        self._stages.records += batch.records

    def snapshot(self, written: bool, seconds: float) -> None:
        """Not timed here."""

    def phase(self, following: bool) -> None:
        """Not timed here."""


def staged_replay(
    log: EventLog,
    *,
    batch: int = 10_000,
    key_window: int | None,
    journal: OutcomeJournal | None = None,
) -> Stages:
    """One catch-up of ``log`` from scratch by the real runner, timed per stage."""
    stages = Stages()
    runner = Runner(
        cast(EventLog, _TimedLog(log, stages)),
        MemorySnapshotStore(),
        cast(Domain[ShopState, Event], _TimedDomain(DOMAIN, stages)),
        runner_config(batch=batch, key_window=key_window),
        journal=None if journal is None else cast(OutcomeJournal, _TimedJournal(journal, stages)),
        observer=_BatchObserver(stages),
        logger=QUIET,
    )
    summary = runner.run(exit_when_idle=True)
    assert runner.catch_up_seconds is not None
    stages.total_s = runner.catch_up_seconds
    stages.digest = summary.digest
    return stages

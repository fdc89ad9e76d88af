"""The live runner: restore, catch up, follow, snapshot. Generic over the domain.

``Runner(log, store, domain, config).run()`` knows only the two storage
protocols (:class:`~shop_adapters.protocols.EventLog`,
:class:`~shop_adapters.protocols.SnapshotStore`) and the
:class:`~shop_adapters.domain.Domain` contract:

1. **Restore** the latest snapshot (:meth:`Runner.restore`, which may run
   before the lease is taken; :meth:`Runner.run` then confirms the stored blob
   has not changed). An absent snapshot means "start at the origin"; one that
   cannot be used (corrupt, another domain, semantics version or
   configuration) is set aside with a WARNING naming the reason, and the state
   is rebuilt by replay.
2. **Check continuity** (:func:`~shop_adapters.catchup.check_continuity`):
   the log must still hold the record the snapshot was folded to, and every
   record after it; a rollback, wipe or gap stops the runner with
   :class:`~shop_adapters.errors.IntegrityError` or
   :class:`~shop_adapters.errors.GapError` before anything is folded. The same
   check runs after every reconnect and while idle.
3. **Catch up** with ``read_after`` batches through the one catch-up step,
   :func:`~shop_adapters.catchup.consume` (decode, fold into the domain's
   folder); dead letters are written to the log's dead-letter sink before the
   next read and before any snapshot that covers them.
4. **Follow** with blocking ``wait_after`` from the last applied position (never ``$``).
5. **Snapshot** every ``snapshot_every`` records and/or ``snapshot_interval``
   seconds: the immutable state is handed by reference to a background writer
   thread (a slot of one, the latest wins). On a normal end (idle or
   :meth:`Runner.stop`) a final snapshot is written synchronously. With
   ``from_scratch``, no snapshot is written before the fold has passed the
   position of the one that was stored.
6. **Reconnect** on :class:`~shop_adapters.errors.OperationalError` under one
   :class:`~shop_adapters.retry.RetryPolicy`, resuming from the last applied
   position: no record is lost or applied twice.

>>> from shop_adapters.logs.memory import MemoryLog
>>> from shop_adapters.snapshots.memory import MemorySnapshotStore
>>> from shop_adapters.shop_domain import ShopDomain, encode_event
>>> from shop_core import TopUp
>>> log = MemoryLog()
>>> _ = log.append([encode_event(TopUp(1, 500)), {"type": "Nonsense"}])
>>> runner = Runner(log, MemorySnapshotStore(), ShopDomain(), RunnerConfig(progress=False))
>>> summary = runner.run(exit_when_idle=True)
>>> summary.records, summary.dead_letters, str(summary.last_position), summary.lag
(2, 1, '2-0', 0)
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from logging import ERROR, INFO, WARNING
from typing import Any, Generic, Literal, TypeVar

from returns.result import Failure, Success
from tqdm import tqdm

from .catchup import Batch, Checkpoint, ReadAhead, check_continuity, consume
from .domain import Domain, Folder, Outcome, Tally
from .envelope import Snapshot, decode_snapshot, read_header
from .errors import GapError, IntegrityError, OperationalError, PermanentError
from .history import HistoryPolicy, SnapshotHistory
from .idempotency import DEFAULT_WINDOW, KeyWindow
from .journals import OutcomeJournal
from .protocols import ORIGIN, DeadLetter, EventLog, Position, Record, SnapshotStore
from .retry import RetryPolicy, Stopped, event
from .snapshot_writer import RunnerObserver, SnapshotWriter

__all__ = ["Runner", "RunnerConfig", "RunnerObserver", "Summary", "gc_tuned_for_folding"]

_log = logging.getLogger("shop.runner")

S = TypeVar("S")
E = TypeVar("E")


@contextlib.contextmanager
def gc_tuned_for_folding(enabled: bool) -> Iterator[None]:
    """While folding, keep the cyclic GC from re-walking what cannot be garbage.

    The fold allocates many short-lived containers and creates no reference
    cycles, yet each allocation counts towards a generation-0 collection, and
    every older collection walks the whole live state. So: ``gc.freeze()`` what
    is alive when the loop starts (the restored state, modules), and raise the
    generation-0 threshold from 700 to 50,000 allocations. Reference counting
    still frees everything at once. Measured: about +30% replay throughput
    (``benchmarks.replay_vs_snapshot``). Restored on exit. Source: the ``gc``
    module docs (``freeze``, ``set_threshold``).
    """
    if not enabled:
        yield
        return
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, previous[1], previous[2])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """How a :class:`Runner` runs.

    - ``snapshot_every``: snapshot after this many records (``None``: never by count);
    - ``snapshot_interval``: seconds between snapshots while records arrive
      (``None``: never by time);
    - ``batch_size``: most records per read (capped at ``snapshot_every``);
    - ``block_ms``: how long one ``wait_after`` blocks, milliseconds (also how
      quickly a stop is noticed while idle, and how often an idle runner
      checks that the log is still the one it folded);
    - ``from_scratch``: ignore the stored snapshot; replay from the origin;
    - ``progress``: tqdm bar during catch-up (``None``: when stderr is a TTY);
    - ``progress_interval``: seconds between progress log lines (``None``: none);
    - ``retry``: the :class:`~shop_adapters.retry.RetryPolicy` for reads and writes;
    - ``tune_gc``: see :func:`gc_tuned_for_folding` (process-wide: pass
      ``False`` when the runner shares a process whose GC settings matter);
    - ``final_snapshot``: write a snapshot when the run ends normally
      (``False`` for a read-only run, such as a benchmark's);
    - ``snapshot_in_child``: write the periodic snapshots from a forked child
      process (POSIX; the store must be reachable from another process: a
      Redis or file store, not a memory one), so that taking the immutable
      state and encoding it never share the interpreter lock with the fold;
    - ``key_window``: honour idempotency keys, remembering each for this many
      records (:mod:`shop_adapters.idempotency`); ``None``: ignore keys;
    - ``accept``: the operator's decision for this start when the log does
      not hold the state's history: ``"gap"`` folds on over records deleted
      after the snapshot; ``"rollback"`` rebuilds from the log as it is now
      (after a rollback, a wipe or a replaced log), overwriting the stored
      snapshot. Either is recorded with the runner's ``audit``; ``None``: stop
      with the error;
    - ``history``: which past snapshots the runner's ``history`` keeps
      (:mod:`shop_adapters.history`); ``None``: none.
    """

    snapshot_every: int | None = None
    snapshot_interval: float | None = 30.0
    batch_size: int = 10_000
    block_ms: int = 1_000
    from_scratch: bool = False
    progress: bool | None = None
    progress_interval: float | None = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    tune_gc: bool = True
    final_snapshot: bool = True
    snapshot_in_child: bool = False
    key_window: int | None = DEFAULT_WINDOW
    accept: Literal["gap", "rollback"] | None = None
    history: HistoryPolicy | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1 or None, got {self.snapshot_every}")
        if self.snapshot_interval is not None and not self.snapshot_interval > 0:
            raise ValueError(
                f"snapshot_interval must be > 0 seconds or None, got {self.snapshot_interval}"
            )
        if self.block_ms < 1:
            raise ValueError(f"block_ms must be >= 1, got {self.block_ms}")
        if self.key_window is not None and self.key_window < 1:
            raise ValueError(f"key_window must be >= 1 records or None, got {self.key_window}")


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run did.

    This run: ``records`` consumed, ``accepted`` (``{kind: count}``),
    ``rejected`` (``{code: count}``), ``duplicates`` (repeats of an idempotency
    key, answered and not applied), ``dead_letters``, ``snapshots_written``.
    Cumulative since the origin (snapshot counters included):
    ``total_records``, ``total_dead_letters``. ``last_position``: the last
    record consumed; ``lag``: records appended after it (``None`` if the log
    cannot say); ``digest``: the domain's digest of the final state;
    ``restored_from``: the snapshot position restored, or ``None``;
    ``stop_reason``: ``"idle"``, ``"stopped"`` or ``"abandoned: <why>"``;
    ``elapsed_s``: seconds.
    """

    records: int
    accepted: Mapping[str, int]
    rejected: Mapping[str, int]
    duplicates: int
    dead_letters: int
    last_position: Position
    lag: int | None
    snapshots_written: int
    digest: str
    restored_from: Position | None
    total_records: int
    total_dead_letters: int
    stop_reason: str
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (positions as ``"major-minor"`` strings)."""
        d = asdict(self)
        d["last_position"] = str(self.last_position)
        d["restored_from"] = None if self.restored_from is None else str(self.restored_from)
        d["accepted"] = dict(sorted(self.accepted.items()))
        d["rejected"] = dict(sorted(self.rejected.items()))
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d

    def text(self) -> str:
        """One human line per field, ``name: value``."""
        return "\n".join(f"{k}: {json.dumps(v)}" for k, v in self.to_dict().items())


@dataclass
class _Run:
    """This run's counters."""

    records: int = 0
    dead_letters: int = 0
    tally: Tally = field(default_factory=Tally)


class Runner(Generic[S, E]):
    """The single writer of one log: folds it into a state and snapshots it.

    - ``log``, ``store``: any :class:`EventLog` and :class:`SnapshotStore`;
    - ``domain``: the :class:`~shop_adapters.domain.Domain` that folds the log;
    - ``config``: a :class:`RunnerConfig`;
    - ``journal``: where to publish the outcome of every record
      (:mod:`shop_adapters.journals`; ``None``: no outcome journal);
    - ``audit``: records an operator's decision (``RunnerConfig.accept``) as a
      mapping of text fields; ``on_rebuild``: called before an accepted
      rollback is rebuilt (to set the old outcome journal aside);
    - ``observer``: a :class:`RunnerObserver` told of restores, batches,
      snapshots and the follow phase (metrics);
    - ``history``: where past snapshots go (kept by ``config.history``);
    - ``logger``: where progress and warnings go (default ``shop.runner``).

    :meth:`run` raises :class:`~shop_adapters.errors.GapError` or
    :class:`~shop_adapters.errors.IntegrityError` when the log does not hold
    the history of the state (before folding anything more), an
    ``OperationalError`` only when the retry policy gives up, and a
    :class:`~shop_adapters.errors.PermanentError` (wrong password, a key of
    another type...) at once.
    """

    def __init__(
        self,
        log: EventLog,
        store: SnapshotStore,
        domain: Domain[S, E],
        config: RunnerConfig | None = None,
        *,
        journal: OutcomeJournal | None = None,
        audit: Callable[[Mapping[str, str]], None] | None = None,
        on_rebuild: Callable[[], None] | None = None,
        observer: RunnerObserver | None = None,
        history: SnapshotHistory | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        config = config or RunnerConfig()
        if config.snapshot_every is not None and config.batch_size > config.snapshot_every:
            config = replace(config, batch_size=config.snapshot_every)
        self.log = log
        self.store = store
        self.domain = domain
        self.config = config
        self.journal = journal
        self.audit = audit
        self.on_rebuild = on_rebuild
        self.observer = observer
        self._logger = logger or _log
        self._stop = threading.Event()
        self._abandoned: str | None = None
        self.final_snapshot_error: str | None = None
        """Why the final snapshot of :meth:`run` was not written (refused by the
        store, or still failing after the retries), else ``None``."""
        self._fatal: Exception | None = None
        self._writer: SnapshotWriter[S] = SnapshotWriter(
            store,
            domain,
            self.abandon,
            self._fail,
            self._logger,
            observer,
            None if history is None or config.history is None else (history, config.history),
        )
        # The fold's state: only the run() thread writes these.
        self._folder: Folder[S, E] = domain.folder(domain.initial)
        self.position: Position = ORIGIN
        self._anchor: str | None = None
        self._gap_accepted: Position | None = None
        self._decision_unsaved = False  # an accepted gap no snapshot records yet
        self._records = 0
        self._dead = 0
        self._tally = Tally()
        self._run = _Run()
        self._pending_dead: list[DeadLetter] = []
        self._pending_outcomes: list[tuple[Position, Outcome]] = []
        self._journal_tail: Position | None = None
        self._keys: KeyWindow | None = (
            None if config.key_window is None else KeyWindow(config.key_window)
        )
        self._restored: tuple[bytes | None, Position | None] | None = None
        self._hold_snapshots_until: Position = ORIGIN
        self._since_snapshot = 0
        self._snapshot_clock = time.monotonic()
        self._report_clock = time.monotonic()
        self._report_records = 0
        self._idle_check = 0.0
        self._expected: Checkpoint | None = None
        self.restore_seconds: float | None = None
        """Seconds the last restore took (read and decode the snapshot), once known."""
        self.catch_up_seconds: float | None = None
        """Seconds from the first read of :meth:`run` to "caught up", once known."""

    # -- control (thread-safe) ---------------------------------------------------

    def stop(self) -> None:
        """End the loop after the current batch, then write a final snapshot.
        Thread-safe and safe to call from a signal handler."""
        self._stop.set()

    def abandon(self, reason: str) -> None:
        """End the loop without a final snapshot (the lease was lost). Thread-safe."""
        if self._abandoned is None:
            self._abandoned = reason
        self._stop.set()

    def _fail(self, error: Exception) -> None:
        """End the loop with ``error``, raised by :meth:`run` (the store found the log
        no longer holds the state's history). Thread-safe."""
        if self._fatal is None:
            self._fatal = error
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` or :meth:`abandon` was called."""
        return self._stop.is_set()

    @property
    def state(self) -> S:
        """The immutable state after the last consumed record (run() thread only)."""
        return self._folder.persistent()

    @property
    def checkpoint(self) -> Checkpoint:
        """Where the fold stands: position, records consumed, anchor, accepted gap."""
        return Checkpoint(self.position, self._records, self._anchor, self._gap())

    def expect(self, checkpoint: Checkpoint) -> None:
        """Before folding anything, :meth:`run` also checks that the log still holds
        the history up to ``checkpoint`` (what an earlier runner of this process
        folded): a log wiped or rolled back while the lease changed hands is
        then an ``IntegrityError``, never a silent fresh start."""
        self._expected = checkpoint

    # -- restore ------------------------------------------------------------------

    def restore(self) -> None:
        """Read and decode the stored snapshot into the runner (no lease needed).

        Expensive for a large state, so a Redis runner calls it before it
        takes the lease; :meth:`run` calls it if it was not called, and
        otherwise only confirms that the stored blob is still the one
        restored. Retries ``OperationalError`` under the policy; raises
        :class:`~shop_adapters.retry.Stopped` if stopped meanwhile.
        """
        started = time.perf_counter()
        for attempt in self.config.retry.attempts(
            "reading the snapshot", stop=self._stop, logger=self._logger
        ):
            with attempt:
                blob = self.store.read()
        self._adopt(blob)
        self.restore_seconds = time.perf_counter() - started
        if self.observer is not None:
            self.observer.restored(self.restore_seconds, self.position, self._records)

    def _adopt(self, blob: bytes | None) -> None:
        domain = self.domain
        state, self.position, self._anchor = domain.initial, ORIGIN, None
        self._gap_accepted = None
        self._decision_unsaved = False
        self._records = self._dead = 0
        self._tally = Tally()
        window = self.config.key_window
        self._keys = None if window is None else KeyWindow(window)
        restored: Position | None = None
        self._hold_snapshots_until = ORIGIN
        if self.config.from_scratch:
            header = read_header(blob) if blob is not None else None
            if header is not None:
                self._hold_snapshots_until = header.position
            event(
                self._logger,
                INFO,
                "restore",
                "ignoring the stored snapshot (from scratch); none is written before %s",
                self._hold_snapshots_until,
                from_scratch=True,
                hold_until=str(self._hold_snapshots_until),
            )
        elif blob is None:
            event(
                self._logger,
                INFO,
                "restore",
                "no snapshot: replaying the log from the origin",
                position=str(ORIGIN),
            )
        else:
            match decode_snapshot(blob, domain, window):
                case Success(snap):
                    state, self.position, self._anchor = snap.state, snap.position, snap.anchor
                    self._gap_accepted = snap.gap_accepted
                    self._keys = snap.keys
                    self._records, self._dead, self._tally = (
                        snap.records,
                        snap.dead_letters,
                        snap.tally,
                    )
                    restored = snap.position
                    event(
                        self._logger,
                        INFO,
                        "restore",
                        "restored snapshot at %s (%d records folded)",
                        snap.position,
                        snap.records,
                        position=str(snap.position),
                        records=snap.records,
                        bytes=len(blob),
                    )
                case Failure(why):
                    event(
                        self._logger,
                        WARNING,
                        "snapshot_set_aside",
                        "snapshot set aside (%s): rebuilding by replay from the origin",
                        why,
                        reason=why,
                    )
        self._folder = domain.folder(state)
        self._restored = (blob, restored)

    def _confirm_restore(self) -> None:
        """Re-read the stored blob; restore again if it changed since :meth:`restore`."""
        assert self._restored is not None
        for attempt in self.config.retry.attempts(
            "reading the snapshot", stop=self._stop, logger=self._logger
        ):
            with attempt:
                blob = self.store.read()
        if blob != self._restored[0]:
            event(
                self._logger,
                INFO,
                "restore",
                "the stored snapshot changed since it was read: reading it again",
            )
            self._adopt(blob)

    # -- the loop -----------------------------------------------------------------

    def run(self, exit_when_idle: bool = False) -> Summary:
        """Restore (or confirm the restore), catch up, then follow (or, with
        ``exit_when_idle``, return as soon as the log has no record after the
        last consumed one). Returns a :class:`Summary`. A normal end writes a
        final snapshot synchronously."""
        started = time.monotonic()
        try:
            if self._restored is None:
                self.restore()
            else:
                self._confirm_restore()
            for attempt in self.config.retry.attempts(
                "checking the log", stop=self._stop, logger=self._logger
            ):
                with attempt:
                    self._check_history()
                    if self.journal is not None:
                        # Outcomes up to here were published by an earlier run.
                        self._journal_tail = self.journal.last_position()
        except Stopped:
            return self._summary("stopped", started, lag=None)
        if self._abandoned is not None:
            return self._summary("abandoned: " + self._abandoned, started, lag=None)
        self._writer.start()
        try:
            with gc_tuned_for_folding(self.config.tune_gc):
                reason = self._loop(exit_when_idle)
        finally:
            self._writer.close()
        if self._fatal is not None:
            raise self._fatal
        pending = self._pending_dead or self._pending_outcomes
        if self._abandoned is None and not pending and self.config.final_snapshot:
            self._final_snapshot()
            if self._fatal is not None:
                raise self._fatal
        if self._abandoned is not None:
            reason = "abandoned: " + self._abandoned
        lag = 0 if reason == "idle" else self._lag()
        summary = self._summary(reason, started, lag)
        self._logger.info(
            "run ended", extra={"fields": {"event": "run_ended", **summary.to_dict()}}
        )
        return summary

    def _check_history(self) -> None:
        """Check the log holds the history of the restored state (and of what this
        process folded before); apply the operator's ``accept`` decision if it
        does not, recording it with ``audit``."""
        accept = self.config.accept
        try:
            if self._expected is not None:
                check_continuity(self.log, *self._expected)
            self._check_continuity()
        except GapError as e:
            if accept != "gap":
                raise
            h = self.log.history()
            # Remembered (and kept in snapshots) until the fold passes it, so that
            # the next start does not stop at the same gap again.
            self._gap_accepted = h.max_deleted
            self._expected = None
            self._decision_unsaved = True
            if self.position != ORIGIN:
                if h.first > self.position and h.added is not None:
                    # Trimmed away up to the first record: the lost records count
                    # as consumed (so lag and continuity stay true).
                    self._records = h.added - h.length
                self._decide(
                    "accept-gap",
                    e,
                    f"folding on from the snapshot at {self.position}, over the gap",
                )
                if self.log.read_at(self.position) is None:
                    # A snapshot is anchored to the record it was folded to, which
                    # is gone: the decision is kept once a later record is folded.
                    self._decision_unsaved = False
                    event(
                        self._logger,
                        WARNING,
                        "gap_not_recorded",
                        "the record at %s that the state was folded to was deleted: no "
                        "snapshot can record the accepted gap until a record after it is "
                        "folded; until then each start needs --accept-gap again",
                        self.position,
                        position=str(self.position),
                    )
                return
            # No usable snapshot: the fold starts at the origin, without the deleted
            # records. They count as consumed (so lag and continuity stay true), and
            # the answers published for the old history are set aside.
            skipped = 0 if h.added is None else max(0, h.added - h.length)
            self._decide(
                "accept-gap",
                e,
                f"rebuilding from the origin over the gap: {skipped} deleted records are not "
                "folded (the outcome journal and dead letters of the old history are set aside)",
            )
            if self.on_rebuild is not None:
                self.on_rebuild()
            self._records = skipped
        except IntegrityError as e:
            if accept != "rollback":
                raise
            self._decide("accept-rollback", e, "rebuilding from the log as it is now")
            if self.on_rebuild is not None:
                self.on_rebuild()
            self._expected = None
            self._hold_snapshots_until = ORIGIN
            self._adopt_origin()
            check_continuity(self.log, ORIGIN)
        else:
            if accept is not None:
                event(
                    self._logger,
                    INFO,
                    "nothing_to_accept",
                    "--accept-%s: the log holds the state's history, nothing to accept",
                    accept,
                )

    def _decide(self, decision: str, error: IntegrityError, action: str) -> None:
        entry = {
            "decision": decision,
            "at": str(self.position),
            "records": str(self._records),
            "error": f"{type(error).__name__}: {error}",
            "action": action,
        }
        event(
            self._logger,
            WARNING,
            decision.replace("-", "_"),
            "%s: %s (%s)",
            decision,
            action,
            error,
            **entry,
        )
        if self.audit is not None:
            self.audit(entry)

    def _adopt_origin(self) -> None:
        domain = self.domain
        self.position, self._anchor, self._records, self._dead = ORIGIN, None, 0, 0
        self._gap_accepted = None
        self._decision_unsaved = False
        self._tally = Tally()
        window = self.config.key_window
        self._keys = None if window is None else KeyWindow(window)
        self._folder = domain.folder(domain.initial)
        self._restored = (self._restored[0] if self._restored else None, None)

    def _loop(self, exit_when_idle: bool) -> str:
        catching_up = True
        bar = self._progress_bar()
        started = time.perf_counter()
        self._reader = ReadAhead(self.log)
        try:
            while not self._stop.is_set():
                try:
                    records = self._next_batch(catching_up or exit_when_idle)
                except Stopped:
                    break
                if records:
                    if bar is not None:
                        bar.update(len(records))
                elif catching_up:
                    catching_up = False
                    self.catch_up_seconds = time.perf_counter() - started
                    if bar is not None:
                        bar.close()
                        bar = None
                    event(
                        self._logger,
                        INFO,
                        "caught_up",
                        "caught up at %s",
                        self.position,
                        position=str(self.position),
                        records=self._records,
                        seconds=round(self.catch_up_seconds, 3),
                    )
                    if self.observer is not None:
                        self.observer.phase(True)
                if not records and exit_when_idle:
                    return "idle"
                self._maybe_snapshot()
                self._maybe_report()
        finally:
            self._reader.close()
            if bar is not None:
                bar.close()
            if self.observer is not None:
                self.observer.phase(False)
        return "stopped"

    def _next_batch(self, catching_up: bool) -> list[Record]:
        """Flush what is pending, read the next batch, consume it; retried as one step."""
        cfg = self.config
        for attempt in cfg.retry.attempts(
            "reading the log",
            stop=self._stop,
            logger=self._logger,
            where=lambda: str(self.position),
        ):
            with attempt:
                after_outage = attempt.retry_state.attempt_number > 1
                if after_outage:
                    # After an outage the log must still hold what was consumed.
                    self._check_continuity()
                self._flush()
                if catching_up:
                    records = self._reader.read_after(self.position, cfg.batch_size)
                else:
                    records = self.log.wait_after(self.position, cfg.batch_size, cfg.block_ms)
                    if not records:
                        self._check_while_idle()
                if after_outage:
                    event(
                        self._logger,
                        INFO,
                        "reconnected",
                        "reconnected; resuming after %s",
                        self.position,
                        position=str(self.position),
                    )
                if records:
                    started = time.perf_counter()
                    batch = self._consume(records)
                    self._flush()
                    if self.observer is not None:
                        seconds = time.perf_counter() - started
                        self.observer.batch(batch, seconds, self._records)
        return records

    def _check_while_idle(self) -> None:
        """While nothing arrives, check (about once per ``block_ms``) that the log is
        still the one folded: a wiped or replaced log is never followed silently."""
        now = time.monotonic()
        if now - self._idle_check >= self.config.block_ms / 1000:
            self._idle_check = now
            self._check_continuity()

    def _gap(self) -> Position | None:
        """The accepted gap while the fold has not passed it."""
        gap = self._gap_accepted
        return gap if gap is not None and gap >= self.position else None

    def _check_continuity(self) -> None:
        check_continuity(self.log, self.position, self._records, self._anchor, self._gap())

    def _consume(self, records: list[Record]) -> Batch:
        """Fold one batch through the catch-up step; the position moves at the end."""
        batch = consume(
            self.domain,
            self._folder,
            records,
            outcomes=self.journal is not None,
            keys=self._keys,
            first_index=self._records + 1,
        )
        self.position, self._anchor = batch.position, batch.anchor
        self._records += batch.records
        self._dead += len(batch.dead_letters)
        self._tally = self._tally + batch.tally
        self._run.records += batch.records
        self._run.dead_letters += len(batch.dead_letters)
        self._run.tally = self._run.tally + batch.tally
        self._since_snapshot += batch.records
        self._pending_dead.extend(batch.dead_letters)
        if batch.outcomes is not None and self.journal is not None:
            tail = self._journal_tail
            self._pending_outcomes.extend(
                batch.outcomes if tail is None else [o for o in batch.outcomes if o[0] > tail]
            )
        return batch

    def _flush(self) -> None:
        """Write the dead letters and outcomes consumed but not yet written (each at
        most once), before the next read and before any snapshot that covers them."""
        while self._pending_dead:
            letter = self._pending_dead[0]
            if self.log.dead_letter(letter):
                event(
                    self._logger,
                    WARNING,
                    "dead_letter",
                    "dead letter at %s: %s",
                    letter.position,
                    letter.reason[:200],
                    position=str(letter.position),
                    reason=letter.reason[:200],
                )
            self._pending_dead.pop(0)
        if self._pending_outcomes and self.journal is not None:
            self.journal.write(self._pending_outcomes)
            self._pending_outcomes = []

    # -- snapshots ------------------------------------------------------------------

    def _snapshot(self) -> Snapshot[S]:
        self._decision_unsaved = False
        keys = self._keys
        if keys is not None:
            keys.expire(self._records)
            keys = keys.copy()
        return Snapshot(
            self.state,
            self.position,
            self._records,
            self._dead,
            self._tally,
            self._anchor,
            keys,
            self._gap(),
        )

    def _maybe_snapshot(self) -> None:
        if (
            self._since_snapshot == 0 and not self._decision_unsaved
        ) or self.position < self._hold_snapshots_until:
            return
        cfg = self.config
        now = time.monotonic()
        due = (cfg.snapshot_every is not None and self._since_snapshot >= cfg.snapshot_every) or (
            cfg.snapshot_interval is not None
            and now - self._snapshot_clock >= cfg.snapshot_interval
        )
        if not due:
            return
        if cfg.snapshot_in_child:
            if not self._writer.fork(self._snapshot):
                return  # the previous child still writes: due again at the next batch
        else:
            self._writer.submit(self._snapshot())
        self._since_snapshot = 0
        self._snapshot_clock = now

    def _final_snapshot(self) -> None:
        if self._decision_unsaved:
            pass  # the stored snapshot does not record the accepted gap: write one
        elif self._since_snapshot == 0 and self._writer.last_position == self.position:
            return
        elif self._restored is not None and self._restored[1] == self.position:
            return  # the stored snapshot is already this state
        if self.position == ORIGIN:
            return  # nothing was folded: nothing to save
        if self.position < self._hold_snapshots_until:
            event(
                self._logger,
                INFO,
                "snapshot_held_back",
                "no final snapshot at %s: the stored one is further on",
                self.position,
                position=str(self.position),
                stored=str(self._hold_snapshots_until),
            )
            return
        snapshot = self._snapshot()
        for attempt in range(1, 6):
            if self._writer.write(snapshot):
                return
            if self._abandoned is not None:
                self.final_snapshot_error = (
                    f"final snapshot at {self.position} refused ({self._abandoned})"
                )
                return
            retry = self.config.retry
            time.sleep(min(retry.cap, retry.base * 2 ** (attempt - 1)))
        self.final_snapshot_error = f"final snapshot at {self.position} not written"
        event(
            self._logger,
            ERROR,
            "snapshot_failed",
            "final snapshot at %s not written; the next start replays from the last one",
            self.position,
            position=str(self.position),
            final=True,
        )

    # -- reporting ------------------------------------------------------------------

    def _lag(self) -> int | None:
        try:
            added = self.log.history().added
        except (OperationalError, PermanentError):
            return None  # lag is informative only; the reads report the error
        return None if added is None else max(0, added - self._records)

    def _progress_bar(self) -> tqdm[Any] | None:
        cfg = self.config
        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        if not show:
            return None
        return tqdm(total=self._lag(), unit="rec", desc="catch-up", file=sys.stderr, smoothing=0.1)

    def _maybe_report(self) -> None:
        interval = self.config.progress_interval
        if interval is None:
            return
        now = time.monotonic()
        elapsed = now - self._report_clock
        if elapsed < interval:
            return
        run = self._run
        if run.records == self._report_records:
            self._report_clock = now  # idle: nothing to report
            return
        self._logger.info(
            "progress",
            extra={
                "fields": {
                    "event": "progress",
                    "position": str(self.position),
                    "records": run.records,
                    "records_per_s": round((run.records - self._report_records) / elapsed, 1),
                    "lag": self._lag(),
                    "accepted": dict(run.tally.accepted),
                    "rejected": dict(run.tally.rejected),
                    "duplicates": run.tally.duplicates,
                    "dead_letters": run.dead_letters,
                    "snapshots_written": self._writer.written,
                    "last_snapshot": None
                    if self._writer.last_position is None
                    else str(self._writer.last_position),
                }
            },
        )
        self._report_clock = now
        self._report_records = run.records

    def _summary(self, reason: str, started: float, lag: int | None) -> Summary:
        restored = self._restored[1] if self._restored is not None else None
        return Summary(
            records=self._run.records,
            accepted=dict(self._run.tally.accepted),
            rejected=dict(self._run.tally.rejected),
            duplicates=self._run.tally.duplicates,
            dead_letters=self._run.dead_letters,
            last_position=self.position,
            lag=lag,
            snapshots_written=self._writer.written,
            digest=self.domain.digest(self.state),
            restored_from=restored,
            total_records=self._records,
            total_dead_letters=self._dead,
            stop_reason=reason,
            elapsed_s=time.monotonic() - started,
        )

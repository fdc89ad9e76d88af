"""The live runner: restore, catch up, follow, snapshot. Knows only the two protocols.

``Runner(log, store, decoder).run()``:

1. **Restore** the latest snapshot from the :class:`~shop_adapters.protocols.SnapshotStore`
   (``decode_snapshot``). An absent snapshot means "start at ORIGIN"; one that
   fails to decode (corrupt, stale semantics version, ...) is set aside with a
   WARNING naming the reason, and the state is rebuilt by replay from ORIGIN.
   So is a snapshot folded by a decoder of another configuration (its
   ``decoder_digest``, the price list's SHA-256, differs from the running
   decoder's ``config_digest``): "snapshot was folded with another price list".
2. **Gap check**: if the snapshot is at ``p > ORIGIN`` and the log's first
   record is after ``p``, records the snapshot never saw were trimmed away:
   :class:`~shop_adapters.errors.GapError`, nothing is folded. If the log's
   last record is before ``p``, the log lost records the snapshot has seen:
   :class:`~shop_adapters.errors.IntegrityError`. (Trim a stream with
   ``XTRIM MINID <snapshot position>``, which keeps the snapshot's own record.)
3. **Catch up** with ``read_after`` batches (a tqdm bar on stderr when it is a
   TTY, or when ``progress=True``); each batch is decoded (``decode_records``),
   every failure is copied to the log's dead-letter sink (at most once per
   position), and the events are folded into a :class:`shop_core.Transient`
   (an immutable state is taken from it only for a snapshot or the summary).
   The position advances to the batch's last record only after the batch is
   fully handled, so an error mid-batch loses and repeats nothing.
4. **Follow** with blocking ``wait_after`` from the last applied position
   (never ``$``).
5. **Snapshot** every ``snapshot_every`` records and/or ``snapshot_interval``
   seconds: the immutable state is handed by reference to a background writer
   thread (a slot of one, the latest wins), which encodes and writes it, so
   the fold never waits for serialisation. On a normal end (idle or
   :meth:`Runner.stop`) a final snapshot is written synchronously.
6. **Reconnect** on :class:`~shop_adapters.errors.OperationalError` with
   capped, jittered exponential back-off, resuming from the last applied
   position: no record is lost or applied twice.

Counters in a snapshot are cumulative since ORIGIN; a :class:`Summary` gives
both this run's and the cumulative numbers.

>>> from shop_adapters.logs.memory import MemoryLog
>>> from shop_adapters.snapshots.memory import MemorySnapshotStore
>>> from shop_adapters.codec import Decoder, encode_event
>>> from shop_core import TopUp
>>> log = MemoryLog()
>>> _ = log.append([encode_event(TopUp(1, 500)), {"type": "Nonsense"}])
>>> summary = Runner(log, MemorySnapshotStore(), Decoder(), progress=False).run(exit_when_idle=True)
>>> summary.events_applied, summary.dead_letters, str(summary.last_position), summary.lag
(1, 1, '2-0', 0)
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from returns.result import Failure, Success
from tqdm import tqdm

from shop_core import EMPTY, Event, Outcomes, ShopState, Transient, fold_with_outcomes, state_digest

from .codec import Snapshot, decode_snapshot, describe_decoder_digest, encode_snapshot
from .errors import FencedError, GapError, IntegrityError, OperationalError, PermanentError
from .protocols import ORIGIN, DeadLetter, EventLog, Position, Record, SnapshotStore

__all__ = [
    "RecordDecoder",
    "Runner",
    "Summary",
    "backoff_delay",
    "check_continuity",
    "decoder_digest",
    "gc_tuned_for_folding",
    "index_records_total",
    "replay",
]

_log = logging.getLogger("shop.runner")


@contextlib.contextmanager
def gc_tuned_for_folding(enabled: bool) -> Iterator[None]:
    """While folding, keep the cyclic GC from re-walking what cannot be garbage.

    The fold allocates many short-lived containers (decoded events, tuples) and
    creates no reference cycles, yet each of those allocations counts towards a
    generation-0 collection, and every older collection walks the whole live
    state. So: ``gc.freeze()`` what is alive when the loop starts (the restored
    state, modules), and raise the generation-0 threshold from 700 to 50,000
    allocations. Reference counting still frees everything at once; only the
    cycle detector runs less often. Measured: about +30% replay throughput
    (``benchmarks.replay_vs_snapshot``). The thresholds are restored and the
    frozen objects released on exit. Source: the ``gc`` module docs
    (``freeze``, ``set_threshold``).
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


class RecordDecoder(Protocol):
    """What the runner needs of :class:`shop_adapters.codec.Decoder`.

    A decoder may also have a ``config_digest`` attribute (``str | None``,
    :attr:`shop_adapters.codec.Decoder.config_digest`); one without it counts
    as ``None`` (no price list).
    """

    def decode_records(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[Position, Event]], list[DeadLetter]]:
        """Events with their positions, and dead letters for the records that failed."""
        ...


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run did.

    This run: ``events_applied``, ``orders_accepted``, ``rejections``
    (``{reason code: count}``), ``dead_letters``, ``snapshots_written``.
    Cumulative since ORIGIN (snapshot counters included): ``total_events``,
    ``total_dead_letters``. ``last_position``: last record applied;
    ``lag``: records between it and the log's end (``None`` if the log cannot
    say); ``digest``: :func:`shop_core.state_digest` of the final state;
    ``restored_from``: the snapshot position restored, or ``None``;
    ``stop_reason``: ``"idle"``, ``"stopped"`` or ``"abandoned: <why>"``.
    """

    events_applied: int
    orders_accepted: int
    rejections: Mapping[str, int]
    dead_letters: int
    last_position: Position
    lag: int | None
    snapshots_written: int
    digest: str
    restored_from: Position | None
    total_events: int
    total_dead_letters: int
    stop_reason: str
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (positions as ``"major-minor"`` strings)."""
        d = asdict(self)
        d["last_position"] = str(self.last_position)
        d["restored_from"] = None if self.restored_from is None else str(self.restored_from)
        d["rejections"] = dict(sorted(self.rejections.items()))
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d

    def text(self) -> str:
        """One human line per field, ``name: value``."""
        return "\n".join(f"{k}: {json.dumps(v)}" for k, v in self.to_dict().items())


def backoff_delay(
    attempt: int, base: float = 0.1, cap: float = 5.0, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): "equal jitter" back-off,
    ``d/2 + rand * d/2`` with ``d = min(cap, base * 2**(attempt-1))``.

    Source: AWS Architecture Blog, "Exponential Backoff And Jitter".

    >>> backoff_delay(1, rng=lambda: 0.0), backoff_delay(10, rng=lambda: 1.0)
    (0.05, 5.0)
    """
    d = min(cap, base * float(1 << min(attempt - 1, 30)))
    return d / 2 + rng() * d / 2


def decoder_digest(decoder: object) -> str | None:
    """``decoder.config_digest`` (a price list's SHA-256 hex), or ``None`` if it has none."""
    digest = getattr(decoder, "config_digest", None)
    return digest if isinstance(digest, str) else None


def index_records_total(log: EventLog) -> Callable[[], int]:
    """Records ever appended to a log whose positions are 1-based indices
    ``(n, 0)`` (memory and file logs): its last position's major."""
    return lambda: log.last_position().major


def check_continuity(log: EventLog, position: Position) -> None:
    """Raise if folding ``log`` after ``position`` would skip or invent history.

    At ``position == ORIGIN`` (a from-scratch fold), raises :class:`GapError`
    if the log reports that any record was ever deleted from it
    (``max_deleted_position()`` or ``deleted_entries()``, Redis streams: an
    ``XTRIM``/``MAXLEN`` of the head or an ``XDEL`` anywhere; Redis 6.2 shows
    only deletions at the tail): what is left cannot rebuild the state.
    Otherwise raises :class:`GapError` if ``position > ORIGIN`` and the log's first record
    is after it (records after the snapshot were trimmed), or, for a log that
    has ``max_deleted_position()`` (a Redis >= 7.0 stream), if a record after
    ``position`` was ever deleted (an ``XDEL`` behind older records); and
    :class:`IntegrityError` if the log's last record is before ``position``
    (the log lost records the snapshot has seen). ``OperationalError`` passes
    through.
    """
    if position == ORIGIN:
        _check_complete_history(log)
        return
    last = log.last_position()
    if last < position:
        raise IntegrityError(
            f"the snapshot is at {position} but the log ends at {last}: the log lost "
            "records that the snapshot has seen (or belongs to another stream); "
            "restore the log, or start again with --from-scratch"
        )
    first = log.first_position()
    if first > position:
        raise GapError(
            f"the snapshot is at {position} but the log's first record is {first}: "
            "the records in between were trimmed away; refusing to fold over the gap "
            "(trim with XTRIM MINID <snapshot position> to keep history contiguous)"
        )
    max_deleted = getattr(log, "max_deleted_position", None)
    deleted = max_deleted() if callable(max_deleted) else None
    if deleted is not None and deleted > position:
        raise GapError(
            f"the snapshot is at {position} but record {deleted}, after it, was deleted "
            "from the log (XDEL/XTRIM): records in between were trimmed away; refusing to "
            "fold over the gap (trim with XTRIM MINID <snapshot position> to keep history "
            "contiguous)"
        )


def _check_complete_history(log: EventLog) -> None:
    """GapError if ``log`` says records were deleted from it (see check_continuity)."""
    max_deleted = getattr(log, "max_deleted_position", None)
    deleted = max_deleted() if callable(max_deleted) else None
    count_deleted = getattr(log, "deleted_entries", None)
    count = count_deleted() if callable(count_deleted) else None
    if deleted is None and not count:
        return
    if deleted is not None:
        what = f"entries up to {deleted} were deleted"
    else:
        what = f"{count} entries before its first record {log.first_position()} were deleted"
    if deleted is not None and count:
        what += f" ({count} entries in all)"
    raise GapError(
        f"the stream's history is incomplete: {what}; a from-scratch replay cannot "
        "rebuild the state (restore the stream's history, or start from a snapshot "
        "taken after the deleted records: run without --from-scratch)"
    )


def replay(
    log: EventLog,
    decoder: RecordDecoder,
    state: ShopState = EMPTY,
    after: Position = ORIGIN,
    until: Position | None = None,
    batch_size: int = 10_000,
) -> tuple[ShopState, Position, Outcomes, list[DeadLetter]]:
    """Read-only fold of the records strictly after ``after`` up to and including
    ``until`` (default: the log's end at the time of reading), from ``state``.

    Returns ``(state, last position read, outcomes, dead letters met)``; writes
    nothing (no dead letters, no snapshots). Raises ``OperationalError`` from
    the log, ``GapError``/``IntegrityError`` from :func:`check_continuity`.
    """
    check_continuity(log, after)
    position = after
    outcomes = Outcomes()
    dead: list[DeadLetter] = []
    while True:
        records = log.read_after(position, batch_size)
        if until is not None:
            records = [r for r in records if r.position <= until]
        if not records:
            return state, position, outcomes, dead
        pairs, letters = decoder.decode_records(records)
        state, out = fold_with_outcomes((e for _, e in pairs), state)
        outcomes = outcomes + out
        dead.extend(letters)
        position = records[-1].position


class _SnapshotWriter:
    """Background thread writing the latest submitted snapshot (a slot of one)."""

    def __init__(
        self, store: SnapshotStore, on_fenced: Callable[[str], None], logger: logging.Logger
    ) -> None:
        self._store = store
        self._on_fenced = on_fenced
        self._logger = logger
        self._cond = threading.Condition()
        self._pending: Snapshot | None = None
        self._closed = False
        self.written = 0
        self.last_position: Position | None = None
        self.last_time: float | None = None
        self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, snapshot: Snapshot) -> None:
        """Hand over ``snapshot``; replaces one not yet taken (the latest wins)."""
        with self._cond:
            self._pending = snapshot
            self._cond.notify()

    def close(self) -> None:
        """Discard what is pending, wait for the write in flight, end the thread."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                snapshot, self._pending = self._pending, None
            if snapshot is not None:
                self.write(snapshot)

    def write(self, snapshot: Snapshot) -> bool:
        """Encode and write ``snapshot`` now; log and return ``False`` on failure."""
        try:
            blob = encode_snapshot(snapshot)
            self._store.write(blob)
        except OperationalError as e:
            self._logger.warning(
                "snapshot at %s not written, store unreachable (the next one retries): %s",
                snapshot.position,
                e,
            )
            return False
        except FencedError as e:
            self._logger.error("snapshot at %s refused, lease lost: %s", snapshot.position, e)
            self._on_fenced(f"fenced: {e}")
            return False
        except PermanentError as e:
            self._logger.error("snapshot at %s refused by the store: %s", snapshot.position, e)
            return False
        except Exception:  # a thread must not die silently; the fold goes on
            self._logger.exception("snapshot at %s failed", snapshot.position)
            return False
        with self._cond:
            self.written += 1
            self.last_position = snapshot.position
            self.last_time = time.monotonic()
        self._logger.debug("snapshot written at %s (%d bytes)", snapshot.position, len(blob))
        return True


@dataclass
class _Counters:
    events: int = 0
    orders_accepted: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0

    def add(self, outcomes: Outcomes, dead: int) -> None:
        self.events += outcomes.events
        self.orders_accepted += outcomes.orders_accepted
        for code, n in outcomes.rejections.items():
            self.rejections[code] = self.rejections.get(code, 0) + n
        self.dead_letters += dead


class Runner:
    """The single writer of one log: folds it into a state and snapshots it.

    - ``log``, ``store``: any :class:`EventLog` and :class:`SnapshotStore`;
    - ``decoder``: a :class:`shop_adapters.codec.Decoder` (``decode_records``);
    - ``snapshot_every``: snapshot after this many records (``None``: never by count);
    - ``snapshot_interval``: seconds between snapshots while records arrive
      (``None``: never by time);
    - ``batch_size``: records per read (capped at ``snapshot_every``);
    - ``block_ms``: how long one ``wait_after`` blocks, in milliseconds (also
      how quickly a :meth:`stop` is noticed while idle);
    - ``from_scratch``: ignore the stored snapshot (it is overwritten later);
    - ``progress``: tqdm bar during catch-up (``None``: when stderr is a TTY);
    - ``progress_interval``: seconds between progress log lines (``None``: none);
    - ``records_total``: callable giving the number of records ever appended
      to the log, for ``lag`` (``None``: lag is reported as ``None`` until idle);
    - ``backoff_base``/``backoff_cap``: reconnect back-off, seconds;
    - ``max_retries``: consecutive failed reads before the ``OperationalError``
      is raised (``None``: retry until stopped);
    - ``give_up_after``: seconds of consecutive failures (from the first
      failed attempt of a streak) after which the ``OperationalError`` is
      raised, its message saying how long it tried (``None``: no limit);
    - ``logger``: where progress and warnings go (default ``shop.runner``);
    - ``tune_gc``: while the loop runs, freeze what is alive and raise the
      cyclic GC's generation-0 threshold (see :func:`gc_tuned_for_folding`);
      process-wide, so pass ``False`` when the runner shares a process whose
      GC settings matter.

    :meth:`run` raises :class:`GapError`/:class:`IntegrityError` on a
    discontinuous log (before folding anything), ``OperationalError`` only
    after ``max_retries`` or ``give_up_after``, and
    :class:`~shop_adapters.errors.PermanentError` (wrong password, a key of
    another type...) at once: it is never retried.
    """

    def __init__(
        self,
        log: EventLog,
        store: SnapshotStore,
        decoder: RecordDecoder,
        snapshot_every: int | None = None,
        snapshot_interval: float | None = 30.0,
        batch_size: int = 10_000,
        *,
        block_ms: int = 1_000,
        from_scratch: bool = False,
        progress: bool | None = None,
        progress_interval: float | None = 10.0,
        records_total: Callable[[], int] | None = None,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        max_retries: int | None = None,
        give_up_after: float | None = None,
        logger: logging.Logger | None = None,
        tune_gc: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1 or None, got {snapshot_every}")
        if snapshot_interval is not None and snapshot_interval <= 0:
            raise ValueError(f"snapshot_interval must be > 0 or None, got {snapshot_interval}")
        self.log = log
        self.store = store
        self.decoder = decoder
        self.snapshot_every = snapshot_every
        self.snapshot_interval = snapshot_interval
        self.batch_size = min(batch_size, snapshot_every) if snapshot_every else batch_size
        self.block_ms = block_ms
        self.from_scratch = from_scratch
        self.progress = progress
        self.progress_interval = progress_interval
        self.records_total = records_total
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retries = max_retries
        if give_up_after is not None and not give_up_after >= 0:
            raise ValueError(f"give_up_after must be >= 0 seconds or None, got {give_up_after}")
        self.give_up_after = give_up_after
        self._failing_since: float | None = None
        self.tune_gc = tune_gc
        self._logger = logger or _log
        self._stop = threading.Event()
        self._abandoned: str | None = None
        self.final_snapshot_error: str | None = None
        """Why the final snapshot of :meth:`run` was not written (refused by the
        store's fencing, or still failing after 5 attempts), else ``None``."""
        self._writer = _SnapshotWriter(store, self.abandon, self._logger)
        # The fold's state: only the run() thread writes these. A Transient
        # folds batch after batch in place; an immutable ShopState is taken
        # from it only when one is needed (a snapshot, the summary).
        self._transient = Transient(EMPTY)
        self.position: Position = ORIGIN
        self._total_outcomes = Outcomes()
        self._total_dead = 0
        self._run = _Counters()
        self._restored_from: Position | None = None
        self._since_snapshot = 0
        self._snapshot_clock = time.monotonic()
        self._report_clock = time.monotonic()
        self._report_events = 0

    # -- control (thread-safe) ---------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end after the current batch, then write a final
        snapshot. Thread-safe and safe to call from a signal handler."""
        self._stop.set()

    def abandon(self, reason: str) -> None:
        """End the loop without a final snapshot (the lease was lost). Thread-safe."""
        if self._abandoned is None:
            self._abandoned = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` or :meth:`abandon` was called."""
        return self._stop.is_set()

    # -- the loop -----------------------------------------------------------------

    def run(self, exit_when_idle: bool = False) -> Summary:
        """Restore, catch up, then follow (or, with ``exit_when_idle``, return as
        soon as the log has no record after the last applied one). Returns a
        :class:`Summary`. A normal end writes a final snapshot synchronously."""
        started = time.monotonic()
        self._with_retry(self._restore)
        if self._stop.is_set() and self._abandoned is not None:
            return self._summary("abandoned: " + self._abandoned, started, lag=None)
        self._writer.start()
        try:
            with gc_tuned_for_folding(self.tune_gc):
                reason = self._loop(exit_when_idle)
        finally:
            self._writer.close()
        if self._abandoned is None:
            self._final_snapshot()
        if self._abandoned is not None:  # before the loop ended, or the final write was fenced
            reason = "abandoned: " + self._abandoned
        lag = 0 if reason == "idle" else self._lag()
        summary = self._summary(reason, started, lag)
        self._logger.info("run ended", extra={"fields": summary.to_dict()})
        return summary

    @property
    def state(self) -> ShopState:
        """The immutable state after the last applied record (run() thread only)."""
        return self._transient.persistent()

    def _restore(self) -> None:
        state, self.position = EMPTY, ORIGIN
        self._total_outcomes, self._total_dead = Outcomes(), 0
        self._restored_from = None
        blob = None if self.from_scratch else self.store.read()
        if self.from_scratch:
            self._logger.info("ignoring any stored snapshot (from scratch)")
        elif blob is None:
            self._logger.info("no snapshot: replaying the log from the origin")
        else:
            running = decoder_digest(self.decoder)
            match decode_snapshot(blob):
                case Success(snap) if snap.decoder_digest != running:
                    self._logger.warning(
                        "snapshot was folded with another price list (snapshot: %s, "
                        "running: %s); rebuilding by replay from the origin",
                        describe_decoder_digest(snap.decoder_digest),
                        describe_decoder_digest(running),
                    )
                case Success(snap):
                    state, self.position = snap.state, snap.position
                    self._total_outcomes = snap.outcomes
                    self._total_dead = snap.dead_letters
                    self._restored_from = snap.position
                    self._logger.info(
                        "restored snapshot at %s (%d records folded)",
                        snap.position,
                        snap.events_folded,
                    )
                case Failure(why):
                    self._logger.warning(
                        "snapshot set aside (%s): rebuilding by replay from the origin", why
                    )
        self._transient = Transient(state)
        check_continuity(self.log, self.position)

    def _with_retry(self, action: Callable[[], None]) -> bool:
        """Run ``action``, retrying on OperationalError; False if stopped first."""
        attempt = 0
        while True:
            try:
                action()
                if attempt:
                    self._logger.info("reconnected after %d attempt(s)", attempt)
                self._failing_since = None
                return True
            except OperationalError as e:
                attempt += 1
                if not self._back_off(attempt, e):
                    return False

    def _back_off(self, attempt: int, error: OperationalError) -> bool:
        """After failure number ``attempt``: raise if it is time to give up (see
        :meth:`_check_give_up`), else log and wait the back-off delay. Returns
        ``False`` if :meth:`stop` was called during the wait."""
        self._check_give_up(attempt, error)
        delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
        self._logger.warning(
            "log unreachable (%s); retry %d in %.2fs from %s",
            error,
            attempt,
            delay,
            self.position,
        )
        return not self._stop.wait(delay)

    def _check_give_up(self, attempt: int, error: OperationalError) -> None:
        """Raise if ``attempt`` failures exceed ``max_retries`` or have lasted
        ``give_up_after`` seconds; else return (the caller backs off and retries)."""
        now = time.monotonic()
        if self._failing_since is None or attempt == 1:
            self._failing_since = now
        if self.max_retries is not None and attempt > self.max_retries:
            raise error
        failing = now - self._failing_since
        if self.give_up_after is not None and failing >= self.give_up_after:
            raise OperationalError(
                f"the log is unreachable: gave up after {attempt} attempt(s) over "
                f"{failing:.1f} s (limit {self.give_up_after:g} s): {error}"
            ) from error

    def _loop(self, exit_when_idle: bool) -> str:
        catching_up = True
        bar = self._progress_bar()
        attempt = 0
        try:
            while not self._stop.is_set():
                try:
                    if attempt:
                        # After an outage the log must still hold what we applied.
                        check_continuity(self.log, self.position)
                    if catching_up or exit_when_idle:
                        records = self.log.read_after(self.position, self.batch_size)
                    else:
                        records = self.log.wait_after(self.position, self.batch_size, self.block_ms)
                    if attempt:
                        # Logged before the batch is applied: the position named
                        # is the last one applied before the outage.
                        self._logger.info("reconnected; resuming after %s", self.position)
                        attempt = 0
                        self._failing_since = None
                    if records:
                        self._apply(records)
                except OperationalError as e:
                    attempt += 1
                    if not self._back_off(attempt, e):
                        break
                    continue
                if records:
                    if bar is not None:
                        bar.update(len(records))
                elif catching_up:
                    catching_up = False
                    if bar is not None:
                        bar.close()
                        bar = None
                    self._logger.info("caught up at %s", self.position)
                if not records and exit_when_idle:
                    return "idle"
                self._maybe_snapshot()
                self._maybe_report()
        finally:
            if bar is not None:
                bar.close()
        return "stopped"

    def _apply(self, records: list[Record]) -> None:
        """Decode, dead-letter, fold one batch; state moves only at the end."""
        pairs, letters = self.decoder.decode_records(records)
        for letter in letters:
            written = self.log.dead_letter(letter)
            if written:
                self._logger.warning("dead letter at %s: %s", letter.position, letter.reason[:200])
        # Decoded events are valid, so the fold cannot fail half-way.
        outcomes = self._transient.fold([e for _, e in pairs])
        self.position = records[-1].position
        self._total_outcomes = self._total_outcomes + outcomes
        self._total_dead += len(letters)
        self._run.add(outcomes, len(letters))
        self._since_snapshot += len(records)

    # -- snapshots ------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        return Snapshot(
            state=self.state,
            position=self.position,
            events_folded=self._total_outcomes.events + self._total_dead,
            outcomes=self._total_outcomes,
            dead_letters=self._total_dead,
            decoder_digest=decoder_digest(self.decoder),
        )

    def _maybe_snapshot(self) -> None:
        if self._since_snapshot == 0:
            return
        now = time.monotonic()
        due = (self.snapshot_every is not None and self._since_snapshot >= self.snapshot_every) or (
            self.snapshot_interval is not None
            and now - self._snapshot_clock >= self.snapshot_interval
        )
        if due:
            self._writer.submit(self._snapshot())
            self._since_snapshot = 0
            self._snapshot_clock = now

    def _final_snapshot(self) -> None:
        if self._since_snapshot == 0 and self._writer.last_position == self.position:
            return
        if self._restored_from == self.position and self._run.events + self._run.dead_letters == 0:
            return  # the stored snapshot is already this state
        snapshot = self._snapshot()
        for attempt in range(1, 6):
            if self._writer.write(snapshot):
                return
            if self._abandoned is not None:
                self.final_snapshot_error = (
                    f"final snapshot at {self.position} refused ({self._abandoned})"
                )
                return
            time.sleep(backoff_delay(attempt, self.backoff_base, self.backoff_cap))
        self.final_snapshot_error = f"final snapshot at {self.position} not written"
        self._logger.error(
            "final snapshot at %s not written; the next start replays from the last one",
            self.position,
        )

    # -- reporting ------------------------------------------------------------------

    def _lag(self) -> int | None:
        if self.records_total is None:
            return None
        try:
            total = self.records_total()
        except (OperationalError, PermanentError):
            return None  # lag is informative only; the reads report the error
        return max(0, total - self._total_outcomes.events - self._total_dead)

    def _progress_bar(self) -> tqdm[Any] | None:
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show:
            return None
        return tqdm(total=self._lag(), unit="rec", desc="catch-up", file=sys.stderr, smoothing=0.1)

    def _maybe_report(self) -> None:
        if self.progress_interval is None:
            return
        now = time.monotonic()
        elapsed = now - self._report_clock
        if elapsed < self.progress_interval:
            return
        events = self._run.events
        self._logger.info(
            "progress",
            extra={
                "fields": {
                    "position": str(self.position),
                    "events": events,
                    "events_per_s": round((events - self._report_events) / elapsed, 1),
                    "lag": self._lag(),
                    "orders_accepted": self._run.orders_accepted,
                    "rejections": dict(sorted(self._run.rejections.items())),
                    "dead_letters": self._run.dead_letters,
                    "snapshots_written": self._writer.written,
                    "last_snapshot": None
                    if self._writer.last_position is None
                    else str(self._writer.last_position),
                }
            },
        )
        self._report_clock = now
        self._report_events = events

    def _summary(self, reason: str, started: float, lag: int | None) -> Summary:
        return Summary(
            events_applied=self._run.events,
            orders_accepted=self._run.orders_accepted,
            rejections=dict(self._run.rejections),
            dead_letters=self._run.dead_letters,
            last_position=self.position,
            lag=lag,
            snapshots_written=self._writer.written,
            digest=state_digest(self.state),
            restored_from=self._restored_from,
            total_events=self._total_outcomes.events,
            total_dead_letters=self._total_dead,
            stop_reason=reason,
            elapsed_s=time.monotonic() - started,
        )

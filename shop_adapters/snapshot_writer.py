"""The runner's snapshot writer: a background thread (or a forked child) that
encodes and writes the snapshots a :class:`~shop_adapters.runner.Runner` hands
it, and the :class:`RunnerObserver` protocol the runner reports to.

A snapshot is a reference to an immutable state, so handing it over costs
nothing; the writer keeps a slot of one (the latest wins), logs one line per
failure and backs off, keeps the snapshot history (:mod:`shop_adapters.history`),
and tells the runner when the store refuses a write (fenced: the lease is lost;
an ``IntegrityError``: the log no longer holds the state's history).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from logging import DEBUG, ERROR, WARNING
from typing import Any, Generic, Protocol, TypeVar

from .catchup import Batch
from .domain import Domain
from .envelope import Snapshot, encode_snapshot
from .errors import FencedError, IntegrityError, OperationalError, PermanentError
from .history import HistoryEntry, HistoryPolicy, SnapshotHistory
from .protocols import Position, SnapshotStore
from .retry import event

__all__ = ["RunnerObserver", "SnapshotWriter"]

S = TypeVar("S")


class RunnerObserver(Protocol):
    """What a runner reports as it goes (``shop_adapters.metrics`` keeps metrics of it)."""

    def restored(self, seconds: float, position: Position, records: int) -> None:
        """The restore took ``seconds`` and left the fold at ``position``."""

    def batch(self, batch: Batch, seconds: float, records_total: int) -> None:
        """A batch was consumed (and its dead letters and outcomes written) in ``seconds``."""

    def snapshot(self, written: bool, seconds: float) -> None:
        """A snapshot write ended: ``written``, or failed, after ``seconds``."""

    def phase(self, following: bool) -> None:
        """Caught up and following now (``True``), or no longer (``False``)."""


class SnapshotWriter(Generic[S]):
    """Background thread writing the latest submitted snapshot (a slot of one)."""

    def __init__(
        self,
        store: SnapshotStore,
        domain: Domain[S, Any],
        on_fenced: Callable[[str], None],
        on_fatal: Callable[[Exception], None],
        logger: logging.Logger,
        observer: RunnerObserver | None,
        history: tuple[SnapshotHistory, HistoryPolicy] | None,
    ) -> None:
        self.observer = observer
        self.history = history
        self._store = store
        self._domain = domain
        self._on_fenced = on_fenced
        self._on_fatal = on_fatal
        self._logger = logger
        self._cond = threading.Condition()
        self._pending: Snapshot[S] | None = None
        self._closed = False
        self._child: int | None = None
        self.written = 0
        self.last_position: Position | None = None
        self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)

    def start(self) -> None:
        """Start the writer thread (once, before the first :meth:`submit`)."""
        self._thread.start()

    def submit(self, snapshot: Snapshot[S]) -> None:
        """Hand over ``snapshot``; replaces one not yet taken (the latest wins)."""
        with self._cond:
            self._pending = snapshot
            self._cond.notify()

    def close(self) -> None:
        """Discard what is pending, wait for the write in flight (a child's too), end
        the thread."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()
        self.wait_child()

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                snapshot, self._pending = self._pending, None
            if snapshot is None:
                continue
            if self.write(snapshot):
                failures = 0
                continue
            # Back off before the next attempt (a full disk fails every time).
            failures += 1
            delay = min(60.0, 0.5 * 2 ** min(failures - 1, 10))
            with self._cond:
                self._cond.wait_for(lambda: self._closed, timeout=delay)

    def write(self, snapshot: Snapshot[S], count: bool = True) -> bool:
        """Encode and write ``snapshot`` now; log one line and return ``False`` on failure.
        (``count=False``: a forked child's write, counted by the parent.)"""
        at = snapshot.position
        log = self._logger
        fields = {"position": str(at), "records": snapshot.records}
        started = time.perf_counter()
        try:
            blob = encode_snapshot(snapshot, self._domain)
            anchor = snapshot.anchor
            self._store.write(blob, None if anchor is None else (at, anchor))
        except OperationalError as e:
            event(
                log,
                WARNING,
                "snapshot_failed",
                "snapshot at %s not written, store unreachable: %s",
                at,
                e,
                **fields,
            )
            self._observe_snapshot(False, started)
            return False
        except (FencedError, IntegrityError) as e:
            event(
                log,
                ERROR,
                "snapshot_refused",
                "snapshot at %s refused by the store: %s",
                at,
                e,
                **fields,
            )
            self._observe_snapshot(False, started)
            if isinstance(e, FencedError):
                self._on_fenced(f"fenced: {e}")
            else:
                self._on_fatal(e)
            return False
        except (PermanentError, OSError) as e:
            event(log, ERROR, "snapshot_failed", "snapshot at %s not written: %s", at, e, **fields)
            self._observe_snapshot(False, started)
            return False
        except Exception:  # a thread must not die silently; the fold goes on
            log.exception(
                "snapshot at %s failed",
                at,
                extra={"fields": {"event": "snapshot_failed", **fields}},
            )
            self._observe_snapshot(False, started)
            return False
        seconds = self._observe_snapshot(True, started)
        with self._cond:
            if count:
                self.written += 1
            self.last_position = at
        if self.history is not None:
            self._keep(HistoryEntry(at, snapshot.records), blob)
        event(
            log,
            DEBUG,
            "snapshot_written",
            "snapshot written at %s (%d bytes, %.3f s)",
            at,
            len(blob),
            seconds,
            bytes=len(blob),
            seconds=round(seconds, 4),
            **fields,
        )
        return True

    def fork(self, snapshot: Callable[[], Snapshot[S]]) -> bool:
        """Write ``snapshot()`` from a forked child process (as Redis's ``BGSAVE``
        does): the child takes the immutable state from its copy of the fold,
        encodes and writes it through the same guarded store and exits; this
        process goes on folding at once, paying only the ``fork``. ``False``
        (nothing done) while the previous child still writes. A thread reaps
        the child and counts the write. Source: fork(2); redis-py reconnects in
        a child by itself (its connection pool checks the process id)."""
        with self._cond:
            if self._child is not None:
                return False
            self._child = 0  # reserved; the fork happens outside the lock
        pid = os.fork()
        if pid == 0:  # the child: write, then leave without running any cleanup
            ok = False
            try:
                ok = self.write(snapshot(), count=False)
            finally:
                os._exit(0 if ok else 1)
        with self._cond:
            self._child = pid
        threading.Thread(target=self._reap, args=(pid,), name="snapshot-child", daemon=True).start()
        return True

    def _reap(self, pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        with self._cond:
            self._child = None
            if os.waitstatus_to_exitcode(status) == 0:
                self.written += 1
            self._cond.notify_all()

    def wait_child(self) -> None:
        """Wait until no child is writing."""
        with self._cond:
            self._cond.wait_for(lambda: self._child is None)

    def _keep(self, entry: HistoryEntry, blob: bytes) -> None:
        """Add the snapshot just written to the history and prune it (a cache: a
        failure is logged, never fatal)."""
        assert self.history is not None
        history, policy = self.history
        try:
            history.add(entry, blob)
            history.prune(policy)
        except (OperationalError, PermanentError, OSError) as e:
            event(
                self._logger,
                WARNING,
                "history_failed",
                "snapshot history not updated: %s",
                e,
                position=str(entry.position),
            )

    def _observe_snapshot(self, written: bool, started: float) -> float:
        seconds = time.perf_counter() - started
        if self.observer is not None:
            self.observer.snapshot(written, seconds)
        return seconds

"""Prometheus metrics and a health endpoint for a runner (prometheus-client).

:class:`RunnerMetrics` observes a :class:`~shop_adapters.runner.Runner` (it is
the runner's ``observer``) and keeps these metrics, all labelled by ``stream``
(names after the Prometheus conventions: one prefix, base units, ``_total``
on counters; Source: prometheus.io/docs/practices/naming):

==========================================  =========  ==========================================
name                                        type       meaning
==========================================  =========  ==========================================
``shop_records_total{outcome}``             counter    records consumed, by outcome: ``accepted``,
                                                       ``rejected``, ``duplicate``, ``dead_letter``
``shop_dead_letters_total``                 counter    records dead-lettered
``shop_lag_records``                        gauge      records appended after the last consumed one
``shop_lag_seconds``                        gauge      head entry time minus consumed entry time
                                                       (Redis IDs carry milliseconds)
``shop_batch_duration_seconds``             histogram  time to decode, fold and publish a batch
``shop_snapshot_age_seconds``               gauge      seconds since the last snapshot was written
``shop_snapshot_duration_seconds``          histogram  time to encode and write a snapshot
``shop_snapshots_total{result}``            counter    snapshot writes: ``written``, ``failed``
``shop_restore_duration_seconds``           gauge      time the last restore took
``shop_lease_held``                         gauge      1 while this runner holds the lease
``shop_lease_token``                        gauge      the fencing token of the lease held
``shop_following``                          gauge      1 once caught up, while following
==========================================  =========  ==========================================

:func:`serve` starts an HTTP server (a thread) with ``/metrics`` (the text
exposition format) and ``/healthz``: ``200`` with ``{"healthy": true, ...}``
while the runner follows and holds its lease, else ``503`` saying why.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from .catchup import Batch
from .errors import OperationalError, PermanentError
from .protocols import EventLog, Position

__all__ = ["MetricsServer", "RunnerMetrics", "serve"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RunnerMetrics:
    """The metrics of the runners of one process, in ``registry`` (default: a new one).

    Use :meth:`for_stream` to get the observer of one stream's runner.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "shop_records", "Records consumed, by outcome.", ["stream", "outcome"], registry=r
        )
        self.dead_letters = Counter(
            "shop_dead_letters", "Records dead-lettered.", ["stream"], registry=r
        )
        self.lag_records = Gauge(
            "shop_lag_records", "Records appended after the last consumed.", ["stream"], registry=r
        )
        self.lag_seconds = Gauge(
            "shop_lag_seconds",
            "Head entry time minus consumed entry time (Redis IDs), seconds.",
            ["stream"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "shop_batch_duration_seconds",
            "Time to decode, fold and publish one batch.",
            ["stream"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.snapshot_age = Gauge(
            "shop_snapshot_age_seconds",
            "Seconds since the last snapshot written.",
            ["stream"],
            registry=r,
        )
        self.snapshot_seconds = Histogram(
            "shop_snapshot_duration_seconds",
            "Time to encode and write a snapshot.",
            ["stream"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.snapshots = Counter(
            "shop_snapshots", "Snapshot writes, by result.", ["stream", "result"], registry=r
        )
        self.restore_seconds = Gauge(
            "shop_restore_duration_seconds", "Time the last restore took.", ["stream"], registry=r
        )
        self.lease_held = Gauge(
            "shop_lease_held", "1 while this runner holds the lease.", ["stream"], registry=r
        )
        self.lease_token = Gauge(
            "shop_lease_token", "Fencing token of the lease held.", ["stream"], registry=r
        )
        self.following = Gauge(
            "shop_following", "1 once caught up, while following.", ["stream"], registry=r
        )

    def for_stream(self, stream: str, log: EventLog) -> StreamObserver:
        """The observer of the runner of ``stream`` (reading ``log`` for the lag)."""
        return StreamObserver(self, stream, log)


class StreamObserver:
    """A runner's observer: the runner calls these as things happen (see the Runner)."""

    def __init__(self, metrics: RunnerMetrics, stream: str, log: EventLog) -> None:
        self.m = metrics
        self.stream = stream
        self._log = log
        self._position: Position | None = None
        self._records = 0
        self._last_snapshot: float | None = None
        self.following = False
        self.lease_token: int | None = None
        for outcome in ("accepted", "rejected", "duplicate", "dead_letter"):
            metrics.records.labels(stream, outcome)
        metrics.dead_letters.labels(stream)
        metrics.snapshots.labels(stream, "written")
        metrics.snapshots.labels(stream, "failed")
        metrics.lag_records.labels(stream).set_function(self._lag_records)
        metrics.lag_seconds.labels(stream).set_function(self._lag_seconds)
        metrics.snapshot_age.labels(stream).set_function(self._snapshot_age)

    # -- called by the runner ------------------------------------------------------

    def restored(self, seconds: float, position: Position, records: int) -> None:
        """The state was restored (or not: at the origin) in ``seconds``."""
        self.m.restore_seconds.labels(self.stream).set(seconds)
        self._position, self._records = position, records

    def batch(self, batch: Batch, seconds: float, records_total: int) -> None:
        """A batch was consumed in ``seconds``; ``records_total`` since the origin."""
        m, s = self.m, self.stream
        tally = batch.tally
        m.records.labels(s, "accepted").inc(sum(tally.accepted.values()))
        m.records.labels(s, "rejected").inc(sum(tally.rejected.values()))
        m.records.labels(s, "duplicate").inc(tally.duplicates)
        m.records.labels(s, "dead_letter").inc(len(batch.dead_letters))
        m.dead_letters.labels(s).inc(len(batch.dead_letters))
        m.batch_seconds.labels(s).observe(seconds)
        self._position, self._records = batch.position, records_total

    def snapshot(self, written: bool, seconds: float) -> None:
        """A snapshot write ended (``written`` or failed) after ``seconds``."""
        self.m.snapshots.labels(self.stream, "written" if written else "failed").inc()
        if written:
            self.m.snapshot_seconds.labels(self.stream).observe(seconds)
            self._last_snapshot = time.monotonic()

    def phase(self, following: bool) -> None:
        """Caught up and following (``True``), or not (restoring, catching up, stopped)."""
        self.following = following
        self.m.following.labels(self.stream).set(1 if following else 0)

    def lease(self, token: int | None) -> None:
        """The lease was taken with ``token`` or lost/released (``None``)."""
        self.lease_token = token
        self.m.lease_held.labels(self.stream).set(0 if token is None else 1)
        self.m.lease_token.labels(self.stream).set(token or 0)

    # -- read at scrape time ------------------------------------------------------

    def _lag_records(self) -> float:
        try:
            added = self._log.history().added
        except (OperationalError, PermanentError):
            return float("nan")
        return float("nan") if added is None else float(max(0, added - self._records))

    def _lag_seconds(self) -> float:
        try:
            last = self._log.last_position()
        except (OperationalError, PermanentError):
            return float("nan")
        if self._position is None or last.major < 10**11:  # not a Redis (ms) ID
            return float("nan")
        return max(0.0, (last.major - max(self._position.major, 0)) / 1000)

    def _snapshot_age(self) -> float:
        if self._last_snapshot is None:
            return float("nan")
        return time.monotonic() - self._last_snapshot

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, detail)``: healthy while following and holding the lease."""
        held = self.lease_token is not None
        reasons = []
        if not held:
            reasons.append("the lease is not held (waiting for it, or lost)")
        if not self.following:
            reasons.append("not following (restoring or catching up)")
        detail = {
            "stream": self.stream,
            "following": self.following,
            "lease_held": held,
            "position": None if self._position is None else str(self._position),
            "reason": "; ".join(reasons) or None,
        }
        return not reasons, detail


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged."""


class MetricsServer:
    """The HTTP server of :func:`serve`; :meth:`close` stops it."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.port: int = httpd.server_port

    def close(self) -> None:
        """Stop serving and join the thread."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def serve(
    metrics: RunnerMetrics,
    port: int,
    health: Callable[[], Iterable[tuple[bool, dict[str, Any]]]],
    addr: str = "127.0.0.1",
) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` (0: any free port) in a
    daemon thread. ``health()`` gives each runner's ``(healthy, detail)``; the
    endpoint is healthy when every one is (and there is at least one)."""
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/healthz":
            states = list(health())
            healthy = bool(states) and all(ok for ok, _ in states)
            body = json.dumps({"healthy": healthy, "runners": [d for _, d in states]}).encode()
            status = "200 OK" if healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [body]
        if path == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    try:
        httpd = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_Quiet)
    except OSError as e:  # a port in use, an address that is not this machine's
        raise OSError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e}") from e
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)

"""``--pool``: the runner's command line as a member of a pool (:mod:`shop_adapters.pool`).

``python -m shop_adapters.redis_runner --pool --redis-url URL [--cluster]`` joins the
pool serving every partition of the domain's registry (the shop: every shop in the
set ``shops``): it claims a fair share of them by lease, runs each one's runner in a
thread of its own, hands them over when workers join, and takes over those of a
worker that died. The runner's other options apply to every partition
(``--snapshot-every``, ``--snapshot-interval``, ``--batch-size``, ``--key-window``,
``--lease-ttl``, ``--wait-replicas``, ``--metrics-port``...).

Exit status: 0 after SIGINT/SIGTERM (every partition is released after its final
snapshot, and the worker leaves the pool; a second signal during that only logs
"already stopping"); 1 with one error line if Redis refuses for good, or stays
unreachable at start for ``--give-up-after`` seconds.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from logging import ERROR, INFO, WARNING
from pathlib import Path
from types import FrameType
from typing import Any

from .cli_common import (
    LOG_CONTEXT,
    Partitioning,
    clean_error_message,
    make_client,
    mask_url,
    resolve_url,
    setup_logging,
)
from .domain import Domain
from .errors import OperationalError, PermanentError
from .history import HistoryPolicy
from .metrics import RunnerMetrics, StreamObserver, serve
from .pool import PoolConfig, PoolKeys, Worker
from .protocols import EventLog
from .redis_cluster import ReplicaWait
from .redis_errors import refuse_eviction
from .retry import RetryPolicy, Stopped, event
from .runner import RunnerConfig, RunnerObserver, gc_tuned_for_folding

__all__ = ["run_pool"]

_log = logging.getLogger("shop.pool")

BLOCK_MS = 1_000
"""How long one XREAD BLOCK waits, in milliseconds (as the single-log runner)."""


def run_pool(
    domain: Domain[Any, Any],
    partitioning: Partitioning,
    *,
    redis_url: str | None,
    data_dir: Path,
    cluster: bool | None,
    snapshot_every: int | None,
    snapshot_interval: float,
    log_format: str,
    batch_size: int,
    progress_interval: float,
    lease_ttl: float,
    give_up_after: float | None,
    allow_eviction: bool,
    key_window: int,
    metrics_port: int | None,
    metrics_addr: str,
    wait_replicas: int,
    wait_replicas_timeout: float,
    history_last: int,
    history_every: int,
    history_limit: int,
) -> None:
    """Serve the pool of ``partitioning.registry`` until SIGINT/SIGTERM (see the module)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            event(_log, WARNING, "signal", "%s: already stopping", signal.Signals(signum).name)
            return
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    setup_logging(log_format, context={"registry": partitioning.registry})
    url = resolve_url(redis_url, data_dir)
    event(_log, INFO, "connect", "pool of %s at %s", partitioning.registry, mask_url(url))
    retry = RetryPolicy(give_up_after=give_up_after)
    client = None
    try:
        for attempt in retry.attempts("connecting", stop=stop, logger=_log):
            with attempt:
                client = make_client(url, BLOCK_MS, cluster=cluster)
                if allow_eviction:
                    event(_log, WARNING, "allow_eviction", "--allow-eviction: keys may vanish")
                else:
                    refuse_eviction(client)
    except Stopped:
        return
    except (OperationalError, PermanentError) as e:
        event(_log, ERROR, "stopped_by_error", "%s", clean_error_message(e))
        sys.exit(1)
    assert client is not None
    wait = ReplicaWait.of(wait_replicas, wait_replicas_timeout)
    runner_config = RunnerConfig(
        snapshot_every=snapshot_every,
        snapshot_interval=snapshot_interval,
        batch_size=batch_size,
        block_ms=BLOCK_MS,
        progress=False,
        progress_interval=progress_interval,
        retry=RetryPolicy(give_up_after=None),
        key_window=key_window,
        tune_gc=False,
        history=None
        if history_limit == 0
        else HistoryPolicy(min(history_last, history_limit), history_every, history_limit),
    )
    config = PoolConfig(lease_ttl_s=lease_ttl, tick_s=min(0.5, lease_ttl / 4), wait=wait)
    observers: dict[str, StreamObserver] = {}
    metrics = RunnerMetrics() if metrics_port is not None else None

    def observer_for(partition: str, log: EventLog) -> RunnerObserver | None:
        if metrics is None:
            return None
        stream = partitioning.keys(partition).stream
        if stream not in observers:
            observers[stream] = metrics.for_stream(stream, log)
        return observers[stream]

    worker = Worker(
        client,
        partitioning.keys,
        domain,
        runner_config,
        PoolKeys.for_registry(partitioning.registry),
        config,
        observer_for=observer_for,
    )
    LOG_CONTEXT["runner"] = worker.worker_id
    server = None
    if metrics is not None and metrics_port is not None:

        def health() -> list[tuple[bool, dict[str, Any]]]:
            view = worker.view
            ticking = time.monotonic() - worker.last_tick < 3 * max(config.tick_s, 1.0)
            detail = {
                "worker": worker.worker_id,
                "ticks": worker.ticks,
                "workers": list(view.workers) if view else [],
                "holding": worker.holding(),
            }
            return [(ticking, detail)]

        server = serve(metrics, metrics_port, health, metrics_addr)
        event(
            _log,
            INFO,
            "metrics",
            "metrics on http://%s:%d/metrics and /healthz",
            metrics_addr,
            server.port,
            port=server.port,
        )
    try:
        # The worker owns its process: the GC setting that helps folding is taken once
        # for all its runners (each runner's own tune_gc stays off: it is process-wide).
        with gc_tuned_for_folding(True):
            worker.run(stop)
    finally:
        if server is not None:
            server.close()
        client.close()

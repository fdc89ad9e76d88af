"""The runner's command line, generic over the domain: :func:`runner_command`.

``runner_command(domain_cli)`` builds the click command that folds one Redis
stream with :class:`~shop_adapters.runner.Runner`: it reads and decodes the
stored snapshot, takes the single-writer lease ``<stream>:lease`` (see
:mod:`shop_adapters.lease`), runs, publishing the outcome of every record to
``<stream>:outcomes`` (:class:`~shop_adapters.journals.RedisOutcomeJournal`)
and honouring idempotency keys, and releases the lease. A second runner on
the same stream waits for the lease and takes over when the first one stops
or dies. ``python -m shop_adapters.redis_runner`` is this command for the shop;
your own domain gets the same command with ``runner_command(DomainCli(...))``.

Exit status: 0 after ``--exit-when-idle`` drained the log, or after SIGINT /
SIGTERM (a final snapshot is written first; also while still waiting for the
lease; a second signal during the shutdown only logs "already stopping"); 1,
with one error line and no traceback, if the log does not hold the history
of the state (:class:`~shop_adapters.errors.GapError`,
:class:`~shop_adapters.errors.IntegrityError`), if Redis refuses for good
(:class:`~shop_adapters.errors.PermanentError`), if Redis stayed unreachable
for ``--give-up-after`` seconds (default 60 with ``--exit-when-idle``, else
retry for ever), or if ``--exit-when-idle`` could not write its final
snapshot; 2 for bad options (click).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from logging import ERROR, INFO, WARNING
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NoReturn

import click
import redis

from . import audit
from .archive import ArchivedLog
from .catchup import Checkpoint
from .cli_common import (
    CleanErrorsCommand,
    DomainCli,
    FiniteFloat,
    clean_error_message,
    connection_options,
    make_client,
    mask_url,
    resolve_url,
    setup_logging,
)
from .errors import GapError, IntegrityError, OperationalError, PermanentError
from .history import HistoryPolicy, RedisSnapshotHistory
from .idempotency import DEFAULT_WINDOW
from .journals import RedisOutcomeJournal
from .keys import StreamKeys
from .lease import Lease, default_owner
from .logs.file import FileLog
from .logs.redis_stream import RedisStreamLog
from .metrics import RunnerMetrics, serve
from .protocols import EventLog
from .redis_cluster import (
    ReplicatedSnapshotStore,
    ReplicaWait,
    RoutedLog,
    is_cluster,
)
from .redis_errors import redis_errors, refuse_eviction, refuse_own_stream
from .retry import RetryPolicy, Stopped, event
from .runner import Runner, RunnerConfig, Summary
from .snapshots.redis import RedisSnapshotStore

__all__ = ["BLOCK_MS", "GIVE_UP_AFTER_IDLE", "runner_command"]

_log = logging.getLogger("shop.redis_runner")

BLOCK_MS = 1_000
"""How long one XREAD BLOCK waits, in milliseconds (a stop is noticed this fast)."""

GIVE_UP_AFTER_IDLE = 60.0
"""Default ``--give-up-after`` with ``--exit-when-idle``, seconds."""


def _print_summary(summary: Summary, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(summary.to_dict()))
    else:
        click.echo(summary.text())


def runner_command(domain_cli: DomainCli) -> click.Command:
    """The runner's click command for the domain ``domain_cli`` builds (see the module)."""

    @click.command(cls=CleanErrorsCommand)
    @connection_options
    @click.option(
        "--snapshot-every",
        type=click.IntRange(min=1),
        default=None,
        help="Snapshot after this many records (default: by time only).",
    )
    @click.option(
        "--snapshot-interval",
        type=FiniteFloat(min=0, min_open=True),
        default=30.0,
        show_default=True,
        help="Seconds between snapshots while records arrive.",
    )
    @domain_cli.add_options
    @click.option("--from-scratch", is_flag=True, help="Ignore the stored snapshot; replay all.")
    @click.option(
        "--exit-when-idle", is_flag=True, help="Drain the log, snapshot, print a summary, exit 0."
    )
    @click.option(
        "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
    )
    @click.option("--batch-size", type=click.IntRange(min=1), default=10_000, show_default=True)
    @click.option(
        "--progress/--no-progress",
        default=None,
        help="Catch-up progress bar on stderr (default: when stderr is a terminal).",
    )
    @click.option(
        "--progress-interval",
        type=FiniteFloat(min=0, min_open=True),
        default=10.0,
        show_default=True,
        help="Seconds between progress log lines.",
    )
    @click.option(
        "--lease-ttl",
        type=FiniteFloat(min=0.1, max=86_400),
        default=10.0,
        show_default=True,
        help="Seconds the single-writer lease lives without renewal (at most a day).",
    )
    @click.option(
        "--give-up-after",
        type=FiniteFloat(min=0),
        default=None,
        help="Exit 1 after this many seconds of consecutive failed attempts to reach Redis "
        f"(default: {GIVE_UP_AFTER_IDLE:g} with --exit-when-idle, else retry for ever). "
        "Wrong passwords, a DB index out of range and keys of another type are never "
        "retried: they exit 1 at once.",
    )
    @click.option(
        "--key-window",
        type=click.IntRange(min=1),
        default=DEFAULT_WINDOW,
        show_default=True,
        help="Remember each idempotency key for this many records (a duplicate within "
        "them is answered, not applied). Changing it rebuilds the state by replay.",
    )
    @click.option(
        "--accept-gap",
        is_flag=True,
        help="Decide to fold on over records deleted after the snapshot (a GapError "
        "stopped the runner). Needs --reason; recorded in <stream>:audit.",
    )
    @click.option(
        "--accept-rollback",
        is_flag=True,
        help="Decide to rebuild from the log as it is now, after a rollback, a wipe or a "
        "replaced stream (an IntegrityError stopped the runner); the old outcome journal "
        "and dead letters are renamed aside. Needs --reason; recorded in <stream>:audit.",
    )
    @click.option("--reason", default=None, help="Why, for the audit trail (with --accept-*).")
    @click.option(
        "--archive",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="Read the records `inspect trim --archive FILE` archived before the stream's "
        "own (to rebuild a stream whose head was trimmed, e.g. after a new domain "
        "configuration or --key-window set the snapshot aside).",
    )
    @click.option(
        "--snapshot-in-child/--snapshot-in-thread",
        default=False,
        show_default=True,
        help="Write periodic snapshots from a forked child process (like Redis's BGSAVE), "
        "so serialising never shares the interpreter with the fold; or from a thread.",
    )
    @click.option(
        "--history-last",
        type=click.IntRange(min=1),
        default=2,
        show_default=True,
        help="Past snapshots kept in <stream>:history: the most recent this many...",
    )
    @click.option(
        "--history-every",
        type=click.IntRange(min=1),
        default=100_000,
        show_default=True,
        help="...plus one every this many records...",
    )
    @click.option(
        "--history-limit",
        type=click.IntRange(min=0),
        default=8,
        show_default=True,
        help="...at most this many in all (0: keep no history). Time travel (inspect "
        "state --at) starts from the nearest; inspect trim never trims above the oldest.",
    )
    @click.option(
        "--metrics-port",
        type=click.IntRange(min=0, max=65535),
        default=None,
        help="Serve Prometheus metrics on /metrics and health on /healthz at this port "
        "(0: any free port, logged).",
    )
    @click.option(
        "--metrics-addr", default="127.0.0.1", show_default=True, help="Address to serve on."
    )
    @click.option(
        "--allow-eviction",
        is_flag=True,
        help="Run even if Redis may evict keys (maxmemory with a policy other than "
        "noeviction). Unsafe: the stream, snapshot and lease may vanish.",
    )
    @click.option(
        "--wait-replicas",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="After each snapshot write, WAIT for this many replicas to acknowledge it "
        "(and so every write before it: records, outcomes, dead letters) on the "
        "connection that wrote. 0: do not wait (a failover may lose the last writes).",
    )
    @click.option(
        "--wait-replicas-timeout",
        type=FiniteFloat(min=0.001, max=3600),
        default=1.0,
        show_default=True,
        help="Seconds WAIT waits for the replicas; fewer in time fails the write (retried).",
    )
    @click.option(
        "--pool",
        is_flag=True,
        help="Join the pool of runners serving every partition in the registry "
        "(see shop_adapters.pool): claim a fair share by lease, run each, hand them over "
        "when workers join or die. Not with --stream, --exit-when-idle, --from-scratch, "
        "--accept-*, --archive or --snapshot-in-child (a fork of a threaded process).",
    )
    def main(**options: Any) -> None:
        """Fold the Redis stream into the domain's state; snapshot; follow the tail.

        When the log no longer holds the state's history the runner stops (exit
        1) and names the decision that resolves it: --accept-gap or
        --accept-rollback, with --reason, recorded in <stream>:audit.

        Exit status: 0 when drained (--exit-when-idle) or stopped by SIGINT/SIGTERM;
        1 with one error line if the log does not hold the state's history, Redis
        refuses for good or stays unreachable for --give-up-after seconds; 2 for
        bad options.
        """
        if options.pop("pool"):
            _pool(domain_cli, options)
            return
        domain = domain_cli.take(options)
        gap, rollback, reason = (
            options.pop("accept_gap"),
            options.pop("accept_rollback"),
            options.pop("reason"),
        )
        if gap and rollback:
            raise click.UsageError("--accept-gap and --accept-rollback are two decisions: take one")
        accept: Literal["gap", "rollback"] | None = (
            "gap" if gap else "rollback" if rollback else None
        )
        if accept is not None and not (reason or "").strip():
            raise click.UsageError(f"--accept-{accept} needs --reason TEXT, for the audit trail")
        if accept is None and reason is not None:
            raise click.UsageError("--reason goes with --accept-gap or --accept-rollback")
        _run(domain, accept=accept, reason=reason, **options)

    main.help = (main.help or "").replace("the domain's", f"the {domain_cli.name}'s")
    return main


def _pool(domain_cli: DomainCli, options: dict[str, Any]) -> None:
    """``--pool``: refuse the single-log options, then run a pool worker."""
    partitioning = domain_cli.partitioning
    if partitioning is None:
        raise click.UsageError(f"the {domain_cli.name} has no partitions: --pool needs them")
    ctx = click.get_current_context()
    for name in (
        "stream",
        "partition",
        "exit_when_idle",
        "from_scratch",
        "accept_gap",
        "accept_rollback",
        "reason",
        "archive",
        "snapshot_in_child",
    ):
        source = ctx.get_parameter_source(name)
        if source is not None and source is not click.core.ParameterSource.DEFAULT:
            flag = "--" + (partitioning.name if name == "partition" else name.replace("_", "-"))
            raise click.UsageError(f"{flag} names one log; a --pool worker serves them all")
    for name in (
        "stream",
        "partition",
        "exit_when_idle",
        "from_scratch",
        "accept_gap",
        "accept_rollback",
        "reason",
        "progress",
        "archive",
        "snapshot_in_child",
    ):
        options.pop(name, None)
    domain = domain_cli.take(options)
    from .pool_command import run_pool

    run_pool(domain, partitioning, **options)


def _run(
    domain: Any,
    *,
    redis_url: str | None,
    stream: str,
    data_dir: Path,
    snapshot_every: int | None,
    snapshot_interval: float,
    from_scratch: bool,
    exit_when_idle: bool,
    log_format: str,
    batch_size: int,
    progress: bool | None,
    progress_interval: float,
    lease_ttl: float,
    give_up_after: float | None,
    allow_eviction: bool,
    key_window: int,
    accept: Literal["gap", "rollback"] | None,
    reason: str | None,
    metrics_port: int | None,
    metrics_addr: str,
    history_last: int,
    history_every: int,
    history_limit: int,
    snapshot_in_child: bool,
    archive: Path | None,
    cluster: bool | None,
    wait_replicas: int,
    wait_replicas_timeout: float,
) -> None:
    stop = threading.Event()
    current: list[Runner[Any, Any]] = []

    def fail(error: BaseException) -> NoReturn:
        name = "gap" if isinstance(error, GapError) else type(error).__name__
        event(
            _log,
            ERROR,
            "stopped_by_error",
            "%s",
            clean_error_message(error) + _resolution(error, stream),
            error=name,
        )
        sys.exit(1)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            # Stays installed: a second signal must not kill the final snapshot.
            event(_log, WARNING, "signal", "%s: already stopping", signal.Signals(signum).name)
            return
        stop.set()
        for r in list(current):
            r.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    owner = default_owner()
    setup_logging(log_format, context={"stream": stream, "runner": owner})
    if give_up_after is None and exit_when_idle:
        give_up_after = GIVE_UP_AFTER_IDLE
    keys = StreamKeys.for_stream(stream)
    url = resolve_url(redis_url, data_dir)
    event(_log, INFO, "connect", "stream %s at %s", stream, mask_url(url), url=mask_url(url))
    retry = RetryPolicy(give_up_after=give_up_after)
    if allow_eviction:
        event(
            _log,
            WARNING,
            "allow_eviction",
            "--allow-eviction: keys this runner relies on may be evicted",
        )
    try:
        # Redis may not be up yet: retried under --give-up-after like every later call.
        for attempt in retry.attempts("checking the Redis server", stop=stop, logger=_log):
            with attempt:
                # Without --cluster/--no-cluster the client asks the server (INFO cluster).
                client = make_client(url, BLOCK_MS, cluster=cluster)
                refuse_own_stream(client, stream)
                if not allow_eviction:
                    refuse_eviction(client)
    except Stopped:
        event(_log, INFO, "stopped", "stopped before Redis could be reached")
        return
    except (PermanentError, OperationalError) as e:
        fail(e)
    stream_log = RedisStreamLog(client, keys.stream, keys.dead)
    log: EventLog = stream_log
    if archive is not None:
        log = ArchivedLog(FileLog(archive), stream_log)
    elif is_cluster(client):
        # A failover may lose records already folded: restart from the snapshot,
        # checking that the log still holds what this process folded.
        log = RoutedLog(stream_log, on_change=lambda old, new: _moved(current, stream, old, new))
    lease = Lease(
        client, stream, ttl_ms=int(lease_ttl * 1000), owner=owner, snapshot_key=keys.snapshot
    )
    observer = None
    metrics_server = None
    if metrics_port is not None:
        metrics = RunnerMetrics()
        observer = metrics.for_stream(stream, RedisStreamLog(client, keys.stream, keys.dead))
        try:
            metrics_server = serve(metrics, metrics_port, lambda: [observer.health()], metrics_addr)
        except OSError as e:
            raise click.BadParameter(str(e), param_hint="--metrics-port/--metrics-addr") from e
        event(
            _log,
            INFO,
            "metrics",
            "metrics on http://%s:%d/metrics and /healthz",
            metrics_addr,
            metrics_server.port,
            port=metrics_server.port,
        )
    store: RedisSnapshotStore = RedisSnapshotStore.for_lease(
        client, keys.snapshot, lease, keys.stream
    )
    wait = ReplicaWait.of(wait_replicas, wait_replicas_timeout)
    if wait is not None:
        store = ReplicatedSnapshotStore.for_lease_waiting(
            client, keys.snapshot, lease, keys.stream, wait
        )
    journal = RedisOutcomeJournal(client, keys.outcomes, max_block_ms=BLOCK_MS)
    config = RunnerConfig(
        snapshot_every=snapshot_every,
        snapshot_interval=snapshot_interval,
        batch_size=batch_size,
        block_ms=BLOCK_MS,
        from_scratch=from_scratch,
        progress=progress,
        progress_interval=progress_interval,
        retry=retry,
        key_window=key_window,
        snapshot_in_child=snapshot_in_child,
        accept=accept,
        history=None
        if history_limit == 0
        else HistoryPolicy(min(history_last, history_limit), history_every, history_limit),
    )
    history = RedisSnapshotHistory(client, keys.history)

    def on_lost(reason: str) -> None:
        if observer is not None:
            observer.lease(None)
        for r in list(current):
            r.abandon(f"lease lost: {reason}")

    def on_wait(holder: str | None) -> None:
        event(
            _log,
            INFO,
            "lease_wait",
            "lease %s held by %s: waiting for it",
            lease.key,
            holder,
            holder=holder,
        )

    def record(entry: Mapping[str, str]) -> None:
        who = {"reason": reason or "", "who": audit.operator(), "runner": lease.owner}
        audit.record(client, keys.audit, {**entry, **who})

    folded: Checkpoint | None = None  # what this process has folded, across leases
    try:
        while not stop.is_set():
            runner: Runner[Any, Any] = Runner(
                log,
                store,
                domain,
                config,
                journal=journal,
                audit=record,
                on_rebuild=lambda: _set_aside(client, keys),
                observer=observer,
                history=history,
            )
            if folded is not None:
                runner.expect(folded)
            current[:] = [runner]
            if stop.is_set():
                runner.stop()
            try:
                # A large state is read and decoded before the lease is taken,
                # so no lease can expire while it is being decoded.
                runner.restore()
                token = lease.acquire(stop=stop, on_lost=on_lost, on_wait=on_wait, retry=retry)
            except Stopped:
                token = None
            except (PermanentError, OperationalError, IntegrityError) as e:
                fail(e)
            if token is None:
                event(_log, INFO, "stopped", "stopped while waiting for the lease %s", lease.key)
                break
            event(
                _log,
                INFO,
                "lease_acquired",
                "lease %s acquired (fencing token %d)",
                lease.key,
                token,
                token=token,
                ttl_s=lease_ttl,
            )
            if observer is not None:
                observer.lease(token)
            try:
                summary = runner.run(exit_when_idle=exit_when_idle)
            except (IntegrityError, PermanentError, OperationalError) as e:
                fail(e)
            finally:
                current.clear()
                lease.release()
                if observer is not None:
                    observer.lease(None)
            if exit_when_idle and runner.final_snapshot_error is not None:
                _print_summary(summary, log_format)
                event(
                    _log,
                    ERROR,
                    "snapshot_failed",
                    "%s: --exit-when-idle drained the log but could not save the state; "
                    "the next start replays from the last stored snapshot",
                    runner.final_snapshot_error,
                )
                sys.exit(1)
            if summary.stop_reason.startswith("abandoned"):
                event(
                    _log,
                    WARNING,
                    "lease_lost" if "lease lost" in summary.stop_reason else "restart",
                    "%s; waiting to re-acquire the lease",
                    summary.stop_reason,
                    reason=summary.stop_reason,
                )
                folded = runner.checkpoint
                # The decision was taken and recorded once; it is not taken again.
                config = replace(config, accept=None)
                config = replace(config, from_scratch=False)  # the other holder's snapshot
                continue
            if exit_when_idle or summary.stop_reason == "stopped":
                _print_summary(summary, log_format)
            break
    finally:
        if metrics_server is not None:
            metrics_server.close()
        stream_log.close()
        store.close()


def _moved(current: list[Runner[Any, Any]], stream: str, old: str, new: str) -> None:
    """The master serving ``stream`` changed: end the run without a final snapshot; the
    loop restarts from the stored one, expecting what was folded (``Runner.expect``)."""
    for r in list(current):
        r.abandon(f"the master serving {stream} changed from {old} to {new} (a failover)")


def _resolution(error: BaseException, stream: str) -> str:
    """The decision that resolves a stop for want of history, for the error line."""
    name = f"--stream {stream} " if stream != "orders" else ""
    if isinstance(error, GapError):
        return (
            f". If `inspect trim --archive FILE` archived the deleted records, rebuild "
            f"with them: {name}--archive FILE. Else restore them, or decide to go on "
            f"without them: {name}--accept-gap --reason TEXT (recorded in {stream}:audit)"
        )
    if isinstance(error, IntegrityError) and "rolled back" in str(error):
        return (
            f". To rebuild from the log as it is now, decide it: {name}--accept-rollback "
            f"--reason TEXT (recorded in {stream}:audit); or restore the log"
        )
    return ""


def _set_aside(client: redis.Redis, keys: StreamKeys) -> None:
    """Rename the outcome journal, the dead letters and the snapshot history aside
    (``RENAME``) before an accepted rollback or gap is rebuilt from the origin:
    their entries answer records the log lost, and time travel must not serve
    snapshots of a history that is gone."""
    suffix = f":before-rebuild:{int(time.time() * 1000)}"
    for key in (keys.outcomes, keys.dead, keys.history):
        with redis_errors("RENAME", key):
            if client.exists(key):
                client.rename(key, key + suffix)
                event(
                    _log,
                    WARNING,
                    "set_aside",
                    "renamed %s to %s (kept, not deleted)",
                    key,
                    key + suffix,
                    key=key,
                    renamed=key + suffix,
                )

"""``python -m shop_adapters.redis_runner``: the runner wired to Redis.

Folds the stream ``--stream`` (default ``orders``) into the shop's state, keeps
its snapshot at ``<stream>:snapshot`` (fenced by the lease token) and holds the
single-writer lease ``<stream>:lease`` (see :mod:`shop_adapters.lease`). A
second runner on the same stream waits for the lease and takes over when the
first one stops or dies. Dead letters go to the log's dead-letter stream.

Connection: ``--redis-url`` (or env ``REDIS_URL``; ``redis://``, ``rediss://``,
passwords in the URL are fine and never logged), else an embedded
``redis-server`` kept in ``--data-dir``.

Exit status: 0 after ``--exit-when-idle`` drained the log, or after SIGINT /
SIGTERM (a final snapshot is written first; also while still waiting for the
lease: "stopped while waiting for the lease"; a second signal during the final
snapshot or the shutdown only logs "already stopping"); 1, with one error line and no
traceback, if the log is discontinuous (:class:`~shop_adapters.errors.GapError`,
:class:`~shop_adapters.errors.IntegrityError`), if Redis refuses for good
(:class:`~shop_adapters.errors.PermanentError`: wrong password, DB index out
of range, a key of another type), or if Redis stayed unreachable for
``--give-up-after`` seconds (default 60 with ``--exit-when-idle``, else retry
for ever); 2 for bad options (click).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click
import redis

from .cli_common import (
    CleanErrorsCommand,
    FiniteFloat,
    clean_error_message,
    connection_options,
    make_client,
    mask_url,
    resolve_url,
    setup_logging,
)
from .codec import Decoder, load_price_list
from .errors import IntegrityError, OperationalError, PermanentError
from .lease import Lease
from .logs.redis_stream import RedisStreamLog
from .redis_errors import classify, refuse_own_stream
from .runner import Runner, Summary
from .snapshots.redis import RedisSnapshotStore

__all__ = ["entry", "main", "stream_records_total"]

_log = logging.getLogger("shop.redis_runner")
BLOCK_MS = 1_000
"""How long one XREAD BLOCK waits, in milliseconds (a stop is noticed this fast)."""


def stream_records_total(client: redis.Redis, stream: str) -> int:
    """Entries ever added to ``stream`` (``XINFO STREAM`` ``entries-added``, Redis
    >= 7.0; else its length); 0 if it does not exist. Raises OperationalError
    (unreachable) or PermanentError (e.g. the key is not a stream).
    Source: Redis XINFO STREAM docs."""
    try:
        info: Any = client.xinfo_stream(stream)
    except redis.exceptions.RedisError as e:
        if isinstance(e, redis.exceptions.ResponseError) and "no such key" in str(e).lower():
            return 0
        raise classify(e, "XINFO STREAM", stream) from e
    added = info.get("entries-added", info.get(b"entries-added"))
    return int(added if added is not None else info.get("length", 0))


def _print_summary(summary: Summary, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(summary.to_dict()))
    else:
        click.echo(summary.text())


GIVE_UP_AFTER_IDLE = 60.0
"""Default ``--give-up-after`` with ``--exit-when-idle``, seconds."""


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
@click.option(
    "--price-list",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON {item_id: price in minor units} for the seed's v0 AddItem entries.",
)
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
    type=FiniteFloat(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds the single-writer lease lives without renewal.",
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
def main(
    redis_url: str | None,
    stream: str,
    data_dir: Path,
    snapshot_every: int | None,
    snapshot_interval: float,
    price_list: Path | None,
    from_scratch: bool,
    exit_when_idle: bool,
    log_format: str,
    batch_size: int,
    progress: bool | None,
    progress_interval: float,
    lease_ttl: float,
    give_up_after: float | None,
) -> None:
    """Fold the Redis stream into the shop's state; snapshot; follow the tail.

    Exit status: 0 when drained (--exit-when-idle) or stopped by SIGINT/SIGTERM;
    1 with one error line if the log is discontinuous, Redis refuses for good
    (wrong password, DB index out of range, a key of another type) or stays
    unreachable for --give-up-after seconds; 2 for bad options.
    """
    stop = threading.Event()
    current: list[Runner] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            # Stays installed: a second signal must not kill the final snapshot.
            _log.warning("%s: already stopping", signal.Signals(signum).name)
            return
        stop.set()
        for r in list(current):
            r.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    setup_logging(log_format)
    if give_up_after is None and exit_when_idle:
        give_up_after = GIVE_UP_AFTER_IDLE
    try:
        decoder = Decoder(load_price_list(price_list)) if price_list else Decoder()
    except (OSError, ValueError, TypeError) as e:
        raise click.BadParameter(str(e), param_hint="--price-list") from e
    url = resolve_url(redis_url, data_dir)
    _log.info("stream %s at %s", stream, mask_url(url))
    client = make_client(url, BLOCK_MS)
    refuse_own_stream(client, stream)
    log = RedisStreamLog(client, stream)
    snapshot_key = f"{stream}:snapshot"
    lease = Lease(client, stream, ttl_ms=int(lease_ttl * 1000), snapshot_key=snapshot_key)
    store = RedisSnapshotStore(client, snapshot_key, fencing_token=lease.fencing_token)

    def on_lost(reason: str) -> None:
        for r in list(current):
            r.abandon(f"lease lost: {reason}")

    def on_wait(holder: str | None) -> None:
        _log.info("lease %s held by %s: waiting for it", lease.key, holder)

    try:
        while not stop.is_set():
            try:
                token = lease.acquire(
                    stop=stop, on_lost=on_lost, on_wait=on_wait, give_up_after=give_up_after
                )
            except (PermanentError, OperationalError, IntegrityError) as e:
                _log.error("%s", clean_error_message(e))
                sys.exit(1)
            if token is None:
                _log.info("stopped while waiting for the lease %s", lease.key)
                break
            _log.info("lease %s acquired (fencing token %d)", lease.key, token)
            runner = Runner(
                log,
                store,
                decoder,
                snapshot_every=snapshot_every,
                snapshot_interval=snapshot_interval,
                batch_size=batch_size,
                block_ms=BLOCK_MS,
                from_scratch=from_scratch,
                progress=progress,
                progress_interval=progress_interval,
                records_total=lambda: stream_records_total(client, stream),
                give_up_after=give_up_after,
            )
            current[:] = [runner]
            if stop.is_set():
                runner.stop()
            try:
                summary = runner.run(exit_when_idle=exit_when_idle)
            except (IntegrityError, PermanentError, OperationalError) as e:
                _log.error("%s", clean_error_message(e))
                sys.exit(1)
            finally:
                current.clear()
                lease.release()
            if exit_when_idle and runner.final_snapshot_error is not None:
                _print_summary(summary, log_format)
                _log.error(
                    "%s: --exit-when-idle drained the log but could not save the state; "
                    "the next start replays from the last stored snapshot",
                    runner.final_snapshot_error,
                )
                sys.exit(1)
            if summary.stop_reason.startswith("abandoned"):
                _log.warning("%s; waiting to re-acquire the lease", summary.stop_reason)
                from_scratch = False  # the other holder's snapshot is good
                continue
            if exit_when_idle or summary.stop_reason == "stopped":
                _print_summary(summary, log_format)
            break
    finally:
        log.close()
        store.close()


def entry() -> None:
    """The ``shop-runner`` script: :func:`main`, then SIGINT and SIGTERM ignored
    while the interpreter exits. (At shutdown Python resets a signal whose
    handler is a Python function to the default action, so a second signal
    arriving then would kill the process with status -15/143 after the final
    snapshot was written; an ignored signal stays ignored.)"""
    try:
        main()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    entry()

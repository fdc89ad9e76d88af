"""The read side's command lines, generic over the domain's projections and handler.

- :func:`projector_command`: the projector process
  (:class:`~shop_adapters.projector_engine.Projector`) as a click command;
- :func:`worker_command`: a consumer-group worker
  (:class:`~shop_adapters.consumer_group.GroupWorker`) with the domain's handler;
- :func:`query_group`: a ``query`` click group answering from the views, with
  the generic ``status`` (every view's tracking position and lag) and
  ``parked`` (a group's parked messages) subcommands and the domain's own.

All take the connection options of the other tools (``--redis-url`` / env
``REDIS_URL``, else the embedded Redis in ``--data-dir``; ``--stream``). The
shop's are ``python -m shop_adapters.projector``, ``python -m
shop_adapters.worker`` and ``python -m shop_adapters.query``.

Exit status: 0 after ``--exit-when-idle`` drained the journal, or after
SIGINT/SIGTERM; 1 with one error line (no traceback) for an
:class:`~shop_adapters.errors.IntegrityError` (an entry that is not an
outcome, a view whose history the journal no longer holds), a
:class:`~shop_adapters.projections.ProjectionError`, a Redis that refuses for
good, or one unreachable for ``--give-up-after`` seconds; 2 for bad options.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
import redis

from .cli_common import (
    CleanErrorsCommand,
    CleanErrorsGroup,
    FiniteFloat,
    clean_error_message,
    make_client,
    mask_url,
    resolve_url,
    setup_logging,
    single_server_options,
)
from .consumer_group import (
    GroupWorker,
    Handler,
    WorkerConfig,
    parked_messages,
    redrive,
)
from .errors import IntegrityError, OperationalError, PermanentError
from .inspect_commands import json_value
from .keys import StreamKeys
from .projections import Projection, ProjectionError
from .projector_engine import Projector, ProjectorConfig
from .protocols import Position
from .redis_errors import redis_errors
from .retry import RetryPolicy
from .view_store import RedisViewStore, ViewCheckpoint

__all__ = [
    "BLOCK_MS",
    "GIVE_UP_AFTER_IDLE",
    "ReadModelCli",
    "ReadSide",
    "pass_read_side",
    "projector_command",
    "query_group",
    "view_header",
    "worker_command",
]

_log = logging.getLogger("shop.read_side")

BLOCK_MS = 1_000
"""How long one blocking read waits, in milliseconds (a stop is noticed this fast)."""

GIVE_UP_AFTER_IDLE = 60.0
"""Default ``--give-up-after`` with ``--exit-when-idle``, seconds."""

_FAILURES = (IntegrityError, ProjectionError, PermanentError, OperationalError)


@dataclass(frozen=True)
class ReadModelCli:
    """What the read side's command lines need from a domain.

    - ``name``: the domain's name, for ``--help`` texts;
    - ``projections()``: its projections, in the order the projector runs them;
    - ``group``: the default consumer group of its worker (``"receipts"``);
    - ``handler_options``: click option decorators of the worker's handler;
    - ``build_handler(client, stream, **values)``: the worker's
      :class:`~shop_adapters.consumer_group.Handler`, given those options' values.
    """

    name: str
    projections: Callable[[], Sequence[Projection]]
    group: str
    handler_options: Sequence[Callable[[Any], Any]]
    build_handler: Callable[..., Handler]


def _fail(error: BaseException) -> NoReturn:
    _log.error("%s", clean_error_message(error))
    sys.exit(1)


def _on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        _log.info("%s: stopping after the step in progress", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _connect(redis_url: str | None, data_dir: Path, stream: str) -> redis.Redis:
    url = resolve_url(redis_url, data_dir)
    _log.info("stream %s at %s", stream, mask_url(url))
    return make_client(url, BLOCK_MS)


def _retry(give_up_after: float | None, exit_when_idle: bool) -> RetryPolicy:
    if give_up_after is None and exit_when_idle:
        give_up_after = GIVE_UP_AFTER_IDLE
    return RetryPolicy(give_up_after=give_up_after)


def _common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--give-up-after",
        type=FiniteFloat(min=0),
        default=None,
        help="Exit 1 after this many seconds of failed attempts to reach Redis "
        f"(default: {GIVE_UP_AFTER_IDLE:g} with --exit-when-idle, else retry for ever).",
    )(f)
    f = click.option(
        "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
    )(f)
    f = click.option(
        "--exit-when-idle", is_flag=True, help="Drain what there is, print a summary, exit 0."
    )(f)
    return f


# --- the projector ---------------------------------------------------------------------------


def projector_command(cli: ReadModelCli) -> click.Command:
    """The projector's click command for ``cli`` (see the module docstring)."""
    names = [p.name for p in cli.projections()]

    @click.command(cls=CleanErrorsCommand)
    @single_server_options
    @click.option(
        "--projection",
        "selected",
        multiple=True,
        type=click.Choice(names),
        help="Run only this view (repeat for several; default: all). Each view has its own "
        "tracking position, so views may be shared out between projectors.",
    )
    @click.option(
        "--rebuild",
        is_flag=True,
        help="Rebuild the views run (all, or those of --projection) from the first outcome, "
        "beside the live ones, and switch readers to them atomically once caught up.",
    )
    @click.option("--batch-size", type=click.IntRange(min=1), default=1_000, show_default=True)
    @click.option(
        "--progress-interval",
        type=FiniteFloat(min=0, min_open=True),
        default=10.0,
        show_default=True,
        help="Seconds between progress log lines.",
    )
    @_common_options
    def main(
        redis_url: str | None,
        stream: str,
        data_dir: Path,
        selected: tuple[str, ...],
        rebuild: bool,
        batch_size: int,
        progress_interval: float,
        exit_when_idle: bool,
        log_format: str,
        give_up_after: float | None,
    ) -> None:
        """Keep the read models (views) of the outcome journal <stream>:outcomes in
        Redis, at <stream>:view:<name>, each with its tracking position, exactly once.

        Views that do not exist yet, or were built by an older version of their
        projection, are built beside the live ones and switched in atomically
        when caught up; --rebuild does so for the views run.

        Exit status: 0 when drained (--exit-when-idle) or stopped by SIGINT/SIGTERM;
        1 with one error line if an outcome cannot be applied, the journal no
        longer holds a view's history, or Redis refuses for good or stays
        unreachable; 2 for bad options.
        """
        setup_logging(log_format)
        projections = [p for p in cli.projections() if not selected or p.name in selected]
        config = ProjectorConfig(
            batch_size=batch_size,
            block_ms=BLOCK_MS,
            rebuild=frozenset(p.name for p in projections) if rebuild else frozenset(),
            retry=_retry(give_up_after, exit_when_idle),
            progress_interval=progress_interval,
        )
        client = _connect(redis_url, data_dir, stream)
        try:
            projector = Projector(client, stream, projections, config)
            _on_signals(projector.stop)
            summary = projector.run(exit_when_idle=exit_when_idle)
        except _FAILURES as e:
            _fail(e)
        finally:
            client.close()
        click.echo(json.dumps(summary.to_dict()) if log_format == "json" else summary.text())

    main.help = (main.help or "").replace(
        "the outcome journal", f"the {cli.name}'s outcome journal"
    )
    return main


# --- the worker --------------------------------------------------------------------------------


def worker_command(cli: ReadModelCli) -> click.Command:
    """The consumer-group worker's click command for ``cli`` (see the module docstring)."""

    @click.command(cls=CleanErrorsCommand)
    @single_server_options
    @click.option("--group", default=cli.group, show_default=True, help="The consumer group.")
    @click.option(
        "--consumer",
        default=None,
        help="This worker's name in the group (default: <host name>-<process id>).",
    )
    @click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True)
    @click.option(
        "--claim-after",
        type=FiniteFloat(min=0),
        default=30.0,
        show_default=True,
        help="Seconds an entry stays pending (delivered, not acknowledged) before another "
        "worker claims it (XAUTOCLAIM): longer than a batch ever takes.",
    )
    @click.option(
        "--max-deliveries",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Park an entry in <stream>:parked:<group> after this many deliveries.",
    )
    @click.option(
        "--from",
        "start",
        type=click.Choice(["first", "now"]),
        default="first",
        show_default=True,
        help="Where a new group starts: the first outcome, or those published from now on.",
    )
    @click.option(
        "--redrive",
        "redrive_at",
        default=None,
        metavar="POSITION",
        help="Hand the parked outcome of POSITION (ms-seq) to the handler once more, "
        "delete it from the parked stream, and exit.",
    )
    @_common_options
    @_handler_options(cli)
    def main(
        redis_url: str | None,
        stream: str,
        data_dir: Path,
        group: str,
        consumer: str | None,
        batch_size: int,
        claim_after: float,
        max_deliveries: int,
        start: str,
        redrive_at: str | None,
        exit_when_idle: bool,
        log_format: str,
        give_up_after: float | None,
        **handler_values: Any,
    ) -> None:
        """Do the side effects of the outcome journal <stream>:outcomes as one worker
        of a Redis consumer group: several workers share the work, a crashed
        worker's entries are claimed by another, an entry delivered too often is
        parked. Delivery is at least once; the effect is keyed by the outcome's
        position, so it happens exactly once.

        Exit status: 0 when drained (--exit-when-idle: nothing new or pending in
        the group) or stopped by SIGINT/SIGTERM; 1 with one error line if Redis
        refuses for good or stays unreachable; 2 for bad options.
        """
        setup_logging(log_format)
        if not group:
            raise click.BadParameter("must not be empty", param_hint="--group")
        try:
            at = Position.parse(redrive_at) if redrive_at is not None else None
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--redrive") from e
        client = _connect(redis_url, data_dir, stream)
        try:
            handler = cli.build_handler(client, stream, **handler_values)
            if at is not None:
                n = redrive(client, stream, group, at, handler)
                if n == 0:
                    click.echo(f"nothing parked at {at} in group {group}", err=True)
                    sys.exit(1)
                click.echo(f"redriven: {at} handled; {n} parked entries deleted")
                return
            config = WorkerConfig(
                batch_size=batch_size,
                block_ms=BLOCK_MS,
                claim_idle_ms=int(claim_after * 1000),
                max_deliveries=max_deliveries,
                start="0" if start == "first" else "$",
                retry=_retry(give_up_after, exit_when_idle),
            )
            worker = GroupWorker(client, stream, group, handler, config, consumer=consumer)
            _log.info("worker %s of group %s", worker.consumer, group)
            _on_signals(worker.stop)
            summary = worker.run(exit_when_idle=exit_when_idle)
        except _FAILURES as e:
            _fail(e)
        finally:
            client.close()
        if log_format == "json":
            click.echo(json.dumps(summary.to_dict()))
        else:
            click.echo("\n".join(f"{k}: {json.dumps(v)}" for k, v in summary.to_dict().items()))

    main.help = (main.help or "").replace(
        "the outcome journal", f"the {cli.name}'s outcome journal"
    )
    return main


def _handler_options(cli: ReadModelCli) -> Callable[[Any], Any]:
    def add(f: Any) -> Any:
        for option in reversed(cli.handler_options):
            f = option(f)
        return f

    return add


# --- queries ----------------------------------------------------------------------------------


class ReadSide:
    """What a query command reads: the views (:attr:`store`), the Redis client and
    the stream; connected on first use, so ``--help`` never starts a Redis."""

    def __init__(
        self, redis_url: str | None, data_dir: Path, stream: str, cli: ReadModelCli
    ) -> None:
        self.stream = stream
        self.keys = StreamKeys.for_stream(stream)
        self.cli = cli
        self._redis_url = redis_url
        self._data_dir = data_dir
        self._client: redis.Redis | None = None
        self._store: RedisViewStore | None = None

    @property
    def client(self) -> redis.Redis:
        """The client (connecting now if needed)."""
        if self._client is None:
            self._client = _connect(self._redis_url, self._data_dir, self.stream)
        return self._client

    @property
    def store(self) -> RedisViewStore:
        """The stream's views."""
        if self._store is None:
            self._store = RedisViewStore(self.client, self.stream)
        return self._store

    def close(self) -> None:
        """Close the client, if one was opened."""
        if self._client is not None:
            self._client.close()


pass_read_side = click.make_pass_decorator(ReadSide)
"""Pass the group's :class:`ReadSide` to a query command as its first argument."""


def view_header(name: str, checkpoint: ViewCheckpoint | None) -> str:
    """``view sales at 1700000000000-3 (1234 outcomes)``, or a warning line if the
    view does not exist yet (also echoed to stderr)."""
    if checkpoint is None:
        line = f"warning: view {name} does not exist yet: run the projector"
        click.echo(line, err=True)
        return line
    return f"view {name} at {checkpoint.position} ({checkpoint.outcomes} outcomes)"


def query_group(cli: ReadModelCli, commands: Sequence[click.Command]) -> click.Group:
    """The ``query`` group: ``status``, ``parked`` and ``commands`` (which take
    their :class:`ReadSide` with :data:`pass_read_side`)."""

    @click.group(cls=CleanErrorsGroup)
    @single_server_options
    @click.pass_context
    def group(ctx: click.Context, redis_url: str | None, stream: str, data_dir: Path) -> None:
        """Answer from the read models (views) the projector keeps; read-only.

        Every answer is of one view at one tracking position, which the text
        output names on its first line and --json gives as "position".
        """
        setup_logging("text", logging.WARNING)
        ctx.obj = ReadSide(redis_url, data_dir, stream, cli)
        ctx.call_on_close(ctx.obj.close)

    group.add_command(_status)
    group.add_command(_parked)
    for command in commands:
        group.add_command(command)
    return group


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array, one object per view.")
@pass_read_side
def _status(side: ReadSide, as_json: bool) -> None:
    """Every view: its tracking position, version, outcomes applied and lag
    (outcomes in the journal not yet applied), and any rebuild under way."""
    projections = side.cli.projections()
    keys = [k for p in projections for k in side.store.keys(p.name)[:2]]
    checkpoints = side.store.checkpoints(keys)
    with redis_errors("XLEN", side.keys.outcomes):
        length = int(side.client.xlen(side.keys.outcomes))
    rows: list[dict[str, Any]] = []
    for i, p in enumerate(projections):
        live, building = checkpoints[2 * i], checkpoints[2 * i + 1]
        rows.append(
            {
                "name": p.name,
                "version": p.version,
                "live": None if live is None else {**live.to_json(), "lag": length - live.outcomes},
                "rebuild": None
                if building is None
                else {**building.to_json(), "lag": length - building.outcomes},
            }
        )
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"journal {side.keys.outcomes}: {length} outcomes")
    for row in rows:
        at = row["live"]
        text = (
            "not built yet"
            if at is None
            else f"at {at['position']} (version {at['version']}, {at['outcomes']} "
            f"outcomes, lag {at['lag']})"
        )
        if row["rebuild"] is not None:
            b = row["rebuild"]
            text += f"; rebuild at {b['position']} (version {b['version']}, lag {b['lag']})"
        click.echo(f"{row['name']}: {text}")


@click.command("parked")
@click.option("--group", default=None, help="The consumer group (default: the worker's).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array ([] when none).")
@pass_read_side
def _parked(side: ReadSide, group: str | None, as_json: bool) -> None:
    """The parked messages of a consumer group: outcomes its workers gave up on
    (never retried silently), with the reason, the deliveries and the outcome.
    Re-drive one with the worker's --redrive POSITION once the cause is fixed."""
    group = group or side.cli.group
    parked = parked_messages(side.client, side.stream, group)
    if as_json:
        click.echo(json.dumps([m.to_json() for m in parked]))
        return
    for m in parked:
        fields = {json_value(k): json_value(v) for k, v in m.fields.items()}
        click.echo(
            f"{m.position}  deliveries={m.deliveries}  consumer={m.consumer}  {m.reason}  {fields}"
        )
    click.echo(f"{len(parked)} parked in {side.stream}:parked:{group}", err=True)

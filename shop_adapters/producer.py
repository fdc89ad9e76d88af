"""``python -m shop_adapters.producer``: append events to the Redis stream.

Commands (connection options as for the runner: ``--redis-url`` / env
``REDIS_URL``, else an embedded Redis in ``--data-dir``; ``--stream``):

- ``synthetic --events N --users U --items I --seed S [--rate R]``: the seeded
  workload of :mod:`shop_adapters.workload`, appended in pipelined chunks of
  ``--chunk`` entries (at most ``R`` events/s when ``--rate`` is given);
- ``import-csv FILE``: the "Online Retail" CSV mapped by
  :mod:`shop_adapters.retail_csv`; prints ``imported N rows, skipped M:
  {reason: count}`` and the events written by type;
- ``topup USER AMOUNT``, ``add-item ITEM COUNT [--price P]``,
  ``order USER ITEM:QTY [ITEM:QTY ...]``: one event (amounts and prices in
  integer minor units); prints its position. An order line splits at its
  last ``:`` (item ids may contain colons: ``cpu:2:3`` is 3 of ``cpu:2``).

Events are written in the v1 wire format (:func:`shop_adapters.codec.encode_event`).
Bad input exits with status 2 and a message saying what was expected; nothing
is appended then. Appends are at least once: redis-py retries a command whose
reply was lost, so after a connection error an entry may land twice.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import cast

import click
from tqdm import tqdm

from shop_core import AddItem, Event, Order, TopUp

from .cli_common import (
    CleanErrorsGroup,
    FiniteFloat,
    connection_options,
    make_client,
    mask_url,
    resolve_url,
    setup_logging,
)
from .errors import OperationalError
from .logs.redis_stream import RedisStreamLog
from .protocols import ORIGIN, EventLog, Position
from .redis_errors import refuse_own_stream
from .shop_domain.retail_csv import map_rows, read_csv
from .shop_domain.wire import encode_event
from .shop_domain.workload import synthetic_events

__all__ = ["AppendInterrupted", "append_events", "cli", "parse_line"]

_log = logging.getLogger("shop.producer")


class AppendInterrupted(OperationalError):
    """The log failed part-way through :func:`append_events`.

    ``appended``: events appended (and acknowledged) before the failure;
    ``last``: the last acknowledged position (``None`` if none); ``in_flight``:
    size of the chunk being written, which may or may not have landed (nothing
    is retried, so nothing lands twice).
    """

    def __init__(
        self, appended: int, last: Position | None, in_flight: int, cause: Exception
    ) -> None:
        self.appended, self.last, self.in_flight = appended, last, in_flight
        where = f" (last at {last})" if last is not None else ""
        super().__init__(
            f"{str(cause).rstrip('. ')}; {appended} events were appended before the "
            f"failure{where}; the chunk of {in_flight} being written may or may not have "
            "landed (nothing is retried, so nothing is appended twice): check the "
            "stream's last entries before re-running"
        )


def append_events(
    log: EventLog,
    events: Iterable[Event],
    chunk: int = 1_000,
    rate: float | None = None,
    total: int | None = None,
    progress: bool | None = None,
) -> tuple[int, Position | None]:
    """Append ``events`` to ``log`` in chunks of ``chunk`` (one pipelined call each).

    ``rate``: at most this many events per second (``None``: as fast as the
    log takes them). ``total`` sizes the tqdm bar (stderr; shown when stderr
    is a terminal unless ``progress`` says otherwise). Returns ``(events
    appended, last position)``. Raises :class:`AppendInterrupted` (an
    ``OperationalError``) when the log fails: the events of earlier chunks stay
    appended and their count is in the error; the chunk being written may or
    may not have landed.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = 0
    last: Position | None = None
    started = time.monotonic()
    it = iter(events)
    disable = None if progress is None else not progress
    with tqdm(total=total, unit="ev", desc="append", disable=disable) as bar:
        while batch := list(itertools.islice(it, chunk)):
            entries = [encode_event(e) for e in batch]
            try:
                positions = log.append(cast(list[Mapping[str | bytes, str | bytes | int]], entries))
            except OperationalError as e:
                raise AppendInterrupted(n, last, len(batch), e) from e
            n += len(batch)
            if positions:
                last = positions[-1]
            bar.update(len(batch))
            if rate:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    return n, last


def parse_line(text: str) -> tuple[str, int]:
    """``"ITEM:QTY"`` as ``(item_id, quantity)``; the last ``:`` splits, so item
    ids may contain colons. Raises ``ValueError`` saying what was expected.

    >>> parse_line("cpu:2"), parse_line("a:b:3")
    (('cpu', 2), ('a:b', 3))
    """
    item, sep, qty = text.rpartition(":")
    if not sep or not item:
        raise ValueError(f"an order line is ITEM:QTY, got {text!r}")
    try:
        quantity = int(qty)
    except ValueError:
        raise ValueError(f"the quantity in {text!r} must be an integer, got {qty!r}") from None
    return item, quantity


class _Ctx:
    def __init__(self, redis_url: str | None, stream: str, data_dir: Path) -> None:
        self.redis_url = redis_url
        self.stream = stream
        self.data_dir = data_dir
        self._log: RedisStreamLog | None = None

    def log(self) -> RedisStreamLog:
        if self._log is None:
            url = resolve_url(self.redis_url, self.data_dir)
            _log.info("stream %s at %s", self.stream, mask_url(url))
            # No automatic retry: a retried XADD whose reply was lost appends twice.
            client = make_client(url, retry=False)
            refuse_own_stream(client, self.stream)
            self._log = RedisStreamLog(client, self.stream)
        return self._log

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log.client.close()


@click.group(cls=CleanErrorsGroup)
@connection_options
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.pass_context
def cli(
    ctx: click.Context, redis_url: str | None, stream: str, data_dir: Path, log_format: str
) -> None:
    """Append shop events to a Redis stream."""
    setup_logging(log_format)
    state = _Ctx(redis_url, stream, data_dir)
    ctx.obj = state
    ctx.call_on_close(state.close)


def _append(ctx: click.Context, events: list[Event] | Iterable[Event], **kw: object) -> int:
    log: RedisStreamLog = ctx.obj.log()
    try:
        n, last = append_events(log, events, **kw)  # type: ignore[arg-type]
    except OperationalError as e:
        raise click.ClickException(f"Redis unreachable: {e}") from e
    click.echo(f"appended {n} events to {log.stream}" + (f", last at {last}" if last else ""))
    return n


@cli.command()
@click.option("--events", "n", type=click.IntRange(min=0), default=100_000, show_default=True)
@click.option("--users", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--items", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--rate",
    type=FiniteFloat(min=0, min_open=True),
    default=None,
    help="At most this many events per second.",
)
@click.option("--chunk", type=click.IntRange(min=1), default=1_000, show_default=True)
@click.pass_context
def synthetic(
    ctx: click.Context, n: int, users: int, items: int, seed: int, rate: float | None, chunk: int
) -> None:
    """Append N events of the seeded synthetic workload."""
    _append(ctx, synthetic_events(n, users, items, seed), chunk=chunk, rate=rate, total=n)


@cli.command("import-csv")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--chunk", type=click.IntRange(min=1), default=1_000, show_default=True)
@click.option(
    "--skip-if-not-empty",
    is_flag=True,
    help="Import nothing if the stream already holds entries (makes the command re-runnable).",
)
@click.pass_context
def import_csv(ctx: click.Context, file: Path, chunk: int, skip_if_not_empty: bool) -> None:
    """Import an Online Retail CSV (mapping: shop_adapters.retail_csv)."""
    if skip_if_not_empty:
        log: RedisStreamLog = ctx.obj.log()
        try:
            last = log.last_position()
        except OperationalError as e:
            raise click.ClickException(f"Redis unreachable: {e}") from e
        if last != ORIGIN:
            click.echo(
                f"stream {log.stream} already holds entries (last at {last}); "
                "not importing again (--skip-if-not-empty)"
            )
            return
    try:
        result = map_rows(read_csv(file))
    except (OSError, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="FILE") from e
    skipped = dict(sorted(result.skipped.items()))
    click.echo(
        f"imported {result.imported_rows} rows, skipped {sum(skipped.values())}: {skipped}"
        f" ({result.rows} rows read, {result.invoices} invoices,"
        f" {result.repriced_lines} repriced lines)"
    )
    _append(ctx, result.events, chunk=chunk, total=len(result.events))
    click.echo(f"events written: {result.event_counts()}")


def _one(ctx: click.Context, build: Callable[[], Event]) -> None:
    try:
        event = build()
    except (TypeError, ValueError) as e:
        raise click.UsageError(str(e)) from e
    _append(ctx, [event], progress=False)


@cli.command()
@click.argument("user", type=int)
@click.argument("amount", type=int)
@click.pass_context
def topup(ctx: click.Context, user: int, amount: int) -> None:
    """Credit AMOUNT minor units to USER."""
    _one(ctx, lambda: TopUp(user, amount))


@cli.command("add-item")
@click.argument("item")
@click.argument("count", type=int)
@click.option("--price", type=int, default=None, help="Price in minor units per unit.")
@click.pass_context
def add_item(ctx: click.Context, item: str, count: int, price: int | None) -> None:
    """Add COUNT units of ITEM to stock (optionally setting its price)."""
    _one(ctx, lambda: AddItem(item, count, price))


@cli.command()
@click.argument("user", type=int)
@click.argument("lines", nargs=-1, required=True)
@click.option("--order-id", default=None, help="Caller reference, 1 to 128 characters.")
@click.pass_context
def order(ctx: click.Context, user: int, lines: tuple[str, ...], order_id: str | None) -> None:
    """USER orders ITEM:QTY [ITEM:QTY ...].

    Each line is split at its LAST colon, so item ids may contain colons:
    ``cpu:2:3`` is 3 of item ``cpu:2``. QTY is an integer >= 0.
    """
    try:
        parsed = tuple(parse_line(text) for text in lines)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    _one(ctx, lambda: Order(user, parsed, order_id))


if __name__ == "__main__":
    cli()

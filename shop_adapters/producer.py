"""``python -m shop_adapters.producer``: append shop events to a Redis stream.

Commands (connection options as for the runner: ``--redis-url`` / env
``REDIS_URL``, else an embedded Redis in ``--data-dir``; ``--cluster``; ``--stream``,
or ``--shop ID`` for the stream ``shop:{ID}``, which also adds ``ID`` to the
registry set ``shops`` (``SADD``, before the first append) so a pool of runners
finds it; ``--wait-replicas N`` waits, after each chunk of appends, for N replicas
to acknowledge it, on the connection that wrote it):

- ``synthetic --events N --users U --items I --seed S [--rate R]``: the seeded
  workload of :mod:`shop_adapters.shop_domain.workload`, appended in pipelined
  chunks of ``--chunk`` entries (at most ``R`` events/s when ``--rate`` is
  given); event ``i`` carries the idempotency key ``synthetic:<seed>:<users>:<items>:<i>``;
- ``import-csv FILE``: the "Online Retail" CSV mapped by
  :mod:`shop_adapters.shop_domain.retail_csv`, every event with a key derived
  from the data, so running it again (after an interruption, or twice)
  applies each event once; prints ``imported N rows, skipped M: {reason:
  count}`` and the events written by type;
- ``topup USER AMOUNT``, ``add-item ITEM COUNT [--price P]``,
  ``order USER ITEM:QTY [ITEM:QTY ...]``: one event (amounts, prices and
  quantities are non-negative integers, in minor units), with
  ``--idempotency-key KEY`` (default: a random one) and ``--wait [--timeout S]
  [--json]`` to wait for the runner's answer. An order line splits at its last
  ``:`` (item ids may contain colons: ``cpu:2:3`` is 3 of ``cpu:2``).

Events are written in the v1 wire format (:func:`shop_adapters.shop_domain.wire.encode_event`)
through :class:`shop_adapters.shop_domain.client.ShopClient`. Every entry
carries an idempotency key, so an append whose reply was lost is retried (for
up to 30 s) and the runner applies it once. Bad input exits with status 2 and
a message saying what was expected; nothing is appended then.

Exit status of a single event with ``--wait``: 0 accepted (or a duplicate of an
accepted one), 3 rejected (or dead-lettered), 4 no outcome within the
time-out (the event is in the log; the runner may be down).
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import click

from shop_core import AddItem, Event, Order, TopUp

from .cli_common import (
    CleanErrorsGroup,
    FiniteFloat,
    connection_options,
    make_client,
    mask_url,
    partition_option,
    resolve_stream,
    resolve_url,
    setup_logging,
)
from .client import Answer, AppendInterrupted
from .errors import OperationalError, PermanentError
from .keys import StreamKeys
from .pool import register
from .protocols import EventLog, Position
from .redis_cluster import ReplicatedStreamLog, ReplicaWait
from .redis_errors import refuse_eviction, refuse_own_stream
from .shop_domain.cli import SHOP_PARTITIONING
from .shop_domain.client import ShopClient
from .shop_domain.retail_csv import map_rows, read_csv
from .shop_domain.wire import encode_event
from .shop_domain.workload import synthetic_events

__all__ = ["EXIT_NO_OUTCOME", "EXIT_REJECTED", "append_events", "cli", "parse_line"]

_log = logging.getLogger("shop.producer")

EXIT_REJECTED = 3
"""Exit status of ``--wait`` when the event was rejected or dead-lettered."""
EXIT_NO_OUTCOME = 4
"""Exit status of ``--wait`` when no outcome arrived within the time-out."""


def append_events(
    log: EventLog, events: Iterable[Event], chunk: int = 1_000, progress: bool | None = None
) -> tuple[int, Position | None]:
    """Append ``events`` (v1, without keys) to any :class:`EventLog` in chunks of
    ``chunk``; returns ``(events appended, last position)``. For tests and
    benchmarks; the command line goes through :class:`ShopClient`. Raises
    :class:`~shop_adapters.client.AppendInterrupted` if the log fails part-way."""
    n, last = 0, None
    batch: list[Event] = []
    for event in [*events, None]:
        if event is not None:
            batch.append(event)
            if len(batch) < chunk:
                continue
        if not batch:
            break
        entries = [encode_event(e) for e in batch]
        try:
            positions = log.append(cast(list[Mapping[str | bytes, str | bytes | int]], entries))
        except (OperationalError, PermanentError) as e:
            raise AppendInterrupted(n, last, len(batch), e) from e
        n += len(batch)
        last = positions[-1] if positions else last
        batch = []
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
    def __init__(
        self,
        redis_url: str | None,
        stream: str,
        data_dir: Path,
        allow_eviction: bool,
        cluster: bool | None = False,
        shop: str | None = None,
        wait: ReplicaWait | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.stream = stream
        self.data_dir = data_dir
        self.allow_eviction = allow_eviction
        self.cluster = cluster
        self.shop = shop
        self.wait = wait
        self._client: ShopClient | None = None

    def client(self) -> ShopClient:
        if self._client is None:
            url = resolve_url(self.redis_url, self.data_dir)
            _log.info("stream %s at %s", self.stream, mask_url(url))
            # No redis-py retry: ShopClient retries only what carries a key.
            redis_client = make_client(url, retry=False, cluster=self.cluster)
            refuse_own_stream(redis_client, self.stream)
            if not self.allow_eviction:
                refuse_eviction(redis_client)
            keys = StreamKeys.for_stream(self.stream)
            client = ShopClient(redis_client, keys)
            if self.wait is not None:
                client.log = ReplicatedStreamLog(redis_client, keys.stream, self.wait)
            if self.shop is not None:
                # Registered before the first append: a shop with events is never unknown.
                register(redis_client, SHOP_PARTITIONING.registry, self.shop, self.wait)
            self._client = client
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@click.group(cls=CleanErrorsGroup)
@connection_options
@partition_option(SHOP_PARTITIONING)
@click.option(
    "--wait-replicas",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="After each chunk of appends, WAIT for this many replicas to acknowledge it "
    "(on the connection that wrote it); fewer within --wait-replicas-timeout retries "
    "the chunk (its entries carry idempotency keys). 0: do not wait.",
)
@click.option(
    "--wait-replicas-timeout",
    type=FiniteFloat(min=0.001, max=3600),
    default=1.0,
    show_default=True,
    help="Seconds WAIT waits for the replicas.",
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--allow-eviction",
    is_flag=True,
    help="Append even if Redis may evict keys (maxmemory with a policy other than "
    "noeviction). Unsafe: appended events may vanish.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    redis_url: str | None,
    stream: str,
    data_dir: Path,
    log_format: str,
    allow_eviction: bool,
    cluster: bool | None,
    partition: str | None,
    wait_replicas: int,
    wait_replicas_timeout: float,
) -> None:
    """Append shop events to a Redis stream (or to the stream of --shop ID)."""
    setup_logging(log_format)
    stream = resolve_stream(SHOP_PARTITIONING, partition, stream)
    wait = ReplicaWait.of(wait_replicas, wait_replicas_timeout)
    state = _Ctx(redis_url, stream, data_dir, allow_eviction, cluster, partition, wait)
    ctx.obj = state
    ctx.call_on_close(state.close)


class _NonNegative(click.ParamType):  # type: ignore[type-arg]
    """A non-negative integer argument; a negative one is refused saying so (exit 2),
    never read as an option."""

    name = "integer"

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """The integer, or a usage error naming what the value is."""
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{self.what} must be a non-negative integer, got {value!r}", param, ctx)
        if number < 0:
            self.fail(f"{self.what} must be a non-negative integer, got {number}", param, ctx)
        return number


_ONE_EVENT = {"ignore_unknown_options": True}  # so "-5" reaches the type and is explained


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _append_keyed(
    ctx: click.Context, events: Sequence[Event], keys: Sequence[str], **kw: Any
) -> int:
    client: ShopClient = ctx.obj.client()
    entries = (client.entry(e, k) for e, k in zip(events, keys, strict=True))
    try:
        n, last = client.append(entries, total=len(events), **kw)
    except (AppendInterrupted, PermanentError) as e:
        raise click.ClickException(str(e)) from e
    where = f", last at {last}" if last else ""
    click.echo(f"appended {_plural(n, 'event')} to {client.keys.stream}{where}")
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
    """Append N events of the seeded synthetic workload, each with its own key."""
    events = list(synthetic_events(n, users, items, seed))
    keys = [f"synthetic:{seed}:{users}:{items}:{i}" for i in range(n)]
    _append_keyed(ctx, events, keys, chunk=chunk, rate=rate)


@cli.command("import-csv")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--chunk", type=click.IntRange(min=1), default=1_000, show_default=True)
@click.pass_context
def import_csv(ctx: click.Context, file: Path, chunk: int) -> None:
    """Import an Online Retail CSV (mapping: shop_adapters.shop_domain.retail_csv).

    Every event carries a key derived from the data, so importing the file
    again, or again after an interruption, applies each event once.
    """
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
    _append_keyed(ctx, result.events, result.keys, chunk=chunk)
    click.echo(f"events written: {result.event_counts()}")


def _wait_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON object (with --wait: the answer; without: position and key).",
    )(f)
    f = click.option(
        "--timeout",
        type=FiniteFloat(min=0),
        default=10.0,
        show_default=True,
        help="With --wait: seconds to wait for the answer.",
    )(f)
    f = click.option(
        "--wait",
        is_flag=True,
        help="Wait for the runner's answer: exit 0 accepted, 3 rejected, 4 no answer in time.",
    )(f)
    f = click.option(
        "--idempotency-key",
        "key",
        default=None,
        help="Idempotency key (at most 200 bytes); sending the same event with the same "
        "key again is answered, never applied twice. Default: a random one.",
    )(f)
    return f


def _one(
    ctx: click.Context,
    build: Callable[[], Event],
    key: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    try:
        event = build()
    except (TypeError, ValueError) as e:
        raise click.UsageError(str(e)) from e
    if key is not None and not 0 < len(key.encode()) <= 200:
        raise click.BadParameter("a key is 1 to 200 bytes of UTF-8", param_hint="--idempotency-key")
    client: ShopClient = ctx.obj.client()
    key = key or uuid.uuid4().hex
    try:
        answer = client.submit(event, key, wait=wait, timeout=timeout)
    except (AppendInterrupted, PermanentError) as e:
        raise click.ClickException(str(e)) from e
    if not wait:
        if as_json:
            click.echo(json.dumps({"position": str(answer.position), "key": key}))
        else:
            click.echo(f"appended 1 event to {client.keys.stream} at {answer.position} (key {key})")
        return
    sys.exit(_report(answer, key, as_json, timeout))


def _report(answer: Answer, key: str, as_json: bool, timeout: float) -> int:
    """Print the answer; return the exit status."""
    o = answer.outcome
    verdict = None if o is None else (o.verdict if o.status == "duplicate" else o.status)
    status = 0 if verdict == "accepted" else EXIT_NO_OUTCOME if o is None else EXIT_REJECTED
    if as_json:
        out = {
            "position": str(answer.position),
            "key": key,
            "outcome": None if o is None else o.status,
            "verdict": verdict,
            "code": None if o is None else o.code,
            "message": None if o is None else o.message,
            "detail": None if o is None else o.detail,
            "duplicate_of": None if o is None or o.duplicate_of is None else str(o.duplicate_of),
        }
        click.echo(json.dumps(out))
        return status
    if o is None:
        click.echo(
            f"no answer within {timeout:g} s: the event is in the log at {answer.position} "
            f"with idempotency key {key}; the runner may be down or behind (its answer will "
            "be in the outcome journal). To retry safely, send it again with "
            f"--idempotency-key {key}"
        )
        return status
    text = f"{answer.position} {o.status}"
    if o.status == "duplicate":
        text += f" of {o.duplicate_of} ({verdict})"
    if o.code:
        text += f": {o.code}"
    if o.message:
        text += f" ({o.message})"
    if o.detail:
        text += " " + json.dumps(o.detail)
    click.echo(text)
    return status


@cli.command(context_settings=_ONE_EVENT)
@click.argument("user", type=_NonNegative("USER (a user id)"))
@click.argument("amount", type=_NonNegative("AMOUNT (minor units)"))
@_wait_options
@click.pass_context
def topup(
    ctx: click.Context,
    user: int,
    amount: int,
    key: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Credit AMOUNT minor units (a non-negative integer) to USER."""
    _one(ctx, lambda: TopUp(user, amount), key, wait, timeout, as_json)


@cli.command("add-item", context_settings=_ONE_EVENT)
@click.argument("item")
@click.argument("count", type=_NonNegative("COUNT (units)"))
@click.option(
    "--price",
    type=_NonNegative("--price (minor units)"),
    default=None,
    help="Minor units per unit.",
)
@_wait_options
@click.pass_context
def add_item(
    ctx: click.Context,
    item: str,
    count: int,
    price: int | None,
    key: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Add COUNT units (a non-negative integer) of ITEM to stock, optionally pricing it."""
    _one(ctx, lambda: AddItem(item, count, price), key, wait, timeout, as_json)


@cli.command(context_settings=_ONE_EVENT)
@click.argument("user", type=_NonNegative("USER (a user id)"))
@click.argument("lines", nargs=-1, required=True)
@click.option("--order-id", default=None, help="Caller reference, 1 to 128 characters.")
@_wait_options
@click.pass_context
def order(
    ctx: click.Context,
    user: int,
    lines: tuple[str, ...],
    order_id: str | None,
    key: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """USER orders ITEM:QTY [ITEM:QTY ...].

    Each line is split at its LAST colon, so item ids may contain colons:
    "cpu:2:3" is 3 of item "cpu:2". QTY is an integer >= 0.
    """
    try:
        parsed = tuple(parse_line(text) for text in lines)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    _one(ctx, lambda: Order(user, parsed, order_id), key, wait, timeout, as_json)


if __name__ == "__main__":
    cli()

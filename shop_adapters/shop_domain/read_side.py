"""The shop's read side for the generic command lines: projections, receipts, queries.

- :data:`SHOP_READ_MODELS`: the shop's
  :class:`~shop_adapters.read_model_commands.ReadModelCli` (its five
  projections, the ``receipts`` group and its handler options
  ``--receipts-list KEY`` / ``--receipts-dir DIR``);
- :data:`SHOP_QUERIES`: the ``query`` subcommands ``top-items``, ``history``,
  ``rejections`` and ``top-customers`` (each with ``--json``), beside the
  generic ``status`` and ``parked``.

The JSON of a query: ``{"view": name, "position": "ms-seq" or null,
"outcomes": n, ...}`` and the answer (``"items"``, ``"customers"``,
``"history"``, or the rejection report's members). Without a view (the
projector never ran) a warning goes to stderr and the answer is empty; exit 0.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click
import redis

from ..consumer_group import Handler
from ..effects import DirectorySink, RedisListSink, Sink
from ..read_model_commands import ReadModelCli, ReadSide, pass_read_side, view_header
from ..view_store import ViewCheckpoint
from . import queries
from .projections import shop_projections
from .receipts import ReceiptHandler

__all__ = ["SHOP_QUERIES", "SHOP_READ_MODELS", "build_receipts"]


def build_receipts(
    client: redis.Redis,
    stream: str,
    receipts_list: str | None = None,
    receipts_dir: Path | None = None,
) -> Handler:
    """The receipt handler: receipts appended to the Redis list ``receipts_list``
    (default ``<stream>:receipts``, with the set ``<list>:done`` of the orders
    done), or written as files to ``receipts_dir``; ``click.UsageError`` for both."""
    if receipts_list is not None and receipts_dir is not None:
        raise click.UsageError("--receipts-list and --receipts-dir are two places: choose one")
    sink: Sink = (
        DirectorySink(receipts_dir)
        if receipts_dir is not None
        else RedisListSink(client, receipts_list or f"{stream}:receipts")
    )
    return ReceiptHandler(sink)


SHOP_READ_MODELS = ReadModelCli(
    name="shop",
    projections=shop_projections,
    group="receipts",
    handler_options=[
        click.option(
            "--receipts-list",
            default=None,
            metavar="KEY",
            help="Redis list of the receipts (default: <stream>:receipts); the orders done "
            "are the set <KEY>:done.",
        ),
        click.option(
            "--receipts-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Write each receipt to DIR/<order position>.json instead.",
        ),
    ],
    build_handler=build_receipts,
)
"""The shop's read side for :mod:`shop_adapters.read_model_commands`."""


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(f)


def _limit_option(f: Any) -> Any:
    return click.option(
        "--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Rows at most."
    )(f)


def _head(name: str, checkpoint: ViewCheckpoint | None) -> dict[str, Any]:
    return {
        "view": name,
        "position": None if checkpoint is None else str(checkpoint.position),
        "outcomes": 0 if checkpoint is None else checkpoint.outcomes,
    }


def _money(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def _day(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError as e:
        raise click.BadParameter(f"a day is YYYY-MM-DD, got {value!r}", ctx, param) from e


@click.command("top-items")
@click.option("--by", type=click.Choice(["revenue", "units"]), default="revenue", show_default=True)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=None,
    help="Only the last N UTC days, today included (from sales_by_day).",
)
@click.option("--since", callback=_day, default=None, help="From this UTC day (YYYY-MM-DD).")
@click.option("--until", callback=_day, default=None, help="Up to this UTC day, included.")
@_limit_option
@_json_option
@pass_read_side
def top_items(
    side: ReadSide,
    by: queries.By,
    days: int | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The best-selling items by revenue or units: of all time (view sales), or of
    some days (view sales_by_day; days are the UTC days of the orders' entry IDs).

    JSON: {"view", "position", "outcomes", "items": [{"item", "units", "revenue",
    "orders"?}]}; money in minor units.
    """
    if days is not None and (since or until):
        raise click.UsageError("--days or --since/--until: choose one")
    if days is not None or since or until:
        if days is not None:
            today = dt.datetime.now(dt.UTC).date()
            first, last = (today - dt.timedelta(days=days - 1)).isoformat(), today.isoformat()
        else:
            first, last = since or "0001-01-01", until or "9999-12-31"
        checkpoint, docs = side.store.read_view("sales_by_day")
        rows = queries.top_items_between(docs, first, last, by=by, limit=limit)
        head = {**_head("sales_by_day", checkpoint), "since": first, "until": last}
    else:
        checkpoint, docs = side.store.read_view("sales")
        rows = queries.top_items(docs, by=by, limit=limit)
        head = _head("sales", checkpoint)
    if as_json:
        click.echo(json.dumps({**head, "items": rows}))
        return
    click.echo(view_header(head["view"], checkpoint))
    for i, row in enumerate(rows, 1):
        orders = f"  orders {row['orders']}" if "orders" in row else ""
        click.echo(
            f"{i:>3}. {row['item']}  units {row['units']}  revenue {_money(row['revenue'])}{orders}"
        )


@click.command("history")
@click.argument("user", type=click.IntRange(min=0))
@_json_option
@pass_read_side
def history(side: ReadSide, user: int, as_json: bool) -> None:
    """A customer's last orders (accepted and rejected, newest first), how many
    orders, how many accepted and the total spent (view customers).

    JSON: {"view", "position", "outcomes", "history": {"user", "count",
    "accepted", "spent", "orders": [{"at", "status", "total"/"code",
    "lines"/"items", "order_id"?}]}}.
    """
    checkpoint, docs = side.store.read_documents("customers", [f"u:{user}"])
    answer = queries.history(user, docs[f"u:{user}"])
    if as_json:
        click.echo(json.dumps({**_head("customers", checkpoint), "history": answer}))
        return
    click.echo(view_header("customers", checkpoint))
    click.echo(
        f"user {user}: {answer['count']} orders, {answer['accepted']} accepted, "
        f"spent {_money(answer['spent'])}"
    )
    for order in answer["orders"]:
        ref = f" [{order['order_id']}]" if "order_id" in order else ""
        if order["status"] == "accepted":
            lines = ", ".join(f"{q} x {i} @ {_money(p)}" for i, q, p in order["lines"])
            click.echo(f"  {order['at']}{ref}  accepted  {_money(order['total'])}  {lines}")
        else:
            items = ", ".join(order["items"])
            click.echo(f"  {order['at']}{ref}  rejected  {order['code']}  {items}")


@click.command("rejections")
@_limit_option
@_json_option
@pass_read_side
def rejections(side: ReadSide, limit: int, as_json: bool) -> None:
    """Why requests fail: rejections by reason, the items of the most rejected
    orders by reason, and the dead letters (view rejections).

    JSON: {"view", "position", "outcomes", "by_reason": {code: n}, "by_item":
    [{"item", "rejected", "by_reason"}], "dead_letters": n}.
    """
    checkpoint, docs = side.store.read_view("rejections")
    report = queries.rejection_report(docs, limit=limit)
    if as_json:
        click.echo(json.dumps({**_head("rejections", checkpoint), **report}))
        return
    click.echo(view_header("rejections", checkpoint))
    click.echo("by reason:")
    for code, n in report["by_reason"].items():
        click.echo(f"  {code}: {n}")
    click.echo("by item:")
    for row in report["by_item"]:
        reasons = ", ".join(f"{c} {n}" for c, n in row["by_reason"].items())
        click.echo(f"  {row['item']}: {row['rejected']} ({reasons})")
    click.echo(f"dead letters: {report['dead_letters']}")


@click.command("top-customers")
@_limit_option
@_json_option
@pass_read_side
def top_customers(side: ReadSide, limit: int, as_json: bool) -> None:
    """The customers who spent most (view top_customers).

    JSON: {"view", "position", "outcomes", "customers": [{"user", "spent", "orders"}]}.
    """
    checkpoint, docs = side.store.read_view("top_customers")
    rows = queries.top_customers(docs, limit=limit)
    if as_json:
        click.echo(json.dumps({**_head("top_customers", checkpoint), "customers": rows}))
        return
    click.echo(view_header("top_customers", checkpoint))
    for i, row in enumerate(rows, 1):
        click.echo(
            f"{i:>3}. user {row['user']}  spent {_money(row['spent'])}  orders {row['orders']}"
        )


SHOP_QUERIES = [top_items, history, rejections, top_customers]
"""The shop's ``query`` subcommands."""

"""``python -m shop_adapters.inspector`` (console script ``shop-inspect``): inspect a
shop stream.

The group is :func:`shop_adapters.inspect_commands.inspect_group` with the shop
domain (``--price-list``, which must be the runner's; see that module for the
generic commands) plus two of the shop's own:

- ``user ID [--at POSITION | --at-time TIME]``: one user's balance;
- ``item ID [--at POSITION | --at-time TIME]``: one item's price and stock.
"""

from __future__ import annotations

from typing import Any

import click

from .inspect_commands import at_options, fold_for, inspect_group
from .shop_domain.cli import SHOP_CLI

__all__ = ["cli"]

cli = inspect_group(SHOP_CLI)


@cli.command("user")
@click.argument("user_id", type=int)
@at_options
@click.pass_obj
def user(obj: Any, user_id: int, at: str | None, at_time: str | None) -> None:
    """One user: balance in minor units (the current state, or at --at / --at-time).

    Exit 0 if the user exists, 3 if not (the state is otherwise as `state` shows it).
    """
    found = fold_for(obj, at, at_time)
    entry = found.result.state.users.get(user_id)
    where = f"at {found.result.position}"
    if entry is None:
        click.echo(f"user {user_id}: unknown {where}")
        raise SystemExit(3)
    click.echo(f"user {user_id}: balance {entry.balance} {where}")


@cli.command("item")
@click.argument("item_id")
@at_options
@click.pass_obj
def item(obj: Any, item_id: str, at: str | None, at_time: str | None) -> None:
    """One item: price (minor units per unit; none: not for sale) and stock.

    Exit 0 if the item exists, 3 if not.
    """
    found = fold_for(obj, at, at_time)
    entry = found.result.state.items.get(item_id)
    where = f"at {found.result.position}"
    if entry is None:
        click.echo(f"item {item_id!r}: unknown {where}")
        raise SystemExit(3)
    price = "none (not for sale)" if entry.price is None else str(entry.price)
    click.echo(f"item {item_id!r}: price {price}, stock {entry.stock} {where}")


if __name__ == "__main__":
    cli()

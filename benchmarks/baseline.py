"""The baseline: the shop's rules folded with plain mutable dicts in a straightforward loop.

This is the ceiling our persistent-state ``fold`` is measured against, and an
independent second implementation of the Rules that the property tests compare
``shop_core.fold`` with. Returns ``(balances, items)``: ``{user_id: balance}``
and ``{item_id: [price, stock]}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shop_core import AddItem, Event, Order, ShopState, TopUp


def fold_dicts(
    events: Iterable[Event],
    balances: dict[int, int] | None = None,
    items: dict[str, list[int | None]] | None = None,
) -> tuple[dict[int, int], dict[str, list[int | None]]]:
    """Fold ``events`` into mutable dicts, mutating and returning them."""
    balances = {} if balances is None else balances
    items = {} if items is None else items
    e: Any  # narrowed by ``type(e) is``, which mypy does not follow (isinstance is slower)
    for e in events:
        kind = type(e)
        if kind is TopUp:
            balances[e.user_id] = balances.get(e.user_id, 0) + e.amount
        elif kind is AddItem:
            it = items.get(e.item_id)
            if it is None:
                items[e.item_id] = [e.price, e.count]
            else:
                if e.price is not None:
                    it[0] = e.price
                it[1] += e.count
        elif kind is Order:
            balance = balances.get(e.user_id)
            if balance is None:
                continue
            wanted: dict[str, int] = {}
            for iid, q in e.lines:
                if q:
                    wanted[iid] = wanted.get(iid, 0) + q
            if not wanted:
                continue
            # Precedence: unknown item, then not priced, then out of stock, then funds.
            unknown = not_priced = short = False
            total = 0
            for iid, q in wanted.items():
                it = items.get(iid)
                if it is None:
                    unknown = True
                    break
                price, stock = it
                if price is None:
                    not_priced = True
                    continue
                if stock < q:  # type: ignore[operator]
                    short = True
                total += price * q
            if unknown or not_priced or short or total > balance:
                continue
            balances[e.user_id] = balance - total
            for iid, q in wanted.items():
                items[iid][1] -= q  # type: ignore[operator]
    return balances, items


def as_dicts(state: ShopState) -> tuple[dict[int, int], dict[str, list[int | None]]]:
    """A ``ShopState`` in the baseline's shape, for comparison."""
    return (
        {uid: u.balance for uid, u in state.users.items()},
        {iid: [it.price, it.stock] for iid, it in state.items.items()},
    )

"""The baseline: the shop's rules folded with plain mutable dicts in a straightforward loop.

This is the ceiling our persistent-state ``fold`` is measured against, and an
independent second implementation of the Rules that the property tests compare
``shop_core.fold`` with. Returns ``(balances, items)``: ``{user_id: balance}``
and ``{item_id: [price, stock]}``.
"""

from __future__ import annotations

from collections.abc import Iterable

from shop_core import AddItem, Event, Order, ShopState, TopUp


def fold_dicts(
    events: Iterable[Event],
    balances: dict[int, int] | None = None,
    items: dict[str, list[int | None]] | None = None,
) -> tuple[dict[int, int], dict[str, list[int | None]]]:
    """Fold ``events`` into mutable dicts, mutating and returning them."""
    balances = {} if balances is None else balances
    items = {} if items is None else items
    for e in events:
        if isinstance(e, TopUp):
            balances[e.user_id] = balances.get(e.user_id, 0) + e.amount
        elif isinstance(e, AddItem):
            it = items.get(e.item_id)
            if it is None:
                items[e.item_id] = [e.price, e.count]
            else:
                if e.price is not None:
                    it[0] = e.price
                it[1] += e.count  # type: ignore[operator]
        elif isinstance(e, Order):
            if e.user_id not in balances:
                continue
            wanted: dict[str, int] = {}
            for iid, q in e.lines:
                wanted[iid] = wanted.get(iid, 0) + q
            wanted = {k: q for k, q in wanted.items() if q > 0}
            if not wanted:
                continue
            if any(k not in items for k in wanted):
                continue
            if any(items[k][0] is None for k in wanted):
                continue
            if any(items[k][1] < q for k, q in wanted.items()):  # type: ignore[operator]
                continue
            total = sum(items[k][0] * q for k, q in wanted.items())  # type: ignore[operator,misc]
            if total > balances[e.user_id]:
                continue
            balances[e.user_id] -= total
            for k, q in wanted.items():
                items[k][1] -= q  # type: ignore[operator]
    return balances, items


def as_dicts(state: ShopState) -> tuple[dict[int, int], dict[str, list[int | None]]]:
    """A ``ShopState`` in the baseline's shape, for comparison."""
    return (
        {uid: u.balance for uid, u in state.users.items()},
        {iid: [it.price, it.stock] for iid, it in state.items.items()},
    )

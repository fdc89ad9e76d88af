"""A test oracle: the shop's rules written again, independently, over plain dicts.

Nothing here is shared with ``shop_core`` but the event classes: no overlays,
no evolvers, no batching. One event at a time, in the words of the Rules in
the docstring of :mod:`shop_core.rules`:

- TopUp: the balance grows by ``amount``; an unknown user is created first.
- AddItem: an unknown item is created with stock ``count`` and price
  ``price``; a known item's stock grows by ``count`` and its price becomes
  ``price`` unless ``price`` is ``None``.
- Order: lines naming the same item are merged; merged lines of quantity 0 are
  ignored. total = sum(price * quantity). Rejected with the first reason in
  this order: unknown user, empty order, unknown item, item not priced, out of
  stock, insufficient funds. Accepted: balance -= total, each stock -= quantity.

>>> from shop_core import AddItem, Order, TopUp
>>> m = Model()
>>> [m.apply(e) for e in [TopUp(1, 500), AddItem("cpu", 3, 100), Order(1, (("cpu", 2),))]]
[None, None, 200]
>>> m.users, m.items
({1: 300}, {'cpu': (100, 1)})
>>> m.apply(Order(1, (("cpu", 2),)))
'out_of_stock'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shop_core import AddItem, Event, Order, ShopState, TopUp

__all__ = ["Model", "model_of", "verdicts"]

Verdict = str | int | None
"""What :meth:`Model.apply` says: a rejection code (``"out_of_stock"``), the total
charged for an accepted order, or ``None`` for a TopUp or an AddItem."""


@dataclass
class Model:
    """The shop as ``users: {user_id: balance}`` and ``items: {item_id: (price, stock)}``."""

    users: dict[int, int] = field(default_factory=dict)
    items: dict[str, tuple[int | None, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, events: Iterable[Event]) -> Model:
        """The model after ``events``, from empty."""
        model = cls()
        for event in events:
            model.apply(event)
        return model

    def apply(self, event: Event) -> Verdict:
        """Apply one event; return its verdict (see :data:`Verdict`)."""
        if isinstance(event, TopUp):
            self.users[event.user_id] = self.users.get(event.user_id, 0) + event.amount
            return None
        if isinstance(event, AddItem):
            if event.item_id not in self.items:
                self.items[event.item_id] = (event.price, event.count)
            else:
                price, stock = self.items[event.item_id]
                new_price = price if event.price is None else event.price
                self.items[event.item_id] = (new_price, stock + event.count)
            return None
        if isinstance(event, Order):
            return self._order(event)
        raise TypeError(f"not a shop event: {event!r}")

    def _order(self, order: Order) -> Verdict:
        if order.user_id not in self.users:
            return "unknown_user"
        merged: dict[str, int] = {}
        for item_id, quantity in order.lines:
            merged[item_id] = merged.get(item_id, 0) + quantity
        wanted = {item_id: q for item_id, q in merged.items() if q > 0}
        if not wanted:
            return "empty_order"
        if any(item_id not in self.items for item_id in wanted):
            return "unknown_item"
        if any(self.items[item_id][0] is None for item_id in wanted):
            return "item_not_priced"
        if any(self.items[item_id][1] < q for item_id, q in wanted.items()):
            return "out_of_stock"
        total = 0
        for item_id, q in wanted.items():
            price = self.items[item_id][0]
            assert price is not None
            total += price * q
        if total > self.users[order.user_id]:
            return "insufficient_funds"
        self.users[order.user_id] -= total
        for item_id, q in wanted.items():
            price, stock = self.items[item_id]
            self.items[item_id] = (price, stock - q)
        return total


def model_of(state: ShopState) -> Model:
    """A :class:`~shop_core.ShopState` in the model's shape, to compare with one."""
    return Model(
        {uid: user.balance for uid, user in state.users.items()},
        {iid: (item.price, item.stock) for iid, item in state.items.items()},
    )


def verdicts(events: Iterable[Event]) -> list[Verdict]:
    """The model's verdict of each event, folded from empty."""
    model = Model()
    return [model.apply(event) for event in events]

"""The rules of the shop: ``decide``, ``apply`` and ``fold``, pure and total.

``apply(state, event)`` returns the next state; ``fold(events, state)`` applies a
whole history; ``decide(state, event)`` says whether ``apply`` would accept the
event and, if not, why (as a value: a :class:`Rejection` with a stable reason
code). A rejected order is still a valid event: applying it changes nothing.

Rules (the specification is ``ARCHITECTURE.md``, "Rules"):

- TopUp: the balance grows by ``amount``; an unknown user is created first.
- AddItem: an unknown item is created with stock ``count`` and price ``price``;
  a known item's stock grows by ``count`` and its price becomes ``price``
  unless ``price`` is ``None``.
- Order: lines naming the same item are merged; merged lines of quantity 0 are
  ignored. total = sum(price * quantity). Rejected with the first reason in
  this order: unknown user, empty order, unknown item, item not priced, out of
  stock, insufficient funds. Accepted: balance -= total, each stock -= quantity.

Implementation: one set of rules runs over *overlays*, plain dicts that hold
the entries changed in a batch and fall through to the persistent maps for the
rest. ``fold`` commits the overlay once per call through pyrsistent evolvers,
so it costs a dict update per event instead of a persistent-map update; from
outside it is pure and equal to applying the events one by one (a property
test proves it).

>>> from shop_core import TopUp, AddItem, Order, EMPTY
>>> s = fold([TopUp(1, 500), AddItem("cpu", 3, 100), Order(1, (("cpu", 2),))])
>>> s.users[1].balance, s.items["cpu"].stock
(300, 1)
>>> decide(s, Order(1, (("cpu", 5),))).failure().code
<RejectionCode.OUT_OF_STOCK: 'out_of_stock'>
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

from pyrsistent.typing import PMap
from returns.result import Failure, Result, Success

from .events import AddItem, Event, Order, TopUp
from .state import EMPTY, Item, ShopState, User

__all__ = [
    "Outcomes",
    "Rejection",
    "RejectionCode",
    "apply",
    "decide",
    "evolve",
    "fold",
    "fold_with_outcomes",
]


class RejectionCode(StrEnum):
    """Stable reason codes for a rejected order, in order of precedence."""

    UNKNOWN_USER = "unknown_user"
    EMPTY_ORDER = "empty_order"
    UNKNOWN_ITEM = "unknown_item"
    ITEM_NOT_PRICED = "item_not_priced"
    OUT_OF_STOCK = "out_of_stock"
    INSUFFICIENT_FUNDS = "insufficient_funds"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was not accepted: a stable ``code`` and a human ``message``."""

    code: RejectionCode
    message: str


# (code, detail) for a rejection, None for acceptance. Messages are built only
# by decide(), so the hot loop never formats strings.
_Verdict: TypeAlias = tuple[RejectionCode, str] | None


class _Users(dict[int, int]):
    """Overlay of balances over a ``PMap[int, User]``; a miss reads the base once.

    ``users[uid]`` is the balance, or ``None`` for an unknown user (not cached).
    """

    __slots__ = ("base",)

    def __init__(self, base: PMap[int, User]) -> None:
        super().__init__()
        self.base = base

    def __missing__(self, uid: int) -> int | None:
        user = self.base.get(uid)
        if user is None:
            return None
        self[uid] = balance = user.balance
        return balance


_ItemValue: TypeAlias = tuple[int | None, int]


class _Items(dict[str, _ItemValue]):
    """Overlay of ``(price, stock)`` over a ``PMap[str, Item]``; ``None`` if unknown."""

    __slots__ = ("base",)

    def __init__(self, base: PMap[str, Item]) -> None:
        super().__init__()
        self.base = base

    def __missing__(self, iid: str) -> _ItemValue | None:
        item = self.base.get(iid)
        if item is None:
            return None
        value = self[iid] = (item.price, item.stock)
        return value


def _top_up(users: _Users, items: _Items, event: TopUp) -> _Verdict:
    balance: int | None = users[event.user_id]
    users[event.user_id] = event.amount if balance is None else balance + event.amount
    return None


def _add_item(users: _Users, items: _Items, event: AddItem) -> _Verdict:
    current: _ItemValue | None = items[event.item_id]
    if current is None:
        items[event.item_id] = (event.price, event.count)
    else:
        price, stock = current
        items[event.item_id] = (
            price if event.price is None else event.price,
            stock + event.count,
        )
    return None


def _order(users: _Users, items: _Items, event: Order) -> _Verdict:
    balance: int | None = users[event.user_id]
    if balance is None:
        return (RejectionCode.UNKNOWN_USER, f"user {event.user_id} is unknown")
    lines = event.lines
    merged: Iterable[tuple[str, int]]
    if len(lines) == 1:
        if lines[0][1] == 0:
            return (RejectionCode.EMPTY_ORDER, "the order's total quantity is 0")
        merged = lines
    else:
        sums: dict[str, int] = {}
        for iid, qty in lines:
            if qty:
                sums[iid] = sums.get(iid, 0) + qty
        if not sums:
            return (RejectionCode.EMPTY_ORDER, "the order's total quantity is 0")
        merged = sums.items()
    total = 0
    not_priced: str | None = None
    out_of_stock: str | None = None
    for iid, qty in merged:
        current: _ItemValue | None = items[iid]
        if current is None:
            return (RejectionCode.UNKNOWN_ITEM, f"item {iid!r} is unknown")
        price, stock = current
        if price is None:
            if not_priced is None:
                not_priced = iid
            continue
        if stock < qty and out_of_stock is None:
            out_of_stock = f"item {iid!r} has {stock} in stock, {qty} ordered"
        total += price * qty
    if not_priced is not None:
        return (RejectionCode.ITEM_NOT_PRICED, f"item {not_priced!r} has no price")
    if out_of_stock is not None:
        return (RejectionCode.OUT_OF_STOCK, out_of_stock)
    if total > balance:
        return (
            RejectionCode.INSUFFICIENT_FUNDS,
            f"user {event.user_id} has {balance}, the order costs {total}",
        )
    users[event.user_id] = balance - total
    for iid, qty in merged:
        price, stock = items[iid]
        items[iid] = (price, stock - qty)
    return None


_Step: TypeAlias = Callable[[_Users, _Items, Event], _Verdict]
# Transitions as data: one lookup per event, no chain of isinstance.
_STEPS: Mapping[type, _Step] = {
    TopUp: _top_up,  # type: ignore[dict-item]
    AddItem: _add_item,  # type: ignore[dict-item]
    Order: _order,  # type: ignore[dict-item]
}


def _not_an_event(event: object) -> TypeError:
    return TypeError(f"expected a shop event (TopUp, AddItem or Order), got {type(event).__name__}")


def _commit(state: ShopState, users: _Users, items: _Items) -> ShopState:
    """Write an overlay's changed entries into new persistent maps (one evolver each)."""
    new_users = state.users
    if users:
        base_users = state.users
        user_ev = base_users.evolver()
        for uid, balance in users.items():
            old = base_users.get(uid)
            if old is None or old.balance != balance:
                user_ev[uid] = User(balance)
        if user_ev.is_dirty():
            new_users = user_ev.persistent()
    new_items = state.items
    if items:
        base_items = state.items
        item_ev = base_items.evolver()
        for iid, (price, stock) in items.items():
            old_item = base_items.get(iid)
            if old_item is None or old_item.price != price or old_item.stock != stock:
                item_ev[iid] = Item(price, stock)
        if item_ev.is_dirty():
            new_items = item_ev.persistent()
    if new_users is state.users and new_items is state.items:
        return state
    return ShopState(users=new_users, items=new_items)


@dataclass(frozen=True, slots=True)
class Outcomes:
    """What a fold did: ``events`` applied, ``orders_accepted``, and
    ``rejections`` as ``{reason code: count}``. Outcomes add up with ``+``."""

    events: int = 0
    orders_accepted: int = 0
    rejections: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: Outcomes) -> Outcomes:
        merged = dict(self.rejections)
        for code, n in other.rejections.items():
            merged[code] = merged.get(code, 0) + n
        return Outcomes(
            events=self.events + other.events,
            orders_accepted=self.orders_accepted + other.orders_accepted,
            rejections=merged,
        )

    @property
    def rejected(self) -> int:
        """Total number of rejected orders."""
        return sum(self.rejections.values())


def fold_with_outcomes(
    events: Iterable[Event], state: ShopState = EMPTY
) -> tuple[ShopState, Outcomes]:
    """Apply ``events`` in order to ``state``; return the new state and what happened.

    Pure: ``state`` is not modified. Raises ``TypeError`` if an element is not an
    event (the state given is then unchanged, since nothing is committed).
    """
    users = _Users(state.users)
    items = _Items(state.items)
    steps = _STEPS
    rejections: dict[str, int] = {}
    n = 0
    orders = 0
    for event in events:
        step = steps.get(type(event))
        if step is None:
            raise _not_an_event(event)
        verdict = step(users, items, event)
        n += 1
        if step is _order:
            orders += 1
            if verdict is not None:
                code = verdict[0].value
                rejections[code] = rejections.get(code, 0) + 1
    return _commit(state, users, items), Outcomes(n, orders - sum(rejections.values()), rejections)


def fold(events: Iterable[Event], state: ShopState = EMPTY) -> ShopState:
    """Apply ``events`` in order, starting from ``state`` (default :data:`EMPTY`).

    Equal to applying them one by one with :func:`apply`, and
    ``fold(a + b) == fold(b, fold(a))``. Raises ``TypeError`` for a non-event.
    """
    return fold_with_outcomes(events, state)[0]


def apply(state: ShopState, event: Event) -> ShopState:
    """The state after ``event``. Total: a rejected order returns ``state`` itself.

    Raises ``TypeError`` only if ``event`` is not a shop event.
    """
    return fold_with_outcomes((event,), state)[0]


evolve = apply
"""The Decider pattern's name for :func:`apply`."""


def decide(state: ShopState, event: Event) -> Result[Event, Rejection]:
    """Whether :func:`apply` would accept ``event`` in ``state``.

    Returns ``Success(event)`` or ``Failure(Rejection)`` with the first reason
    in the Rules' order. TopUp and AddItem are always accepted. Raises
    ``TypeError`` if ``event`` is not a shop event.
    """
    step = _STEPS.get(type(event))
    if step is None:
        raise _not_an_event(event)
    verdict = step(_Users(state.users), _Items(state.items), event)
    if verdict is None:
        return Success(event)
    return Failure(Rejection(verdict[0], verdict[1]))

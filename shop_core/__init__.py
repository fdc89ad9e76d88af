"""shop_core: the pure functional core of the shop.

State is immutable (pyrsistent persistent maps), events are immutable values,
and :func:`apply` is a pure, total, deterministic function; :func:`fold`
replays a history. This package does no I/O: no clocks, randomness, files,
network or logging. Hypothesis strategies for property tests live in
:mod:`shop_core.strategies` (import it explicitly; it needs ``hypothesis``).

>>> from shop_core import TopUp, AddItem, Order, fold
>>> s = fold([TopUp(1, 500), AddItem("cpu", 3, 100), Order(1, (("cpu", 2),))])
>>> (s.users[1].balance, s.items["cpu"].stock)
(300, 1)
"""

from .events import MAX_ID_LENGTH, MAX_INT, MAX_ORDER_LINES, AddItem, Event, Order, TopUp
from .rules import (
    ACCEPTED,
    Accepted,
    Outcomes,
    Rejection,
    RejectionCode,
    Transient,
    apply,
    decide,
    fold,
    fold_with_outcomes,
)
from .state import EMPTY, SEMANTICS_VERSION, Item, ShopState, User, state_digest

__all__ = [
    "ACCEPTED",
    "EMPTY",
    "MAX_ID_LENGTH",
    "MAX_INT",
    "MAX_ORDER_LINES",
    "SEMANTICS_VERSION",
    "Accepted",
    "AddItem",
    "Event",
    "Item",
    "Order",
    "Outcomes",
    "Rejection",
    "RejectionCode",
    "ShopState",
    "TopUp",
    "Transient",
    "User",
    "apply",
    "decide",
    "fold",
    "fold_with_outcomes",
    "state_digest",
]

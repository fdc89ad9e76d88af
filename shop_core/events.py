"""Shop events: frozen, hashable values that validate on construction.

An invalid event cannot exist: every constructor checks its fields and raises
``TypeError`` (wrong type) or ``ValueError`` (right type, value out of range),
with a message naming the field, what was expected and what came. Once built,
an event is immutable, so :func:`shop_core.apply` is total over every value it
can receive.

Units: money (``amount``, ``price``) is an integer number of minor units
(cents, pence); ``count`` and quantities are integer units of stock. Every
number is an ``int`` in ``[0, 2**63 - 1]``; ``bool``, ``float``, ``Decimal``
and numeric strings are refused.

>>> TopUp(7, 500)
TopUp(user_id=7, amount=500)
>>> Order(7, [("cpu", 2)]).lines
(('cpu', 2),)
>>> TopUp(7, 5.0)
Traceback (most recent call last):
...
TypeError: TopUp.amount must be an int in [0, 2**63 - 1], got float 5.0
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_INT",
    "MAX_ORDER_LINES",
    "AddItem",
    "Event",
    "Order",
    "TopUp",
]

MAX_INT = 2**63 - 1
"""Largest integer an event may carry (the signed 64-bit maximum)."""
MAX_ID_LENGTH = 128
"""Longest item id or order id, in characters."""
MAX_ORDER_LINES = 1000
"""Most lines an :class:`Order` may have (before merging duplicates)."""


def _check_int(owner: str, name: str, value: object) -> int:
    # type() rather than isinstance(): bool is a subclass of int and is refused.
    if type(value) is not int:
        raise TypeError(
            f"{owner}.{name} must be an int in [0, 2**63 - 1], "
            f"got {type(value).__name__} {value!r:.80}"
        )
    if not 0 <= value <= MAX_INT:
        raise ValueError(f"{owner}.{name} must be in [0, 2**63 - 1], got {value}")
    return value


def _check_id(owner: str, name: str, value: object) -> str:
    if type(value) is not str:
        raise TypeError(
            f"{owner}.{name} must be a str of 1 to {MAX_ID_LENGTH} characters, "
            f"got {type(value).__name__} {value!r:.80}"
        )
    if not 0 < len(value) <= MAX_ID_LENGTH:
        raise ValueError(
            f"{owner}.{name} must have 1 to {MAX_ID_LENGTH} characters, got {len(value)}"
        )
    return value


@dataclass(frozen=True, slots=True)
class TopUp:
    """Credit ``amount`` minor units to user ``user_id`` (created if unknown).

    Raises ``TypeError``/``ValueError`` naming the field on bad input.
    """

    user_id: int
    amount: int

    def __post_init__(self) -> None:
        # Inline happy path (hot in replay); the helpers build the error messages.
        u, a = self.user_id, self.amount
        if type(u) is not int or not 0 <= u <= MAX_INT:
            _check_int("TopUp", "user_id", u)
        if type(a) is not int or not 0 <= a <= MAX_INT:
            _check_int("TopUp", "amount", a)


@dataclass(frozen=True, slots=True)
class AddItem:
    """Add ``count`` units of ``item_id`` to stock, optionally setting its ``price``.

    ``price`` is in minor units per unit; ``None`` keeps the current price (an
    item that never had one is not for sale). Raises ``TypeError``/``ValueError``
    naming the field on bad input.
    """

    item_id: str
    count: int
    price: int | None = None

    def __post_init__(self) -> None:
        i, c, p = self.item_id, self.count, self.price
        if type(i) is not str or not 0 < len(i) <= MAX_ID_LENGTH:
            _check_id("AddItem", "item_id", i)
        if type(c) is not int or not 0 <= c <= MAX_INT:
            _check_int("AddItem", "count", c)
        if p is not None and (type(p) is not int or not 0 <= p <= MAX_INT):
            _check_int("AddItem", "price", p)


Line: TypeAlias = tuple[str, int]


def _check_lines(value: object) -> tuple[Line, ...]:
    if type(value) is tuple:
        raw_lines: tuple[Any, ...] = value
    elif isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"Order.lines must be a sequence of (item_id, quantity) pairs, "
            f"got {type(value).__name__}"
        )
    else:
        collected: list[Any] = []
        for raw in value:  # bounded: never materialise a huge iterable
            if len(collected) > MAX_ORDER_LINES:
                break
            collected.append(raw)
        raw_lines = tuple(collected)
    if not raw_lines:
        raise ValueError("Order.lines must not be empty")
    if len(raw_lines) > MAX_ORDER_LINES:
        raise ValueError(f"Order.lines must have at most {MAX_ORDER_LINES} lines")
    # Fast path: already a tuple of well-typed (str, int) tuples, kept as is.
    for raw in raw_lines:
        if not (
            type(raw) is tuple
            and len(raw) == 2
            and type(raw[0]) is str
            and 0 < len(raw[0]) <= MAX_ID_LENGTH
            and type(raw[1]) is int
            and 0 <= raw[1] <= MAX_INT
        ):
            break
    else:
        return raw_lines
    lines: list[Line] = []
    for index, raw in enumerate(raw_lines):
        if not isinstance(raw, tuple | list) or len(raw) != 2:
            raise TypeError(
                f"Order.lines[{index}] must be an (item_id, quantity) pair, "
                f"got {type(raw).__name__} {raw!r:.80}"
            )
        item_id = _check_id("Order", f"lines[{index}].item_id", raw[0])
        quantity = _check_int("Order", f"lines[{index}].quantity", raw[1])
        lines.append((item_id, quantity))
    return tuple(lines)


@dataclass(frozen=True, slots=True)
class Order:
    """User ``user_id`` asks to buy ``lines``: ``(item_id, quantity)`` pairs.

    ``lines`` may be given as any sequence of pairs; it is stored as a tuple of
    tuples (1 to :data:`MAX_ORDER_LINES` lines). Whether the order is accepted
    is decided when it is applied (see :func:`shop_core.decide`).
    ``order_id`` is an optional caller reference (1 to 128 characters).
    Raises ``TypeError``/``ValueError`` naming the field on bad input.
    """

    user_id: int
    lines: tuple[Line, ...]
    order_id: str | None = None

    def __post_init__(self) -> None:
        u, o = self.user_id, self.order_id
        if type(u) is not int or not 0 <= u <= MAX_INT:
            _check_int("Order", "user_id", u)
        lines = _check_lines(self.lines)
        if lines is not self.lines:
            object.__setattr__(self, "lines", lines)
        if o is not None and (type(o) is not str or not 0 < len(o) <= MAX_ID_LENGTH):
            _check_id("Order", "order_id", o)


Event: TypeAlias = TopUp | AddItem | Order
"""Any shop event."""


_new = object.__new__
_set = object.__setattr__


def _trusted_top_up(user_id: int, amount: int) -> TopUp:
    """A :class:`TopUp` from fields a schema-driven decoder has already checked
    against the same bounds (not exported: the public constructor validates)."""
    event: TopUp = _new(TopUp)
    _set(event, "user_id", user_id)
    _set(event, "amount", amount)
    return event


def _trusted_add_item(item_id: str, count: int, price: int | None) -> AddItem:
    """An :class:`AddItem` from already-checked fields (see :func:`_trusted_top_up`)."""
    event: AddItem = _new(AddItem)
    _set(event, "item_id", item_id)
    _set(event, "count", count)
    _set(event, "price", price)
    return event


def _trusted_order(user_id: int, lines: tuple[Line, ...], order_id: str | None) -> Order:
    """An :class:`Order` from already-checked fields (see :func:`_trusted_top_up`)."""
    event: Order = _new(Order)
    _set(event, "user_id", user_id)
    _set(event, "lines", lines)
    _set(event, "order_id", order_id)
    return event

"""The shop's read models: projections over its outcome journal (pure, no I/O).

Each is a :class:`~shop_adapters.projections.Projection` over the outcomes the
shop's folder publishes (:meth:`shop_adapters.shop_domain.ShopFolder.fold_each`):
an accepted order's detail is ``{"total", "user", "lines": [[item, quantity,
unit price], ...], "order_id"?}``, a rejected order's ``{"user", "items",
"order_id"?}``. Money is in integer minor units; duplicates (a repeated
idempotency key, answered from the first record) are never counted twice.

=================  ===================================  ==========================================
view               document key                         document
=================  ===================================  ==========================================
``sales``          ``i:<item>``                         ``{"units", "revenue", "orders"}``
``sales_by_day``   ``d:<YYYY-MM-DD>`` (UTC day of the   ``{item: [units, revenue]}``
                   order's entry ID)
``customers``      ``u:<user>``                         ``{"orders": [the last 10, oldest
                                                        first], "count", "accepted", "spent"}``
``rejections``     ``c:<code>``, ``i:<item>``,          ``n``; ``{code: n}``; ``n``
                   ``dead_letters``
``top_customers``  ``u:<user>``                         ``{"spent", "orders"}``
=================  ===================================  ==========================================

An entry of a customer's history: ``{"at": "ms-seq", "status": "accepted",
"total", "lines", "order_id"?}`` or ``{"at", "status": "rejected", "code",
"items", "order_id"?}``.

An order outcome without the detail these views need (a journal written
before outcomes carried lines) raises ``ValueError``: the projector stops at
it rather than count it wrong (see ``docs/read-models.md``, "Journals written
before read models").

>>> from shop_adapters.projections import fold
>>> from shop_adapters.domain import Outcome
>>> from shop_adapters.protocols import Position
>>> sold = Outcome("accepted", "Order", detail={"total": 300, "user": 7,
...     "lines": [["cpu", 2, 100], ["fan", 1, 100]]})
>>> fold(SalesPerItem(), [(Position(1, 0), sold)])["i:cpu"]
{'units': 2, 'revenue': 200, 'orders': 1}
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from ..domain import Outcome
from ..projections import Doc, Projection
from ..protocols import Position

__all__ = [
    "HISTORY_LENGTH",
    "CustomerHistory",
    "DailySales",
    "Rejections",
    "SalesPerItem",
    "TopCustomers",
    "day_of",
    "shop_projections",
]

HISTORY_LENGTH = 10
"""Orders kept per customer in ``customers`` (the last ones)."""

_EPOCH = dt.date(1970, 1, 1)
_MS_PER_DAY = 86_400_000


def day_of(position: Position) -> str:
    """The UTC day (``YYYY-MM-DD``) of a Redis entry ID's millisecond time.

    File and memory journals number their records ``(i, 0)``: their orders all
    fall on 1970-01-01. An ID past the year 9999 gives ``9999-12-31``.

    >>> day_of(Position(1291161600000, 0))
    '2010-12-01'
    """
    try:
        return (_EPOCH + dt.timedelta(days=position.major // _MS_PER_DAY)).isoformat()
    except OverflowError:
        return "9999-12-31"


def _is_order(outcome: Outcome, status: str) -> bool:
    return outcome.status == status and outcome.kind == "Order"


def _detail(outcome: Outcome, position: Position, *names: str) -> Mapping[str, Any]:
    detail = outcome.detail
    if isinstance(detail, Mapping):
        for name in names:
            if name not in detail:
                break
        else:
            return detail
    raise ValueError(
        f"the {outcome.status} order at {position} has no {'/'.join(names)} in its "
        f"detail ({detail!r:.80}): the journal was written before outcomes carried "
        "them; republish it (docs/read-models.md)"
    )


def _lines(outcome: Outcome, position: Position) -> list[tuple[str, int, int]]:
    """An accepted order's lines as ``(item, quantity, unit price)``."""
    lines = _detail(outcome, position, "lines", "user", "total")["lines"]
    return [(str(item), int(qty), int(price)) for item, qty, price in lines]


class SalesPerItem:
    """``sales``: units sold, revenue (minor units) and orders, per item."""

    name = "sales"
    version = 1

    def keys(self, position: Position, outcome: Outcome) -> Sequence[str]:
        """``i:<item>`` for each item of an accepted order."""
        if not _is_order(outcome, "accepted"):
            return ()
        return [f"i:{item}" for item, _, _ in _lines(outcome, position)]

    def evolve(
        self, docs: Mapping[str, Doc | None], position: Position, outcome: Outcome
    ) -> Mapping[str, Doc | None]:
        """Add each line's quantity and quantity x price to its item."""
        out: dict[str, Doc] = {}
        for item, qty, price in _lines(outcome, position):
            key = f"i:{item}"
            doc = out.get(key) or docs[key] or {"units": 0, "revenue": 0, "orders": 0}
            out[key] = {
                "units": doc["units"] + qty,
                "revenue": doc["revenue"] + qty * price,
                "orders": doc["orders"] + (0 if key in out else 1),
            }
        return out


class DailySales:
    """``sales_by_day``: per UTC day of the order's entry ID, units and revenue per item."""

    name = "sales_by_day"
    version = 1

    def keys(self, position: Position, outcome: Outcome) -> Sequence[str]:
        """``d:<day>`` for an accepted order."""
        if not _is_order(outcome, "accepted"):
            return ()
        return [f"d:{day_of(position)}"]

    def evolve(
        self, docs: Mapping[str, Doc | None], position: Position, outcome: Outcome
    ) -> Mapping[str, Doc | None]:
        """Add the order's lines to its day's ``{item: [units, revenue]}``."""
        key = f"d:{day_of(position)}"
        day = dict(docs[key] or {})
        for item, qty, price in _lines(outcome, position):
            units, revenue = day.get(item, (0, 0))
            day[item] = [units + qty, revenue + qty * price]
        return {key: day}


class CustomerHistory:
    """``customers``: each customer's last :data:`HISTORY_LENGTH` orders (accepted
    and rejected), how many orders, how many accepted, and the total spent."""

    name = "customers"
    version = 1

    def __init__(self, length: int = HISTORY_LENGTH) -> None:
        if length < 1:
            raise ValueError(f"a history keeps at least 1 order, got {length}")
        self.length = length

    def keys(self, position: Position, outcome: Outcome) -> Sequence[str]:
        """``u:<user>`` for an order, accepted or rejected."""
        if outcome.kind != "Order" or outcome.status not in ("accepted", "rejected"):
            return ()
        return [f"u:{_detail(outcome, position, 'user')['user']}"]

    def evolve(
        self, docs: Mapping[str, Doc | None], position: Position, outcome: Outcome
    ) -> Mapping[str, Doc | None]:
        """Append the order to its customer's history, keeping the last ones."""
        accepted = outcome.status == "accepted"
        if accepted:
            detail = _detail(outcome, position, "user", "total", "lines")
            entry: dict[str, Any] = {
                "at": str(position),
                "status": "accepted",
                "total": detail["total"],
                "lines": detail["lines"],
            }
        else:
            detail = _detail(outcome, position, "user", "items")
            entry = {
                "at": str(position),
                "status": "rejected",
                "code": outcome.code,
                "items": detail["items"],
            }
        if "order_id" in detail:
            entry["order_id"] = detail["order_id"]
        key = f"u:{detail['user']}"
        doc = docs[key] or {"orders": [], "count": 0, "accepted": 0, "spent": 0}
        return {
            key: {
                "orders": [*doc["orders"], entry][-self.length :],
                "count": doc["count"] + 1,
                "accepted": doc["accepted"] + accepted,
                "spent": doc["spent"] + (detail["total"] if accepted else 0),
            }
        }


class Rejections:
    """``rejections``: rejected requests by code (``c:<code>``), rejected orders'
    items by code (``i:<item>``: ``{code: n}``), and dead letters (``dead_letters``)."""

    name = "rejections"
    version = 1

    def keys(self, position: Position, outcome: Outcome) -> Sequence[str]:
        """The code's counter and each item of a rejected order; ``dead_letters``."""
        if outcome.status == "dead_letter":
            return ["dead_letters"]
        if outcome.status != "rejected":
            return ()
        keys = [f"c:{outcome.code}"]
        if outcome.kind == "Order":
            keys += [f"i:{item}" for item in _detail(outcome, position, "items")["items"]]
        return keys

    def evolve(
        self, docs: Mapping[str, Doc | None], position: Position, outcome: Outcome
    ) -> Mapping[str, Doc | None]:
        """Count the rejection under its code and under each of its items."""
        if outcome.status == "dead_letter":
            return {"dead_letters": (docs["dead_letters"] or 0) + 1}
        code = str(outcome.code)
        out: dict[str, Doc] = {f"c:{code}": (docs[f"c:{code}"] or 0) + 1}
        if outcome.kind == "Order":
            for item in _detail(outcome, position, "items")["items"]:
                key = f"i:{item}"
                counts = dict(out.get(key) or docs[key] or {})
                counts[code] = counts.get(code, 0) + 1
                out[key] = counts
        return out


class TopCustomers:
    """``top_customers``: what each customer spent (minor units) and on how many
    accepted orders; queries rank them."""

    name = "top_customers"
    version = 1

    def keys(self, position: Position, outcome: Outcome) -> Sequence[str]:
        """``u:<user>`` for an accepted order."""
        if not _is_order(outcome, "accepted"):
            return ()
        return [f"u:{_detail(outcome, position, 'user', 'total')['user']}"]

    def evolve(
        self, docs: Mapping[str, Doc | None], position: Position, outcome: Outcome
    ) -> Mapping[str, Doc | None]:
        """Add the order's total to its customer."""
        detail = _detail(outcome, position, "user", "total")
        key = f"u:{detail['user']}"
        doc = docs[key] or {"spent": 0, "orders": 0}
        return {key: {"spent": doc["spent"] + detail["total"], "orders": doc["orders"] + 1}}


def shop_projections() -> list[Projection]:
    """Every shop projection, in the order the projector runs them."""
    return [SalesPerItem(), DailySales(), CustomerHistory(), Rejections(), TopCustomers()]

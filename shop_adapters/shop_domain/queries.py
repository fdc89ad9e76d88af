"""The shop's questions, answered from its views (pure functions over documents).

Each takes the documents of one view (:mod:`.projections`), as
:meth:`~shop_adapters.view_store.RedisViewStore.read_view` returns them, and
gives JSON-ready rows. Ties are broken by id, so answers are deterministic.
Money is in integer minor units.

>>> sales = {"i:cpu": {"units": 3, "revenue": 300, "orders": 2},
...          "i:fan": {"units": 9, "revenue": 90, "orders": 1}}
>>> [row["item"] for row in top_items(sales, by="units")]
['fan', 'cpu']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ..projections import Doc

__all__ = ["history", "rejection_report", "top_customers", "top_items", "top_items_between"]

By = Literal["revenue", "units"]


def top_items(
    sales: Mapping[str, Doc], *, by: By = "revenue", limit: int = 10
) -> list[dict[str, Any]]:
    """From ``sales``: ``[{"item", "units", "revenue", "orders"}, ...]``, the ``limit``
    items with the most revenue (or units), most first."""
    rows = [{"item": k[2:], **doc} for k, doc in sales.items() if k.startswith("i:")]
    rows.sort(key=lambda r: (-r[by], r["item"]))
    return rows[:limit]


def top_items_between(
    days: Mapping[str, Doc], since: str, until: str, *, by: By = "revenue", limit: int = 10
) -> list[dict[str, Any]]:
    """From ``sales_by_day``: the ``limit`` items with the most revenue (or units)
    over the UTC days ``since`` to ``until`` (``YYYY-MM-DD``, both included):
    ``[{"item", "units", "revenue"}, ...]``, most first."""
    units: dict[str, int] = {}
    revenue: dict[str, int] = {}
    for key, doc in days.items():
        if key.startswith("d:") and since <= key[2:] <= until:
            for item, (u, r) in doc.items():
                units[item] = units.get(item, 0) + u
                revenue[item] = revenue.get(item, 0) + r
    rows: list[dict[str, Any]] = [
        {"item": i, "units": units[i], "revenue": revenue[i]} for i in units
    ]
    rows.sort(key=lambda r: (-r[by], r["item"]))
    return rows[:limit]


def top_customers(customers: Mapping[str, Doc], *, limit: int = 10) -> list[dict[str, Any]]:
    """From ``top_customers``: ``[{"user", "spent", "orders"}, ...]``, the ``limit``
    customers who spent most, most first (ties: lowest user id first)."""
    rows = [{"user": int(k[2:]), **doc} for k, doc in customers.items() if k.startswith("u:")]
    rows.sort(key=lambda r: (-r["spent"], r["user"]))
    return rows[:limit]


def history(user: int, doc: Doc | None) -> dict[str, Any]:
    """From a ``customers`` document: ``{"user", "count", "accepted", "spent",
    "orders": [the last ones, newest first]}``; zeros and ``[]`` for a customer
    who never ordered."""
    doc = doc or {"orders": [], "count": 0, "accepted": 0, "spent": 0}
    return {
        "user": user,
        "count": doc["count"],
        "accepted": doc["accepted"],
        "spent": doc["spent"],
        "orders": list(reversed(doc["orders"])),
    }


def rejection_report(rejections: Mapping[str, Doc], *, limit: int = 10) -> dict[str, Any]:
    """From ``rejections``: ``{"by_reason": {code: n} (most first), "by_item":
    [{"item", "rejected", "by_reason": {code: n}}, ...] (the ``limit`` items in
    the most rejected orders), "dead_letters": n}``."""
    reasons = sorted(
        ((k[2:], n) for k, n in rejections.items() if k.startswith("c:")),
        key=lambda kv: (-kv[1], kv[0]),
    )
    items = [
        {
            "item": k[2:],
            "rejected": sum(counts.values()),
            "by_reason": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        }
        for k, counts in rejections.items()
        if k.startswith("i:")
    ]
    items.sort(key=lambda r: (-r["rejected"], r["item"]))
    return {
        "by_reason": dict(reasons),
        "by_item": items[:limit],
        "dead_letters": rejections.get("dead_letters", 0),
    }

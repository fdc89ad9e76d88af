"""The shop's side effect: a receipt for each accepted order, exactly once.

:class:`ReceiptHandler` is a :class:`~shop_adapters.consumer_group.Handler`:
for an accepted order's outcome it puts the receipt into a
:class:`~shop_adapters.effects.Sink` under the order's position (the input
record's ID), so a receipt is written once however often the outcome is
delivered. Every other outcome (top-ups, rejections, duplicates of an order
already answered, dead letters) needs no receipt and is simply acknowledged.

A receipt is JSON: ``{"receipt": "ms-seq", "user": id, "total": minor units,
"lines": [[item, quantity, unit price], ...], "order_id"?}``.
"""

from __future__ import annotations

import json
from typing import Any

from ..domain import Outcome
from ..effects import Sink
from ..protocols import Position

__all__ = ["ReceiptHandler", "receipt"]


def receipt(position: Position, outcome: Outcome) -> dict[str, Any] | None:
    """The receipt of an accepted order's outcome, ``None`` for any other outcome.

    Raises ``ValueError`` for an accepted order whose detail lacks the user,
    total or lines (a journal written before outcomes carried them).

    >>> from shop_adapters.protocols import Position
    >>> receipt(Position(5, 0), Outcome("accepted", "Order", detail={"total": 200,
    ...     "user": 7, "lines": [["cpu", 2, 100]]}))
    {'receipt': '5-0', 'user': 7, 'total': 200, 'lines': [['cpu', 2, 100]]}
    """
    if outcome.status != "accepted" or outcome.kind != "Order":
        return None
    detail = outcome.detail or {}
    missing = [n for n in ("user", "total", "lines") if n not in detail]
    if missing:
        raise ValueError(
            f"the accepted order at {position} has no {', '.join(missing)} in its outcome "
            f"({dict(detail)!r:.80}): no receipt can be written"
        )
    out: dict[str, Any] = {
        "receipt": str(position),
        "user": detail["user"],
        "total": detail["total"],
        "lines": detail["lines"],
    }
    if "order_id" in detail:
        out["order_id"] = detail["order_id"]
    return out


class ReceiptHandler:
    """Writes :func:`receipt` to ``sink`` under the order's position; counts
    ``written`` (done now) and ``repeated`` (done before: a redelivery)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.written = 0
        self.repeated = 0

    def __call__(self, position: Position, outcome: Outcome) -> None:
        """The effect for one outcome (see the module docstring)."""
        body = receipt(position, outcome)
        if body is None:
            return
        payload = json.dumps(body, separators=(",", ":")).encode()
        if self.sink.put(str(position), payload):
            self.written += 1
        else:
            self.repeated += 1

"""The shop as a :class:`~shop_adapters.domain.Domain`: ``shop_core`` plus its codecs.

- :mod:`.wire`: the v1 JSON and v0 MessagePack wire formats, upcasting, price lists;
- :mod:`.state_codec`: the snapshot body (canonical JSON of the state);
- :mod:`.retail_csv`: the Online Retail CSV import;
- :mod:`.workload`: the seeded synthetic workload.

>>> from shop_adapters.logs.memory import MemoryLog
>>> from shop_adapters.catchup import replay
>>> from shop_core import TopUp
>>> log = MemoryLog()
>>> _ = log.append([encode_event(TopUp(1, 500))])
>>> replay(log, ShopDomain()).state.users[1].balance
500
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from shop_core import (
    EMPTY,
    SEMANTICS_VERSION,
    Accepted,
    AddItem,
    Event,
    Order,
    ShopState,
    Transient,
    state_digest,
)

from ..domain import Outcome, Tally
from ..protocols import DeadLetter, Position, Record
from . import state_codec
from .wire import DEFAULT_LIMITS, Decoder, Limits, encode_event, load_price_list

__all__ = ["ShopDomain", "ShopFolder", "encode_event", "load_price_list"]


def _merged(lines: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """An order's lines as the core merges them: one per item, in order of first
    appearance, summed, quantity 0 left out."""
    sums: dict[str, int] = {}
    for iid, qty in lines:
        if qty:
            sums[iid] = sums.get(iid, 0) + qty
    return list(sums.items())


def _track_prices(prices: dict[str, int | None], events: Sequence[Event]) -> None:
    """Update ``prices`` with the AddItems among ``events`` (the core's pricing rule)."""
    for event in events:
        if type(event) is AddItem:
            if event.price is not None:
                prices[event.item_id] = event.price
            elif event.item_id not in prices:
                prices[event.item_id] = None


_ACCEPTED = {k: Outcome("accepted", k) for k in ("TopUp", "AddItem", "Order")}


class ShopFolder:
    """A :class:`~shop_adapters.domain.Folder` over :class:`shop_core.Transient`."""

    __slots__ = ("_prices", "_transient")

    def __init__(self, state: ShopState) -> None:
        self._transient = Transient(state)
        # Item prices as the fold goes, for the lines of an order's outcome; built
        # by the first fold_each (the fast fold keeps it current once it exists).
        self._prices: dict[str, int | None] | None = None

    def fold(self, events: Sequence[Event]) -> Tally:
        """Fold ``events``; accepted counted by event type, rejections by code."""
        out = self._transient.fold(events)
        if self._prices is not None:
            _track_prices(self._prices, events)
        kinds = Counter(map(type, events))  # no generator frame per event
        kinds[Order] = out.orders_accepted
        accepted = {k.__name__: n for k, n in kinds.items() if n}
        return Tally(accepted, dict(out.rejections))

    def fold_each(self, events: Sequence[Event]) -> list[Outcome]:
        """Fold ``events``; one :class:`~shop_adapters.domain.Outcome` per event.

        The detail of an order says what the read side needs, small and
        deterministic (a pure function of the log, so ``inspect verify``
        rebuilds it exactly):

        - accepted: ``{"total": minor units, "user": id, "lines": [[item, quantity,
          unit price], ...]}`` plus ``"order_id"`` when the order has one; the lines
          are merged as the core merges them (one per item, in order of first
          appearance, quantity 0 left out), so ``total`` is the sum of quantity
          times price;
        - rejected: ``{"user": id, "items": [item, ...]}`` (the distinct items
          ordered with a quantity above 0, in order of first appearance) plus
          ``"order_id"``.

        >>> from shop_core import AddItem, Order, TopUp
        >>> folder = ShopFolder(EMPTY)
        >>> _, _, ok, no = folder.fold_each([TopUp(7, 500), AddItem("cpu", 3, 100),
        ...     Order(7, (("cpu", 1), ("cpu", 1))), Order(7, (("gpu", 1),))])
        >>> ok.detail
        {'total': 200, 'user': 7, 'lines': [['cpu', 2, 100]]}
        >>> no.code, no.detail
        ('unknown_item', {'user': 7, 'items': ['gpu']})
        """
        prices = self._prices
        if prices is None:
            # What the state says now (nothing is committed if nothing was folded).
            state = self._transient.persistent()
            prices = self._prices = {iid: item.price for iid, item in state.items.items()}
        out: list[Outcome] = []
        for event, verdict in zip(events, self._transient.fold_each(events), strict=True):
            kind = type(event).__name__
            if type(event) is AddItem:
                if event.price is not None:
                    prices[event.item_id] = event.price
                elif event.item_id not in prices:
                    prices[event.item_id] = None
            if isinstance(verdict, Accepted):
                detail: dict[str, Any] | None = None
                if verdict.total is not None and type(event) is Order:
                    # An accepted order never changes a price: the prices now are its prices.
                    lines = [[iid, qty, prices[iid]] for iid, qty in _merged(event.lines)]
                    detail = {"total": verdict.total, "user": event.user_id, "lines": lines}
                    if event.order_id is not None:
                        detail["order_id"] = event.order_id
                out.append(
                    _ACCEPTED[kind] if detail is None else Outcome("accepted", kind, detail=detail)
                )
            else:
                detail = None
                if type(event) is Order:
                    items = [iid for iid, _ in _merged(event.lines)]
                    detail = {"user": event.user_id, "items": items}
                    if event.order_id is not None:
                        detail["order_id"] = event.order_id
                out.append(Outcome("rejected", kind, str(verdict.code), verdict.message, detail))
        return out

    def persistent(self) -> ShopState:
        """The immutable :class:`~shop_core.ShopState` so far."""
        return self._transient.persistent()


class ShopDomain:
    """The shop: ``shop_core``'s rules, the v1/v0 wire codec and its snapshot body.

    ``price_list``: ``{item_id: price in minor units}`` for the seed's v0
    AddItem entries (its SHA-256 is the ``config_digest``); ``limits``: see
    :class:`~shop_adapters.shop_domain.wire.Limits`. Raises ``ValueError`` or
    ``TypeError`` for a bad price list or limits.
    """

    name = "shop"
    semantics_version = SEMANTICS_VERSION
    initial: ShopState = EMPTY

    def __init__(
        self, price_list: Mapping[str, int] | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.decoder = Decoder(price_list, limits)

    @property
    def config_digest(self) -> str | None:
        """SHA-256 hex of the price list (:attr:`Decoder.config_digest`), ``None`` without one."""
        return self.decoder.config_digest

    def describe_config(self, digest: str | None) -> str:
        """``"no price list"`` or ``"price list sha256:<12 hex digits>"``."""
        return "no price list" if digest is None else f"price list sha256:{digest[:12]}"

    def folder(self, state: ShopState) -> ShopFolder:
        """A :class:`ShopFolder` starting at ``state``."""
        return ShopFolder(state)

    def decode_records(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[Position, Event]], list[DeadLetter]]:
        """:meth:`Decoder.decode_records`."""
        return self.decoder.decode_records(records)

    def encode_state(self, state: ShopState) -> bytes:
        """:func:`.state_codec.encode_state`."""
        return state_codec.encode_state(state)

    def decode_state(self, body: bytes) -> ShopState:
        """:func:`.state_codec.decode_state`; ``ValueError`` with the reason."""
        return state_codec.decode_state(body)

    def digest(self, state: ShopState) -> str:
        """:func:`shop_core.state_digest`."""
        return state_digest(state)

    def state_json(self, state: ShopState) -> dict[str, Any]:
        """``{"users": {"<id>": balance}, "items": {"<id>": {"price", "stock"}}}``, ids sorted."""
        return {
            "users": {str(uid): state.users[uid].balance for uid in sorted(state.users)},
            "items": {
                iid: {"price": state.items[iid].price, "stock": state.items[iid].stock}
                for iid in sorted(state.items)
            },
        }

    def difference(self, expected: ShopState, actual: ShopState) -> str | None:
        """The first difference (users, then items, by sorted id) in words, or ``None``."""
        for uid in sorted(set(expected.users) | set(actual.users)):
            a, b = expected.users.get(uid), actual.users.get(uid)
            if a != b:
                return f"user {uid}: rebuilt {a}, snapshot {b}"
        for iid in sorted(set(expected.items) | set(actual.items)):
            c, d = expected.items.get(iid), actual.items.get(iid)
            if c != d:
                return f"item {iid!r}: rebuilt {c}, snapshot {d}"
        return None

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
    Event,
    ShopState,
    Transient,
    state_digest,
)

from ..domain import Outcome, Tally
from ..protocols import DeadLetter, Position, Record
from . import state_codec
from .wire import DEFAULT_LIMITS, Decoder, Limits, encode_event, load_price_list

__all__ = ["ShopDomain", "ShopFolder", "encode_event", "load_price_list"]


class ShopFolder:
    """A :class:`~shop_adapters.domain.Folder` over :class:`shop_core.Transient`."""

    __slots__ = ("_transient",)

    def __init__(self, state: ShopState) -> None:
        self._transient = Transient(state)

    def fold(self, events: Sequence[Event]) -> Tally:
        """Fold ``events``; accepted counted by event type, rejections by code."""
        out = self._transient.fold(events)
        kinds = Counter(type(e).__name__ for e in events)
        kinds["Order"] = out.orders_accepted
        accepted = {k: n for k, n in kinds.items() if n}
        return Tally(accepted, dict(out.rejections))

    def fold_each(self, events: Sequence[Event]) -> list[Outcome]:
        """Fold ``events``; an accepted order's outcome says ``{"total": minor units}``."""
        out: list[Outcome] = []
        for event, verdict in zip(events, self._transient.fold_each(events), strict=True):
            kind = type(event).__name__
            if isinstance(verdict, Accepted):
                detail = None if verdict.total is None else {"total": verdict.total}
                out.append(Outcome("accepted", kind, detail=detail))
            else:
                out.append(Outcome("rejected", kind, str(verdict.code), verdict.message))
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

"""The shop's snapshot body: a :class:`~shop_core.ShopState` <-> canonical columnar JSON.

Body (version 2), compact JSON with the columns of both maps, sorted by id::

    {"v":2,"users":[7,9],"balances":[500,0],
     "items":["cpu","ram"],"prices":[100,null],"stocks":[3,0]}

Equal states give equal bytes. Encoded and decoded with msgspec (a compiled,
schema-driven JSON codec: types and bounds are checked in C: ids ints in
``[0, 2**63 - 1]`` or strings of 1 to 128 characters, counts non-negative
ints, prices ``null`` or ints in ``[0, 2**63 - 1]``), which keeps integers of
any size exact (a balance may pass 2**64 after many top-ups). Reading also
checks that the columns have equal lengths and the ids strictly increase;
anything else is a ``ValueError`` naming what is wrong. A body of another
version (the row-wise JSON of version 1) is refused, so the state is rebuilt
by replay, never misread. Source: msgspec docs, "Constraints" and "Structs".
"""

from __future__ import annotations

import operator
from typing import Annotated, Literal

import msgspec
from pyrsistent import pmap

from shop_core import MAX_ID_LENGTH, MAX_INT, Item, ShopState, User

__all__ = ["decode_state", "encode_state"]

_Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
_Count = Annotated[int, msgspec.Meta(ge=0)]
_ItemId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    v: Literal[2]
    users: list[_Id]
    balances: list[_Count]
    items: list[_ItemId]
    prices: list[_Id | None]
    stocks: list[_Count]


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(_Body)
_first = operator.itemgetter(0)


def encode_state(state: ShopState) -> bytes:
    """The canonical body of ``state`` (see the module docstring).

    >>> from shop_core import fold, TopUp, AddItem
    >>> encode_state(fold([TopUp(7, 5), AddItem("cpu", 3, 100)]))
    b'{"v":2,"users":[7],"balances":[5],"items":["cpu"],"prices":[100],"stocks":[3]}'
    """
    users = list(state.users.items())
    users.sort(key=_first)
    items = list(state.items.items())
    items.sort(key=_first)
    body = _Body(
        2,
        [uid for uid, _ in users],
        [u.balance for _, u in users],
        [iid for iid, _ in items],
        [i.price for _, i in items],
        [i.stock for _, i in items],
    )
    return _ENCODER.encode(body)


def _check_increasing(what: str, ids: list[int] | list[str]) -> None:
    if not all(map(operator.lt, ids, ids[1:])):
        bad = next(i for i in range(1, len(ids)) if not ids[i - 1] < ids[i])  # type: ignore[operator]
        raise ValueError(f"{what} id {ids[bad]!r:.60} is duplicate or out of order")


def decode_state(body: bytes) -> ShopState:
    """The state of a body written by :func:`encode_state`; ``ValueError`` otherwise."""
    try:
        b = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise ValueError(f"not a shop state body of version 2: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if len(b.users) != len(b.balances):
        raise ValueError(f"{len(b.users)} user ids but {len(b.balances)} balances")
    if not len(b.items) == len(b.prices) == len(b.stocks):
        raise ValueError(
            f"{len(b.items)} item ids, {len(b.prices)} prices and {len(b.stocks)} stocks"
        )
    _check_increasing("user", b.users)
    _check_increasing("item", b.items)
    users = pmap(dict(zip(b.users, map(User, b.balances), strict=True)))
    items = pmap(dict(zip(b.items, map(Item, b.prices, b.stocks), strict=True)))
    return ShopState(users=users, items=items)

"""The shop's snapshot body: a :class:`~shop_core.ShopState` <-> canonical JSON bytes.

Body: ``ShopState.canonical()`` as compact ASCII JSON,
``{"users": [[user_id, balance], ...], "items": [[item_id, price, stock], ...]}``,
both lists sorted by id, so equal states give equal bytes. Written and read
with the standard ``json`` module, which keeps integers exact (a balance may
pass 2**64 after many top-ups). Reading checks every row: ids in range and
strictly increasing, counts non-negative ints, prices ``null`` or ints in
``[0, 2**63 - 1]``; anything else is a ``ValueError`` naming the row.
"""

from __future__ import annotations

import json

from pyrsistent import pmap

from shop_core import MAX_ID_LENGTH, MAX_INT, Item, ShopState, User

from .._json import strict_json

__all__ = ["decode_state", "encode_state"]


def encode_state(state: ShopState) -> bytes:
    """The canonical body of ``state`` (see the module docstring).

    >>> from shop_core import fold, TopUp
    >>> encode_state(fold([TopUp(7, 5)]))
    b'{"users":[[7,5]],"items":[]}'
    """
    return json.dumps(state.canonical(), separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _nat(value: object, what: str, upper: int | None = None) -> int:
    if type(value) is not int or value < 0 or (upper is not None and value > upper):
        bound = "" if upper is None else f" at most {upper}"
        raise ValueError(f"{what} must be a non-negative int{bound}, got {value!r:.40}")
    return value


def decode_state(body: bytes) -> ShopState:
    """The state of a body written by :func:`encode_state`; ``ValueError`` otherwise."""
    try:
        raw = strict_json(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if type(raw) is not dict or set(raw) != {"users", "items"}:
        raise ValueError('expected {"users": [...], "items": [...]}')
    users_raw, items_raw = raw["users"], raw["items"]
    if type(users_raw) is not list or type(items_raw) is not list:
        raise ValueError("users and items must be lists")
    users: dict[int, User] = {}
    last_uid = -1
    for row in users_raw:
        if type(row) is not list or len(row) != 2:
            raise ValueError(f"a user is [user_id, balance], got {row!r:.60}")
        uid = _nat(row[0], "a user id", MAX_INT)
        if uid <= last_uid:
            raise ValueError(f"user {uid} duplicate or out of order")
        users[uid] = User(_nat(row[1], f"user {uid}'s balance"))
        last_uid = uid
    items: dict[str, Item] = {}
    last_iid: str | None = None
    for row in items_raw:
        if type(row) is not list or len(row) != 3:
            raise ValueError(f"an item is [item_id, price, stock], got {row!r:.60}")
        iid, price, stock = row
        if type(iid) is not str or not 0 < len(iid) <= MAX_ID_LENGTH:
            raise ValueError(f"bad item id {iid!r:.60}")
        if last_iid is not None and iid <= last_iid:
            raise ValueError(f"item {iid!r:.60} duplicate or out of order")
        if price is not None:
            _nat(price, f"item {iid!r:.60}'s price", MAX_INT)
        items[iid] = Item(price, _nat(stock, f"item {iid!r:.60}'s stock"))
        last_iid = iid
    return ShopState(users=pmap(users), items=pmap(items))

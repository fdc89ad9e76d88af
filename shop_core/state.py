"""The shop's state: immutable values built from pyrsistent persistent maps.

Shapes:

- ``ShopState.users``: ``PMap[int, User]``, user id to :class:`User`;
- ``ShopState.items``: ``PMap[str, Item]``, item id to :class:`Item`.

Money is in integer minor units, stock in integer units. State is never stored
as the truth: it is the fold of the log (see :func:`shop_core.fold`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import NamedTuple

from pyrsistent import pmap
from pyrsistent.typing import PMap

__all__ = ["EMPTY", "SEMANTICS_VERSION", "Item", "ShopState", "User", "state_digest"]

SEMANTICS_VERSION = 1
"""Version of the meaning of :func:`shop_core.apply`.

Bumped whenever the same events could fold to a different state. Snapshots
carry it; a snapshot made under another version is set aside and the state is
rebuilt by replay.
"""


class User(NamedTuple):
    """A user's account: ``balance`` in minor units (never negative)."""

    balance: int


class Item(NamedTuple):
    """A warehouse item: ``price`` in minor units per unit (``None``: not for sale)
    and ``stock`` in units (never negative)."""

    price: int | None
    stock: int


@dataclass(frozen=True, slots=True)
class ShopState:
    """The whole shop: ``users: PMap[int, User]`` and ``items: PMap[str, Item]``.

    Equal states compare equal whatever history built them. Use
    :func:`state_digest` to compare states across processes or machines.
    """

    users: PMap[int, User]
    items: PMap[str, Item]

    def canonical(self) -> dict[str, list[list[int | str | None]]]:
        """The state as plain sorted lists, the form that is hashed and serialised.

        Returns ``{"users": [[user_id, balance], ...], "items": [[item_id, price,
        stock], ...]}``, both sorted by id.
        """
        return {
            "users": [[uid, self.users[uid].balance] for uid in sorted(self.users)],
            "items": [
                [iid, item.price, item.stock]
                for iid, item in sorted(self.items.items(), key=lambda kv: kv[0])
            ],
        }


EMPTY = ShopState(users=pmap(), items=pmap())
"""The initial state: no users, no items."""


def state_digest(state: ShopState) -> str:
    """A stable hex SHA-256 of the canonical (sorted) state.

    Equal states have equal digests on any machine, process or backend; pmap
    iteration order (hash based) does not matter because keys are sorted. The
    hashed bytes are ``json.dumps(state.canonical(), separators=(",", ":"))``,
    produced in chunks of rows so that a large state never holds the
    interpreter for long at a time.

    >>> state_digest(EMPTY) == state_digest(ShopState(pmap(), pmap()))
    True
    """
    sha = hashlib.sha256()
    canonical = state.canonical()
    for name, opening in (("users", b'{"users":['), ("items", b'],"items":[')):
        sha.update(opening)
        rows = canonical[name]
        for start in range(0, len(rows), _CHUNK):
            if start:
                sha.update(b",")
            chunk = json.dumps(rows[start : start + _CHUNK], separators=(",", ":"))
            sha.update(chunk[1:-1].encode("ascii"))
    sha.update(b"]}")
    return sha.hexdigest()


_CHUNK = 10_000

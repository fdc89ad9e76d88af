"""Hypothesis strategies for shop events and histories, for our tests and yours.

>>> from hypothesis import given
>>> from shop_core import fold
>>> from shop_core.strategies import histories
>>> @given(histories())
... def test_fold_is_deterministic(events):
...     assert fold(events) == fold(events)
>>> test_fold_is_deterministic()

- :func:`top_ups`, :func:`add_items`, :func:`orders`: any valid event of one
  kind, drawn from given pools of ids; by default from :func:`pooled_user_ids`
  and :func:`pooled_item_ids`, the small pools every history of
  :func:`histories` opens with (users ``0..3``, items ``"item-0".."item-3"``),
  so events drawn by any of them meet each other: an order drawn by
  :func:`orders` names users and items a history created. To make your own
  strategies meet ours on purpose, draw ids from the same pools (pass
  ``users=pooled_user_ids()``, ``items=pooled_item_ids()``); for ids over
  the whole valid range, pass :func:`user_ids` and :func:`item_ids`;
- :func:`events`: any valid event, over the whole valid range by default;
- :func:`histories`: lists of events with a realistic shape: a handful to many
  users and items, prices mostly set, orders of 1 to 4 lines of small
  quantities, money on a scale where orders both succeed and fail.
"""

from __future__ import annotations

from typing import TypeVar

from hypothesis import strategies as st

from .events import MAX_ID_LENGTH, MAX_INT, AddItem, Event, Order, TopUp

__all__ = [
    "add_items",
    "events",
    "histories",
    "item_ids",
    "orders",
    "pooled_item_ids",
    "pooled_user_ids",
    "top_ups",
    "user_ids",
]

T = TypeVar("T")

POOL_SIZE = 4
"""Users ``0..3`` and items ``"item-0".."item-3"``: the pools the defaults share
(every history of :func:`histories` holds at least user 0 and ``"item-0"``)."""


def user_ids(max_value: int = MAX_INT) -> st.SearchStrategy[int]:
    """User ids in ``[0, max_value]``."""
    return st.integers(min_value=0, max_value=max_value)


def item_ids(max_size: int = MAX_ID_LENGTH) -> st.SearchStrategy[str]:
    """Item ids: non-empty strings of at most ``max_size`` characters."""
    return st.text(min_size=1, max_size=max_size)


def _mostly(usual: st.SearchStrategy[T], rare: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``usual`` nine times in ten, else ``rare``."""
    return st.one_of(*[usual] * 9, rare)


def pooled_user_ids() -> st.SearchStrategy[int]:
    """User ids from the shared pool ``0..3``."""
    return st.integers(0, POOL_SIZE - 1)


def pooled_item_ids() -> st.SearchStrategy[str]:
    """Item ids from the shared pool ``"item-0".."item-3"``."""
    return st.sampled_from([f"item-{i}" for i in range(POOL_SIZE)])


def top_ups(
    users: st.SearchStrategy[int] | None = None,
    amounts: st.SearchStrategy[int] | None = None,
) -> st.SearchStrategy[TopUp]:
    """Valid :class:`TopUp` events (amounts in minor units)."""
    return st.builds(
        TopUp,
        users if users is not None else pooled_user_ids(),
        amounts
        if amounts is not None
        else st.one_of(st.integers(0, 2_000), st.integers(0, MAX_INT)),
    )


def add_items(
    items: st.SearchStrategy[str] | None = None,
    counts: st.SearchStrategy[int] | None = None,
    prices: st.SearchStrategy[int | None] | None = None,
) -> st.SearchStrategy[AddItem]:
    """Valid :class:`AddItem` events; ``prices`` may yield ``None`` (keep price)."""
    return st.builds(
        AddItem,
        items if items is not None else pooled_item_ids(),
        counts if counts is not None else _mostly(st.integers(0, 5), st.integers(0, MAX_INT)),
        prices if prices is not None else st.none() | st.integers(0, 500) | st.integers(0, MAX_INT),
    )


def orders(
    users: st.SearchStrategy[int] | None = None,
    items: st.SearchStrategy[str] | None = None,
    quantities: st.SearchStrategy[int] | None = None,
    max_lines: int = 4,
) -> st.SearchStrategy[Order]:
    """Valid :class:`Order` events of 1 to ``max_lines`` lines (duplicates and 0 allowed)."""
    line = st.tuples(
        items if items is not None else pooled_item_ids(),
        quantities
        if quantities is not None
        else st.one_of(st.integers(0, 4), st.integers(0, MAX_INT)),
    )
    return st.builds(
        Order,
        users if users is not None else pooled_user_ids(),
        st.lists(line, min_size=1, max_size=max_lines).map(tuple),
        st.none() | st.text(min_size=1, max_size=16),
    )


def events() -> st.SearchStrategy[Event]:
    """Any valid event, over the whole valid range of every field."""
    big = st.integers(0, MAX_INT)
    return st.one_of(
        top_ups(user_ids(), big),
        add_items(item_ids(), big, st.none() | big),
        orders(user_ids(), item_ids(), big),
    )


@st.composite
def histories(
    draw: st.DrawFn,
    max_users: int = 8,
    max_items: int = 6,
    min_size: int = 0,
    max_size: int = 60,
) -> list[Event]:
    """Event histories with a realistic shape.

    Ids come from small pools (up to ``max_users`` users, ``max_items`` items),
    plus an occasional stranger, so orders meet unknown users and items; a
    history with room for it opens by topping up every user and stocking every
    item (at least the shared pools); prices
    are mostly set; money and quantities are on a scale where orders are both
    accepted and rejected for every reason. At most ``max_size`` events.
    """
    n_users = draw(st.integers(1, max_users))
    n_items = draw(st.integers(1, max_items))
    users = st.integers(0, n_users)  # n_users itself is usually unknown
    # Ids of the shared pools (see the module docstring), so that other strategies meet them.
    items = st.sampled_from([f"item-{i}" for i in range(n_items + 1)])
    small = st.integers(0, 5)
    money = st.integers(0, 2_000)
    prices = st.one_of(st.integers(0, 500), st.integers(0, 500), st.none())
    event = st.one_of(
        top_ups(users, money),
        add_items(items, small, prices),
        orders(users, items, st.integers(0, 4)),
        orders(users, items, st.integers(0, 4)),
    )
    # A history opens a shop over at least the shared pools (users topped up,
    # items stocked and mostly priced) when it has room to, so that other
    # strategies' events meet it.
    opening: list[Event] = [TopUp(u, draw(money)) for u in range(max(n_users, POOL_SIZE))]
    opening += [
        AddItem(f"item-{i}", draw(small), draw(prices)) for i in range(max(n_items, POOL_SIZE))
    ]
    if len(opening) >= max_size:
        opening = []
    room = max_size - len(opening)
    rest = draw(st.lists(event, min_size=max(0, min(min_size - len(opening), room)), max_size=room))
    return opening + rest

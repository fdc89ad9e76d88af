"""The projection laws as hypothesis properties (no Redis).

For shop histories (``shop_core.strategies.histories``) with retried appends
(duplicates) and undecodable entries mixed in, the outcomes are the runner's
(``catchup.replay`` through the shop domain), and every shop projection obeys:

- ``fold(p, a + b) == fold(p, b, fold(p, a))`` at every split, and folding is
  deterministic and pure (the view given is never changed);
- the projector's path (documents read for a batch, folded with
  ``evolve_batch``, changes written back, JSON round trip included) equals
  the fold, whatever the batch boundaries;
- each view equals an independent computation from the events themselves
  (plain dicts, not the projections' code);
- duplicates change nothing.
"""

from __future__ import annotations

import copy
import doctest
import importlib
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shop_adapters.catchup import replay
from shop_adapters.domain import Outcome
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.projections import (
    Projection,
    ProjectionError,
    evolve_batch,
    fold,
    keys_of_batch,
)
from shop_adapters.protocols import Position
from shop_adapters.shop_domain import ShopDomain, encode_event
from shop_adapters.shop_domain.projections import (
    HISTORY_LENGTH,
    CustomerHistory,
    DailySales,
    Rejections,
    SalesPerItem,
    TopCustomers,
    day_of,
    shop_projections,
)
from shop_adapters.view_store import decode_document, encode_document
from shop_core import AddItem, Event, Order, TopUp
from shop_core.strategies import histories

SHOP = ShopDomain()
PROJECTIONS = shop_projections()
DAY_MS = 86_400_000

Outcomes = list[tuple[Position, Outcome]]


@st.composite
def journals(draw: st.DrawFn) -> tuple[list[Event], Outcomes]:
    """A history, appended with idempotency keys, some entries retried and some
    undecodable; its outcomes as the runner publishes them, under Redis-like IDs
    spread over a few days."""
    events: list[Event] = draw(histories(min_size=draw(st.sampled_from([0, 20, 40]))))
    if draw(st.integers(0, 3)):
        # Funds and stock first, so that many orders are accepted.
        stock = [AddItem(f"item-{i}", 30, 50 + i) for i in range(4)]
        events = [*(TopUp(u, 5_000) for u in range(4)), *stock, *events]
    entries: list[dict[str, Any]] = [
        {**encode_event(e), "key": f"k{i}"} for i, e in enumerate(events)
    ]
    for _ in range(draw(st.integers(0, 4))):
        if entries:  # a retried append lands after the original
            i = draw(st.integers(0, len(entries) - 1))
            entries.insert(draw(st.integers(i + 1, len(entries))), dict(entries[i]))
    for _ in range(draw(st.integers(0, 2))):
        entries.insert(draw(st.integers(0, len(entries))), {"type": "Nonsense", "data": "{}"})
    log = MemoryLog()
    log.append(entries)
    published: Outcomes = []
    replay(log, SHOP, outcomes=published)
    ms = 1_291_161_600_000 + draw(st.integers(0, 10**6))
    positioned: Outcomes = []
    for _, outcome in published:
        ms += draw(st.sampled_from([0, 0, 1, 3_600_000, DAY_MS]))
        seq = positioned[-1][0].minor + 1 if positioned and positioned[-1][0].major == ms else 0
        positioned.append((Position(ms, seq), outcome))
    return events, positioned


def store_path(projection: Projection, outcomes: Outcomes, cuts: list[int]) -> dict[str, Any]:
    """What the projector does: per batch, read the touched documents from a
    store (as JSON), fold, write back the changed ones (as JSON)."""
    stored: dict[str, bytes] = {}
    bounds = [0, *sorted(set(cuts)), len(outcomes)]
    for lo, hi in itertools.pairwise(bounds):
        batch = outcomes[lo:hi]
        keys = keys_of_batch(projection, batch)
        docs = {k: decode_document(stored[k]) if k in stored else None for k in keys}
        for key in evolve_batch(projection, docs, batch):
            value = docs[key]
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = encode_document(value)
    return {k: decode_document(v) for k, v in stored.items()}


def accepted_orders(events: list[Event]) -> Iterator[tuple[Order, list[tuple[str, int, int]]]]:
    """Each accepted order with its merged lines and unit prices, by an independent
    plain-dict model of the rules."""
    balances: dict[int, int] = {}
    items: dict[str, list[Any]] = {}  # item -> [price, stock]
    for event in events:
        if isinstance(event, TopUp):
            balances[event.user_id] = balances.get(event.user_id, 0) + event.amount
        elif isinstance(event, AddItem):
            if event.item_id in items:
                if event.price is not None:
                    items[event.item_id][0] = event.price
                items[event.item_id][1] += event.count
            else:
                items[event.item_id] = [event.price, event.count]
        else:
            merged: dict[str, int] = {}
            for iid, qty in event.lines:
                if qty:
                    merged[iid] = merged.get(iid, 0) + qty
            ok = event.user_id in balances and bool(merged)
            ok = ok and all(i in items and items[i][0] is not None for i in merged)
            ok = ok and all(items[i][1] >= q for i, q in merged.items())
            total = sum(items[i][0] * q for i, q in merged.items()) if ok else 0
            if ok and total <= balances[event.user_id]:
                balances[event.user_id] -= total
                for i, q in merged.items():
                    items[i][1] -= q
                yield event, [(i, q, items[i][0]) for i, q in merged.items()]


# --- the laws, for every projection -------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journals(), st.data())
def test_folding_in_two_parts_equals_folding_at_once(
    journal: tuple[list[Event], Outcomes], data: st.DataObject
) -> None:
    _, outcomes = journal
    split = data.draw(st.integers(0, len(outcomes)))
    a, b = outcomes[:split], outcomes[split:]
    for p in PROJECTIONS:
        first = fold(p, a)
        frozen = copy.deepcopy(first)
        assert fold(p, b, first) == fold(p, a + b) == fold(p, outcomes), p.name
        assert first == frozen, f"{p.name} changed the view it was given"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journals(), st.data())
def test_the_projectors_batches_equal_the_fold(
    journal: tuple[list[Event], Outcomes], data: st.DataObject
) -> None:
    _, outcomes = journal
    cuts = data.draw(st.lists(st.integers(0, len(outcomes)), max_size=6))
    for p in PROJECTIONS:
        assert store_path(p, outcomes, cuts) == fold(p, outcomes), p.name


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journals(), st.data())
def test_duplicates_change_no_view(
    journal: tuple[list[Event], Outcomes], data: st.DataObject
) -> None:
    _, outcomes = journal
    with_dups = list(outcomes)
    for _ in range(data.draw(st.integers(1, 5))):
        if not outcomes:
            return
        position, first = outcomes[data.draw(st.integers(0, len(outcomes) - 1))]
        dup = Outcome(
            "duplicate", first.kind, first.code, first.message, first.detail, position, "x"
        )
        at = data.draw(st.integers(0, len(with_dups)))
        with_dups.insert(at, (Position(0, at), dup))
    for p in PROJECTIONS:
        assert fold(p, with_dups) == fold(p, outcomes), p.name


# --- each view against an independent model -------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journals())
def test_each_view_equals_a_model_computed_from_the_events(
    journal: tuple[list[Event], Outcomes],
) -> None:
    events, outcomes = journal
    firsts = [(p, o) for p, o in outcomes if o.status != "duplicate"]
    orders = [(p, o) for p, o in firsts if o.kind == "Order"]
    accepted = [(p, o) for p, o in orders if o.status == "accepted"]
    model = list(accepted_orders(events))
    assert [o.detail["lines"] for _, o in accepted] == [  # type: ignore[index]
        [list(line) for line in lines] for _, lines in model
    ]
    assert [o.detail["total"] for _, o in accepted] == [  # type: ignore[index]
        sum(q * price for _, q, price in lines) for _, lines in model
    ]

    units: Counter[str] = Counter()
    revenue: Counter[str] = Counter()
    spent: Counter[int] = Counter()
    by_day: dict[str, Counter[str]] = defaultdict(Counter)
    for (position, _), (order, lines) in zip(accepted, model, strict=True):
        spent[order.user_id] += sum(q * price for _, q, price in lines)
        for item, q, price in lines:
            units[item] += q
            revenue[item] += q * price
            by_day[day_of(position)][item] += q * price
    sales = fold(SalesPerItem(), outcomes)
    assert {k[2:]: d["units"] for k, d in sales.items()} == dict(units)
    assert {k[2:]: d["revenue"] for k, d in sales.items()} == dict(revenue)
    daily = fold(DailySales(), outcomes)
    assert {k[2:]: {i: r for i, (_, r) in d.items()} for k, d in daily.items()} == {
        day: dict(c) for day, c in by_day.items()
    }
    top = fold(TopCustomers(), outcomes)
    assert {int(k[2:]): d["spent"] for k, d in top.items()} == dict(spent)

    history = fold(CustomerHistory(), outcomes)
    per_user: dict[int, list[str]] = defaultdict(list)
    for position, o in orders:
        per_user[o.detail["user"]].append(str(position))  # type: ignore[index]
    assert set(history) == {f"u:{u}" for u in per_user}
    for user, positions in per_user.items():
        doc = history[f"u:{user}"]
        assert [e["at"] for e in doc["orders"]] == positions[-HISTORY_LENGTH:]
        assert doc["count"] == len(positions)
        assert doc["spent"] == spent[user]

    rejections = fold(Rejections(), outcomes)
    codes = Counter(o.code for _, o in firsts if o.status == "rejected")
    assert {k[2:]: n for k, n in rejections.items() if k.startswith("c:")} == dict(codes)
    dead = sum(1 for _, o in firsts if o.status == "dead_letter")
    assert rejections.get("dead_letters", 0) == dead


# --- a projection never skips what it cannot apply ------------------------------------------


def test_an_order_without_lines_stops_the_projection_at_its_position() -> None:
    old = Outcome("accepted", "Order", detail={"total": 300})  # a journal from before lines
    with pytest.raises(ProjectionError, match=r"sales cannot apply the outcome at 7-0"):
        fold(SalesPerItem(), [(Position(7, 0), old)])


def test_a_projection_writing_a_document_it_did_not_name_is_refused() -> None:
    class Sneaky:
        name, version = "sneaky", 1

        def keys(self, position: Position, outcome: Outcome) -> list[str]:
            return ["a"]

        def evolve(self, docs: Any, position: Position, outcome: Outcome) -> dict[str, Any]:
            return {"a": 1, "b": 2}

    with pytest.raises(ProjectionError, match="without naming it"):
        fold(Sneaky(), [(Position(1, 0), Outcome("accepted"))])


# --- the docstrings' examples ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "shop_adapters.projections",
        "shop_adapters.view_store",
        "shop_adapters.shop_domain",
        "shop_adapters.shop_domain.projections",
        "shop_adapters.shop_domain.queries",
        "shop_adapters.shop_domain.receipts",
    ],
)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

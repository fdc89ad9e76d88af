"""The Rules of ARCHITECTURE.md, as examples and as hypothesis properties."""

from __future__ import annotations

import doctest
import itertools
from unittest import mock

import model
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model import Model, model_of, verdicts
from returns.result import Failure, Success

from shop_core import (
    EMPTY,
    Accepted,
    AddItem,
    Event,
    Item,
    Order,
    Rejection,
    RejectionCode,
    ShopState,
    TopUp,
    Transient,
    User,
    apply,
    decide,
    fold,
    fold_with_outcomes,
    rules,
    state_digest,
)
from shop_core.strategies import events, histories

BASE = fold(
    [
        TopUp(1, 1_000),
        AddItem("cpu", 5, 100),
        AddItem("gpu", 1, 300),
        AddItem("box", 3),  # unpriced
    ]
)


def code_of(state: ShopState, event: Event) -> RejectionCode | None:
    match decide(state, event):
        case Success(_):
            return None
        case Failure(rejection):
            return rejection.code  # type: ignore[no-any-return]
    raise AssertionError("unreachable")


# ---- examples -------------------------------------------------------------


def test_the_issue_example() -> None:
    s = fold([TopUp(1, 500), AddItem("cpu", 3, 100), Order(1, (("cpu", 2),))])
    assert s.users[1] == User(300)
    assert s.items["cpu"] == Item(100, 1)


def test_topup_creates_unknown_user_then_adds() -> None:
    s = fold([TopUp(7, 5), TopUp(7, 6)])
    assert s.users[7].balance == 11


def test_add_item_keeps_price_when_none_and_changes_it_otherwise() -> None:
    s = fold([AddItem("a", 1, 50), AddItem("a", 2), AddItem("a", 0, 70)])
    assert s.items["a"] == Item(70, 3)
    assert fold([AddItem("b", 4)]).items["b"] == Item(None, 4)


@pytest.mark.parametrize(
    ("order", "code"),
    [
        (Order(2, (("cpu", 1),)), RejectionCode.UNKNOWN_USER),
        (Order(2, (("nope", 0),)), RejectionCode.UNKNOWN_USER),  # user checked first
        (Order(1, (("cpu", 0),)), RejectionCode.EMPTY_ORDER),
        (Order(1, (("nope", 0), ("box", 0))), RejectionCode.EMPTY_ORDER),
        (Order(1, (("nope", 1),)), RejectionCode.UNKNOWN_ITEM),
        (Order(1, (("box", 9), ("nope", 1))), RejectionCode.UNKNOWN_ITEM),  # beats not priced
        (Order(1, (("box", 1),)), RejectionCode.ITEM_NOT_PRICED),
        (Order(1, (("cpu", 99), ("box", 1))), RejectionCode.ITEM_NOT_PRICED),  # beats stock
        (Order(1, (("cpu", 6),)), RejectionCode.OUT_OF_STOCK),
        (Order(1, (("gpu", 1), ("cpu", 4), ("cpu", 2))), RejectionCode.OUT_OF_STOCK),  # merged
        (
            Order(1, (("gpu", 1), ("cpu", 5), ("cpu", 99))),
            RejectionCode.OUT_OF_STOCK,
        ),  # beats funds
        (Order(1, (("gpu", 1), ("cpu", 5), ("cpu", 3))), RejectionCode.OUT_OF_STOCK),
        (Order(1, (("gpu", 1), ("cpu", 5), ("cpu", 0))), None),  # 300 + 500 <= 1000
        (Order(1, (("cpu", 5),)), None),
    ],
)
def test_each_rejection_reason_in_order_of_precedence(
    order: Order, code: RejectionCode | None
) -> None:
    assert code_of(BASE, order) == code
    after = apply(BASE, order)
    if code is not None:
        assert after is BASE
    else:
        assert_accepted_as_the_rules_say(BASE, order, after)


def test_insufficient_funds() -> None:
    s = fold([TopUp(1, 299), AddItem("gpu", 1, 300)])
    order = Order(1, (("gpu", 1),))
    match decide(s, order):
        case Failure(rejection):
            assert rejection.code is RejectionCode.INSUFFICIENT_FUNDS
            assert "299" in rejection.message and "300" in rejection.message
        case _:
            pytest.fail("expected a rejection")
    assert apply(s, order) == s


def test_duplicate_lines_are_merged_all_or_nothing() -> None:
    s = apply(BASE, Order(1, (("cpu", 2), ("gpu", 1), ("cpu", 3))))
    assert s.users[1].balance == 1_000 - 500 - 300
    assert s.items["cpu"].stock == 0 and s.items["gpu"].stock == 0
    # 3 + 3 = 6 > 5: nothing at all changes, not even the gpu line.
    assert apply(BASE, Order(1, (("cpu", 3), ("gpu", 1), ("cpu", 3)))) == BASE


def test_zero_quantity_lines_are_ignored_even_for_unknown_or_unpriced_items() -> None:
    s = apply(BASE, Order(1, (("cpu", 1), ("nope", 0), ("box", 0))))
    assert s.items["cpu"].stock == 4 and s.users[1].balance == 900
    assert "nope" not in s.items


def test_a_free_item_can_be_ordered_with_no_money() -> None:
    s = fold([TopUp(3, 0), AddItem("gift", 2, 0), Order(3, (("gift", 2),))])
    assert s.items["gift"].stock == 0 and s.users[3].balance == 0


def test_rejected_order_returns_the_same_state_object() -> None:
    assert apply(BASE, Order(9, (("cpu", 1),))) is BASE


def test_apply_refuses_what_is_not_an_event() -> None:
    with pytest.raises(TypeError, match="expected a shop event"):
        apply(BASE, "TopUp")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a shop event"):
        fold([TopUp(1, 1), None])  # type: ignore[list-item]


def test_outcomes_count_accepted_and_rejected_orders() -> None:
    _, out = fold_with_outcomes(
        [
            TopUp(1, 100),
            AddItem("a", 1, 10),
            Order(1, (("a", 1),)),
            Order(1, (("a", 1),)),
            Order(2, (("a", 1),)),
        ]
    )
    assert out.events == 5 and out.orders_accepted == 1
    assert dict(out.rejections) == {"out_of_stock": 1, "unknown_user": 1}
    assert (out + out).rejected == 4


def test_digest_is_independent_of_insertion_order() -> None:
    a = fold([TopUp(1, 1), TopUp(2, 2), AddItem("x", 1), AddItem("y", 2)])
    b = fold([AddItem("y", 2), TopUp(2, 2), AddItem("x", 1), TopUp(1, 1)])
    assert a == b and state_digest(a) == state_digest(b)
    assert state_digest(a) != state_digest(apply(a, TopUp(1, 1)))


# ---- laws ------------------------------------------------------------------


def one_by_one(evs: list[Event], state: ShopState = EMPTY) -> ShopState:
    for e in evs:
        state = apply(state, e)
    return state


@given(histories())
def test_fold_is_deterministic(evs: list[Event]) -> None:
    assert fold(evs) == fold(list(evs))
    assert state_digest(fold(evs)) == state_digest(fold(evs))


@given(histories(), histories())
def test_fold_of_concatenation_is_fold_of_fold(a: list[Event], b: list[Event]) -> None:
    assert fold(a + b) == fold(b, fold(a))


@given(histories(), st.data())
def test_fold_at_any_split_point_equals_whole_fold(evs: list[Event], data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(evs)))
    assert fold(evs[k:], fold(evs[:k])) == fold(evs)


@given(histories())
def test_fold_equals_one_by_one_apply(evs: list[Event]) -> None:
    assert fold(evs) == one_by_one(evs)


def test_the_model_oracle_runs_its_own_examples() -> None:
    result = doctest.testmod(model)
    assert result.failed == 0 and result.attempted > 0


@given(histories(max_users=30, max_items=12, max_size=200))
def test_fold_equals_the_plain_dict_model(evs: list[Event]) -> None:
    assert model_of(fold(evs)) == Model.of(evs)


def verdict_of(outcome: Accepted | Rejection) -> str | int | None:
    """A core verdict in the model's terms: the total, ``None``, or the rejection code."""
    if isinstance(outcome, Accepted):
        return outcome.total
    return outcome.code.value


@given(histories(max_users=30, max_items=12, max_size=200))
def test_every_verdict_equals_the_models(evs: list[Event]) -> None:
    assert [verdict_of(v) for v in Transient().fold_each(evs)] == verdicts(evs)
    state = EMPTY
    for e, expected in zip(evs, verdicts(evs), strict=True):
        match decide(state, e):
            case Success(accepted):
                assert accepted is e and not isinstance(expected, str)
            case Failure(rejection):
                assert rejection.code.value == expected
        state = apply(state, e)


@given(st.lists(events(), max_size=30))
def test_fold_is_total_over_any_valid_events(evs: list[Event]) -> None:
    assert fold(evs) == one_by_one(evs)


@given(histories(max_size=120))
def test_money_and_stock_are_conserved_and_never_negative(evs: list[Event]) -> None:
    state = EMPTY
    topped = added = sold = spent = 0
    for e in evs:
        if isinstance(e, TopUp):
            topped += e.amount
        elif isinstance(e, AddItem):
            added += e.count
        elif isinstance(e, Order) and isinstance(decide(state, e), Success):
            for iid, qty in e.lines:
                if qty:  # zero lines may name unknown items; they are ignored
                    sold += qty
                    spent += (state.items[iid].price or 0) * qty
        state = apply(state, e)
        assert all(u.balance >= 0 for u in state.users.values())
        assert all(i.stock >= 0 for i in state.items.values())
    assert sum(u.balance for u in state.users.values()) == topped - spent
    assert sum(i.stock for i in state.items.values()) == added - sold


@given(histories(), st.data())
def test_decide_agrees_with_apply(evs: list[Event], data: st.DataObject) -> None:
    state = fold(evs)
    extra = data.draw(histories(min_size=1, max_size=5))
    for e in extra:
        after = apply(state, e)
        if isinstance(e, Order):
            assert isinstance(decide(state, e), Failure) == (after == state)
            if not isinstance(decide(state, e), Failure):
                assert_accepted_as_the_rules_say(state, e, after)
        else:
            assert decide(state, e) == Success(e)
        state = after


def assert_accepted_as_the_rules_say(state: ShopState, order: Order, after: ShopState) -> None:
    """An accepted order: balance -= total and each merged line's stock -= its quantity;
    nothing else changes."""
    wanted: dict[str, int] = {}
    for iid, qty in order.lines:
        if qty:
            wanted[iid] = wanted.get(iid, 0) + qty
    assert wanted, "an accepted order orders something"
    prices = {iid: state.items[iid].price for iid in wanted}
    assert None not in prices.values(), "an accepted order's items are all priced"
    total = sum((prices[iid] or 0) * qty for iid, qty in wanted.items())
    assert after.users[order.user_id].balance == state.users[order.user_id].balance - total >= 0
    for iid, qty in wanted.items():
        assert after.items[iid] == Item(state.items[iid].price, state.items[iid].stock - qty)
        assert after.items[iid].stock >= 0
    assert after.users.discard(order.user_id) == state.users.discard(order.user_id)
    unchanged = set(state.items) - set(wanted)
    assert {i: after.items[i] for i in unchanged} == {i: state.items[i] for i in unchanged}
    assert set(after.users) == set(state.users) and set(after.items) == set(state.items)


@given(histories(), st.data())
def test_an_order_changes_nothing_when_rejected_and_exactly_its_lines_when_accepted(
    evs: list[Event], data: st.DataObject
) -> None:
    state = fold(evs)
    order = data.draw(histories(min_size=1, max_size=1).filter(lambda h: isinstance(h[0], Order)))[
        0
    ]
    assert isinstance(order, Order)
    after = apply(state, order)
    if isinstance(decide(state, order), Failure):
        assert after is state
        assert apply(after, order) == state  # rejected again: idempotent
    else:
        assert decide(state, order) == Success(order)
        assert_accepted_as_the_rules_say(state, order, after)


@settings(max_examples=50)
@given(histories(max_size=100))
def test_fold_does_not_mutate_its_input_state(evs: list[Event]) -> None:
    k = len(evs) // 2
    mid = fold(evs[:k])
    snapshot = (dict(mid.users), dict(mid.items))
    fold(evs[k:], mid)
    assert (dict(mid.users), dict(mid.items)) == snapshot


@given(
    histories(max_size=150),
    st.lists(st.integers(0, 150), max_size=6),
    st.data(),
    st.sampled_from([0, rules._CACHE_MAX]),
)
def test_transient_over_any_batches_equals_fold_and_never_changes_returned_states(
    evs: list[Event], cuts: list[int], data: st.DataObject, cache_max: int
) -> None:
    # cache_max 0: every map counts as large (its overlay starts empty after a commit).
    points = sorted({min(c, len(evs)) for c in cuts} | {0, len(evs)})
    t = Transient()
    taken: list[tuple[int, ShopState]] = []
    with mock.patch.object(rules, "_CACHE_MAX", cache_max):
        for lo, hi in itertools.pairwise(points):
            t.fold(evs[lo:hi])
            if data.draw(st.booleans()):
                taken.append((hi, t.persistent()))
        assert t.persistent() == fold(evs)
    for n, state in taken:  # states handed out earlier are immutable values
        assert state == fold(evs[:n])


def test_transient_persistent_twice_is_the_same_state() -> None:
    t = Transient()
    t.fold([TopUp(uid, 1) for uid in range(1_000)])
    first = t.persistent()
    assert t.persistent() is first  # nothing folded since: nothing to commit
    t.fold([TopUp(7, 1)])
    second = t.persistent()
    assert second.users[7].balance == 2 and second.items is first.items
    assert second == fold([TopUp(uid, 1) for uid in range(1_000)] + [TopUp(7, 1)])


def test_transient_commits_to_a_large_map_only_what_changed_since_the_last_commit() -> None:
    # Past _CACHE_MAX users, the users seen before the last commit are not
    # committed again (a large map was rebuilt whole at every snapshot).
    n = rules._CACHE_MAX + 1
    t = Transient()
    t.fold([TopUp(uid, 1) for uid in range(n)])
    first = t.persistent()
    t.fold([TopUp(7, 1), Order(8, (("cpu", 1),))])  # 8 is only read
    second = t.persistent()
    assert second.users[7].balance == 2
    assert second.users[0] is first.users[0] and second.users[8] is first.users[8]
    assert len(second.users) == n


def test_transient_reports_outcomes_per_call_and_refuses_non_events() -> None:
    t = Transient(BASE)
    assert t.fold([Order(1, (("cpu", 1),)), Order(9, (("cpu", 1),))]).orders_accepted == 1
    with pytest.raises(TypeError, match="expected a shop event"):
        t.fold([TopUp(1, 1), 42])  # type: ignore[list-item]
    assert t.persistent().users[1].balance == 1_000 - 100 + 1

"""Events validate on construction: an invalid event cannot exist."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shop_core import MAX_INT, AddItem, Order, TopUp
from shop_core.strategies import events


@pytest.mark.parametrize("bad", [True, False, 1.0, 5.5, Decimal(5), "5", b"5", None, [5]])
def test_topup_amount_refuses_non_integers_naming_the_field(bad: object) -> None:
    with pytest.raises(TypeError, match=r"TopUp\.amount"):
        TopUp(1, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [True, 1.0, "7", Decimal(7)])
def test_topup_user_id_refuses_non_integers(bad: object) -> None:
    with pytest.raises(TypeError, match=r"TopUp\.user_id"):
        TopUp(bad, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, MAX_INT + 1, 2**64, -(2**63)])
def test_numbers_out_of_range_are_refused_with_value_error(bad: int) -> None:
    with pytest.raises(ValueError, match=r"TopUp\.amount"):
        TopUp(1, bad)
    with pytest.raises(ValueError, match=r"AddItem\.count"):
        AddItem("x", bad)
    with pytest.raises(ValueError, match=r"AddItem\.price"):
        AddItem("x", 1, bad)
    with pytest.raises(ValueError, match=r"lines\[0\]\.quantity"):
        Order(1, (("x", bad),))


def test_bounds_are_inclusive() -> None:
    assert TopUp(0, MAX_INT).amount == MAX_INT
    assert AddItem("x", 0, 0).price == 0


@pytest.mark.parametrize("bad", ["", "x" * 129])
def test_item_ids_must_have_1_to_128_characters(bad: str) -> None:
    with pytest.raises(ValueError, match=r"AddItem\.item_id"):
        AddItem(bad, 1)
    with pytest.raises(ValueError, match=r"lines\[0\]\.item_id"):
        Order(1, ((bad, 1),))


@pytest.mark.parametrize("bad", [7, b"cpu", None, 1.5])
def test_item_ids_must_be_str(bad: object) -> None:
    with pytest.raises(TypeError, match=r"AddItem\.item_id"):
        AddItem(bad, 1)  # type: ignore[arg-type]


def test_order_lines_must_be_a_non_empty_sequence_of_pairs() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        Order(1, ())
    with pytest.raises(TypeError, match="sequence of"):
        Order(1, "cpu")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of"):
        Order(1, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"lines\[1\] must be an \(item_id, quantity\) pair"):
        Order(1, (("a", 1), ("b", 1, 2)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 1000 lines"):
        Order(1, tuple(("a", 1) for _ in range(1001)))
    assert len(Order(1, tuple(("a", 1) for _ in range(1000))).lines) == 1000


def test_order_lines_are_stored_as_tuples_so_orders_are_hashable() -> None:
    order = Order(1, [["cpu", 2]])  # type: ignore[list-item]
    assert order.lines == (("cpu", 2),)
    assert hash(order) == hash(Order(1, (("cpu", 2),)))


def test_order_id_is_optional_and_validated() -> None:
    assert Order(1, (("a", 1),), "o-1").order_id == "o-1"
    with pytest.raises(ValueError, match=r"Order\.order_id"):
        Order(1, (("a", 1),), "")


def test_events_are_frozen() -> None:
    e = TopUp(1, 2)
    with pytest.raises(AttributeError):
        e.amount = 3  # type: ignore[misc]


@given(events())
def test_every_generated_event_is_hashable_and_equal_to_its_rebuild(event: object) -> None:
    rebuilt = type(event)(*[getattr(event, f) for f in event.__dataclass_fields__])  # type: ignore[attr-defined]
    assert rebuilt == event
    assert hash(rebuilt) == hash(event)


@given(st.floats(allow_nan=True) | st.booleans() | st.decimals(allow_nan=False) | st.text())
def test_no_non_int_number_is_ever_accepted_as_money(value: object) -> None:
    with pytest.raises(TypeError):
        TopUp(1, value)  # type: ignore[arg-type]

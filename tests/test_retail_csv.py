"""The Online Retail CSV mapping: every row accounted for, money exact, orders served."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from shop_adapters.shop_domain.retail_csv import (
    RetailLine,
    invoice_events,
    map_rows,
    parse_row,
    read_csv,
)
from shop_core import AddItem, Order, TopUp, fold_with_outcomes


def row(**kw: str) -> dict[str, str | None]:
    base: dict[str, str | None] = {
        "InvoiceNo": "536365",
        "StockCode": "85123A",
        "Description": "WHITE HANGING HEART T-LIGHT HOLDER ",
        "Quantity": "6",
        "InvoiceDate": "12/1/10 8:26",
        "UnitPrice": "2.55",
        "CustomerID": "17850",
        "Country": "United Kingdom",
        "TotalPrice": "15.299999999999999",
    }
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"InvoiceNo": "C536379", "Quantity": "-1"}, "cancellation"),
        ({"CustomerID": ""}, "guest"),
        ({"Quantity": "0"}, "non_positive_quantity"),
        ({"Quantity": "-3"}, "non_positive_quantity"),
        ({"UnitPrice": "0"}, "non_positive_price"),
        ({"UnitPrice": "-1.00"}, "non_positive_price"),
        ({"UnitPrice": "0.125"}, "sub_penny_price"),
        ({"Quantity": "six"}, "malformed"),
        ({"Quantity": "1.0"}, "malformed"),
        ({"UnitPrice": "NaN"}, "malformed"),
        ({"UnitPrice": "1e400x"}, "malformed"),
        ({"CustomerID": "17850.5"}, "malformed"),
        ({"CustomerID": "-4"}, "malformed"),
        ({"StockCode": ""}, "malformed"),
        ({"StockCode": "x" * 129}, "malformed"),
        ({"UnitPrice": None}, "malformed"),
    ],
)
def test_each_bad_row_is_skipped_with_its_reason(
    changes: dict[str, str | None], reason: str
) -> None:
    assert parse_row(row(**changes)) == reason  # type: ignore[arg-type]


def test_money_is_exact_pence_never_float() -> None:
    parsed = parse_row(row(UnitPrice="0.29", Quantity="3", CustomerID="17850.0"))
    assert parsed == RetailLine("536365", "85123A", 3, 29, 17850)


def test_an_invoice_restocks_tops_up_and_orders_at_the_first_price() -> None:
    lines = [
        RetailLine("1", "a", 2, 100, 9),
        RetailLine("1", "b", 1, 50, 9),
        RetailLine("1", "a", 1, 90, 9),  # same code, other price: charged 100
    ]
    events, repriced = invoice_events(lines)
    assert repriced == 1
    assert events == [
        AddItem("a", 2, 100),
        AddItem("b", 1, 50),
        AddItem("a", 1, None),
        TopUp(9, 350),
        Order(9, (("a", 2), ("b", 1), ("a", 1)), "1"),
    ]
    state, outcomes = fold_with_outcomes(events)
    assert outcomes.orders_accepted == 1 and state.users[9].balance == 0


def test_rows_are_grouped_by_invoice_and_all_accounted_for() -> None:
    rows = [
        row(InvoiceNo="1", StockCode="a"),
        row(InvoiceNo="2", StockCode="b", CustomerID="5"),
        row(InvoiceNo="1", StockCode="c"),
        row(InvoiceNo="1", StockCode="d", CustomerID="6"),  # another customer: malformed
        row(InvoiceNo="C3", Quantity="-1"),
    ]
    result = map_rows(rows)
    assert result.imported_rows == 3 and result.invoices == 2
    assert dict(result.skipped) == {"malformed": 1, "cancellation": 1}
    assert result.rows == 5
    assert [type(e).__name__ for e in result.events] == [
        "AddItem",
        "AddItem",
        "TopUp",
        "Order",
        "AddItem",
        "TopUp",
        "Order",
    ]


def test_a_missing_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("InvoiceNo,StockCode\n1,a\n")
    with pytest.raises(ValueError, match="missing columns"):
        list(read_csv(path))


def test_the_real_week_every_row_accounted_for() -> None:
    path = Path(__file__).resolve().parents[1] / "data" / "online-retail-2010-12-01-to-07.csv"
    assert path.exists(), f"{path} is missing from the repository"
    result = map_rows(read_csv(path))
    assert result.rows == 16_985
    assert result.imported_rows == 10_807
    assert dict(result.skipped) == {"cancellation": 183, "guest": 5_994, "non_positive_price": 1}
    assert result.event_counts() == {"AddItem": 10_807, "TopUp": 567, "Order": 567}
    state, outcomes = fold_with_outcomes(result.events)
    assert outcomes.orders_accepted == 567 and outcomes.rejected == 0
    assert all(u.balance == 0 for u in state.users.values())
    assert all(i.stock == 0 for i in state.items.values())


@pytest.mark.parametrize(
    "name",
    [
        "shop_adapters.shop_domain.retail_csv",
        "shop_adapters.runner",
        "shop_adapters.cli_common",
        "shop_adapters.producer",
    ],
)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

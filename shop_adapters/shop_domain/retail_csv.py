"""The "Online Retail" CSV (UCI, Chen 2015) as shop events: a pure row mapping.

Columns: ``InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice,
CustomerID, Country, TotalPrice`` (see ``data/README.md``). Source: the
"Online Retail" data set, UCI Machine Learning Repository, CC BY 4.0.

The mapping
-----------
Every row is either *imported* (part of an invoice that becomes events) or
*skipped* with exactly one reason, checked in this order:

1. ``malformed``: a column is missing, ``InvoiceNo``/``StockCode`` is empty, the
   ``StockCode`` is longer than 128 characters, ``Quantity`` is not an integer,
   ``UnitPrice`` is not a decimal number, or ``CustomerID`` (when present) is
   not a non-negative integer;
2. ``cancellation``: ``InvoiceNo`` starts with ``C``;
3. ``guest``: ``CustomerID`` is empty (nobody to charge);
4. ``non_positive_quantity``: ``Quantity`` <= 0 (corrections, write-offs);
5. ``non_positive_price``: ``UnitPrice`` <= 0 (gifts, adjustments);
6. ``sub_penny_price``: ``UnitPrice`` has more than 2 decimal places, so it is
   not a whole number of pence.

Money is parsed with :class:`decimal.Decimal` (never ``float``) and stored as
integer pence. ``TotalPrice`` is ignored (it carries float artefacts); totals
are recomputed exactly. The ``Description``, ``InvoiceDate`` and ``Country``
columns carry no meaning for the shop's rules.

The imported rows are grouped by ``InvoiceNo`` in order of first appearance
(the file holds each invoice's lines together). For each invoice, in order:

- one ``AddItem(StockCode, Quantity, price)`` per line: the shop restocks
  exactly what it sells, so the order can be served. The price (pence) is the
  ``UnitPrice`` of the *first* line of that stock code in the invoice; later
  lines of the same code in the same invoice carry ``price=None`` (keep), since
  the core charges one price per item per order (it merges an order's lines);
- one ``TopUp(CustomerID, total)`` where ``total`` is the order's total at those
  prices (sum of price * quantity, pence): the customer pays for the invoice;
- one ``Order(CustomerID, lines, order_id=InvoiceNo)`` with all the invoice's
  lines in file order (the core merges repeated stock codes).

Every event gets an idempotency key derived from the data (:attr:`ImportResult.keys`):
``retail:<InvoiceNo>:line:<n>`` for the AddItem of the invoice's line ``n`` (from 0),
``retail:<InvoiceNo>:topup`` and ``retail:<InvoiceNo>:order``; so importing the same
file again, or completing an interrupted import, applies each event once.

So every imported order is accepted, and the state ends with the catalogue's
latest prices, stocks at 0 and balances at 0. ``repriced_lines`` counts the
lines whose own ``UnitPrice`` differed from the price charged for their item in
that invoice (4 invoices of the 1-7 December 2010 week).

>>> rows = [
...     {"InvoiceNo": "536365", "StockCode": "85123A", "Quantity": "6",
...      "UnitPrice": "2.55", "CustomerID": "17850"},
...     {"InvoiceNo": "536366", "StockCode": "22633", "Quantity": "6",
...      "UnitPrice": "1.85", "CustomerID": ""},
... ]
>>> result = map_rows(rows)
>>> result.events
[AddItem(item_id='85123A', count=6, price=255), TopUp(user_id=17850, amount=1530), \
Order(user_id=17850, lines=(('85123A', 6),), order_id='536365')]
>>> result.keys
['retail:536365:line:0', 'retail:536365:topup', 'retail:536365:order']
>>> result.imported_rows, dict(result.skipped)
(1, {'guest': 1})
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from shop_core import MAX_ID_LENGTH, MAX_INT, MAX_ORDER_LINES, AddItem, Event, Order, TopUp

__all__ = [
    "COLUMNS",
    "SKIP_REASONS",
    "ImportResult",
    "RetailLine",
    "invoice_events",
    "map_rows",
    "parse_row",
    "read_csv",
]

COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
    "TotalPrice",
)
"""The columns of the Online Retail CSV, in file order."""

SKIP_REASONS = (
    "malformed",
    "cancellation",
    "guest",
    "non_positive_quantity",
    "non_positive_price",
    "sub_penny_price",
    "too_many_lines",
)
"""Every reason a row can be skipped for, in the order they are checked
(``too_many_lines``: an invoice of more than 1,000 lines, beyond an Order)."""

_PENCE = Decimal(100)


@dataclass(frozen=True, slots=True)
class RetailLine:
    """One importable row: ``invoice``, ``stock_code``, ``quantity`` (units, > 0),
    ``price`` (pence per unit, > 0) and ``customer`` (user id)."""

    invoice: str
    stock_code: str
    quantity: int
    price: int
    customer: int


def parse_row(row: Mapping[str, str | None]) -> RetailLine | str:
    """Parse one CSV row: a :class:`RetailLine`, or the skip reason (a ``str``
    from :data:`SKIP_REASONS`). Never raises on bad data.

    >>> parse_row({"InvoiceNo": "C536379", "StockCode": "D", "Quantity": "-1",
    ...            "UnitPrice": "27.50", "CustomerID": "14527"})
    'cancellation'
    >>> parse_row({"InvoiceNo": "536379", "StockCode": "D", "Quantity": "1.5",
    ...            "UnitPrice": "27.50", "CustomerID": "14527"})
    'malformed'
    """
    invoice = (row.get("InvoiceNo") or "").strip()
    code = (row.get("StockCode") or "").strip()
    raw_qty = row.get("Quantity")
    raw_price = row.get("UnitPrice")
    raw_customer = row.get("CustomerID")
    if not invoice or not code or len(code) > MAX_ID_LENGTH or raw_qty is None:
        return "malformed"
    if raw_price is None or raw_customer is None:
        return "malformed"
    try:
        quantity = int(raw_qty.strip())
        price = Decimal(raw_price.strip())
    except (ValueError, InvalidOperation):
        return "malformed"
    if not price.is_finite():
        return "malformed"
    customer_text = raw_customer.strip()
    customer: int | None = None
    if customer_text:
        try:
            as_decimal = Decimal(customer_text)  # "17850" or "17850.0"
        except InvalidOperation:
            return "malformed"
        if (
            not as_decimal.is_finite()
            or as_decimal != as_decimal.to_integral_value()
            or not 0 <= as_decimal <= MAX_INT
        ):
            return "malformed"
        customer = int(as_decimal)
    if invoice.startswith(("C", "c")):
        return "cancellation"
    if customer is None:
        return "guest"
    if quantity <= 0:
        return "non_positive_quantity"
    if price <= 0:
        return "non_positive_price"
    pence = price * _PENCE
    if pence != pence.to_integral_value():
        return "sub_penny_price"
    if quantity > MAX_INT or pence > MAX_INT:
        return "malformed"
    return RetailLine(invoice, code, quantity, int(pence), customer)


def invoice_events(lines: list[RetailLine]) -> tuple[list[Event], int]:
    """The events of one invoice's lines (see the module docstring) and the
    number of repriced lines. ``lines`` is non-empty, of one invoice and one
    customer, at most 1,000 lines; raises ``ValueError`` otherwise."""
    if not lines or len(lines) > MAX_ORDER_LINES:
        raise ValueError(f"an invoice needs 1 to {MAX_ORDER_LINES} lines, got {len(lines)}")
    first = lines[0]
    if any(ln.invoice != first.invoice or ln.customer != first.customer for ln in lines):
        raise ValueError(f"invoice {first.invoice}: lines of several invoices or customers")
    charged: dict[str, int] = {}
    events: list[Event] = []
    repriced = 0
    for ln in lines:
        if ln.stock_code in charged:
            if ln.price != charged[ln.stock_code]:
                repriced += 1
            events.append(AddItem(ln.stock_code, ln.quantity, None))
        else:
            charged[ln.stock_code] = ln.price
            events.append(AddItem(ln.stock_code, ln.quantity, ln.price))
    total = sum(charged[ln.stock_code] * ln.quantity for ln in lines)
    events.append(TopUp(first.customer, total))
    events.append(
        Order(first.customer, tuple((ln.stock_code, ln.quantity) for ln in lines), first.invoice)
    )
    return events, repriced


@dataclass
class ImportResult:
    """What :func:`map_rows` made of a file: ``events`` in log order with their
    idempotency ``keys`` (one each, derived from the data), the rows
    ``imported_rows``, ``skipped`` as ``{reason: rows}``, the number of
    ``invoices`` and ``repriced_lines``. ``imported_rows + sum(skipped)`` is
    the number of rows read."""

    events: list[Event] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    imported_rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    invoices: int = 0
    repriced_lines: int = 0

    @property
    def rows(self) -> int:
        """Every row read: imported plus skipped."""
        return self.imported_rows + sum(self.skipped.values())

    def event_counts(self) -> dict[str, int]:
        """``{event type name: count}`` of :attr:`events`."""
        return dict(Counter(type(e).__name__ for e in self.events))


def map_rows(rows: Iterable[Mapping[str, str | None]]) -> ImportResult:
    """Map Online Retail rows to events (the mapping is the module docstring).

    Rows of one invoice with a different ``CustomerID`` than the invoice's first
    imported row are skipped as ``malformed``; an invoice of more than 1,000
    lines is skipped whole as ``too_many_lines``. Never raises on bad data.
    """
    result = ImportResult()
    invoices: dict[str, list[RetailLine]] = {}
    for row in rows:
        parsed = parse_row(row)
        if isinstance(parsed, str):
            result.skipped[parsed] += 1
            continue
        group = invoices.setdefault(parsed.invoice, [])
        if group and group[0].customer != parsed.customer:
            result.skipped["malformed"] += 1
            continue
        group.append(parsed)
    for lines in invoices.values():
        if len(lines) > MAX_ORDER_LINES:
            result.skipped["too_many_lines"] += len(lines)
            continue
        events, repriced = invoice_events(lines)
        invoice = lines[0].invoice
        result.events.extend(events)
        result.keys.extend(f"retail:{invoice}:line:{n}" for n in range(len(lines)))
        result.keys += [f"retail:{invoice}:topup", f"retail:{invoice}:order"]
        result.imported_rows += len(lines)
        result.invoices += 1
        result.repriced_lines += repriced
    return result


def read_csv(path: str | Path) -> Iterator[dict[str, str | None]]:
    """Rows of an Online Retail CSV file as dicts keyed by column name.

    Raises ``OSError`` if the file cannot be read and ``ValueError`` if its
    header lacks one of :data:`COLUMNS` that the mapping needs. A row with too
    few fields has ``None`` for the missing ones (so it is skipped as malformed).
    """
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        needed = ("InvoiceNo", "StockCode", "Quantity", "UnitPrice", "CustomerID")
        missing = [c for c in needed if c not in header]
        if missing:
            raise ValueError(f"{path}: not an Online Retail CSV, missing columns {missing}")
        for row in reader:
            yield {k: v for k, v in row.items() if isinstance(k, str)}  # drop extras

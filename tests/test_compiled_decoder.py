"""The compiled v1 decoder (msgspec) and the validating one agree on every entry:
they accept the same entries, as equal events, and refuse the same, with the same reason."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from shop_adapters.shop_domain.wire import Decoder, Limits
from shop_core import MAX_INT

COMPILED = Decoder()
VALIDATING = Decoder()
VALIDATING._compiled = False  # the path every reason comes from

numbers = st.one_of(
    st.integers(-5, 5),
    st.integers(0, 2**64 + 5),
    st.sampled_from([MAX_INT, MAX_INT + 1, 2**64, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
ids = st.one_of(
    st.text(min_size=0, max_size=130),
    st.sampled_from(["", "x" * 128, "x" * 129, "é" * 128, "cpu"]),
    st.integers(0, 3),
    st.none(),
)
lines = st.one_of(
    st.lists(st.tuples(ids, numbers).map(list), max_size=4),
    st.lists(st.lists(st.one_of(ids, numbers), max_size=3), max_size=3),
    st.just([]),
    st.integers(),
    st.none(),
)
FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "TopUp": {"user_id": numbers, "amount": numbers},
    "AddItem": {"item_id": ids, "count": numbers, "price": numbers},
    "Order": {"user_id": numbers, "lines": lines, "order_id": ids},
}


@st.composite
def v1_entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    kind = draw(st.sampled_from(sorted(FIELDS)))
    data: dict[str, Any] = {}
    for name, values in FIELDS[kind].items():
        if draw(st.integers(0, 9)) > 0:
            data[name] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.text(max_size=5))] = draw(numbers)
    text = json.dumps(data)
    if draw(st.integers(0, 19)) == 0:  # a repeated key, or a broken document
        text = draw(st.sampled_from([text[:-1] + ', "user_id": 1}', text[:-2], "[1]", "nul"]))
    entry = {b"type": kind.encode(), b"v": b"1", b"data": text.encode()}
    if draw(st.integers(0, 9)) == 0:
        entry[b"key"] = b"k"
    return entry


def _verdict(decoder: Decoder, entry: dict[bytes, bytes]) -> tuple[str, Any]:
    match decoder.decode(entry):
        case Success(event):
            return "accepted", (type(event), event)
        case Failure(reason):
            return "refused", reason
    raise AssertionError("unreachable")


@settings(max_examples=3_000, deadline=None)
@given(v1_entries())
@example({b"type": b"TopUp", b"v": b"1", b"data": b'{"user_id": 1, "amount": 5.0}'})
@example({b"type": b"TopUp", b"v": b"1", b"data": b'{"user_id": 1, "amount": true}'})
@example(
    {b"type": b"TopUp", b"v": b"1", b"data": b'{"user_id": 1, "amount": 18446744073709551616}'}
)
@example({b"type": b"Order", b"v": b"1", b"data": b'{"user_id": 1, "lines": [["a", 1, 2]]}'})
@example({b"type": b"Order", b"v": b"1", b"data": b'{"user_id": 1, "lines": []}'})
@example({b"type": b"AddItem", b"v": b"1", b"data": b'{"item_id": "a", "count": 1, "count": 2}'})
def test_the_compiled_and_the_validating_decoder_agree(entry: dict[bytes, bytes]) -> None:
    assert _verdict(COMPILED, entry) == _verdict(VALIDATING, entry)


def test_the_compiled_path_is_used_only_with_the_default_limits() -> None:
    assert COMPILED._compiled
    assert not Decoder(limits=Limits(max_id_length=8))._compiled

"""The codec: wire entries <-> events (v1, v0 + upcaster) and snapshots <-> bytes."""

from __future__ import annotations

import doctest
import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure, Success

import shop_adapters.codec as codec
from shop_adapters.codec import (
    DEFAULT_LIMITS,
    SNAPSHOT_FORMAT_VERSION,
    Decoder,
    Limits,
    Snapshot,
    decode_entry,
    decode_snapshot,
    encode_event,
    encode_event_v0,
    encode_snapshot,
    load_price_list,
    upcast_v0_v1,
)
from shop_adapters.protocols import ORIGIN, Position, Record
from shop_core import (
    EMPTY,
    MAX_INT,
    MAX_ORDER_LINES,
    SEMANTICS_VERSION,
    AddItem,
    Event,
    Order,
    Outcomes,
    TopUp,
    fold,
    fold_with_outcomes,
)
from shop_core.strategies import events, histories


def as_bytes(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    return {k.encode(): v for k, v in fields.items()}


def v1(type_: str, data: bytes | str, **extra: bytes) -> dict[bytes, bytes]:
    raw = data.encode() if isinstance(data, str) else data
    return {b"type": type_.encode(), b"v": b"1", b"data": raw, **as_bytes(extra)}


def v0(type_: str, data: Any) -> dict[bytes, bytes]:
    return {b"type": type_.encode(), b"data": msgpack.packb(data)}


def reason(result: Any) -> str:
    assert isinstance(result, Failure), result
    text = result.failure()
    assert isinstance(text, str)
    return text


def test_docstring_examples_run() -> None:
    assert doctest.testmod(codec, optionflags=doctest.ELLIPSIS).failed == 0


# --- v1 ---------------------------------------------------------------------


@given(events())
def test_v1_round_trip(event: Event) -> None:
    fields = encode_event(event)
    assert fields["v"] == b"1"
    assert decode_entry(as_bytes(fields)) == Success(event)
    # str keys, as some clients hand them
    assert decode_entry(fields) == Success(event)  # type: ignore[arg-type]


def test_v1_wire_shape_is_documented_json() -> None:
    assert encode_event(AddItem("cpu", 3, 100)) == {
        "type": b"AddItem",
        "v": b"1",
        "data": b'{"item_id":"cpu","count":3,"price":100}',
    }
    assert json.loads(encode_event(Order(7, (("cpu", 2),), "x"))["data"]) == {
        "user_id": 7,
        "lines": [["cpu", 2]],
        "order_id": "x",
    }


def test_v1_entry_written_by_hand_with_redis_cli_decodes() -> None:
    fields = {"type": "TopUp", "v": "1", "data": '{"user_id":7,"amount":500}'}
    assert decode_entry(fields) == Success(TopUp(7, 500))  # type: ignore[arg-type]


def test_v1_optional_fields_may_be_absent_or_null() -> None:
    assert decode_entry(v1("AddItem", '{"item_id":"cpu","count":3}')) == Success(AddItem("cpu", 3))
    assert decode_entry(v1("AddItem", '{"item_id":"cpu","count":3,"price":null}')) == Success(
        AddItem("cpu", 3)
    )
    assert decode_entry(v1("Order", '{"user_id":1,"lines":[["a",1]],"order_id":null}')) == Success(
        Order(1, (("a", 1),))
    )


def test_extra_entry_fields_are_tolerated() -> None:
    fields = v1("TopUp", '{"user_id":7,"amount":5}', idempotency_key=b"abc")
    assert decode_entry(fields) == Success(TopUp(7, 5))


# --- v0 ---------------------------------------------------------------------


def test_seed_go_topup_decodes() -> None:
    data = msgpack.packb({"ID": "", "Type": "TopUp", "UserID": 8081, "Amount": 500})
    assert decode_entry({b"type": b"TopUp", b"data": data}) == Success(TopUp(8081, 500))


def test_v0_encoding_is_the_go_producers() -> None:
    assert encode_event_v0(TopUp(8081, 500)) == {
        "type": b"TopUp",
        "data": msgpack.packb({"ID": "", "Type": "TopUp", "UserID": 8081, "Amount": 500}),
    }
    fields = encode_event_v0(Order(1, (("cpu", 2), ("gpu", 1))))
    assert fields["type"] == b"OrderType"
    assert msgpack.unpackb(fields["data"]) == {
        "ID": "",
        "Type": "OrderType",
        "UserID": 1,
        "ItemIDs": ["cpu", "gpu"],
        "ItemQuantities": [2, 1],
    }
    assert "v" not in fields


def expected_v0(event: Event, priced: bool) -> Event:
    if isinstance(event, AddItem):
        return AddItem(event.item_id, event.count, event.price if priced else None)
    return event


@given(events(), st.booleans())
def test_v0_round_trip_with_and_without_a_price_list(event: Event, priced: bool) -> None:
    prices = None
    if priced and isinstance(event, AddItem) and event.price is not None:
        prices = {event.item_id: event.price}
    got = Decoder(prices).decode(as_bytes(encode_event_v0(event)))
    assert got == Success(expected_v0(event, prices is not None))


def test_v0_additem_takes_its_price_from_the_price_list() -> None:
    fields = v0("AddItem", {"ID": "", "Type": "AddItem", "ItemID": "cpu", "Count": 3})
    assert Decoder({"cpu": 100}).decode(fields) == Success(AddItem("cpu", 3, 100))
    assert Decoder({"gpu": 100}).decode(fields) == Success(AddItem("cpu", 3, None))
    assert decode_entry(fields) == Success(AddItem("cpu", 3, None))


def test_v0_order_id_becomes_order_id() -> None:
    data = {"ID": "o-1", "Type": "OrderType", "UserID": 1, "ItemIDs": ["a"], "ItemQuantities": [2]}
    assert decode_entry(v0("OrderType", data)) == Success(Order(1, (("a", 2),), "o-1"))


def test_upcaster_is_explicit_and_stepwise() -> None:
    assert upcast_v0_v1("TopUp", {"ID": "", "Type": "TopUp", "UserID": 1, "Amount": 2}) == (
        "TopUp",
        {"user_id": 1, "amount": 2},
    )
    assert upcast_v0_v1("AddItem", {"ItemID": "cpu", "Count": 1}, {"cpu": 9}) == (
        "AddItem",
        {"item_id": "cpu", "count": 1, "price": 9},
    )
    with pytest.raises(ValueError, match="ItemIDs has 1 entries but ItemQuantities has 2"):
        upcast_v0_v1("OrderType", {"UserID": 1, "ItemIDs": ["a"], "ItemQuantities": [1, 2]})
    assert codec._UPCASTERS[0] is codec._upcast_v0_v1
    assert max(codec._UPCASTERS) + 1 == codec.CURRENT_SCHEMA_VERSION


# --- malformed entries: every one is a Failure with a clear reason ----------

GO_ORDER = {"ID": "", "Type": "OrderType", "UserID": 1}
BIG = 2**64  # orjson reads it as a float

MALFORMED: list[tuple[str, Any, str]] = [
    ("empty entry", {}, "missing field 'type'"),
    ("not a mapping", [(b"type", b"TopUp")], "must be a mapping"),
    ("missing data", {b"type": b"TopUp", b"v": b"1"}, "missing field 'data'"),
    ("int value", {b"type": b"TopUp", b"v": 1, b"data": b"{}"}, "bytes or str"),
    ("unknown version", v1("TopUp", "{}") | {b"v": b"2"}, "unknown schema version '2'"),
    ("v=0 explicit", v1("TopUp", "{}") | {b"v": b"0"}, "unknown schema version '0'"),
    ("unknown type v1", v1("Refund", "{}"), "unknown event type 'Refund'"),
    ("v0 type in v1", v1("OrderType", "{}"), "unknown event type 'OrderType' for schema v1"),
    ("v1 type without v", {b"type": b"Order", b"data": b"{}"}, "needs field v=1"),
    (
        "json without v",
        {b"type": b"TopUp", b"data": b'{"user_id":1,"amount":2}'},
        "looks like JSON",
    ),
    ("non-utf8 type", {b"type": b"\xff\xfe", b"v": b"1", b"data": b"{}"}, "unknown event type"),
    ("invalid json", v1("TopUp", "{user_id: 1"), "not valid JSON"),
    ("non-utf8 json", v1("TopUp", b'{"user_id":1,"amount":"\xff"}'), "not valid JSON"),
    ("json not object", v1("TopUp", "[1, 2]"), "must be a JSON object, got list"),
    ("json nan", v1("TopUp", '{"user_id":1,"amount":NaN}'), "not valid JSON"),
    ("missing data field", v1("TopUp", '{"user_id":1}'), "missing field 'amount'"),
    ("extra data field", v1("TopUp", '{"user_id":1,"amount":2,"x":3}'), "unexpected field 'x'"),
    ("float money", v1("TopUp", '{"user_id":1,"amount":5.0}'), "TopUp.amount must be an int"),
    ("bool money", v1("TopUp", '{"user_id":1,"amount":true}'), "got bool True"),
    ("string money", v1("TopUp", '{"user_id":1,"amount":"5"}'), "got str"),
    ("negative", v1("TopUp", '{"user_id":1,"amount":-5}'), "TopUp.amount must be in [0"),
    ("past 2**63", v1("TopUp", f'{{"user_id":1,"amount":{2**63}}}'), "got 9223372036854775808"),
    ("at 2**64", v1("TopUp", f'{{"user_id":1,"amount":{BIG}}}'), "out of range"),
    ("past 2**64", v1("AddItem", f'{{"item_id":"a","count":{BIG * 10}}}'), "out of range"),
    ("huge line qty", v1("Order", f'{{"user_id":1,"lines":[["a",{BIG}]]}}'), "out of range"),
    ("negative huge", v1("TopUp", f'{{"user_id":-{BIG},"amount":1}}'), "out of range"),
    ("float price", v1("AddItem", '{"item_id":"a","count":1,"price":1.5}'), "AddItem.price"),
    ("empty id", v1("AddItem", '{"item_id":"","count":1}'), "AddItem.item_id must have 1 to"),
    ("id too long", v1("AddItem", json.dumps({"item_id": "x" * 129, "count": 1})), "got 129"),
    ("int id", v1("AddItem", '{"item_id":5,"count":1}'), "AddItem.item_id must be a str"),
    ("empty lines", v1("Order", '{"user_id":1,"lines":[]}'), "must not be empty"),
    ("lines not list", v1("Order", '{"user_id":1,"lines":"ab"}'), "Order.lines"),
    ("bad line", v1("Order", '{"user_id":1,"lines":[["a",1,2]]}'), "Order.lines[0]"),
    (
        "too many lines",
        v1("Order", json.dumps({"user_id": 1, "lines": [["a", 1]] * (MAX_ORDER_LINES + 1)})),
        "too many lines",
    ),
    ("too large", v1("AddItem", b" " * 70_000), "entry too large"),
    ("too large str", {"type": "TopUp", "v": "1", "data": "é" * 40_000}, "entry too large"),
    ("duplicate field", {b"type": b"TopUp", "type": "TopUp"}, "duplicate field 'type'"),
    ("invalid msgpack", {b"type": b"TopUp", b"data": b"\xc1"}, "not valid MessagePack"),
    ("truncated msgpack", {b"type": b"TopUp", b"data": b"\x82\xa2ID"}, "not valid MessagePack"),
    ("msgpack not map", v0("TopUp", [1, 2]), "must be a MessagePack map, got list"),
    ("msgpack int key", v0("TopUp", {1: 2}), "not valid MessagePack"),
    (
        "msgpack non-utf8 str",
        {b"type": b"TopUp", b"data": b"\x81\xa2\xff\xfe\x01"},
        "not valid MessagePack",
    ),
    ("v0 missing field", v0("TopUp", {"ID": "", "Type": "TopUp", "UserID": 1}), "'Amount'"),
    (
        "v0 extra field",
        v0("TopUp", {"ID": "", "Type": "TopUp", "UserID": 1, "Amount": 2, "Note": "x"}),
        "unexpected field 'Note'",
    ),
    (
        "v0 type mismatch",
        v0("TopUp", {"ID": "", "Type": "AddItem", "UserID": 1, "Amount": 2}),
        "differs from the entry's type",
    ),
    (
        "v0 negative",
        v0("TopUp", {"ID": "", "Type": "TopUp", "UserID": 1, "Amount": -2}),
        "TopUp.amount must be in",
    ),
    (
        "v0 float",
        v0("TopUp", {"ID": "", "Type": "TopUp", "UserID": 1.0, "Amount": 2}),
        "TopUp.user_id must be an int",
    ),
    (
        "v0 uint64 max",
        v0("TopUp", {"ID": "", "Type": "TopUp", "UserID": 2**64 - 1, "Amount": 2}),
        "TopUp.user_id must be in",
    ),
    (
        "v0 lengths differ",
        v0("OrderType", GO_ORDER | {"ItemIDs": ["a", "b"], "ItemQuantities": [1]}),
        "ItemIDs has 2 entries but ItemQuantities has 1",
    ),
    (
        "v0 ids not array",
        v0("OrderType", GO_ORDER | {"ItemIDs": "a", "ItemQuantities": [1]}),
        "must be arrays",
    ),
    (
        "v0 too many lines",
        v0("OrderType", GO_ORDER | {"ItemIDs": ["a"] * 1001, "ItemQuantities": [1] * 1001}),
        "too many lines",
    ),
    (
        "v0 id too long",
        v0("AddItem", {"ID": "", "Type": "AddItem", "ItemID": "x" * 600, "Count": 1}),
        "id too long",
    ),
    (
        "v0 bin id",
        v0("AddItem", {"ID": "", "Type": "AddItem", "ItemID": b"cpu", "Count": 1}),
        "AddItem.item_id must be a str",
    ),
    (
        "v0 ext value",
        v0("TopUp", {"ID": "", "Type": "TopUp", "UserID": msgpack.ExtType(1, b"x"), "Amount": 1}),
        "TopUp.user_id must be an int",
    ),
    ("v0 unknown type", v0("Refund", {}), "unknown event type 'Refund' for the seed's v0"),
]


@pytest.mark.parametrize(
    ("fields", "expected"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_entry_is_a_failure_with_a_reason(fields: Any, expected: str) -> None:
    text = reason(decode_entry(fields))
    assert expected in text
    assert "\n" not in text


def test_size_is_checked_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> object:
        raise AssertionError("parsed an oversized entry")

    monkeypatch.setattr(orjson, "loads", boom)
    assert "entry too large" in reason(decode_entry(v1("TopUp", b"[" * 70_000)))


def test_custom_limits_apply_to_v1_and_v0() -> None:
    decoder = Decoder(limits=Limits(max_entry_bytes=200, max_lines=2, max_id_length=4))
    assert "id too long" in reason(decoder.decode(v1("AddItem", '{"item_id":"abcde","count":1}')))
    long_line = '{"user_id":1,"lines":[["abcde",1]]}'
    assert "Order.lines[0].item_id has 5 characters" in reason(
        decoder.decode(v1("Order", long_line))
    )
    long_order = '{"user_id":1,"lines":[["a",1]],"order_id":"abcde"}'
    assert "Order.order_id" in reason(decoder.decode(v1("Order", long_order)))
    three = '{"user_id":1,"lines":[["a",1],["b",1],["c",1]]}'
    assert "too many lines" in reason(decoder.decode(v1("Order", three)))
    go = GO_ORDER | {"ItemIDs": ["a"] * 3, "ItemQuantities": [1] * 3}
    assert "too many lines" in reason(decoder.decode(v0("OrderType", go)))
    assert "entry too large" in reason(decoder.decode(v1("TopUp", b" " * 200)))
    assert decoder.decode(v1("Order", '{"user_id":1,"lines":[["abcd",1],["b",1]]}')) == Success(
        Order(1, (("abcd", 1), ("b", 1)))
    )


def test_bad_limits_and_price_lists_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="max_lines"):
        Decoder(limits=Limits(max_lines=0))
    with pytest.raises(ValueError, match="price of 'cpu' must be an int"):
        Decoder({"cpu": 1.5})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="must be in"):
        Decoder({"cpu": -1})


def test_default_limits_match_the_core() -> None:
    assert Limits(65_536, MAX_ORDER_LINES, 128) == DEFAULT_LIMITS


def test_decode_records_splits_events_and_dead_letters_in_order() -> None:
    records = [
        Record(Position(1, 0), as_bytes(encode_event(TopUp(1, 5)))),
        Record(Position(2, 0), {b"type": b"Nope"}),
        Record(Position(3, 0), as_bytes(encode_event_v0(AddItem("cpu", 2)))),
    ]
    good, dead = Decoder({"cpu": 7}).decode_records(records)
    assert good == [(Position(1, 0), TopUp(1, 5)), (Position(3, 0), AddItem("cpu", 2, 7))]
    assert [(d.position, d.fields) for d in dead] == [(Position(2, 0), {b"type": b"Nope"})]
    assert "missing field 'data'" in dead[0].reason or "unknown" in dead[0].reason


# --- price lists ------------------------------------------------------------


def test_load_price_list(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text('{"cpu": 100, "gpu": 9223372036854775807}')
    assert load_price_list(path) == {"cpu": 100, "gpu": MAX_INT}
    assert load_price_list(str(path)) == {"cpu": 100, "gpu": MAX_INT}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"cpu": 1.5}', "float"),
        ('{"cpu": 100.0}', "float"),
        ('{"cpu": true}', "must be an int"),
        ('{"cpu": "100"}', "must be an int"),
        ('{"cpu": null}', "must be an int"),
        ('{"cpu": -1}', "must be in [0, 2**63 - 1]"),
        (f'{{"cpu": {2**63}}}', "must be in [0, 2**63 - 1]"),
        ('{"cpu": NaN}', "NaN is not allowed"),
        ('{"cpu": 1, "cpu": 2}', "duplicate key 'cpu'"),
        ('{"": 1}', "item ids are str of 1 to 128"),
        ("[1, 2]", "expected a JSON object"),
        ("{", "not valid JSON"),
        (b'{"\xff": 1}', "not valid JSON"),
    ],
)
def test_bad_price_list_raises_a_clear_value_error(
    tmp_path: Path, content: str | bytes, expected: str
) -> None:
    path = tmp_path / "prices.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=r"prices\.json") as info:
        load_price_list(path)
    assert expected in str(info.value)


# --- snapshots --------------------------------------------------------------


SOMEWHERE = Position(7, 1)


def snapshot_of(history: list[Event], position: Position = SOMEWHERE) -> Snapshot:
    state, outcomes = fold_with_outcomes(history)
    return Snapshot(state, position, len(history) + 2, outcomes, dead_letters=2)


@given(histories(), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_snapshot_round_trip(history: list[Event], major: int, minor: int) -> None:
    snapshot = snapshot_of(history, Position(major, minor))
    decoded = decode_snapshot(encode_snapshot(snapshot))
    assert decoded == Success(snapshot)
    restored = decoded.unwrap().state
    assert all(type(uid) is int for uid in restored.users)
    assert restored == fold(history)


def test_snapshot_defaults_and_empty_state() -> None:
    snapshot = Snapshot(EMPTY, ORIGIN, 0)
    assert snapshot.outcomes == Outcomes()
    assert snapshot.semantics_version == SEMANTICS_VERSION
    assert decode_snapshot(encode_snapshot(snapshot)) == Success(snapshot)


def test_big_balances_survive_exactly() -> None:
    state = fold([TopUp(1, MAX_INT)] * 5 + [AddItem("cpu", MAX_INT, MAX_INT)] * 3)
    assert state.users[1].balance > 2**64
    blob = encode_snapshot(Snapshot(state, Position(1, 0), 8))
    got = decode_snapshot(blob).unwrap().state
    assert got.users[1].balance == 5 * MAX_INT
    assert got.items["cpu"] == (MAX_INT, 3 * MAX_INT)


def test_snapshot_is_deterministic_bytes() -> None:
    a = fold([TopUp(2, 1), TopUp(1, 1), AddItem("b", 1), AddItem("a", 1)])
    b = fold([AddItem("a", 1), AddItem("b", 1), TopUp(1, 1), TopUp(2, 1)])
    assert encode_snapshot(Snapshot(a, ORIGIN, 4)) == encode_snapshot(Snapshot(b, ORIGIN, 4))


def test_snapshot_layout() -> None:
    blob = encode_snapshot(snapshot_of([TopUp(1, 5)]))
    magic, header, rest = blob.split(b"\n", 2)
    assert magic == b"SHOPSNAP"
    head = json.loads(header)
    assert head["format_version"] == SNAPSHOT_FORMAT_VERSION
    assert head["position"] == "7-1"
    assert rest.endswith(b"\n")
    body, trailer = rest[:-1].rsplit(b"\n", 1)
    assert json.loads(body) == {"users": [[1, 5]], "items": []}
    assert len(body) == head["body_length"]
    assert trailer == b"sha256:" + hashlib.sha256(blob[: -len(trailer) - 2]).hexdigest().encode()


def seal(header: dict[str, Any], body: bytes) -> bytes:
    """A snapshot with a valid checksum around arbitrary content (to test the schema)."""
    header = {"body_length": len(body), **header}
    head = json.dumps(header).encode()
    payload = b"SHOPSNAP\n" + head + b"\n" + body
    return payload + b"\nsha256:" + hashlib.sha256(payload).hexdigest().encode() + b"\n"


HEADER: dict[str, Any] = {
    "format_version": 1,
    "semantics_version": SEMANTICS_VERSION,
    "position": "5-9",
    "events_folded": 3,
    "dead_letters": 0,
    "outcomes": {"events": 3, "orders_accepted": 1, "rejections": {"out_of_stock": 1}},
}
GOOD_BODY = b'{"users":[[1,5],[2,0]],"items":[["a",1,2],["b",null,0]]}'


def test_sealed_helper_builds_a_valid_snapshot() -> None:
    snapshot = decode_snapshot(seal(HEADER, GOOD_BODY)).unwrap()
    assert snapshot.position == Position(5, 9)
    assert snapshot.outcomes.rejections == {"out_of_stock": 1}
    assert snapshot.state.items["b"].price is None


CORRUPT_SNAPSHOTS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty snapshot"),
    ("truncated magic", b"SHOP", "truncated snapshot"),
    ("bad magic", b"GIF89a....", "not a shop snapshot (bad magic"),
    ("pickle", pickle.dumps({"users": []}), "looks like a pickle; never unpickled"),
    ("pickle protocol 0", pickle.dumps(1, protocol=0), "not a shop snapshot"),
    ("no header end", b"SHOPSNAP\n{", "no end of the header line"),
    ("header not json", b"SHOPSNAP\n{nope\n", "header: not valid JSON"),
    ("header not object", b"SHOPSNAP\n[1]\n", "expected a JSON object"),
    ("future format", seal(HEADER | {"format_version": 2}, GOOD_BODY), "format version 2"),
    ("bool format", seal(HEADER | {"format_version": True}, GOOD_BODY), "format version True"),
    ("stale", seal(HEADER | {"semantics_version": 99}, GOOD_BODY), "stale semantics version 99"),
    (
        "missing key",
        seal({k: v for k, v in HEADER.items() if k != "dead_letters"}, GOOD_BODY),
        "missing field 'dead_letters'",
    ),
    ("extra key", seal(HEADER | {"x": 1}, GOOD_BODY), "unexpected field 'x'"),
    ("float count", seal(HEADER | {"events_folded": 3.0}, GOOD_BODY), "float"),
    ("negative count", seal(HEADER | {"dead_letters": -1}, GOOD_BODY), "non-negative int"),
    ("bad position", seal(HEADER | {"position": "5:9"}, GOOD_BODY), "major-minor"),
    ("int position", seal(HEADER | {"position": 5}, GOOD_BODY), "position must be"),
    (
        "unknown code",
        seal(
            HEADER | {"outcomes": {"events": 1, "orders_accepted": 0, "rejections": {"x": 1}}},
            GOOD_BODY,
        ),
        "unknown rejection code",
    ),
    ("body not json", seal(HEADER, b"{users"), "body: not valid JSON"),
    ("body float", seal(HEADER, b'{"users":[[1,5.0]],"items":[]}'), "float"),
    ("body nan", seal(HEADER, b'{"users":[[1,NaN]],"items":[]}'), "NaN"),
    ("negative balance", seal(HEADER, b'{"users":[[1,-5]],"items":[]}'), "balance must be"),
    ("bool balance", seal(HEADER, b'{"users":[[1,true]],"items":[]}'), "balance must be"),
    ("string uid", seal(HEADER, b'{"users":[["1",5]],"items":[]}'), "a user id must be"),
    ("huge uid", seal(HEADER, f'{{"users":[[{2**63},5]],"items":[]}}'.encode()), "at most"),
    (
        "duplicate uid",
        seal(HEADER, b'{"users":[[1,5],[1,6]],"items":[]}'),
        "duplicate or out of order",
    ),
    ("duplicate key", seal(HEADER, b'{"users":[],"users":[],"items":[]}'), "duplicate key"),
    ("duplicate item", seal(HEADER, b'{"users":[],"items":[["a",1,1],["a",1,1]]}'), "duplicate"),
    ("negative stock", seal(HEADER, b'{"users":[],"items":[["a",1,-1]]}'), "stock must be"),
    ("float price", seal(HEADER, b'{"users":[],"items":[["a",1.5,1]]}'), "float"),
    ("empty item id", seal(HEADER, b'{"users":[],"items":[["",1,1]]}'), "bad item id"),
    ("short row", seal(HEADER, b'{"users":[[1]],"items":[]}'), "a user is [user_id, balance]"),
    ("body extra", seal(HEADER, b'{"users":[],"items":[],"x":[]}'), "unexpected field 'x'"),
    ("body list", seal(HEADER, b"[]"), "expected a JSON object"),
]


@pytest.mark.parametrize(
    ("blob", "expected"), [c[1:] for c in CORRUPT_SNAPSHOTS], ids=[c[0] for c in CORRUPT_SNAPSHOTS]
)
def test_corrupt_snapshot_is_rejected_with_its_reason(blob: bytes, expected: str) -> None:
    assert expected in reason(decode_snapshot(blob))


def test_checksum_and_truncation_are_detected() -> None:
    blob = encode_snapshot(snapshot_of([TopUp(1, 5), AddItem("cpu", 1, 2)]))
    assert "checksum mismatch" in reason(decode_snapshot(blob.replace(b"cpu", b"cpx")))
    assert "truncated snapshot" in reason(decode_snapshot(blob[:-10]))
    assert "corrupt snapshot" in reason(decode_snapshot(blob + b"x"))
    assert "checksum" in reason(decode_snapshot(blob.replace(b"sha256:", b"sha257:")))


def test_stale_semantics_version_says_rebuild_by_replay() -> None:
    snapshot = Snapshot(EMPTY, ORIGIN, 0, semantics_version=SEMANTICS_VERSION + 1)
    text = reason(decode_snapshot(encode_snapshot(snapshot)))
    assert text == (
        f"stale semantics version {SEMANTICS_VERSION + 1}, running {SEMANTICS_VERSION}; "
        "rebuild by replay"
    )


class _Exploit:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {_MARKER}",))


_MARKER = Path("/tmp") / f"shop-codec-pwned-{os.getpid()}"


def test_pickle_payload_is_rejected_without_being_executed() -> None:
    payload = pickle.dumps(_Exploit())  # building the bytes runs nothing
    assert payload[:1] == b"\x80"
    text = reason(decode_snapshot(payload))
    assert text == "not a shop snapshot (looks like a pickle; never unpickled)"
    assert not _MARKER.exists()
    # Even behind our magic, the bytes are only ever parsed as JSON.
    assert isinstance(decode_snapshot(b"SHOPSNAP\n" + payload), Failure)
    assert isinstance(decode_snapshot(seal(HEADER, payload)), Failure)
    assert not _MARKER.exists()


def test_non_bytes_snapshot_is_a_failure() -> None:
    assert "a snapshot is bytes" in reason(decode_snapshot("SHOPSNAP\n"))  # type: ignore[arg-type]

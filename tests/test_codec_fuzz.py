"""Fuzzing the codec: decoding never raises, and the batch path agrees with ``decode``."""

from __future__ import annotations

import json
from typing import Any

import msgpack
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from returns.result import Failure, Result, Success

from shop_adapters.envelope import Snapshot, decode_snapshot, encode_snapshot
from shop_adapters.protocols import DeadLetter, Position, Record
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.wire import (
    Decoder,
    Limits,
    decode_entry,
    encode_event,
    encode_event_v0,
)
from shop_core import EMPTY, AddItem, Event, Order, TopUp, fold
from shop_core.strategies import events, histories

SHOP = ShopDomain()
ANCHOR = "0123456789abcdef0123456789abcdef01234567"

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EDGE_INTS = st.sampled_from(
    [0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**63), -(2**64), 10**30]
)
INTS = st.one_of(st.integers(), EDGE_INTS, st.integers(-(2**70), 2**70))
IDS = st.one_of(
    st.text(max_size=8),
    st.text(min_size=120, max_size=140),
    st.sampled_from(["cpu", "", "x" * 128, "x" * 129, "é" * 128]),
)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), IDS, st.binary(max_size=8))


def many_lines() -> st.SearchStrategy[list[Any]]:
    """Thousands of lines without drawing each one (keeps generation cheap)."""
    return st.tuples(st.integers(0, 3000), st.sampled_from([["a", 1], ["b", 0], ["c", -1]])).map(
        lambda nl: [nl[1]] * nl[0]
    )


LINES = st.one_of(
    st.lists(st.lists(st.one_of(IDS, INTS, st.floats(), st.none()), max_size=3), max_size=4),
    st.lists(st.tuples(IDS, INTS).map(list), min_size=1, max_size=4),
    many_lines(),
    SCALARS,
)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=8)),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)

V1_KEYS = ["user_id", "amount", "item_id", "count", "price", "lines", "order_id", "extra"]
V0_KEYS = ["ID", "Type", "UserID", "Amount", "ItemID", "Count", "ItemIDs", "ItemQuantities", "X"]


def value_for(key: str) -> st.SearchStrategy[Any]:
    if key in {"lines", "ItemIDs", "ItemQuantities"}:
        return LINES if key == "lines" else st.one_of(st.lists(SCALARS, max_size=4), SCALARS)
    if key in {"item_id", "order_id", "ID", "Type", "ItemID"}:
        return st.one_of(IDS, SCALARS)
    return st.one_of(INTS, SCALARS)


@st.composite
def shaped_data(draw: st.DrawFn, keys: list[str]) -> dict[str, Any]:
    """A data map that looks like an event's: schema keys (some missing, some extra)."""
    chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
    return {key: draw(value_for(key)) for key in chosen}


def json_bytes(value: Any) -> bytes:
    # allows NaN/Infinity and ints of any size; bytes (from msgpack-minded strategies) as text
    return json.dumps(value, default=lambda b: b.decode("latin-1")).encode()


def msgpack_bytes(value: Any) -> bytes | None:
    try:
        return bytes(msgpack.packb(value))
    except (OverflowError, TypeError, ValueError):
        return None  # e.g. an int beyond 64 bits: not representable


@st.composite
def data_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return json_bytes(draw(JSONISH))
    if kind == 2:
        return json_bytes(draw(shaped_data(V1_KEYS)))
    if kind == 3:
        packed = msgpack_bytes(draw(shaped_data(V0_KEYS)))
        return packed if packed is not None else b"\xc1"
    if kind == 4:
        packed = msgpack_bytes(draw(JSONISH))
        return packed if packed is not None else b""
    raw = json_bytes(draw(shaped_data(V1_KEYS)))
    cut = draw(st.integers(0, len(raw)))
    return raw[:cut] + draw(st.binary(max_size=3)) + raw[cut:]  # noise, often non-UTF-8


@st.composite
def mutated_entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    """A valid event's v1 or v0 entry, with 0 to 2 of its data fields removed, added or replaced."""
    event = draw(events())
    as_v0 = draw(st.booleans())
    fields = {k.encode(): v for k, v in (encode_event_v0 if as_v0 else encode_event)(event).items()}
    data: dict[str, Any] = (
        msgpack.unpackb(fields[b"data"]) if as_v0 else json.loads(fields[b"data"])
    )
    keys = V0_KEYS if as_v0 else V1_KEYS
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        name = draw(st.sampled_from(keys))
        if name in data and draw(st.booleans()):
            del data[name]
        else:
            data[name] = draw(value_for(name))
    packed = msgpack_bytes(data) if as_v0 else json_bytes(data)
    fields[b"data"] = packed if packed is not None else b""
    return fields


def key(name: bytes) -> st.SearchStrategy[bytes | str]:
    return st.sampled_from([name, name.decode()])


@st.composite
def entries(draw: st.DrawFn) -> dict[Any, Any]:
    """Entries with any mix of present, missing, extra, str and bytes fields."""
    if draw(st.integers(0, 2)) == 0:
        return draw(mutated_entries())
    fields: dict[Any, Any] = {}
    types = st.sampled_from([b"TopUp", b"AddItem", b"Order", b"OrderType", b"Refund", b"\xff"])
    versions = st.sampled_from([b"1", b"0", b"2", b"01", b" 1", b""]) | st.binary(max_size=3)
    if draw(st.integers(0, 9)):
        fields[draw(key(b"type"))] = draw(types | st.binary(max_size=8))
    if draw(st.booleans()):
        fields[draw(key(b"v"))] = draw(versions)
    if draw(st.integers(0, 9)):
        fields[draw(key(b"data"))] = draw(data_bytes())
    for name, value in draw(
        st.dictionaries(st.binary(max_size=6), st.binary(max_size=6), max_size=2)
    ).items():
        fields.setdefault(name, value)
    if draw(st.integers(0, 9)) == 0:  # an odd value: str (maybe non-encodable), int, huge
        odd = st.one_of(
            st.text(max_size=4), st.integers(), st.just("\ud800"), st.just(b"x" * 70_000)
        )
        fields[draw(st.sampled_from([b"type", "v", "data", "note"]))] = draw(odd)
    # str values are accepted too
    return {
        k: (v.decode("latin-1") if isinstance(v, bytes) and draw(st.integers(0, 7)) == 0 else v)
        for k, v in fields.items()
    }


def assert_valid_outcome(result: Result[Event, str]) -> None:
    match result:
        case Success(event):
            assert type(event) in (TopUp, AddItem, Order)
            # A decoded event is valid: it survives re-validation and a round trip.
            assert decode_entry(encode_event(event)) == Success(event)  # type: ignore[arg-type]
        case Failure(reason):
            assert isinstance(reason, str)
            assert reason
        case _:
            raise AssertionError(f"not a Result: {result!r}")


@FUZZ
@given(entries())
def test_decoding_any_entry_never_raises(fields: dict[Any, Any]) -> None:
    assert_valid_outcome(decode_entry(fields))


@FUZZ
@given(st.sampled_from([b"TopUp", b"AddItem", b"Order"]), shaped_data(V1_KEYS))
def test_v1_shaped_data_decodes_or_fails_cleanly(type_: bytes, data: dict[str, Any]) -> None:
    fields = {b"type": type_, b"v": b"1", b"data": json_bytes(data)}
    result = decode_entry(fields)
    assert_valid_outcome(result)
    allowed = {
        b"TopUp": {"user_id", "amount"},
        b"AddItem": {"item_id", "count", "price"},
        b"Order": {"user_id", "lines", "order_id"},
    }[type_]
    if not set(data) <= allowed:  # an extra key never gets through
        assert isinstance(result, Failure)


@FUZZ
@given(mutated_entries())
def test_mutated_valid_entries_decode_or_fail_cleanly(fields: dict[bytes, bytes]) -> None:
    assert_valid_outcome(Decoder({"cpu": 5}).decode(fields))


@FUZZ
@given(st.sampled_from([b"TopUp", b"AddItem", b"OrderType"]), shaped_data(V0_KEYS))
def test_v0_shaped_data_decodes_or_fails_cleanly(type_: bytes, data: dict[str, Any]) -> None:
    packed = msgpack_bytes(data)
    assume(packed is not None)  # e.g. an int beyond 64 bits: not representable in MessagePack
    assert packed is not None  # (for the type checker)
    prices = {"cpu": 5, "x" * 128: 7}
    assert_valid_outcome(Decoder(prices).decode({b"type": type_, b"data": packed}))


@FUZZ
@given(
    st.lists(entries(), max_size=12), st.integers(1, 200), st.integers(1, 1200), st.integers(1, 130)
)
def test_decode_records_agrees_with_decode(
    batch: list[dict[Any, Any]], max_kb: int, max_lines: int, max_id: int
) -> None:
    for decoder in (Decoder(), Decoder({"cpu": 3}, Limits(max_kb * 100, max_lines, max_id))):
        records = [Record(Position(i + 1, 0), fields) for i, fields in enumerate(batch)]
        events, dead = decoder.decode_records(records)
        expected_events = []
        expected_dead = []
        for record in records:
            match decoder.decode(record.fields):
                case Success(event):
                    expected_events.append((record.position, event))
                case Failure(reason):
                    expected_dead.append(DeadLetter(record.position, record.fields, reason))
        assert events == expected_events
        assert dead == expected_dead


@settings(max_examples=150, deadline=None)
@given(histories(max_size=20), st.data())
def test_flipping_any_byte_of_a_snapshot_is_detected(
    history: list[Event], data: st.DataObject
) -> None:
    tally = SHOP.folder(EMPTY).fold(history)
    snapshot = Snapshot(fold(history), Position(9, 3), len(history), 0, tally, ANCHOR)
    blob = bytearray(encode_snapshot(snapshot, SHOP))
    assert decode_snapshot(bytes(blob), SHOP, None) == Success(snapshot)  # not vacuous
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))
    result = decode_snapshot(bytes(blob), SHOP, None)
    assert isinstance(result, Failure) or result == Success(snapshot)


@settings(max_examples=100, deadline=None)
@given(histories(max_size=20), st.data())
def test_truncated_or_extended_snapshot_is_rejected(
    history: list[Event], data: st.DataObject
) -> None:
    tally = SHOP.folder(EMPTY).fold(history)
    snapshot = Snapshot(fold(history), Position(1, 0), len(history), 0, tally, ANCHOR)
    blob = encode_snapshot(snapshot, SHOP)
    assert decode_snapshot(blob, SHOP, None) == Success(snapshot)
    cut = data.draw(st.integers(0, len(blob) - 1))
    assert isinstance(decode_snapshot(blob[:cut], SHOP, None), Failure)
    extended = blob + data.draw(st.binary(min_size=1, max_size=4))
    assert isinstance(decode_snapshot(extended, SHOP, None), Failure)


@FUZZ
@given(st.binary(max_size=200))
def test_decode_snapshot_of_random_bytes_never_raises(blob: bytes) -> None:
    for candidate in (blob, b"SHOPSNAP\n" + blob):
        result = decode_snapshot(candidate, SHOP, None)
        assert isinstance(result, Failure)
        assert result.failure()

"""Hostile input through the runner: zero crashes, every malformed entry dead-lettered
exactly once with a reason, and the final state equal to the fold of the valid
events alone; the memory limits (entry size, order lines, id length) each give
a dead letter with a clear reason.

Entries are built as raw ``bytes -> bytes`` fields. Each hostile entry is
invalid by construction (a required field dropped, an unexpected one added, a
float/bool/negative/beyond-2**63 number, an id empty or too long, bad lines,
unknown type or version, broken JSON or MessagePack, non-UTF-8 bytes, an entry
over the size limit); valid events cover the whole valid range (ids of 128
characters, amounts up to 2**63 - 1, orders of up to 1,000 lines), sometimes
with extra tolerated entry fields. The oracle is ``fold`` of the valid
:class:`Event` values we generated, not a decode of the log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import fold_digest, run_to_idle, stream_keys

from shop_adapters.embedded_redis import RedisServer
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.protocols import EventLog, Position, SnapshotStore
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.wire import Limits, encode_event
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_adapters.snapshots.redis import RedisSnapshotStore
from shop_core import MAX_INT, MAX_ORDER_LINES, Event, Order
from shop_core.strategies import events

Fields = dict[bytes, bytes]

BAD_NUMBERS = st.one_of(
    st.sampled_from([-1, -(2**63), 2**63, 2**64 - 1, 2**64, 2**64 + 1, 10**30, 2**200]),
    st.integers(max_value=-1),
    st.integers(min_value=MAX_INT + 1),
    st.floats(),
    st.booleans(),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=2),
)
BAD_IDS = st.one_of(
    st.just(""),
    st.integers(129, 5_000).map(lambda n: "x" * n),
    st.integers(129, 300).map(lambda n: "é" * n),
    st.integers(),
    st.lists(st.text(max_size=2), max_size=2),
)
REQUIRED = {
    "TopUp": ("user_id", "amount"),
    "AddItem": ("item_id", "count"),
    "Order": ("user_id", "lines"),
}
NUMERIC = {"TopUp": ("user_id", "amount"), "AddItem": ("count", "price"), "Order": ("user_id",)}


def v1(etype: str, data: Any) -> Fields:
    return {b"type": etype.encode(), b"v": b"1", b"data": json.dumps(data).encode()}


def data_of(event: Event) -> tuple[str, dict[str, Any]]:
    fields = encode_event(event)
    return fields["type"].decode(), json.loads(fields["data"])


@st.composite
def hostile(draw: st.DrawFn) -> Fields:
    """One entry that must be dead-lettered."""
    etype, data = data_of(draw(events()))
    kind = draw(
        st.sampled_from(
            [
                "drop",
                "extra",
                "number",
                "id",
                "lines",
                "null",
                "type",
                "version",
                "no-type",
                "no-data",
                "bytes",
                "v0",
                "huge",
                "garbage",
            ]
        )
    )
    if kind == "drop":
        del data[draw(st.sampled_from(REQUIRED[etype]))]
    elif kind == "extra":
        data[draw(st.sampled_from(["extra", "amount_cents", "ID", "lines2", "Type"]))] = 1
    elif kind == "number":
        bad = draw(BAD_NUMBERS)
        if etype == "Order" and draw(st.booleans()):
            lines = data["lines"]
            lines[draw(st.integers(0, len(lines) - 1))][1] = bad
        else:
            data[draw(st.sampled_from(NUMERIC[etype]))] = bad
    elif kind == "id":
        bad_id = draw(BAD_IDS)
        if etype == "AddItem":
            data["item_id"] = bad_id
        elif etype == "Order":
            if draw(st.booleans()):
                data["order_id"] = bad_id
            else:
                data["lines"][0][0] = bad_id
        else:
            data["user_id"] = str(bad_id)
    elif kind == "lines":
        etype = "Order"
        data = {
            "user_id": 1,
            "lines": draw(
                st.sampled_from(
                    [[], "cpu", [["cpu"]], [["cpu", 1, 2]], [{"cpu": 1}], [["cpu", 1]] * 1001]
                )
            ),
        }
        if draw(st.booleans()) and isinstance(data["lines"], list) and len(data["lines"]) > 1:
            data["lines"] = [["cpu", 1]] * draw(st.integers(MAX_ORDER_LINES + 1, 3_000))
    elif kind == "null":
        data[draw(st.sampled_from(REQUIRED[etype]))] = None
    fields = v1(etype, data)
    if kind == "type":
        fields[b"type"] = draw(
            st.binary(max_size=12).filter(lambda t: t not in {b"TopUp", b"AddItem", b"Order"})
        )
    elif kind == "version":
        fields[b"v"] = draw(st.sampled_from([b"0", b"2", b"", b"1.0", b"01", b"\xff", b"one"]))
    elif kind == "no-type":
        del fields[b"type"]
    elif kind == "no-data":
        del fields[b"data"]
    elif kind == "bytes":
        fields[b"data"] = draw(
            st.one_of(
                st.sampled_from(
                    [b"", b"{", b"[]", b"null", b"42", b'"x"', b"\xff\xfe", b'{"user_id":1,}']
                ),
                st.binary(max_size=40).map(lambda b: b"\xff" + b),  # never UTF-8
                st.just(fields[b"data"][:-1]),  # truncated JSON
                st.just(fields[b"data"].decode().encode("utf-16")),
            )
        )
    elif kind == "v0":
        del fields[b"v"]
        fields[b"type"] = draw(st.sampled_from([b"TopUp", b"AddItem", b"OrderType"]))
        fields[b"data"] = draw(
            st.one_of(
                st.sampled_from([b"\xc1", b"\x81", b"\xdc\xff\xff", b""]),
                st.just(msgpack.packb({"UserID": -1, "Amount": 1, "ItemID": "a", "Count": 1})),
                st.just(msgpack.packb([1, 2, 3])),
                st.just(msgpack.packb({"UserID": 1, "ItemIDs": ["a", "b"], "ItemQuantities": [1]})),
            )
        )
    elif kind == "huge":
        fields[b"pad"] = b"x" * draw(st.integers(65_536, 200_000))
    elif kind == "garbage":
        fields = draw(
            st.dictionaries(st.binary(max_size=8), st.binary(max_size=30), max_size=5).filter(
                lambda f: f.get(b"type") not in {b"TopUp", b"AddItem", b"Order", b"OrderType"}
            )
        )
        fields[b"type"] = b"\x00garbage"
    return fields


def big_order() -> st.SearchStrategy[Event]:
    return st.integers(1, MAX_ORDER_LINES).map(
        lambda n: Order(1, tuple((f"item-{i % 7}", 1) for i in range(n)))
    )


VALID_EVENT = st.one_of(events(), events(), events(), big_order())


@st.composite
def valid(draw: st.DrawFn) -> tuple[Event, Fields]:
    event = draw(VALID_EVENT)
    fields: Fields = {k.encode(): v for k, v in encode_event(event).items()}
    if draw(st.integers(0, 9)) == 0:  # tolerated extra entry fields
        fields[draw(st.sampled_from([b"trace", b"\xff\xfe", b"idempotency-key"]))] = draw(
            st.binary(max_size=20)
        )
    return event, fields


MIXED = st.lists(st.one_of(valid(), hostile().map(lambda f: (None, f))), min_size=1, max_size=40)


def check_run(
    log: EventLog, store: SnapshotStore, mixed: list[tuple[Event | None, Fields]], **kw: Any
) -> None:
    positions = log.append(list(f for _, f in mixed))  # type: ignore[arg-type]
    good = [e for e, _ in mixed if e is not None]
    bad = [p for p, (e, _) in zip(positions, mixed, strict=True) if e is None]
    config = RunnerConfig(progress=False, progress_interval=None, block_ms=10, **kw)
    summary = Runner(log, store, ShopDomain(), config).run(exit_when_idle=True)
    assert summary.digest == fold_digest(good)
    assert summary.total_records - summary.total_dead_letters == len(good)
    assert summary.total_records == len(mixed)
    assert summary.total_dead_letters == len(bad)
    letters = log.dead_letters()
    assert [d.position for d in letters] == bad
    assert all(d.reason.strip() for d in letters)
    for d, (_e, f) in zip(letters, [m for m in mixed if m[0] is None], strict=True):
        assert dict(d.fields) == f, f"dead letter at {d.position} does not keep the raw entry"
    # Replaying from scratch (a crash before any snapshot) dead-letters nothing twice.
    again = Runner(
        log,
        store,
        ShopDomain(),
        RunnerConfig(progress=False, progress_interval=None, from_scratch=True, **kw),
    ).run(exit_when_idle=True)
    assert again.digest == summary.digest
    assert [d.position for d in log.dead_letters()] == bad


FUZZ = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(mixed=MIXED, every=st.sampled_from([1, 3, 1000]), batch=st.sampled_from([1, 7, 100]))
def test_hostile_entries_through_the_runner_over_a_memory_log(
    mixed: list[tuple[Event | None, Fields]], every: int, batch: int
) -> None:
    check_run(MemoryLog(), MemorySnapshotStore(), mixed, snapshot_every=every, batch_size=batch)


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(data_dir=tmp_path_factory.mktemp("hostile-redis")) as server:
        yield server


_counter = iter(range(1_000_000))


@pytest.mark.redis
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(mixed=MIXED)
def test_hostile_entries_through_the_runner_over_a_redis_stream(
    hostile_server: RedisServer, mixed: list[tuple[Event | None, Fields]]
) -> None:
    stream = f"hostile:{next(_counter)}"
    client: redis.Redis = hostile_server.client(socket_timeout=None)
    try:
        client.delete(*stream_keys(stream))
        check_run(
            RedisStreamLog(client, stream),
            RedisSnapshotStore(client, f"{stream}:snapshot"),
            mixed,
            snapshot_every=5,
            batch_size=4,
        )
        client.delete(*stream_keys(stream))
    finally:
        client.close()


# --- limits that protect memory -------------------------------------------------------------


def over_limit_entries(limits: Limits) -> list[tuple[Fields, str]]:
    """One entry per limit, just over it, with the reason fragment it must get."""
    lines = [["cpu", 1]] * (limits.max_lines + 1)
    return [
        (
            {
                b"type": b"TopUp",
                b"v": b"1",
                b"data": b'{"user_id":1,"amount":1}',
                b"pad": b"x" * limits.max_entry_bytes,
            },
            f"bytes of fields, limit {limits.max_entry_bytes}",
        ),
        (
            v1("Order", {"user_id": 1, "lines": lines}),
            f"too many lines: Order.lines has {limits.max_lines + 1}, at most {limits.max_lines}",
        ),
        (
            {
                b"type": b"OrderType",
                b"data": msgpack.packb(
                    {
                        "UserID": 1,
                        "ItemIDs": ["a"] * (limits.max_lines + 1),
                        "ItemQuantities": [1] * (limits.max_lines + 1),
                    }
                ),
            },
            "too many lines",
        ),
        (
            v1("AddItem", {"item_id": "i" * (limits.max_id_length + 1), "count": 1}),
            f"{limits.max_id_length + 1}",
        ),
        (
            v1("Order", {"user_id": 1, "lines": [["o" * (limits.max_id_length + 1), 1]]}),
            f"{limits.max_id_length + 1}",
        ),
        (
            v1(
                "Order",
                {"user_id": 1, "lines": [["a", 1]], "order_id": "o" * (limits.max_id_length + 1)},
            ),
            f"{limits.max_id_length + 1}",
        ),
    ]


@pytest.mark.parametrize(
    "limits",
    [Limits(), Limits(max_entry_bytes=2_000, max_lines=10, max_id_length=16)],
    ids=["default", "tight"],
)
def test_each_memory_limit_gives_a_dead_letter_with_a_clear_reason(limits: Limits) -> None:
    log = MemoryLog()
    at_limit = [
        v1("Order", {"user_id": 1, "lines": [["a", 1]] * min(limits.max_lines, 200)}),
        v1("AddItem", {"item_id": "a" * limits.max_id_length, "count": 1, "price": 1}),
    ]
    bad = over_limit_entries(limits)
    log.append([*at_limit, *(f for f, _ in bad)])  # type: ignore[list-item]
    summary = Runner(
        log, MemorySnapshotStore(), ShopDomain(limits=limits), RunnerConfig(progress=False)
    ).run(exit_when_idle=True)
    assert summary.records - summary.dead_letters == len(at_limit)
    assert summary.dead_letters == len(bad)
    letters = log.dead_letters()
    assert [d.position for d in letters] == [Position(3 + i, 0) for i in range(len(bad))]
    for letter, (_, reason) in zip(letters, bad, strict=True):
        assert reason in letter.reason, (reason, letter.reason)
    id_reasons = [d.reason for d in letters[3:]]
    assert all("too long" in r or "characters" in r for r in id_reasons), id_reasons


@pytest.mark.redis
def test_memory_limits_through_the_cli_runner_on_redis(hostile_server: RedisServer) -> None:
    stream = "hostile:limits"
    client = hostile_server.client()
    client.delete(*stream_keys(stream))
    bad = over_limit_entries(Limits())
    ids = [client.xadd(stream, f) for f, _ in bad]  # type: ignore[arg-type]
    summary = run_to_idle(hostile_server.url, stream, "--lease-ttl", "1")
    assert summary["total_dead_letters"] == len(bad)
    letters = RedisStreamLog(client, stream).dead_letters()
    assert [str(d.position) for d in letters] == [i.decode() for i in ids]
    for letter, (_, reason) in zip(letters, bad, strict=True):
        assert reason in letter.reason
        assert reason[:60] in summary["_stderr"] or reason in summary["_stderr"]
    client.delete(*stream_keys(stream))
    client.close()

"""The price list is tied to the snapshot: a snapshot records its decoder's
``config_digest``, and a runner or ``inspect`` with another price list rebuilds
by replay instead of continuing a state folded with other prices."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from returns.result import Success

from shop_adapters import inspect as inspect_cli
from shop_adapters.codec import (
    Decoder,
    Snapshot,
    decode_snapshot,
    encode_event,
    encode_event_v0,
    encode_snapshot,
    price_list_digest,
)
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.protocols import Position
from shop_adapters.runner import Runner, index_records_total
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_adapters.snapshots.redis import RedisSnapshotStore
from shop_core import AddItem, Order, TopUp, fold, state_digest

PRICES = {"cpu": 100}
ENTRIES: list[Any] = [
    encode_event(TopUp(7, 1_000)),
    encode_event_v0(AddItem("cpu", 3)),
    encode_event(Order(7, (("cpu", 2),))),
]
PRICED = fold([TopUp(7, 1_000), AddItem("cpu", 3, 100), Order(7, (("cpu", 2),))])
UNPRICED = fold([TopUp(7, 1_000), AddItem("cpu", 3), Order(7, (("cpu", 2),))])


def test_the_digest_is_canonical_and_none_without_a_price_list() -> None:
    assert Decoder().config_digest is None
    assert Decoder({"a": 1, "b": 2}).config_digest == Decoder({"b": 2, "a": 1}).config_digest
    assert Decoder({"a": 1}).config_digest != Decoder({"a": 2}).config_digest
    assert Decoder({}).config_digest == price_list_digest({}) is not None


def test_the_snapshot_header_carries_the_digest_and_old_snapshots_read_as_none() -> None:
    digest = Decoder(PRICES).config_digest
    blob = encode_snapshot(Snapshot(PRICED, Position(3, 0), 3, decoder_digest=digest))
    assert f'"decoder_digest":"{digest}"'.encode() in blob
    decoded = decode_snapshot(blob)
    assert isinstance(decoded, Success) and decoded.unwrap().decoder_digest == digest
    old = encode_snapshot(Snapshot(PRICED, Position(3, 0), 3))  # as before the field existed
    assert b"decoder_digest" not in old
    decoded_old = decode_snapshot(old)
    assert isinstance(decoded_old, Success) and decoded_old.unwrap().decoder_digest is None


def test_a_malformed_digest_is_a_corrupt_snapshot() -> None:
    blob = encode_snapshot(Snapshot(PRICED, Position(3, 0), 3, decoder_digest="0" * 64))
    # Rebuild the checksum around a bad digest: the header check must refuse it.
    import hashlib

    payload = blob[: blob.rindex(b"\nsha256:")].replace(b'"' + b"0" * 64 + b'"', b'"ZZ"')
    forged = payload + b"\nsha256:" + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    result = decode_snapshot(forged)
    assert not isinstance(result, Success)
    assert "decoder_digest" in str(result.failure())


def run(log: MemoryLog, store: MemorySnapshotStore, decoder: Decoder) -> Any:
    return Runner(log, store, decoder, progress=False, records_total=index_records_total(log)).run(
        exit_when_idle=True
    )


def test_a_restart_with_another_price_list_rebuilds_by_replay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = MemoryLog()
    log.append(ENTRIES)
    store = MemorySnapshotStore()
    first = run(log, store, Decoder(PRICES))
    assert first.digest == state_digest(PRICED)
    caplog.set_level(logging.WARNING)
    for decoder, expected in ((Decoder(), UNPRICED), (Decoder({"cpu": 5}), None)):
        caplog.clear()
        summary = run(log, store, decoder)
        assert summary.restored_from is None  # set aside, not continued
        want = (
            expected
            if expected is not None
            else fold([TopUp(7, 1_000), AddItem("cpu", 3, 5), Order(7, (("cpu", 2),))])
        )
        assert summary.digest == state_digest(want)
        assert any(
            "snapshot was folded with another price list" in r.getMessage()
            and "rebuilding by replay" in r.getMessage()
            for r in caplog.records
        )
        blob = store.read()
        assert blob is not None
        assert decode_snapshot(blob).unwrap().decoder_digest == decoder.config_digest
    # The same price list again: the snapshot is reused.
    again = run(log, store, Decoder({"cpu": 5}))
    assert again.restored_from is not None


@pytest.mark.redis
def test_inspect_says_when_its_price_list_differs_from_the_snapshots(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Any
) -> None:
    prices = tmp_path / "p.json"
    prices.write_text('{"cpu": 100}')
    other = tmp_path / "other.json"
    other.write_text('{"cpu": 7}')
    log = RedisStreamLog(redis_client, "orders")
    log.append(ENTRIES)
    store = RedisSnapshotStore(redis_client, "orders:snapshot")
    Runner(log, store, Decoder(PRICES), progress=False).run(exit_when_idle=True)
    url = ["--redis-url", redis_server.url]
    cli = CliRunner()
    ok = cli.invoke(inspect_cli.cli, [*url, "--price-list", str(prices), "verify"])
    assert ok.exit_code == 0, ok.output
    for extra in ([], ["--price-list", str(other)]):
        bad = cli.invoke(inspect_cli.cli, [*url, *extra, "verify"])
        assert bad.exit_code == 1
        assert "snapshot was folded with another price list" in bad.output
        shown = cli.invoke(inspect_cli.cli, [*url, *extra, "state", "--json"])
        assert shown.exit_code == 0, shown.output
        assert "snapshot was folded with another price list" in shown.output
        assert "rebuilding by replay" in shown.output
    unpriced = cli.invoke(inspect_cli.cli, [*url, "state", "--json"])
    assert '"digest": "' + state_digest(UNPRICED) + '"' in unpriced.output

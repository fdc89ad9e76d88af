"""The price list is tied to the snapshot: a snapshot records its decoder's
``config_digest``, and a runner or ``inspect`` with another price list rebuilds
by replay instead of continuing a state folded with other prices."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from returns.result import Success

from shop_adapters import inspector
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.envelope import Snapshot, decode_snapshot, encode_snapshot
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.protocols import Position
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.wire import Decoder, encode_event, encode_event_v0
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


ANCHOR = "c0" * 20


def sha256_of_json(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def test_the_digest_is_canonical_and_none_without_a_price_list() -> None:
    assert Decoder().config_digest is None
    assert Decoder({"a": 1, "b": 2}).config_digest == Decoder({"b": 2, "a": 1}).config_digest
    assert Decoder({"a": 1, "b": 2}).config_digest == sha256_of_json('{"a":1,"b":2}')
    assert Decoder({"a": 1}).config_digest != Decoder({"a": 2}).config_digest
    assert Decoder({}).config_digest == sha256_of_json("{}")
    assert ShopDomain(PRICES).config_digest == Decoder(PRICES).config_digest
    assert ShopDomain(PRICES).decoder.config_digest == sha256_of_json('{"cpu":100}')
    assert ShopDomain().config_digest is None


def test_describe_config_names_the_price_list_in_a_few_words() -> None:
    digest = sha256_of_json('{"cpu":100}')
    assert ShopDomain().describe_config(None) == "no price list"
    assert ShopDomain().describe_config(digest) == f"price list sha256:{digest[:12]}"


def test_the_snapshot_header_carries_the_digest_and_a_snapshot_without_one_is_not_reused() -> None:
    digest = Decoder(PRICES).config_digest
    assert digest is not None
    snapshot = Snapshot(PRICED, Position(3, 0), 3, anchor=ANCHOR)
    blob = encode_snapshot(snapshot, ShopDomain(PRICES))
    assert f'"config_digest":"{digest}"'.encode() in blob
    decoded = decode_snapshot(blob, ShopDomain(PRICES), None)
    assert decoded == Success(snapshot)
    unpriced = encode_snapshot(snapshot, ShopDomain())
    assert b'"config_digest":null' in unpriced
    assert decode_snapshot(unpriced, ShopDomain(), None) == Success(snapshot)
    refused = decode_snapshot(unpriced, ShopDomain(PRICES), None)
    assert not isinstance(refused, Success)
    assert refused.failure() == (
        "snapshot was folded with another configuration (snapshot: no price list, "
        f"running: price list sha256:{digest[:12]})"
    )


def test_a_malformed_digest_is_a_corrupt_snapshot() -> None:
    priced = ShopDomain({"cpu": 1})
    digest = priced.config_digest
    assert digest is not None
    blob = encode_snapshot(Snapshot(PRICED, Position(3, 0), 3, anchor=ANCHOR), priced)
    # Rebuild the checksum around a bad digest: the header check must refuse it.
    payload = blob[: blob.rindex(b"\nsha256:")].replace(digest.encode(), b"ZZ")
    forged = payload + b"\nsha256:" + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    result = decode_snapshot(forged, priced, None)
    assert not isinstance(result, Success)
    assert "config_digest must be 64 lowercase hex digits" in str(result.failure())


def run(log: MemoryLog, store: MemorySnapshotStore, domain: ShopDomain) -> Any:
    return Runner(log, store, domain, RunnerConfig(progress=False)).run(exit_when_idle=True)


def test_a_restart_with_another_price_list_rebuilds_by_replay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = MemoryLog()
    log.append(ENTRIES)
    store = MemorySnapshotStore()
    first = run(log, store, ShopDomain(PRICES))
    assert first.digest == state_digest(PRICED)
    caplog.set_level(logging.WARNING)
    for domain, expected in ((ShopDomain(), UNPRICED), (ShopDomain({"cpu": 5}), None)):
        caplog.clear()
        summary = run(log, store, domain)
        assert summary.restored_from is None  # set aside, not continued
        want = (
            expected
            if expected is not None
            else fold([TopUp(7, 1_000), AddItem("cpu", 3, 5), Order(7, (("cpu", 2),))])
        )
        assert summary.digest == state_digest(want)
        assert any(
            "snapshot was folded with another configuration" in r.getMessage()
            and "rebuilding by replay" in r.getMessage()
            for r in caplog.records
        )
        blob = store.read()
        assert blob is not None
        assert decode_snapshot(blob, domain).unwrap().state == want
        recorded = json.dumps(domain.config_digest)  # null or the quoted digest
        assert f'"config_digest":{recorded}'.encode() in blob
    # The same price list again: the snapshot is reused.
    again = run(log, store, ShopDomain({"cpu": 5}))
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
    Runner(log, store, ShopDomain(PRICES), RunnerConfig(progress=False)).run(exit_when_idle=True)
    url = ["--redis-url", redis_server.url]
    cli = CliRunner()
    ok = cli.invoke(inspector.cli, [*url, "--price-list", str(prices), "verify"])
    assert ok.exit_code == 0, ok.output
    for extra in ([], ["--price-list", str(other)]):
        bad = cli.invoke(inspector.cli, [*url, *extra, "verify"])
        assert bad.exit_code == 1
        assert "snapshot was folded with another configuration" in bad.output
        shown = cli.invoke(inspector.cli, [*url, *extra, "state", "--json"])
        assert shown.exit_code == 0, shown.output
        assert "set aside (snapshot was folded with another configuration" in shown.output
    unpriced = cli.invoke(inspector.cli, [*url, "state", "--json"])
    assert '"digest": "' + state_digest(UNPRICED) + '"' in unpriced.output

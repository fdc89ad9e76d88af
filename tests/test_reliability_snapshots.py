"""Snapshot faults: whatever sits under the snapshot key (truncated, a flipped
byte, another format, a stale semantics version, a crafted pickle) is set aside
with a clear WARNING and the state is rebuilt by replay; nothing in it is ever
executed (the pickle's marker file is never created).

Through the runner subprocess on a real Redis, and, for a byte flip at every
offset class, through the in-process runner over memory stores (fast)."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from reliability_support import (
    MALFORMED,
    RunnerProcess,
    fold_digest,
    run_to_idle,
    runner_argv,
    stream_keys,
)

from shop_adapters.embedded_redis import RedisServer
from shop_adapters.envelope import Snapshot, encode_snapshot
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.protocols import Position
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_core import SEMANTICS_VERSION, fold

EVENTS = list(synthetic_events(1_500, users=80, items=15, seed=5))
DIGEST = fold_digest(EVENTS)


class _Touch:
    """Unpickling this calls ``open(path, "w")``: it creates the marker file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def crafted_pickle(marker: Path) -> bytes:
    blob = pickle.dumps(_Touch(marker), protocol=4)
    # The test's own check that the payload is live: loading it creates the file.
    probe = marker.with_name(marker.name + ".probe")
    pickle.loads(pickle.dumps(_Touch(probe), protocol=4)).close()
    assert probe.exists()
    probe.unlink()
    return blob


def flip(blob: bytes, offset: int) -> bytes:
    data = bytearray(blob)
    data[offset] ^= 0x20
    return bytes(data)


class FutureShop(ShopDomain):
    """The shop after a change of its rules: the same log may fold differently."""

    semantics_version = SEMANTICS_VERSION + 1


class OtherDomain(ShopDomain):
    """Another domain (with the shop's body codec, so only the name differs)."""

    name = "bank"


ANCHOR = "5a" * 20


Fault = Callable[[bytes, Path], tuple[bytes, str]]
"""(the good stored blob, a marker path) -> (bad blob, expected reason fragment)."""

FAULTS: dict[str, Fault] = {
    "truncated": lambda b, m: (b[: len(b) // 2], "truncated snapshot"),
    "truncated-in-magic": lambda b, m: (b[:4], "truncated snapshot"),
    "empty": lambda b, m: (b"", "empty snapshot"),
    "flipped-header-byte": lambda b, m: (flip(b, 30), "snapshot"),
    "flipped-body-byte": lambda b, m: (flip(b, len(b) - 100), "checksum mismatch"),
    "flipped-checksum-byte": lambda b, m: (flip(b, len(b) - 5), "checksum mismatch"),
    "wrong-format-json": lambda b, m: (
        json.dumps({"users": [], "items": []}).encode(),
        "bad magic",
    ),
    "wrong-format-version": lambda b, m: (
        b.replace(b'"format_version":2', b'"format_version":9', 1),
        "unknown snapshot format version 9",
    ),
    "format-1": lambda b, m: (
        b.replace(b'"format_version":2', b'"format_version":1', 1),
        "unknown snapshot format version 1 (this build reads 2; rebuild by replay)",
    ),
    "stale-semantics": lambda b, m: (
        encode_snapshot(Snapshot(fold(EVENTS), Position(1, 0), 1, anchor=ANCHOR), FutureShop()),
        f"stale semantics version {SEMANTICS_VERSION + 1}",
    ),
    "another-domain": lambda b, m: (
        encode_snapshot(Snapshot(fold(EVENTS), Position(1, 0), 1, anchor=ANCHOR), OtherDomain()),
        "a snapshot of the domain 'bank', not 'shop'",
    ),
    "another-price-list": lambda b, m: (
        encode_snapshot(
            Snapshot(fold(EVENTS), Position(1, 0), 1, anchor=ANCHOR), ShopDomain({"x": 1})
        ),
        "snapshot was folded with another configuration (snapshot: price list sha256:",
    ),
    "crafted-pickle": lambda b, m: (crafted_pickle(m), "looks like a pickle; never unpickled"),
}


@pytest.fixture(scope="module")
def snap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(data_dir=tmp_path_factory.mktemp("snap-redis")) as server:
        yield server


@pytest.mark.redis
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_bad_snapshot_is_set_aside_and_the_state_rebuilt_by_replay(
    snap_server: RedisServer, fault: str, tmp_path: Path
) -> None:
    stream = f"snap:{fault}"
    client: redis.Redis = snap_server.client()
    client.delete(*stream_keys(stream))
    pipe = client.pipeline(transaction=False)
    for e in EVENTS:
        pipe.xadd(stream, encode_event(e))  # type: ignore[arg-type]
    pipe.xadd(stream, MALFORMED[0])  # type: ignore[arg-type]
    pipe.execute()
    first = run_to_idle(snap_server.url, stream, "--lease-ttl", "1")
    assert first["digest"] == DIGEST
    good = client.hget(f"{stream}:snapshot", b"blob")
    assert isinstance(good, bytes)
    marker = tmp_path / "pwned"
    bad, reason = FAULTS[fault](good, marker)
    client.hset(f"{stream}:snapshot", b"blob", bad)

    summary = run_to_idle(snap_server.url, stream, "--lease-ttl", "1")

    err = summary["_stderr"]
    warnings = [line for line in err.splitlines() if "snapshot set aside" in line]
    assert len(warnings) == 1 and reason in warnings[0], err[-3000:]
    assert "rebuilding by replay" in warnings[0]
    assert summary["restored_from"] is None
    assert summary["digest"] == DIGEST  # = from scratch
    assert summary["records"] - summary["dead_letters"] == len(EVENTS)
    assert summary["total_dead_letters"] == 1
    assert client.xlen(f"{stream}:dead") == 1  # the replay did not dead-letter it twice
    assert not marker.exists(), "the snapshot's pickle was executed"
    # The rebuilt state was written back as a good snapshot.
    assert client.hget(f"{stream}:snapshot", b"blob") == good
    client.delete(*stream_keys(stream))
    client.close()


def test_every_byte_flip_of_a_snapshot_is_rebuilt_by_replay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Flip each byte (strided) of a stored snapshot: the in-process runner sets it
    aside with a WARNING and ends with the from-scratch digest."""
    log = MemoryLog()
    log.append([encode_event(e) for e in EVENTS[:300]])  # type: ignore[misc]
    store = MemorySnapshotStore()
    Runner(log, store, ShopDomain(), RunnerConfig(progress=False)).run(exit_when_idle=True)
    good = store.read()
    assert good is not None
    expected = fold_digest(EVENTS[:300])
    offsets = sorted({*range(0, len(good), 7), len(good) - 1})
    caplog.set_level(logging.WARNING, logger="shop.runner")
    for offset in offsets:
        store.write(flip(good, offset))
        caplog.clear()
        summary = Runner(log, store, ShopDomain(), RunnerConfig(progress=False)).run(
            exit_when_idle=True
        )
        assert summary.digest == expected, f"offset {offset}"
        assert summary.restored_from is None, f"offset {offset}: a corrupt snapshot was used"
        assert any("snapshot set aside" in r.getMessage() for r in caplog.records), offset
        assert store.read() == good


@pytest.mark.redis
def test_a_pickle_stored_as_a_plain_string_key_stops_the_runner_loudly(
    snap_server: RedisServer, tmp_path: Path
) -> None:
    """Not a hash at all: the store cannot read or write there; exit 1, naming the key."""
    stream = "snap:string-key"
    client: redis.Redis = snap_server.client()
    client.delete(*stream_keys(stream))
    client.xadd(stream, encode_event(EVENTS[0]))  # type: ignore[arg-type]
    marker = tmp_path / "pwned"
    client.set(f"{stream}:snapshot", crafted_pickle(marker))
    argv = runner_argv(snap_server.url, stream, "--exit-when-idle", "--lease-ttl", "1")
    with RunnerProcess(argv) as proc:
        code, _out, err = proc.finish(60)
    assert code == 1, err[-3000:]
    assert f"snapshot key '{stream}:snapshot' holds a value that is not a hash" in err
    assert "Traceback" not in err
    assert not marker.exists()
    client.delete(*stream_keys(stream))
    client.close()

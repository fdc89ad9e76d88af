"""File-log faults through the runner (``tests/test_logs.py`` covers the log alone).

- A torn tail at every byte offset of the last record (whose item id is
  multi-byte UTF-8, so some cuts fall inside a character): the runner folds
  exactly the intact prefix (and leaves the file alone: a reader never
  truncates), then, once the producer's next append has truncated the torn
  tail, the rewritten record once.
- A snapshot that has seen a record the log has since lost (torn away) is
  refused loudly, never folded over.
- A corrupt record in the middle stops everything before the runner folds.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from reliability_support import fold_digest

from shop_adapters.errors import IntegrityError
from shop_adapters.logs.file import FileLog, TornRecordWarning
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.file import FileSnapshotStore
from shop_core import AddItem, Event, Order, TopUp

HEAD: list[Event] = [
    *synthetic_events(40, users=5, items=3, seed=3),
    TopUp(1, 10_000),
    AddItem("€uro-Ω", 5, 7),
]
LAST = Order(1, (("€uro-Ω", 2),), "ordre-€-1")


def write(path: Path, events: list[Event]) -> None:
    with FileLog(path) as log:
        log.append([encode_event(e) for e in events])  # type: ignore[misc]


def run(path: Path, snap: Path, **kw: Any) -> tuple[str, int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TornRecordWarning)
        log = FileLog(path)
    with log:
        summary = Runner(
            log, FileSnapshotStore(snap), ShopDomain(), RunnerConfig(progress=False, **kw)
        ).run(exit_when_idle=True)
        events = summary.total_records - summary.total_dead_letters
        return summary.digest, events, len(log.dead_letters())


def test_torn_tail_at_every_byte_is_folded_as_the_intact_prefix_then_the_record_once(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source.log"
    write(source, HEAD)
    start = source.stat().st_size
    write(source, [LAST])
    data = source.read_bytes()
    euro = data.index("€".encode(), start)
    assert start < euro < len(data)
    for cut in range(start, len(data)):
        path = tmp_path / f"cut-{cut}.log"
        snap = tmp_path / f"cut-{cut}.snap"
        path.write_bytes(data[:cut])
        assert run(path, snap, snapshot_every=7) == (fold_digest(HEAD), len(HEAD), 0), cut
        assert path.stat().st_size == cut, f"cut {cut}: a reader changed the file"
        if cut == start:
            write(path, [LAST])  # the producer retries its append
        else:  # ... and its append truncates the torn tail first
            with pytest.warns(TornRecordWarning, match=f"byte offset {start}"):
                write(path, [LAST])
        assert path.stat().st_size == len(data), f"cut {cut}: torn tail not truncated"
        assert run(path, snap) == (fold_digest([*HEAD, LAST]), len(HEAD) + 1, 0), cut
        path.unlink()
        snap.unlink()


def test_a_snapshot_past_a_torn_away_record_is_refused(tmp_path: Path) -> None:
    path, snap = tmp_path / "orders.log", tmp_path / "orders.snap"
    write(path, [*HEAD, LAST])
    assert run(path, snap)[1] == len(HEAD) + 1  # snapshot at the last record
    data = path.read_bytes()
    path.write_bytes(data[:-3])  # the last record is now torn: the log lost it
    with pytest.raises(
        IntegrityError, match=r"folded up to 43-0 but the log ends at 42-0: the log was rolled back"
    ):
        run(path, snap)


def test_a_corrupt_middle_record_stops_before_anything_is_folded(tmp_path: Path) -> None:
    path, snap = tmp_path / "orders.log", tmp_path / "orders.snap"
    write(path, HEAD[:10])
    middle = path.stat().st_size
    write(path, HEAD[10:])
    data = bytearray(path.read_bytes())
    data[middle + 12] ^= 0x01  # inside the payload of record 11
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=rf"byte offset {middle}\b"):
        run(path, snap)
    assert not snap.exists()
    assert path.read_bytes() == bytes(data)

"""A producer interrupted by the log says how much landed, and never appends twice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from shop_adapters.errors import OperationalError
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.producer import AppendInterrupted, append_events
from shop_adapters.protocols import Position
from shop_adapters.shop_domain.workload import synthetic_events


class _FailsOnThirdAppend(MemoryLog):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def append(self, entries: Sequence[Mapping[str | bytes, str | bytes | int]]) -> list[Position]:
        self.calls += 1
        if self.calls == 3:
            raise OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        return super().append(entries)


def test_an_interrupted_append_reports_what_landed_and_retries_nothing() -> None:
    log = _FailsOnThirdAppend()
    with pytest.raises(AppendInterrupted) as info:
        append_events(log, synthetic_events(5_000, 50, 5, seed=1), chunk=1_000, progress=False)
    err = info.value
    assert (err.appended, err.in_flight, err.last) == (2_000, 1_000, Position(2_000, 0))
    assert "2000 entries were appended before the failure (last at 2000-0)" in str(err)
    assert "the chunk of 1000 being written may or may not have landed" in str(err)
    assert ".." not in str(err)
    assert log.calls == 3  # no retry of the failed chunk
    assert log.last_position() == Position(2_000, 0)

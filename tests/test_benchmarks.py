"""The replay-vs-snapshot benchmark runs end to end on tiny sizes and checks its own answer.

Correctness only: the run completes, every digest (replay, restore, peer, RSS
child, runner) equals the reference, and the report, JSON and plot are written.
No timing is asserted here; speeds are reported by the benchmark itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.replay_vs_snapshot import main, parse_sizes
from shop_adapters.embedded_redis import RedisServer

pytestmark = pytest.mark.redis


def test_parse_sizes_reads_suffixes_and_sorts() -> None:
    assert parse_sizes("1M, 10k,500") == [500, 10_000, 1_000_000]


def test_benchmark_runs_on_tiny_sizes_and_digests_agree(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    out = tmp_path / "results"
    code = main(
        [
            "--sizes",
            "500,2000",
            "--backends",
            "memory,file,redis",
            "--peer-max",
            "500",
            "--repeat",
            "1",
            "--snapshot-every",
            "500",
            "--redis-url",
            redis_server.url,
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    report = (out / "latest.md").read_text()
    data = json.loads((out / "latest.json").read_text())
    png = (out / "replay_vs_restore.png").read_bytes()

    assert png.startswith(b"\x89PNG")
    assert data["failures"] == []
    assert {(r["backend"], r["n"]) for r in data["runs"]} == {
        (b, n) for b in ("memory", "file", "redis") for n in (500, 2000)
    }
    for run in data["runs"]:
        assert run["ok"]
        assert run["replay_digest"] == run["restore_digest"] == run["expected_digest"]
    assert {p["persistence"] for p in data["peers"]} == {"popo", "sqlite"}
    assert all(p["ok"] for p in data["peers"])
    assert {rss["backend"] for rss in data["memory"]["rss"]} == {"file", "redis"}
    assert data["memory"]["state"]["users"] > 0
    assert [r["snapshot_every"] for r in data["writer"]["runs"]] == [None, 500]
    # How many background writes land is timing-dependent (a slot of one, latest wins).
    assert data["writer"]["runs"][1]["snapshots_submitted"] == 2000 // 500
    assert "all digests equal" in report
    assert "## Targets" in report
    assert "replay_vs_restore.png" in report

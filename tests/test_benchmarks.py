"""The benchmarks run end to end on tiny sizes and check their own answers.

Correctness only: every part completes, every digest (replay with the journal
on and off, restore, breakdown, peer, child processes, the snapshot writers,
keys, time travel, the big state, the live runner processes) equals the
reference, and the report, JSON and plot are written. No timing is asserted
here; speeds are reported by the benchmarks themselves.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import pytest

import benchmarks.live
import benchmarks.replay_report
import benchmarks.replay_vs_snapshot
import benchmarks.time_travel
from benchmarks._stages import staged_replay
from benchmarks.idempotency_keys import measure_keys
from benchmarks.replay_vs_snapshot import RESULTS, main, options, parse_sizes
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.journals import MemoryOutcomeJournal
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_core import fold, state_digest


def test_parse_sizes_reads_suffixes_and_sorts() -> None:
    assert parse_sizes("1M, 10k,500") == [500, 10_000, 1_000_000]


@pytest.mark.parametrize(
    "module",
    [benchmarks.replay_vs_snapshot, benchmarks.time_travel, benchmarks.live],
)
def test_docstring_examples(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]


def test_quick_writes_to_a_temporary_folder_unless_told() -> None:
    quick = options(["--quick"])
    assert quick.out != RESULTS and not quick.out.resolve().is_relative_to(RESULTS)
    assert quick.sizes == [10_000, 100_000] and quick.repeat == 1
    assert options(["--quick", "--out", "here"]).out == Path("here")
    assert options([]).out == RESULTS and options([]).sizes[-1] == 1_000_000


def test_the_shared_redis_is_refused() -> None:
    with pytest.raises(SystemExit, match="6379"):
        options(["--redis-url", "redis://127.0.0.1:6379/0"])
    with pytest.raises(SystemExit, match="6379"):
        options(["--redis-url", "redis://localhost"])


def test_no_progress_bars_when_stderr_is_not_a_terminal() -> None:
    # pytest captures stderr: it is not a terminal.
    assert options([]).progress is False
    assert options(["--progress"]).progress is True


def test_the_breakdown_adds_up_to_the_runners_time() -> None:
    log = MemoryLog()
    events = list(synthetic_events(3_000))
    entries: list[Any] = [encode_event(e) for e in events]
    log.append(entries)
    stages = staged_replay(log, batch=1_000, key_window=100, journal=MemoryOutcomeJournal())
    assert stages.records == 3_000
    assert stages.digest == state_digest(fold(events))
    us = stages.per_event_us()
    parts = us["waiting"] + us["decode"] + us["fold"] + us["bookkeeping"] + us["publish"]
    assert parts == pytest.approx(us["total"], rel=1e-6)
    assert stages.publish_s > 0 and stages.decode_s > 0 and stages.fold_s > 0


def test_keys_fold_to_the_same_state_and_a_key_has_a_size() -> None:
    events = list(synthetic_events(1_500))
    out = measure_keys(events, repeat=1, batch=500, window=1_000)
    assert out["ok"] and len(set(out["digests"].values())) == 1
    assert out["memory"]["keys"] == 1_000
    assert out["memory"]["bytes_per_key"] > 0 and out["memory"]["snapshot_bytes_per_key"] > 0


@pytest.mark.redis
def test_benchmark_runs_on_tiny_sizes_and_digests_agree(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
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
            "--big-users",
            "2000",
            "--history-every",
            "500",
            "--live-seconds",
            "0.5",
            "--live-rates",
            "200,500",
            "--redis-url",
            redis_server.url,
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "\r" not in captured.err and "\x1b[" not in captured.err  # no progress bars
    report = (out / "latest.md").read_text()
    data = json.loads((out / "latest.json").read_text())
    png = (out / "replay_vs_restore.png").read_bytes()

    assert png.startswith(b"\x89PNG")
    assert data["failures"] == []
    assert isinstance(data["meta"]["cpu"], str) and data["meta"]["cpu_seconds"]["total"] > 0
    assert {(r["backend"], r["n"]) for r in data["runs"]} == {
        (b, n) for b in ("memory", "file", "redis") for n in (500, 2000)
    }
    for run in data["runs"]:
        assert run["ok"]
        assert (
            run["replay_digest"]
            == run["journal_digest"]
            == run["restore_digest"]
            == run["expected_digest"]
        )
    assert {(row["backend"], row["journal"]) for row in data["breakdown"]} == {
        (b, j) for b in ("memory", "file", "redis") for j in (False, True)
    }
    assert {p["persistence"] for p in data["peers"]} == {"popo", "sqlite"}
    assert all(p["ok"] for p in data["peers"])
    assert {rss["backend"] for rss in data["memory"]["rss"]} == {"file", "redis"}
    assert data["memory"]["state"]["users"] > 0
    assert [r["mode"] for r in data["writer"]["runs"]] == ["none", "thread", "child"]
    assert data["writer"]["runs"][1]["snapshots_due"] == 2000 // 500
    # The forked child writes every snapshot it is handed unless one is still being written.
    assert data["writer"]["runs"][2]["snapshots_written"] >= 1
    assert data["keys"]["ok"]
    assert data["travel"]["failures"] == [] and len(data["travel"]["targets"]) == 8
    assert [c["policy"]["limit"] for c in data["travel"]["chains"]] == [12, 8]
    assert all(row["ok"] for c in data["travel"]["chains"] for row in c["rows"])
    assert data["travel"]["command"]["returncode"] == 0
    assert data["big"]["users"] == 2000 and data["big"]["failures"] == []
    assert data["big"]["rss"]["peak_end"] >= data["big"]["rss"]["peak_restored"] > 0
    live = data["live"]
    assert live["failures"] == []
    assert live["follow"]["entries"] > 0 and live["follow"]["runner_rate"] > 0
    assert [r["rate"] for r in live["latency"]] == [200, 500]
    assert all(r["measured"] > 0 for r in live["latency"])
    assert live["submit"]["statuses"].get("none", 0) == 0

    statuses = {t["name"]: t["status"] for t in data["targets"]}
    # Targets defined at 1M events (or users, or the peer at 100k) are not judged here.
    assert all(
        s.startswith("n/a at these sizes") for name, s in statuses.items() if "digest" not in name
    )
    assert not any(s == "MISSED" for s in statuses.values())
    assert "all digests equal" in report
    for heading in (
        "## Targets",
        "### Per event",
        "## A state of 2,000 users",
        "## Snapshotting on the hot path",
        "## Idempotency keys",
        "## Time travel",
        "## Peer",
        "## Live",
    ):
        assert heading in report
    assert "replay_vs_restore.png" in report


@pytest.mark.redis
def test_live_alone_writes_its_report(tmp_path: Path) -> None:
    code = benchmarks.live.main(
        ["--seconds", "0.5", "--rates", "300", "--submits", "20", "--out", str(tmp_path)]
    )
    assert code == 0
    data = json.loads((tmp_path / "live.json").read_text())
    assert data["failures"] == [] and data["latency"][0]["measured"] > 0
    assert "Append-to-outcome latency" in (tmp_path / "live.md").read_text()


def test_targets_say_na_without_results() -> None:
    from benchmarks.replay_vs_snapshot import Results

    assert benchmarks.replay_report.targets(Results(meta={})) == []

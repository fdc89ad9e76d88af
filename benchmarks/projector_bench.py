"""Benchmark: the projector against the runner on the same data, and a rebuild from 1M outcomes.

Run: ``python -m benchmarks.projector_bench [--quick] [--events N] [--rebuild-outcomes N]
[--users U] [--items I] [--seed S] [--batch-size B] [--redis-url URL] [--out FILE]``

It starts its own ``redis-server`` (``RedisServer``, no persistence; never the
one on port 6379) unless ``--redis-url`` is given. Workload:
``shop_adapters.shop_domain.workload.synthetic_events(n, users, items, seed)``.

1. **Throughput** (``--events``, default 200,000; ``--quick`` 50,000), best of
   ``--repeat`` (default 3, ``--quick`` 1): the events are appended to a
   stream, then, runs of the runner and the projector interleaved:

   - **runner**: the real :class:`~shop_adapters.runner.Runner` from scratch,
     as ``redis_runner`` runs it (``RedisStreamLog``, ``RedisSnapshotStore``,
     the outcome journal ``RedisOutcomeJournal``, final snapshot), timed by
     its own summary: records/s;
   - **projector**: :class:`~shop_adapters.projector_engine.Projector` with the
     shop's five projections from the first outcome to the last (builds
     beside, then switched in), timed by its own summary: outcomes/s, and its
     **ratio** to the runner's records/s (each record has one outcome); then
     each projection alone (``--rebuild`` of that view);
   - references: reading and decoding the journal only (``XRANGE`` batches and
     ``outcome_from_fields``), and the pure fold of the five projections over
     outcomes already decoded (no Redis).

2. **Rebuild** (``--rebuild-outcomes``, default 1,000,000; ``--quick``
   100,000): a journal of that many outcomes (appended and folded by the
   runner), its five views built once, then rebuilt with ``--rebuild`` beside
   the live ones and switched in: seconds, outcomes/s, the size of each view
   (documents and ``MEMORY USAGE``), and a check that every stored view equals
   the pure fold of the journal (the run fails otherwise).

Output: a Markdown report (default ``benchmarks/results/projector.md``), with
the machine's load average at the start and the end. Every run starts after
``gc.collect()``; figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from shop_adapters.domain import Outcome
from shop_adapters.journals import RedisOutcomeJournal
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.projections import Projection, evolve_batch, keys_of_batch
from shop_adapters.projector_engine import Projector, ProjectorConfig, decode_outcomes
from shop_adapters.protocols import ORIGIN, Position
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.shop_domain import ShopDomain, encode_event
from shop_adapters.shop_domain.projections import shop_projections
from shop_adapters.shop_domain.workload import synthetic_events
from shop_adapters.snapshots.redis import RedisSnapshotStore
from shop_adapters.view_store import RedisViewStore

from ._common import machine

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "projector.md"


@dataclass
class Report:
    """What the run measured, for the Markdown report."""

    meta: dict[str, Any]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    rebuild: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.projector_bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="50k events, rebuild from 100k outcomes")
    p.add_argument("--events", type=int, default=None, help="throughput events (default 200k)")
    p.add_argument("--rebuild-outcomes", type=int, default=None, help="default 1,000,000")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=1_000, help="the projector's batch")
    p.add_argument("--repeat", type=int, default=None, help="best of N (default 3; --quick 1)")
    p.add_argument("--redis-url", default=None, help="use this Redis (default: start one)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _load(client: redis.Redis, stream: str, n: int, a: argparse.Namespace) -> float:
    """Append ``n`` synthetic events to ``stream``; returns the seconds taken."""
    log = RedisStreamLog(client, stream)
    started = time.perf_counter()
    chunk: list[Any] = []
    for event in synthetic_events(n, a.users, a.items, a.seed):
        chunk.append(encode_event(event))
        if len(chunk) == 10_000:
            log.append(chunk)
            chunk = []
    if chunk:
        log.append(chunk)
    return time.perf_counter() - started


def _run_runner(client: redis.Redis, stream: str) -> float:
    """The runner from scratch with the outcome journal; returns its seconds."""
    log = RedisStreamLog(client, stream)
    gc.collect()
    summary = Runner(
        log,
        RedisSnapshotStore(client, f"{stream}:snapshot"),
        ShopDomain(),
        RunnerConfig(progress=False, progress_interval=None),
        journal=RedisOutcomeJournal(client, f"{stream}:outcomes"),
    ).run(exit_when_idle=True)
    return summary.elapsed_s


def _run_projector(
    client: redis.Redis,
    stream: str,
    projections: list[Projection],
    batch: int,
    rebuild: bool = False,
) -> float:
    """The projector until idle (building or rebuilding); returns its seconds."""
    config = ProjectorConfig(
        batch_size=batch,
        progress_interval=None,
        rebuild=frozenset(p.name for p in projections) if rebuild else frozenset(),
    )
    gc.collect()
    summary = Projector(client, stream, projections, config).run(exit_when_idle=True)
    return summary.elapsed_s


def _journal_batches(client: redis.Redis, stream: str) -> Iterator[list[tuple[Position, Outcome]]]:
    journal = RedisStreamLog(client, f"{stream}:outcomes", max_batch_bytes=None)
    position = ORIGIN
    while batch := journal.read_after(position, 10_000):
        yield decode_outcomes(batch, journal.stream)
        position = batch[-1].position


def _fold_views(
    client: redis.Redis, stream: str, projections: list[Projection]
) -> tuple[dict[str, dict[str, Any]], float, float, int]:
    """The pure fold of the journal for each projection, batch by batch: the views,
    the seconds spent reading and decoding, the seconds folding, the outcomes."""
    views: dict[str, dict[str, Any]] = {p.name: {} for p in projections}
    read_s = fold_s = 0.0
    n = 0
    batches = _journal_batches(client, stream)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        t1 = time.perf_counter()
        read_s += t1 - t0
        if batch is None:
            break
        n += len(batch)
        for p in projections:
            docs = views[p.name]
            for key in keys_of_batch(p, batch):
                docs.setdefault(key, None)
            evolve_batch(p, docs, batch)
        fold_s += time.perf_counter() - t1
    return (
        {name: {k: v for k, v in docs.items() if v is not None} for name, docs in views.items()},
        read_s,
        fold_s,
        n,
    )


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "-"


def _reset(client: redis.Redis, stream: str) -> None:
    """Delete what the runner and the projector wrote for ``stream`` (not the stream)."""
    keys = [f"{stream}:outcomes", f"{stream}:snapshot", *client.keys(f"{stream}:view:*")]
    client.delete(*keys)


def _best(runs: list[float]) -> float:
    return min(runs)


def _throughput(client: redis.Redis, a: argparse.Namespace, report: Report) -> None:
    n = a.events
    stream = "bench"
    _say(f"throughput: appending {n:,} events")
    _load(client, stream, n, a)
    projections = shop_projections()
    runner_runs: list[float] = []
    projector_runs: list[float] = []
    for r in range(a.repeat):
        # Interleaved, so that a change in the machine's load hits both alike.
        _say(f"throughput: the runner, then the projector (five views), run {r + 1}/{a.repeat}")
        _reset(client, stream)
        runner_runs.append(_run_runner(client, stream))
        projector_runs.append(_run_projector(client, stream, projections, a.batch_size))
    runner_s, proj_s = _best(runner_runs), _best(projector_runs)
    runner_rate = n / runner_s

    def row(what: str, seconds: float, count: int = n) -> tuple[str, ...]:
        return (
            what,
            f"{seconds:.2f}",
            _rate(count, seconds),
            f"{count / seconds / runner_rate:.2f}",
        )

    report.rows.append(row("runner (decide + outcome journal + snapshot)", runner_s))
    report.rows.append(row("projector, five views in one process", proj_s))
    for p in projections:
        _say(f"throughput: the projector, {p.name} alone")
        runs = [
            _run_projector(client, stream, [p], a.batch_size, rebuild=True) for _ in range(a.repeat)
        ]
        report.rows.append(row(f"projector, {p.name} alone", _best(runs)))
    _say("throughput: references")
    reads: list[float] = []
    folds: list[float] = []
    for _ in range(a.repeat):
        gc.collect()
        views, read_s, fold_s, count = _fold_views(client, stream, projections)
        reads.append(read_s)
        folds.append(fold_s)
    report.rows.append(row("reference: read + decode the journal only", _best(reads), count))
    report.rows.append(
        row(
            "reference: pure fold of the five views in memory (no Redis, no JSON)",
            _best(folds),
            count,
        )
    )
    _check(client, stream, views, report, "throughput")


def _check(
    client: redis.Redis, stream: str, views: dict[str, dict[str, Any]], report: Report, what: str
) -> None:
    store = RedisViewStore(client, stream)
    for name, expected in views.items():
        checkpoint, docs = store.read_view(name)
        if checkpoint is None or docs != expected:
            report.failures.append(f"{what}: view {name} differs from the fold of the journal")


def _rebuild(client: redis.Redis, a: argparse.Namespace, report: Report) -> None:
    n = a.rebuild_outcomes
    stream = "big"
    _say(f"rebuild: appending {n:,} events")
    load_s = _load(client, stream, n, a)
    _say("rebuild: the runner publishes their outcomes")
    runner_s = _run_runner(client, stream)
    report.notes.append(
        f"Journal: {n:,} events appended in {load_s:.1f} s, folded and their outcomes "
        f"published by the runner in {runner_s:.1f} s ({_rate(n, runner_s)} records/s)."
    )
    projections = shop_projections()
    _say("rebuild: first build of the five views")
    first_s = _run_projector(client, stream, projections, a.batch_size)
    report.rebuild.append(("first build (no view before)", f"{first_s:.1f}", _rate(n, first_s)))
    _say("rebuild: --rebuild beside the live views, then the switch")
    rebuild_s = _run_projector(client, stream, projections, a.batch_size, rebuild=True)
    report.rebuild.append(
        ("--rebuild beside the live views, switched in", f"{rebuild_s:.1f}", _rate(n, rebuild_s))
    )
    store = RedisViewStore(client, stream)
    sizes = []
    for p in projections:
        key = store.keys(p.name).live
        docs = int(client.hlen(key)) - 5
        usage = client.memory_usage(key, samples=0) or 0
        sizes.append(f"`{p.name}` {docs:,} documents, {int(usage) / 2**20:.1f} MiB")
    report.notes.append("Views after the rebuild: " + "; ".join(sizes) + ".")
    _say("rebuild: checking every view against the pure fold")
    views, _, _, count = _fold_views(client, stream, projections)
    if count != n:
        report.failures.append(f"rebuild: the journal holds {count} outcomes, not {n}")
    _check(client, stream, views, report, "rebuild")
    live = {store.keys(p.name).live for p in projections}
    keys: Any = client.keys(f"{stream}:view:*")
    leftovers = sorted({k.decode() for k in keys} - live)
    if leftovers:
        report.failures.append(f"rebuild: keys left beside the views: {leftovers}")


def _machine(redis_version: str) -> dict[str, Any]:
    return machine() | {
        "redis": redis_version,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _write(report: Report, a: argparse.Namespace, out: Path) -> None:
    m = report.meta
    lines = [
        "# Projector benchmark",
        "",
        f"Command: `{m['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}; Redis {m['redis']} "
        f"(a private redis-server without persistence); commit {m['commit']}; {m['date']}.  ",
        f"Workload: `synthetic_events(n, users={a.users}, items={a.items}, seed={a.seed})`; "
        f"projector batches of {a.batch_size} outcomes. Throughput: best of {a.repeat} "
        "(runner and projector runs interleaved); rebuild: single runs. The machine is "
        f"shared: {m.get('load', '')}.",
        "",
        f"## Throughput on the same data ({a.events:,} events, one outcome each)",
        "",
        "| what | seconds | records or outcomes/s | ratio to the runner |",
        "|---|---:|---:|---:|",
        *(f"| {' | '.join(r)} |" for r in report.rows),
        "",
        "The ratio is the projector's outcomes/s over the runner's records/s on the same",
        "stream: above 1 the projector keeps up with a runner folding flat out.",
        "",
        f"## Rebuild from {a.rebuild_outcomes:,} outcomes (five views)",
        "",
        "| what | seconds | outcomes/s |",
        "|---|---:|---:|",
        *(f"| {' | '.join(r)} |" for r in report.rebuild),
        "",
        *report.notes,
        "",
        "## Check",
        "",
        (
            "Every stored view equals the pure fold of the journal (both parts): **ok**."
            if not report.failures
            else "**FAIL**: " + "; ".join(report.failures)
        ),
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the report; 0 if every view equals its fold, else 1."""
    args = sys.argv[1:] if argv is None else list(argv)
    a = _parser().parse_args(args)
    if a.events is None:
        a.events = 50_000 if a.quick else 200_000
    if a.rebuild_outcomes is None:
        a.rebuild_outcomes = 100_000 if a.quick else 1_000_000
    if a.repeat is None:
        a.repeat = 1 if a.quick else 3
    with contextlib.ExitStack() as stack:
        url = a.redis_url
        if url is None:
            from shop_adapters.embedded_redis import RedisServer

            url = stack.enter_context(RedisServer(appendonly=False)).url
        client = redis.Redis.from_url(url, socket_timeout=60)
        stack.callback(client.close)
        if a.redis_url is None:
            client.flushall()
        version = str(client.info("server").get("redis_version", "?"))
        report = Report(
            _machine(version)
            | {
                "command": "python -m benchmarks.projector_bench"
                + (" " + shlex.join(args) if args else "")
            }
        )
        load_before = os.getloadavg()
        _throughput(client, a, report)
        _rebuild(client, a, report)
        load_after = os.getloadavg()
        report.meta["load"] = (
            f"load average (1 min) {load_before[0]:.1f} at the start, "
            f"{load_after[0]:.1f} at the end"
        )
    _write(report, a, a.out)
    print(a.out.read_text())
    for failure in report.failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())

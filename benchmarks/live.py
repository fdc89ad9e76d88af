"""Live figures: a runner process following a producer process through Redis.

Run alone: ``python -m benchmarks.live [--seconds 10] [--rates 1000,10000]
[--out DIR]`` (its own private ``redis-server``; writes ``live.md`` and
``live.json`` to ``DIR``, a new temporary folder by default);
:mod:`benchmarks.replay_vs_snapshot` runs it as its last section.

Every phase uses a fresh stream and a fresh runner process,
``python -m shop_adapters.redis_runner --log-format json`` with its defaults
(outcome journal on, idempotency keys honoured with the default window, the
single-writer lease, snapshots every 30 s), started before any entry is
appended and waited for until it logs ``caught_up`` (following). Producers
and observers are other processes (:mod:`benchmarks._live_child`); every
entry carries an idempotency key, as the producer's ``synthetic`` command
writes them. At the end of a phase the runner is stopped with SIGTERM (it
writes its final snapshot and prints its summary): its digest must equal
``shop_core.fold`` of the events appended, and the journal must hold one
outcome per entry.

1. **Sustained follow throughput**: a producer appends as fast as it can
   (pipelines of 1,000 entries) for ``seconds``; this process samples the
   length of the outcome journal (``XLEN``) every 50 ms until the runner has
   published every outcome. The runner's rate is the slope of the outcome
   count between 10% and 90% of the entries; the producer's rate is its own.
   If the runner kept up (its lag stayed small), the figure is bounded by the
   producer, and the report says which one bounded it.
2. **Append-to-outcome latency at 1,000 and 10,000 events/s sustained**: a
   producer appends at the rate on an open-loop schedule (1 ms ticks) for
   ``seconds``, noting the time each append returned; an observer process
   reads the outcome journal with blocking reads, noting the time each
   outcome reached it. Latency of an entry = outcome seen - its append
   returned (one machine-wide monotonic clock; the observer's wake-up is
   included, as it is for any waiting client); the first second is warm-up
   and left out. Method chosen so that measuring does not change the rate:
   the producer does not wait for answers, and one observer adds one
   blocking read per batch of outcomes (not one per event, as a pool of
   ``wait_for`` waiters would). Reported: p50, p99, max, and the rate the
   producer achieved.
3. **One client waiting for each answer**: ``ShopClient.submit(event, key,
   wait=True)`` in a closed loop (append, then ``XREAD BLOCK`` on the journal
   for the outcome): latency p50 and p99 and the rate it allows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from shop_adapters.keys import StreamKeys
from shop_adapters.shop_domain.workload import synthetic_events
from shop_core import fold, state_digest

from ._common import REPO, machine, quantile

__all__ = ["measure_live", "parse_rates"]

WARMUP_S = 1.0
SUBMITS = 300


def parse_rates(text: str) -> list[float]:
    """``"1000,10k"`` -> ``[1000.0, 10000.0]``.

    >>> parse_rates("1000, 10k")
    [1000.0, 10000.0]
    """
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if not p:
            continue
        mult = 1_000 if p.endswith("k") else 1
        out.append(float(p.rstrip("k")) * mult)
    if not out or any(r <= 0 for r in out):
        raise argparse.ArgumentTypeError(f"rates must be positive events/s, got {text!r}")
    return out


@contextlib.contextmanager
def _runner(url: str, stream: str, workdir: Path) -> Iterator[dict[str, Any]]:
    """A runner process on ``stream``, following; yields a dict that receives its
    exit status and summary once it has been stopped (SIGTERM)."""
    err = workdir / f"{stream.replace(':', '_')}.runner.log"
    out = workdir / f"{stream.replace(':', '_')}.runner.out"
    argv = [
        sys.executable,
        "-m",
        "shop_adapters.redis_runner",
        "--redis-url",
        url,
        "--stream",
        stream,
        "--log-format",
        "json",
        "--no-progress",
        "--progress-interval",
        "3600",
    ]
    info: dict[str, Any] = {}
    with open(err, "w") as ferr, open(out, "w") as fout:
        proc = subprocess.Popen(argv, stdout=fout, stderr=ferr, cwd=REPO)
        try:
            deadline = time.monotonic() + 60
            while '"caught_up"' not in err.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the runner did not start: {err.read_text()[-2000:]}")
                time.sleep(0.05)
            yield info
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                info["returncode"] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                info["returncode"] = proc.wait()
    text = out.read_text().strip()
    with contextlib.suppress(ValueError, IndexError):
        info["summary"] = json.loads(text.splitlines()[-1])


def _child(args: Sequence[str], out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks._live_child", *args, str(out)],
        cwd=REPO,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen[bytes], out: Path, what: str) -> dict[str, Any]:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _check(
    info: dict[str, Any], client: redis.Redis, keys: StreamKeys, count: int, a: dict[str, Any]
) -> list[str]:
    """The runner's summary digest against the fold of the events; one outcome each."""
    failures = []
    events = list(synthetic_events(count, a["users"], a["items"], a["seed"]))
    expected = state_digest(fold(events))
    summary = info.get("summary") or {}
    if info.get("returncode") != 0:
        failures.append(f"live {keys.stream}: the runner exited {info.get('returncode')}")
    if summary.get("digest") != expected:
        failures.append(f"live {keys.stream}: the runner's digest differs from the fold")
    outcomes = int(client.xlen(keys.outcomes))
    if outcomes != count:
        failures.append(f"live {keys.stream}: {outcomes} outcomes for {count} entries")
    return failures


def _follow(
    url: str, client: redis.Redis, seconds: float, workdir: Path, a: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    keys = StreamKeys.for_stream("bench:live:follow")
    client.delete(*keys)
    samples: list[tuple[int, int]] = []
    with _runner(url, keys.stream, workdir) as info:
        out = workdir / "follow.produce.json"
        args = [url, keys.stream, "0", str(seconds), str(2_000_000), *a["workload"]]
        producer = _child(["produce", *args], out)
        deadline = time.monotonic() + seconds + 120
        produced: int | None = None
        while time.monotonic() < deadline:
            samples.append((time.monotonic_ns(), int(client.xlen(keys.outcomes))))
            if produced is None and producer.poll() is not None:
                produced = _finish(producer, out, "the producer")["count"]
                produced_result = json.loads(out.read_text())
            if produced is not None and samples[-1][1] >= produced:
                break
            time.sleep(0.05)
        if produced is None:
            producer.kill()
            raise RuntimeError("the follow producer did not finish")
    failures = _check(info, client, keys, produced, a)
    prod_s = (produced_result["ended_ns"] - produced_result["started_ns"]) / 1e9
    lo, hi = 0.1 * produced, 0.9 * produced
    t_lo, c_lo = next((t, c) for t, c in samples if c >= lo)
    t_hi, c_hi = next((t, c) for t, c in samples if c >= hi)
    if t_hi - t_lo >= 200_000_000:
        rate = (c_hi - c_lo) / ((t_hi - t_lo) / 1e9)
    else:  # too few samples between 10% and 90%: the whole run, a lower bound
        rate = produced / ((samples[-1][0] - produced_result["started_ns"]) / 1e9)
    # Outcomes published by the time the producer finished: the runner's lag then.
    end_ns = produced_result["ended_ns"]
    at_end = max((c for t, c in samples if t <= end_ns), default=0)
    drained_s = (samples[-1][0] - produced_result["started_ns"]) / 1e9
    client.delete(*keys)
    return (
        {
            "entries": produced,
            "producer_s": prod_s,
            "producer_rate": produced / prod_s,
            "runner_rate": rate,
            "lag_at_producer_end": produced - at_end,
            "all_published_after_s": drained_s,
            "bounded_by": "runner" if produced - at_end > 0.05 * produced else "producer",
        },
        failures,
    )


def _latency(
    url: str, client: redis.Redis, rate: float, seconds: float, workdir: Path, a: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    keys = StreamKeys.for_stream(f"bench:live:r{int(rate)}")
    client.delete(*keys)
    total = int(rate * (seconds + WARMUP_S))
    with _runner(url, keys.stream, workdir) as info:
        obs_out = workdir / f"r{int(rate)}.observe.json"
        prod_out = workdir / f"r{int(rate)}.produce.json"
        observer = _child(["observe", url, keys.outcomes, str(total), str(seconds + 120)], obs_out)
        producer = _child(
            [
                "produce",
                url,
                keys.stream,
                str(rate),
                str(seconds + WARMUP_S),
                str(total),
                *a["workload"],
            ],
            prod_out,
        )
        produced = _finish(producer, prod_out, "the producer")
        seen = _finish(observer, obs_out, "the observer")
    failures = _check(info, client, keys, produced["count"], a)
    when = dict(zip(seen["ids"], seen["seen_ns"], strict=True))
    warm = produced["started_ns"] + int(WARMUP_S * 1e9)
    lat = [
        (when[i] - r) / 1e6
        for i, r in zip(produced["ids"], produced["returned_ns"], strict=True)
        if r >= warm and i in when
    ]
    fifth = max(1, len(lat) // 5)
    first, last = quantile(lat[:fifth], 0.5), quantile(lat[-fifth:], 0.5)
    missing = sum(1 for i in produced["ids"] if i not in when)
    if missing:
        failures.append(f"live {rate:,.0f}/s: {missing} outcomes never seen by the observer")
    span = (produced["ended_ns"] - produced["started_ns"]) / 1e9
    client.delete(*keys)
    return (
        {
            "rate": rate,
            "entries": produced["count"],
            "measured": len(lat),
            "achieved_rate": produced["count"] / span,
            "p50_ms": quantile(lat, 0.5),
            "p99_ms": quantile(lat, 0.99),
            "max_ms": max(lat) if lat else float("nan"),
            "min_ms": min(lat) if lat else float("nan"),
            "first_fifth_p50_ms": first,
            "last_fifth_p50_ms": last,
            # Queueing: the latency kept growing, the runner fell behind the rate.
            "kept_up": not (last > 50 and last > 10 * max(first, 0.1)),
        },
        failures,
    )


def _submit(
    url: str, client: redis.Redis, workdir: Path, a: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    keys = StreamKeys.for_stream("bench:live:submit")
    client.delete(*keys)
    n = a["submits"]
    with _runner(url, keys.stream, workdir) as info:
        out = workdir / "submit.json"
        result = _finish(
            _child(["submit", url, keys.stream, str(n), *a["workload"]], out),
            out,
            "the submitting client",
        )
    failures = _check(info, client, keys, n, a)
    if result["statuses"].get("none"):
        failures.append(f"live submit: {result['statuses']['none']} answers timed out")
    lat = [x / 1e6 for x in result["latency_ns"]]
    client.delete(*keys)
    return (
        {
            "count": n,
            "rate": n / ((result["ended_ns"] - result["started_ns"]) / 1e9),
            "p50_ms": quantile(lat, 0.5),
            "p99_ms": quantile(lat, 0.99),
            "statuses": result["statuses"],
        },
        failures,
    )


def measure_live(
    redis_url: str,
    *,
    seconds: float = 10.0,
    rates: Sequence[float] = (1_000.0, 10_000.0),
    seed: int = 42,
    users: int = 10_000,
    items: int = 100,
    submits: int = SUBMITS,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """The live figures (see the module docstring) against the Redis at ``redis_url``."""
    a = {
        "seed": seed,
        "users": users,
        "items": items,
        "submits": submits,
        "workload": [str(seed), str(users), str(items)],
    }
    started = time.perf_counter()
    failures: list[str] = []
    out: dict[str, Any] = {"seconds": seconds, "warmup_s": WARMUP_S, "load_at_start": _load()}
    client = redis.Redis.from_url(redis_url)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shop-live-")))
        follow, bad = _follow(redis_url, client, seconds, workdir, a)
        out["follow"] = follow
        failures += bad
        out["latency"] = []
        for rate in rates:
            row, bad = _latency(redis_url, client, rate, seconds, workdir, a)
            out["latency"].append(row)
            failures += bad
        out["submit"], bad = _submit(redis_url, client, workdir, a)
        failures += bad
    client.close()
    out["failures"] = failures
    out["wall_s"] = time.perf_counter() - started
    return out


def _load() -> list[float]:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return []


def markdown(live: dict[str, Any]) -> list[str]:
    """The live section of a report, as Markdown lines."""
    lines: list[str] = []
    add = lines.append
    f = live.get("follow")
    if not f:
        return lines
    add(
        "A runner process (`python -m shop_adapters.redis_runner`, its defaults: outcome journal "
        "on, keys honoured, lease, snapshots every 30 s) follows a fresh stream while producer "
        "processes append keyed entries of the synthetic workload; an observer process reads "
        "the outcome journal with blocking reads. Times from one machine-wide monotonic clock. "
        f"Load average at the start: {live.get('load_at_start')}."
    )
    add("")
    add(
        f"- **Sustained follow throughput**: the runner published outcomes at "
        f"**{f['runner_rate']:,.0f} events/s** (slope of the journal's length between 10% and "
        f"90% of {f['entries']:,} entries) while the producer appended at "
        f"{f['producer_rate']:,.0f} events/s for {f['producer_s']:.1f} s (pipelines of 1,000); "
        f"lag when the producer stopped: {f['lag_at_producer_end']:,} entries; bounded by the "
        f"**{f['bounded_by']}**."
    )
    add("")
    add(
        "Append-to-outcome latency at a sustained rate (open-loop producer, 1 ms ticks; latency "
        "= outcome seen by the observer - the entry's append returned; the first "
        f"{live['warmup_s']:g} s left out):"
    )
    add("")
    add(
        "| target rate ev/s | achieved ev/s | entries measured | **p50 ms** | **p99 ms** "
        "| max ms | p50 first → last fifth, ms | runner kept up |"
    )
    add("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in live.get("latency", []):
        add(
            f"| {r['rate']:,.0f} | {r['achieved_rate']:,.0f} | {r['measured']:,} "
            f"| **{r['p50_ms']:.2f}** | **{r['p99_ms']:.2f}** | {r['max_ms']:.1f} "
            f"| {r['first_fifth_p50_ms']:.1f} → {r['last_fifth_p50_ms']:.1f} "
            f"| {'yes' if r['kept_up'] else '**no**: latency grew while the backlog did'} |"
        )
    add("")
    s = live.get("submit")
    if s:
        add(
            f"- **One client waiting for each answer** (`ShopClient.submit(event, key, "
            f"wait=True)` in a loop, {s['count']} requests): p50 **{s['p50_ms']:.2f} ms**, "
            f"p99 {s['p99_ms']:.2f} ms, {s['rate']:,.0f} requests/s."
        )
        add("")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure on a private redis-server; write ``live.md`` and ``live.json``."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=10.0, help="each sustained phase")
    p.add_argument("--rates", type=parse_rates, default=[1_000.0, 10_000.0])
    p.add_argument("--submits", type=int, default=SUBMITS)
    p.add_argument("--out", type=Path, default=None, help="default: a new temporary folder")
    a = p.parse_args(argv)
    from shop_adapters.embedded_redis import RedisServer

    with RedisServer(appendonly=False) as server:
        live = measure_live(server.url, seconds=a.seconds, rates=a.rates, submits=a.submits)
    out = a.out or Path(tempfile.mkdtemp(prefix="shop-live-"))
    out.mkdir(parents=True, exist_ok=True)
    m = machine()
    head = [
        "# Live figures",
        "",
        "`"
        + " ".join(["python -m benchmarks.live", *(sys.argv[1:] if argv is None else argv)])
        + "`",
        f"on {m['cpu']}, {m['cores']} cores, Python {m['python']}, commit {m['commit']}.",
        "",
    ]
    (out / "live.md").write_text("\n".join(head + markdown(live)) + "\n")
    (out / "live.json").write_text(json.dumps(live | {"machine": m}, indent=1) + "\n")
    print(f"wrote {out / 'live.md'}")
    for f in live["failures"]:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if live["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

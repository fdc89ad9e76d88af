"""Child processes of :mod:`benchmarks.live`: a producer and an outcome observer.

``python -m benchmarks._live_child MODE URL STREAM ...`` writes its
measurements as one JSON document to ``OUT`` and exits 0. Times are
``time.monotonic_ns()``: ``CLOCK_MONOTONIC``, one clock for every process of
the machine (Linux), so a producer's and an observer's times compare.

- ``produce URL STREAM RATE SECONDS N_MAX SEED USERS ITEMS OUT``: append
  entries of the synthetic workload, each with the key the producer's
  ``synthetic`` command derives, through :class:`ShopClient` (its log's
  pipelined ``append``, a chunk per tick). ``RATE`` 0: as fast as it can, in
  chunks of 1,000, for ``SECONDS`` or ``N_MAX`` entries; else paced to
  ``RATE`` entries per second on an open-loop schedule (1 ms ticks: the
  entries due by now go in one pipeline; a late producer sends what is due,
  never skips) for exactly ``RATE * SECONDS`` entries. ``OUT``: the count, the
  start and end times, and for every entry its ID and the time its append
  returned.
- ``observe URL OUTCOMES COUNT TIMEOUT OUT``: a blocking reader of the
  outcome journal (``XREAD BLOCK`` from the start, up to 10,000 entries per
  read), noting for every outcome its ID and the time the read that brought
  it returned, until ``COUNT`` outcomes arrived or ``TIMEOUT`` seconds passed.
  One reader, one blocking read per batch of outcomes: it adds no load per
  event to the runner or to Redis beyond what any waiting client adds.
- ``submit URL STREAM N SEED USERS ITEMS OUT``: a closed loop of one client,
  ``ShopClient.submit(event, key, wait=True)`` ``N`` times; the latency of
  each (append + blocking wait for its outcome).
"""

from __future__ import annotations

import json
import sys
import time
from itertools import islice
from typing import Any

import redis

from shop_adapters.keys import StreamKeys
from shop_adapters.shop_domain.client import ShopClient
from shop_adapters.shop_domain.workload import synthetic_events


def _key(i: int, seed: int, users: int, items: int) -> str:
    return f"synthetic:{seed}:{users}:{items}:{i}"


def _client(url: str, stream: str) -> ShopClient:
    return ShopClient(redis.Redis.from_url(url), StreamKeys.for_stream(stream))


def produce(
    url: str,
    stream: str,
    rate: float,
    seconds: float,
    n_max: int,
    seed: int,
    users: int,
    items: int,
) -> dict[str, Any]:
    """See the module docstring."""
    client = _client(url, stream)
    append = client.log.append
    ids: list[str] = []
    returned: list[int] = []
    if rate <= 0:  # as fast as it can: entries built chunk by chunk as they go
        source = enumerate(synthetic_events(n_max, users, items, seed))
        started = time.monotonic_ns()
        deadline = started + int(seconds * 1e9)
        while time.monotonic_ns() < deadline:
            chunk = [client.entry(e, _key(i, seed, users, items)) for i, e in islice(source, 1_000)]
            if not chunk:
                break
            positions = append(chunk)
            now = time.monotonic_ns()
            ids.extend(str(p) for p in positions)
            returned.extend([now] * len(positions))
    else:  # paced: entries built beforehand, so that building them does not delay any
        total = int(rate * seconds)
        events = synthetic_events(total, users, items, seed)
        entries = [client.entry(e, _key(i, seed, users, items)) for i, e in enumerate(events)]
        sent = 0
        per_ns = rate / 1e9
        tick = 1_000_000  # 1 ms
        started = next_tick = time.monotonic_ns()
        while sent < total:
            now = time.monotonic_ns()
            if now < next_tick:
                time.sleep((next_tick - now) / 1e9)
                now = time.monotonic_ns()
            due = min(total, int((now - started) * per_ns) + 1) - sent
            if due > 0:
                positions = append(entries[sent : sent + due])
                done = time.monotonic_ns()
                ids.extend(str(p) for p in positions)
                returned.extend([done] * len(positions))
                sent += due
            next_tick += tick
    ended = time.monotonic_ns()
    client.close()
    return {
        "count": len(ids),
        "started_ns": started,
        "ended_ns": ended,
        "ids": ids,
        "returned_ns": returned,
    }


def observe(url: str, outcomes: str, count: int, timeout: float) -> dict[str, Any]:
    """See the module docstring."""
    client = redis.Redis.from_url(url, socket_timeout=None)
    ids: list[str] = []
    seen: list[int] = []
    last = b"0-0"
    deadline = time.monotonic() + timeout
    while len(ids) < count and time.monotonic() < deadline:
        reply: Any = client.xread({outcomes: last}, count=10_000, block=500)
        now = time.monotonic_ns()
        if not reply:
            continue
        entries = reply[0][1]
        for entry_id, _fields in entries:
            ids.append(entry_id.decode())
        seen.extend([now] * len(entries))
        last = entries[-1][0]
    client.close()
    return {"count": len(ids), "ids": ids, "seen_ns": seen}


def submit(url: str, stream: str, n: int, seed: int, users: int, items: int) -> dict[str, Any]:
    """See the module docstring."""
    client = _client(url, stream)
    latencies: list[int] = []
    statuses: dict[str, int] = {}
    started = time.monotonic_ns()
    for i, event in enumerate(synthetic_events(n, users, items, seed)):
        t0 = time.monotonic_ns()
        answer = client.submit(event, f"submit:{_key(i, seed, users, items)}", timeout=10.0)
        latencies.append(time.monotonic_ns() - t0)
        status = "none" if answer.outcome is None else answer.outcome.status
        statuses[status] = statuses.get(status, 0) + 1
    ended = time.monotonic_ns()
    client.close()
    return {
        "count": n,
        "started_ns": started,
        "ended_ns": ended,
        "latency_ns": latencies,
        "statuses": statuses,
    }


def main(argv: list[str]) -> int:
    """Run ``MODE`` and write its JSON to the last argument."""
    mode, *args = argv
    out_path = args[-1]
    if mode == "produce":
        url, stream, rate, seconds, n_max, seed, users, items = args[:8]
        out = produce(
            url, stream, float(rate), float(seconds), int(n_max), int(seed), int(users), int(items)
        )
    elif mode == "observe":
        url, outcomes, count, timeout = args[:4]
        out = observe(url, outcomes, int(count), float(timeout))
    elif mode == "submit":
        url, stream, n, seed, users, items = args[:6]
        out = submit(url, stream, int(n), int(seed), int(users), int(items))
    else:
        raise SystemExit(f"unknown mode {mode!r}: produce, observe or submit")
    with open(out_path, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

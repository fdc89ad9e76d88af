"""Idempotency keys: what honouring a key on every event costs the fold, and a key's bytes.

Run alone: ``python -m benchmarks.idempotency_keys [--events 1M] [--repeat 3]``
(prints JSON); :mod:`benchmarks.replay_vs_snapshot` runs it as one section.

Measured through the real :class:`~shop_adapters.runner.Runner` (from scratch,
read-only, idempotency window :data:`~shop_adapters.idempotency.DEFAULT_WINDOW`
records unless told) over two memory logs holding the same synthetic events:

- **with keys**: every entry carries the key the producer's ``synthetic``
  command derives (``synthetic:<seed>:<users>:<items>:<i>``), all distinct;
- **without keys**: the same entries without the field, the same runner
  configuration (keys honoured, none present);
- **keys off**: the same entries, the runner configured with
  ``key_window=None`` (keys ignored), for scale.

Each rate is the best of ``repeat`` runs, the three alternating, each run
instrumented (:func:`benchmarks._stages.staged_replay`: the runner's own
catch-up seconds, and where they went per event; the proxies cost two clock
reads per batch); the three states must have the same digest.

Bytes per remembered key: a :class:`~shop_adapters.idempotency.KeyWindow`
filled by :func:`shop_adapters.catchup.consume` with ``N`` = min(window,
events) fresh keyed records (as the runner fills it: fingerprints, positions
and verdicts); ``tracemalloc`` bytes released when the window is dropped
(after the records are), divided by ``N``. And the window's snapshot bytes
(:meth:`KeyWindow.encode`) per key.
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc
from collections.abc import Sequence
from functools import partial
from typing import Any

from shop_adapters.catchup import consume
from shop_adapters.idempotency import DEFAULT_WINDOW, KEY_FIELD, KeyWindow
from shop_adapters.logs._common import encode_entry
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.protocols import Position, Record
from shop_adapters.shop_domain.wire import encode_event
from shop_adapters.shop_domain.workload import synthetic_events
from shop_core import EMPTY, Event

from ._common import DOMAIN, best_self_timed
from ._stages import Stages, staged_replay

__all__ = ["keyed_entry", "measure_keys"]

APPEND_BATCH = 10_000


def keyed_entry(event: Event, key: str | None) -> dict[str | bytes, str | bytes | int]:
    """The v1 wire entry of ``event``, with the idempotency key field when ``key`` is given."""
    entry: dict[str | bytes, str | bytes | int] = {}
    entry.update(encode_event(event))
    if key is not None:
        entry[KEY_FIELD] = key.encode()
    return entry


def _key(i: int, seed: int, users: int, items: int) -> str:
    return f"synthetic:{seed}:{users}:{items}:{i}"


def _load(events: Sequence[Event], keys: bool, seed: int, users: int, items: int) -> MemoryLog:
    log = MemoryLog()
    for start in range(0, len(events), APPEND_BATCH):
        chunk = events[start : start + APPEND_BATCH]
        log.append(
            [
                keyed_entry(e, _key(start + j, seed, users, items) if keys else None)
                for j, e in enumerate(chunk)
            ]
        )
    return log


def bytes_per_key(
    events: Sequence[Event], window: int, seed: int, users: int, items: int
) -> dict[str, Any]:
    """``tracemalloc`` bytes of a window holding min(``window``, events) keys, per key."""
    n = min(window, len(events))
    records = [
        Record(Position(i + 1, 0), encode_entry(keyed_entry(e, _key(i, seed, users, items))))
        for i, e in enumerate(events[:n])
    ]
    gc.collect()
    tracemalloc.start()
    try:
        keys = KeyWindow(window)
        folder = DOMAIN.folder(EMPTY)
        for start in range(0, n, APPEND_BATCH):
            consume(
                DOMAIN,
                folder,
                records[start : start + APPEND_BATCH],
                keys=keys,
                first_index=start + 1,
            )
        del records
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
        remembered = len(keys)
        encoded = len(keys.encode())
        del keys
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {
        "keys": remembered,
        "window_bytes": held - after,
        "bytes_per_key": (held - after) / max(1, remembered),
        "snapshot_bytes": encoded,
        "snapshot_bytes_per_key": encoded / max(1, remembered),
        "key_example": _key(n - 1, seed, users, items),
    }


def _staged(log: MemoryLog, batch: int, window: int | None) -> tuple[float, Stages]:
    stages = staged_replay(log, batch=batch, key_window=window)
    return stages.total_s, stages


def measure_keys(
    events: Sequence[Event],
    *,
    repeat: int = 3,
    batch: int = 10_000,
    window: int = DEFAULT_WINDOW,
    seed: int = 42,
    users: int = 10_000,
    items: int = 100,
) -> dict[str, Any]:
    """Fold ``events`` with a key on every entry, without keys, and with keys off
    (see the module docstring). Returns rates, ratios, breakdowns, digests and
    the bytes per remembered key."""
    keyed = _load(events, True, seed, users, items)
    plain = _load(events, False, seed, users, items)
    cases = {
        "with_keys": (keyed, window),
        "without_keys": (plain, window),
        "keys_off": (plain, None),
    }
    seconds = dict.fromkeys(cases, float("inf"))
    digests: dict[str, str] = {}
    seen: set[str] = set()  # every run's digest
    stages: dict[str, dict[str, Any]] = {}
    for _ in range(max(1, repeat)):
        for name, (log, kw) in cases.items():  # alternate, keep the best of each
            s, staged = best_self_timed(partial(_staged, log, batch, kw), 1)
            digests[name] = staged.digest
            seen.add(staged.digest)
            if s < seconds[name]:
                seconds[name] = s
                stages[name] = staged.to_json()
    keyed.close()
    plain.close()
    n = len(events)
    out: dict[str, Any] = {
        "n": n,
        "window": window,
        "batch": batch,
        "seconds": seconds,
        "rates": {k: n / v for k, v in seconds.items()},
        "ratio": seconds["without_keys"] / seconds["with_keys"],
        "ratio_to_keys_off": seconds["keys_off"] / seconds["with_keys"],
        "window_cost": seconds["keys_off"] / seconds["without_keys"],
        "digests": digests,
        "ok": len(seen) == 1,
        "stages": stages,
        "memory": bytes_per_key(events, window, seed, users, items),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures as one JSON object."""
    from .replay_vs_snapshot import parse_sizes

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.idempotency_keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", type=lambda s: parse_sizes(s)[0], default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    a = p.parse_args(argv)
    events = list(synthetic_events(a.events, a.users, a.items, a.seed))
    out = measure_keys(
        events,
        repeat=a.repeat,
        window=a.window,
        seed=a.seed,
        users=a.users,
        items=a.items,
    )
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

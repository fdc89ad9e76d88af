"""Benchmark: ``shop_core.fold`` against the same rules over plain mutable dicts.

Run: ``python -m benchmarks.fold_vs_dicts [--events N] [--repeat R] [--seed S]``

Both folds run in the same process on the same pre-built events (the synthetic
workload: 10,000 users, 100 items, 40% TopUp, 20% AddItem, 40% Order of 1-3
lines). The answer is checked first (both folds must give the same balances and
items), then each is timed ``--repeat`` times, alternating, and the best rate of
each is reported with the ratio ours / baseline. Also reports one-by-one
``apply`` on a slice, and ``Transient`` over 10,000-event batches, with and
without an immutable state taken every 10,000 events, for scale.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

from shop_adapters.shop_domain.workload import synthetic_events
from shop_core import EMPTY, Event, Transient, apply, fold, state_digest

from .baseline import as_dicts, fold_dicts


def _best_seconds(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)

    events: list[Event] = list(synthetic_events(a.events, a.users, a.items, a.seed))
    # A streaming runner never holds a million events; keep them out of the
    # cyclic GC's view so neither fold pays for traversing them.
    gc.collect()
    gc.freeze()
    ours = fold(events)
    if as_dicts(ours) != fold_dicts(events):
        print("FAIL: fold and the dict baseline disagree")
        return 1
    accepted_note = f"digest {state_digest(ours)[:16]}"

    t_base = t_ours = float("inf")
    for _ in range(a.repeat):
        t_base = min(t_base, _best_seconds(lambda: fold_dicts(events), 1))
        t_ours = min(t_ours, _best_seconds(lambda: fold(events), 1))
    n_slice = min(len(events), 100_000)
    head = events[:n_slice]

    def one_by_one() -> None:
        s = EMPTY
        for e in head:
            s = apply(s, e)

    def batches(every: int | None) -> None:
        t = Transient()
        for i in range(0, len(events), 10_000):
            t.fold(events[i : i + 10_000])
            if every and (i + 10_000) % every == 0:
                t.persistent()
        t.persistent()

    t_batches = _best_seconds(lambda: batches(None), 1)
    t_batches_snap = _best_seconds(lambda: batches(10_000), 1)
    t_apply = _best_seconds(one_by_one, 1)
    t_base_slice = _best_seconds(lambda: fold_dicts(head), 1)

    r_base = len(events) / t_base
    r_ours = len(events) / t_ours
    print(
        f"events: {len(events):,} (users {a.users:,}, items {a.items}, seed {a.seed}); "
        f"{accepted_note}"
    )
    print(f"baseline (plain dicts):   {r_base:12,.0f} events/s")
    print(f"shop_core.fold:           {r_ours:12,.0f} events/s")
    print(f"ratio fold / baseline:    {r_ours / r_base:12.2f}")
    print(
        f"one-by-one apply (first {n_slice:,}): {n_slice / t_apply:,.0f} events/s, "
        f"ratio to baseline {t_base_slice / t_apply:.2f}"
    )
    print(
        f"Transient, 10k batches:   {len(events) / t_batches:12,.0f} events/s "
        f"(ratio {t_base / t_batches:.2f}); with persistent() every 10k: "
        f"{len(events) / t_batches_snap:,.0f} events/s (ratio {t_base / t_batches_snap:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

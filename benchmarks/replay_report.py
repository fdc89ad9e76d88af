"""Report and plot for :mod:`benchmarks.replay_vs_snapshot`.

:func:`write_report` writes ``latest.md`` (machine, versions, command, every
figure beside its ceiling, the targets with met/missed), ``latest.json`` (the
raw figures) and ``replay_vs_restore.png`` (log-log seconds against history
length: replay and restore per backend as solid lines, ceilings dashed).
Targets are reported, never asserted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .replay_vs_snapshot import BackendResult, Results, SizeResult

__all__ = ["Target", "targets", "write_report"]

COLORS = {"memory": "tab:blue", "file": "tab:orange", "redis": "tab:red"}
PEER_FOR = {"memory": "popo", "file": "sqlite", "redis": "sqlite"}


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "inf"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def _n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


class Target:
    """One reported target: ``name``, what was measured, and whether it was met (``None``: n/a)."""

    def __init__(self, name: str, measured: str, met: bool | None) -> None:
        self.name = name
        self.measured = measured
        self.met = met

    @property
    def status(self) -> str:
        """``met``, ``MISSED`` or ``n/a``."""
        return "n/a" if self.met is None else ("met" if self.met else "MISSED")


def _run(results: Results, backend: str, n: int) -> BackendResult | None:
    for r in results.runs:
        if r.backend == backend and r.n == n:
            return r
    return None


def _size(results: Results, n: int) -> SizeResult | None:
    for s in results.sizes:
        if s.n == n:
            return s
    return None


def _peer(results: Results, persistence: str, n: int) -> dict[str, Any] | None:
    for p in results.peers:
        if p["persistence"] == persistence and p["n"] == n:
            return p
    return None


def _peer_n(results: Results) -> int | None:
    ns = [p["n"] for p in results.peers]
    return max(ns) if ns else None


def targets(results: Results) -> list[Target]:
    """The issue's targets evaluated on ``results`` (big = 1M if run, else the largest size)."""
    sizes = sorted({s.n for s in results.sizes})
    out: list[Target] = []
    if not sizes:
        return out
    big = 1_000_000 if 1_000_000 in sizes else sizes[-1]
    below = [s for s in sizes if s < big]
    mid = 100_000 if 100_000 in below else (below[-1] if below else None)
    backends = [b for b in ("memory", "file", "redis") if _run(results, b, big)]
    for b in backends:
        r_big = _run(results, b, big)
        r_mid = _run(results, b, mid) if mid is not None else None
        if r_big is not None and r_mid is not None:
            ratio = r_big.restore_s / r_mid.restore_s
            out.append(
                Target(
                    f"{b}: restore at {_n(big)} <= 1.2x restore at {_n(mid)}",  # type: ignore[arg-type]
                    f"{_ms(r_big.restore_s)} ms vs {_ms(r_mid.restore_s)} ms = {ratio:.2f}x",
                    ratio <= 1.2,
                )
            )
    for b in backends:
        r = _run(results, b, big)
        assert r is not None
        out.append(
            Target(
                f"{b}: restore >= 100x faster than replay at {_n(big)}",
                f"{r.speedup:,.0f}x",
                r.speedup >= 100,
            )
        )
    for b, what in (("redis", "raw XRANGE"), ("file", "raw read")):
        r = _run(results, b, big)
        if r is None:
            out.append(Target(f"{b} replay >= 70% of {what} rate", "not run", None))
            continue
        share = r.raw_read_s / r.replay_s
        out.append(
            Target(
                f"{b}: replay >= 70% of {what} rate ({_n(big)})",
                f"{_rate(r.n, r.replay_s)} vs {_rate(r.n, r.raw_read_s)} ev/s = {share:.0%}",
                share >= 0.7,
            )
        )
    pn = _peer_n(results)
    for b, factor in (("file", 10), ("redis", 5)):
        p = _peer(results, "sqlite", pn) if pn is not None else None
        r = _run(results, b, pn) if pn is not None else None
        if p is None or r is None:
            out.append(Target(f"{b} replay >= {factor}x eventsourcing SQLite", "not run", None))
            continue
        ratio = p["replay_s"] / r.replay_s
        out.append(
            Target(
                f"{b}: replay >= {factor}x eventsourcing SQLite replay ({_n(pn)})",  # type: ignore[arg-type]
                f"{_rate(r.n, r.replay_s)} vs {_rate(p['n'], p['replay_s'])} ev/s = {ratio:.1f}x",
                ratio >= factor,
            )
        )
    return out


def _markdown(results: Results, plot_name: str) -> str:
    m = results.meta
    lines: list[str] = []
    add = lines.append
    add("# Replay versus snapshot restore: latest results")
    add("")
    add(
        "Generated by `benchmarks/replay_vs_snapshot.py`; every figure is the best of "
        f"{m['repeat']} runs (restore: of at least 5), measured in the same run as its ceiling."
    )
    add("")
    add("| | |")
    add("|---|---|")
    add(f"| Date | {m['date']} |")
    add(f"| Machine | {m['cpu']}, {m['cores']} cores ({m['platform']}) |")
    add(f"| Python | {m['python']} |")
    if "redis_version" in m:
        add(f"| Redis | {m['redis_version']} ({m.get('redis_server', '')}) |")
    libs = ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items())
    add(f"| Libraries | {libs} |")
    if m.get("commit"):
        add(f"| Commit | {m['commit']} |")
    add(f"| Command | `{m['command']}` |")
    add(
        f"| Workload | `synthetic_events(n, users={m['users']:,}, items={m['items']}, "
        f"seed={m['seed']})`; reads of {m['batch']:,} records |"
    )
    status = "all digests equal" if not results.failures else "FAIL: " + "; ".join(results.failures)
    add(f"| Correctness | {status} |")
    add("")

    add("## Targets (reported, not asserted)")
    add("")
    add("| Target | Measured | Status |")
    add("|---|---|---|")
    for t in targets(results):
        add(f"| {t.name} | {t.measured} | **{t.status}** |")
    add("")

    add("## Full replay against its limits")
    add("")
    add(
        "Rates in events/s. *raw read*: records fetched, no decode or fold (Redis: plain "
        "XRANGE; *adapter read* is `read_after`, which also builds records). *decode only*: "
        "`decode_records` on records already read. *dict fold*: `fold_dicts` on pre-decoded "
        "events. *serial limit*: n / (raw read + decode only + dict fold seconds), the replay "
        "if every stage ran at its ceiling, one after the other. *fold per batch*: the naive "
        "loop, `shop_core.fold` per batch (an immutable state committed every batch) with the "
        "default GC settings, where *replay* folds into one `shop_core.Transient` under the "
        "runner's GC settings (what the runner does)."
    )
    add("")
    add(
        "| n | backend | replay s | replay ev/s | fold per batch ev/s | raw read ev/s "
        "| replay / raw read "
        "| adapter read ev/s | decode only ev/s | dict fold ev/s | serial limit ev/s "
        "| replay / serial limit | append s |"
    )
    add("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results.runs:
        s = _size(results, r.n)
        dict_s = s.dict_fold_s if s else float("nan")
        serial = r.raw_read_s + r.decode_s + dict_s
        add(
            f"| {_n(r.n)} | {r.backend} | {r.replay_s:.3f} | {_rate(r.n, r.replay_s)} "
            f"| {_rate(r.n, r.replay_transient_s)} | {_rate(r.n, r.raw_read_s)} "
            f"| {r.raw_read_s / r.replay_s:.0%} "
            f"| {_rate(r.n, r.adapter_read_s)} | {_rate(r.n, r.decode_s)} "
            f"| {_rate(r.n, dict_s)} | {_rate(r.n, serial)} | {serial / r.replay_s:.0%} "
            f"| {r.append_s:.2f} |"
        )
    add("")
    add("Fold alone (pre-decoded events, no I/O), against the plain-dict fold:")
    add("")
    add("| n | users | shop_core.fold ev/s | dict fold ev/s (ceiling) | fold / dict fold |")
    add("|---:|---:|---:|---:|---:|")
    for s in results.sizes:
        add(
            f"| {_n(s.n)} | {s.users:,} | {_rate(s.n, s.fold_s)} | {_rate(s.n, s.dict_fold_s)} "
            f"| {s.dict_fold_s / s.fold_s:.0%} |"
        )
    add("")

    add("## Snapshot write and restore")
    add("")
    add(
        "*write*: `encode_snapshot` + `store.write`; ceiling: `store.write` of the same bytes. "
        "*restore*: `store.read` + `decode_snapshot` + catch-up of the last *tail* events; "
        "ceiling: `store.read` + raw read of the tail. *speedup*: replay / restore."
    )
    add("")
    add(
        "| n | backend | tail | snapshot bytes | write ms | store write ms (ceiling) "
        "| restore ms | restore ceiling ms | ceiling / restore | speedup | digests |"
    )
    add("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results.runs:
        add(
            f"| {_n(r.n)} | {r.backend} | {r.tail:,} | {r.snapshot_bytes:,} "
            f"| {_ms(r.snapshot_write_s)} | {_ms(r.snapshot_store_write_s)} "
            f"| {_ms(r.restore_s)} | {_ms(r.restore_ceiling_s)} "
            f"| {r.restore_ceiling_s / r.restore_s:.0%} | {r.speedup:,.0f}x "
            f"| {'equal' if r.ok else '**DIFFER**'} |"
        )
    add("")

    if results.peers:
        add("## Peer: eventsourcing " + m.get("libraries", {}).get("eventsourcing", ""))
        add("")
        add(
            "One `Aggregate` holding the shop, its events' bodies calling `shop_core.apply` "
            "(identical rules; *apply share* is the part of its replay spent there); an "
            "`Application` with POPO or SQLite (temp file) persistence; `repository.get` "
            "from scratch (replay) and after `Snapshot.take` + `snapshots.put` at the same "
            f"place as ours (restore). Capped at {m['peer_max']:,} events."
        )
        add("")
        add(
            "| n | persistence | load s | replay s | replay ev/s | apply share "
            "| snapshot write ms | restore ms | ours | our replay ev/s | ours / peer |"
        )
        add("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
        for p in results.peers:
            for b, pers in PEER_FOR.items():
                if pers != p["persistence"]:
                    continue
                mine = _run(results, b, p["n"])
                ours = f"{_rate(mine.n, mine.replay_s)}" if mine else "-"
                ratio = f"{p['replay_s'] / mine.replay_s:.1f}x" if mine else "-"
                add(
                    f"| {_n(p['n'])} | {p['persistence']} | {p['load_s']:.2f} "
                    f"| {p['replay_s']:.3f} | {_rate(p['n'], p['replay_s'])} "
                    f"| {p['apply_share']:.0%} | {_ms(p['snapshot_write_s'])} "
                    f"| {_ms(p['restore_s'])} | {b} | {ours} | {ratio} |"
                )
        add("")

    mem = results.memory
    if mem:
        add("## Memory")
        add("")
        for rss in mem.get("rss", []):
            rep, base = rss["replay"], rss["baseline"]
            add(
                f"- Peak RSS of a full replay of {_n(rss['n'])} events from the "
                f"{rss['backend']} log in a child process: **{rep['maxrss_bytes'] / 2**20:,.0f} "
                f"MiB** (an idle child that opened the same log: "
                f"{base['maxrss_bytes'] / 2**20:,.0f} MiB; excess "
                f"{max(0, rep['maxrss_bytes'] - base['maxrss_bytes']) / 2**20:,.0f} MiB; that "
                f"fresh process replayed at {_rate(rep['events'], rep['seconds'])} ev/s, "
                "runner's loop, one run). Method: "
                "`VmHWM` (peak RSS) from `/proc/self/status` in the child."
            )
        st = mem.get("state")
        if st:
            add(
                f"- State after {_n(st['n'])} events ({st['users']:,} users, {st['items']} "
                f"items): **{st['bytes_per_user']:,.0f} bytes per user** "
                f"({st['state_bytes'] / 2**20:,.1f} MiB); the plain-dict baseline's state: "
                f"{st['dict_bytes_per_user']:,.0f} bytes per user (ours / dicts "
                f"{st['bytes_per_user'] / st['dict_bytes_per_user']:.1f}x). Method: "
                "`tracemalloc` bytes still allocated after `fold` and `gc.collect()`, "
                "divided by the number of users (items are included; there are few)."
            )
        add("")

    w = results.writer
    if w.get("runs"):
        add("## Snapshotting off the hot path (the runner's background writer)")
        add("")
        add(
            f"`Runner` catch-up of {_n(w['n'])} events from the {w['backend']} log, batches of "
            f"{w.get('batch', m['batch']):,}; *fold phase* = first read to the last (empty) "
            "read; a batch = "
            "one read to the next (read + decode + fold + hand-off). With snapshots, the state "
            "is handed by reference to the writer thread, which encodes and writes it; a "
            "hand-off made while a write is in flight replaces the pending one (latest wins)."
        )
        add("")
        add(
            "| snapshot every | events/s | vs none | batch p50 ms | batch p99 ms | batch max ms "
            "| snapshots handed off | written in background | mean write ms (thread) |"
        )
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        base_rate = w["runs"][0]["rate"]
        for r in w["runs"]:
            every = "never" if r["snapshot_every"] is None else f"{r['snapshot_every']:,}"
            add(
                f"| {every} | {r['rate']:,.0f} | {r['rate'] / base_rate:.0%} "
                f"| {r['batch_p50_ms']:.1f} | {r['batch_p99_ms']:.1f} | {r['batch_max_ms']:.1f} "
                f"| {r['snapshots_submitted']} | {r['snapshots_background']} "
                f"| {r['snapshot_write_mean_ms']:.2f} |"
            )
        add("")
    elif w.get("skipped"):
        add(f"Snapshotting comparison skipped: {w['skipped']}")
        add("")

    add(f"![replay vs restore]({plot_name})")
    add("")
    return "\n".join(lines)


def _plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=110)
    backends = [b for b in ("memory", "file", "redis") if any(r.backend == b for r in results.runs)]
    for b in backends:
        runs = sorted((r for r in results.runs if r.backend == b), key=lambda r: r.n)
        xs = [r.n for r in runs]
        c = COLORS[b]
        ax.plot(xs, [r.replay_s for r in runs], "-o", color=c, lw=2, label=f"{b}: replay")
        ax.plot(
            xs,
            [r.restore_s for r in runs],
            "-s",
            color=c,
            lw=1.2,
            mfc="white",
            label=f"{b}: restore",
        )
        ax.plot(
            xs,
            [r.raw_read_s for r in runs],
            "--",
            color=c,
            lw=1,
            label=f"{b}: raw read (limit)",
        )
        ax.plot(
            xs,
            [r.restore_ceiling_s for r in runs],
            ":",
            color=c,
            lw=1,
            label=f"{b}: restore limit (store read + raw tail read)",
        )
    sizes = sorted(results.sizes, key=lambda s: s.n)
    if sizes:
        ax.plot(
            [s.n for s in sizes],
            [s.dict_fold_s for s in sizes],
            "--",
            color="gray",
            lw=1.5,
            label="dict fold of decoded events (limit)",
        )
    for pers, marker in (("popo", "x"), ("sqlite", "D")):
        ps = sorted((p for p in results.peers if p["persistence"] == pers), key=lambda p: p["n"])
        if ps:
            ax.plot(
                [p["n"] for p in ps],
                [p["replay_s"] for p in ps],
                "-.",
                marker=marker,
                color="black",
                lw=1,
                label=f"eventsourcing {pers}: replay",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("history length (events)")
    ax.set_ylabel("seconds (best of runs)")
    m = results.meta
    ax.set_title(
        f"Full replay vs snapshot restore (+{_tail_label(results)} events)\n"
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['date']}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _tail_label(results: Results) -> str:
    tails = sorted({r.tail for r in results.runs})
    return "/".join(f"{t:,}" for t in tails) or "0"


def write_report(results: Results, out: Path) -> Sequence[Path]:
    """Write ``latest.md``, ``latest.json`` and ``replay_vs_restore.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot = out / "replay_vs_restore.png"
    _plot(results, plot)
    md = out / "latest.md"
    md.write_text(_markdown(results, plot.name))
    js = out / "latest.json"
    payload = results.to_json()
    payload["targets"] = [
        {"name": t.name, "measured": t.measured, "status": t.status} for t in targets(results)
    ]
    js.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return [md, js, plot]

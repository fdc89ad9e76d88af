"""Report and plot for :mod:`benchmarks.replay_vs_snapshot`.

:func:`write_report` writes ``latest.md`` (what was measured and how, the
machine, the command, the targets with met / missed and the measured reason /
n/a, then every figure beside the baseline it is compared with),
``latest.json`` (the raw figures, the targets included) and
``replay_vs_restore.png`` (two panels, log-log seconds against history
length: replay with its limits, restore with its limits; at most 8 series
each). Targets are reported, never asserted.
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
BIG = 1_000_000
PEER_AT = 100_000
MIB = 2**20


def _rate(n: float, seconds: float) -> str:
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
    """One reported target: ``name``, what was ``measured``, whether it was ``met``
    (``None``: not evaluated, with ``na`` saying why) and, when missed, ``why``."""

    def __init__(
        self, name: str, measured: str, met: bool | None, why: str = "", na: str = ""
    ) -> None:
        self.name = name
        self.measured = measured
        self.met = met
        self.why = why
        self.na = na or "n/a at these sizes"

    @property
    def status(self) -> str:
        """``met``, ``MISSED`` or the reason it is not applicable."""
        return self.na if self.met is None else ("met" if self.met else "MISSED")


def _run(results: Results, backend: str, n: int | None) -> BackendResult | None:
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


def _stages(results: Results, backend: str, journal: bool) -> dict[str, Any] | None:
    for row in results.breakdown:
        if row["backend"] == backend and row["journal"] == journal:
            return row
    return None


def _us_line(us: dict[str, float]) -> str:
    parts = [
        ("decode", "decode"),
        ("fold", "fold"),
        ("bookkeeping", "keys and outcomes"),
        ("publish", "publish"),
        ("waiting", "waiting for reads"),
    ]
    shown = [f"{label} {us[k]:.2f}" for k, label in parts if us.get(k, 0) >= 0.005]
    return ", ".join(shown)


def _replay_why(results: Results, r: BackendResult) -> str:
    row = _stages(results, r.backend, False)
    raw_us = 1e6 * r.raw_read_s / r.n
    text = f"replay {1e6 * r.replay_s / r.n:.2f} µs/event against {raw_us:.2f} of the raw read"
    if row is not None:
        text += f"; per event on the runner's thread: {_us_line(row['us'])} µs"
    return text


def targets(results: Results) -> list[Target]:
    """The issues' targets evaluated on ``results`` (see the report's Targets section)."""
    out: list[Target] = []
    sizes = sorted({s.n for s in results.sizes})
    if not sizes:
        return out
    at_big = BIG in sizes
    largest = max((s for s in sizes if s <= BIG), default=sizes[-1])
    big = BIG if at_big else largest
    na = "" if at_big else f"n/a at these sizes (defined at 1M events; shown at {_n(big)})"

    # Issue 12: replay against the raw read of the same log.
    for b, what, floor in (("redis", "raw XRANGE", 0.5), ("file", "raw read", 0.6)):
        name = f"{b}: replay >= {floor:.0%} of the {what} rate (stretch 70%), 1M events"
        r = _run(results, b, big)
        if r is None:
            out.append(Target(name, "-", None, na="not run"))
            continue
        share = r.raw_read_s / r.replay_s
        measured = (
            f"{_rate(r.n, r.replay_s)} vs {_rate(r.n, r.raw_read_s)} ev/s = **{share:.0%}**"
            + (" (stretch met)" if share >= 0.7 else "")
        )
        met = share >= floor if at_big else None
        out.append(Target(name, measured, met, "" if met else _replay_why(results, r), na))

    # Issue 12: the peer, at 100k events.
    for b in ("file", "redis"):
        name = f"{b}: replay >= 15x eventsourcing's (SQLite), 100k events"
        p = _peer(results, "sqlite", PEER_AT)
        r = _run(results, b, PEER_AT)
        if p is None or r is None:
            pn = max((q["n"] for q in results.peers if q["persistence"] == "sqlite"), default=0)
            p = _peer(results, "sqlite", pn)
            r = _run(results, b, pn)
            if p is None or r is None:
                out.append(Target(name, "-", None, na="not run"))
                continue
            na_peer = f"n/a at these sizes (defined at 100k; shown at {_n(pn)})"
        else:
            na_peer = ""
        ratio = p["replay_s"] / r.replay_s
        measured = (
            f"{_rate(r.n, r.replay_s)} vs {_rate(p['n'], p['replay_s'])} ev/s = **{ratio:.1f}x**"
        )
        met = (ratio >= 15) if not na_peer else None
        why = (
            f"ours {1e6 * r.replay_s / r.n:.2f} µs/event, the peer's "
            f"{1e6 * p['replay_s'] / p['n']:.2f}; " + _replay_why(results, r)
            if met is False
            else ""
        )
        out.append(Target(name, measured, met, why, na_peer))

    # Issue 12: the 1,000,000-user state.
    big_state = results.big
    if big_state:
        users = big_state["users"]
        na_users = "" if users == BIG else f"n/a at these sizes (defined at 1M users; {users:,})"
        name_store = "redis" if "redis" in big_state["stores"] else "file"
        st = big_state["stores"][name_store]
        restore = st["restore_s"]
        why = (
            f"store read {_ms(st['read_s'])} ms + decode_snapshot "
            f"{_ms(big_state['decode_snapshot_s'])} ms, of which the body (decode_state) "
            f"{_ms(big_state['decode_state_s'])} ms"
        )
        met = None if na_users else restore <= 1.5
        out.append(
            Target(
                "restore of a 1M-user snapshot <= 1.5 s",
                f"**{restore:.2f} s** ({name_store} store; the runner's restore_seconds)",
                met,
                why if met is False else "",
                na_users,
            )
        )
        write = st["write_s"]
        why = (
            f"encode_snapshot {_ms(big_state['encode_s'])} ms (the body, encode_state: "
            f"{_ms(big_state['encode_state_s'])} ms) + store write {_ms(st['store_write_s'])} ms"
        )
        met = None if na_users else write <= 1.5
        out.append(
            Target(
                "snapshot write (encode + store) of a 1M-user state <= 1.5 s",
                f"**{write:.2f} s** ({name_store} store)",
                met,
                why if met is False else "",
                na_users,
            )
        )
        rss = big_state["rss"]
        peak = rss["peak_end"]
        why = (
            f"idle runner process {big_state['rss_baseline']['maxrss_bytes'] / MIB:,.0f} MiB; "
            f"after the restore {rss['peak_restored'] / MIB:,.0f} MiB; caught up "
            f"{rss['peak_caught_up'] / MIB:,.0f} MiB; with its snapshot write "
            f"{peak / MIB:,.0f} MiB; the state alone {big_state['state_bytes'] / MIB:,.0f} MiB "
            "(tracemalloc)"
        )
        met = None if na_users else peak <= 300 * MIB
        out.append(
            Target(
                "peak RSS of a runner process holding 1M users <= 300 MiB",
                f"**{peak / MIB:,.0f} MiB** (restore, catch-up, one snapshot write)",
                met,
                why if met is False else "",
                na_users,
            )
        )

    # Issue 12: snapshots that cost the fold nothing.
    w = results.writer
    if w.get("runs"):
        base = w["runs"][0]
        na_w = "" if w["n"] == BIG else f"n/a at these sizes (defined at 1M events; {_n(w['n'])})"
        for r in w["runs"][1:]:
            share = r["rate"] / base["rate"]
            why = (
                f"batch p99 {r['batch_p99_ms']:.1f} ms vs {base['batch_p99_ms']:.1f} ms without; "
                + (
                    f"{r['snapshots_written']} snapshots written by the thread, "
                    f"{r['write_mean_ms'] or 0:.1f} ms each, sharing the interpreter with the fold"
                    if r["mode"] == "thread"
                    else f"{r['forks']} forks, {r['fork_mean_ms'] or 0:.1f} ms each in the parent "
                    f"(max {r['fork_max_ms'] or 0:.1f})"
                )
            )
            met = None if na_w else share >= 0.9
            out.append(
                Target(
                    f"snapshot every {w['snapshot_every']:,} ({r['mode']}) keeps >= 90% of "
                    "the no-snapshot rate",
                    f"{r['rate']:,.0f} vs {base['rate']:,.0f} ev/s = **{share:.0%}**",
                    met,
                    why if met is False else "",
                    na_w,
                )
            )

    # Issue 11: keys on every event.
    k = results.keys
    if k:
        full = 3 * k["window"]  # the window is full for two thirds of the run
        na_k = (
            ""
            if k["n"] >= full
            else f"n/a at these sizes (defined at {_n(full)} events or more; {_n(k['n'])})"
        )
        us = {name: k["stages"][name]["us"] for name in k["stages"]}
        why = (
            f"per event {us['with_keys']['total']:.2f} µs with keys vs "
            f"{us['without_keys']['total']:.2f} without: keys and outcomes "
            f"{us['with_keys']['bookkeeping']:.2f} vs {us['without_keys']['bookkeeping']:.2f}, "
            f"fold {us['with_keys']['fold']:.2f} vs {us['without_keys']['fold']:.2f} µs; "
            f"with no key present the window already costs {1 - k['window_cost']:.0%} of the "
            f"rate with keys off ({us['keys_off']['total']:.2f} µs/event)"
        )
        met = None if na_k else k["ratio"] >= 0.85
        out.append(
            Target(
                "fold with a key on every event >= 85% of the same events without keys",
                f"{k['rates']['with_keys']:,.0f} vs {k['rates']['without_keys']:,.0f} ev/s "
                f"= **{k['ratio']:.0%}**",
                met,
                why if met is False else "",
                na_k,
            )
        )

    # Issue 15: time travel.
    t = results.travel
    if t:
        na_t = "" if t["n"] == BIG else f"n/a at these sizes (defined at 1M events; {_n(t['n'])})"
        for c in t["chains"]:
            slow = [row for row in c["rows"] if row["ratio"] >= 0.1]
            oldest = min(c["chain"]) if c["chain"] else None
            why = (
                f"{len(slow)} of {len(c['rows'])} targets over a tenth ("
                + ", ".join(f"{_n(row['records'])}: {row['ratio']:.0%}" for row in slow)
                + f"); the chain keeps {len(c['chain'])} snapshots, the oldest at "
                + (f"{oldest:,} records" if oldest else "none")
                + ": a target before it is folded from the origin, one after it from the "
                f"nearest snapshot, up to {c['policy']['every']:,} records back"
            )
            met = None if na_t else c["ratio"] < 0.1
            out.append(
                Target(
                    f"inspect state --at, chain of {c['name']} (at most "
                    f"{c['policy']['limit']}): < 1/10 of a from-scratch fold",
                    f"{c['travel_s']:.2f} s vs {t['scratch_s']:.2f} s over {len(c['rows'])} "
                    f"targets = **{c['ratio']:.1%}** (worst target {c['worst_ratio']:.0%})",
                    met,
                    why if slow else "",
                    na_t,
                )
            )

    # Every digest equal.
    out.append(
        Target(
            "every digest equal (backends, codecs, journal, children, peer, time travel, live)",
            "all equal" if not results.failures else f"{len(results.failures)} differ",
            not results.failures,
            "; ".join(results.failures[:5]),
        )
    )
    return out


# --- the Markdown ----------------------------------------------------------------------


def _header(results: Results, add: Any) -> None:
    m = results.meta
    add("# Replay, restore and the live runner: latest results")
    add("")
    add(
        "Generated by `python -m benchmarks.replay_vs_snapshot` "
        "([benchmarks/replay_vs_snapshot.py](../replay_vs_snapshot.py)). Every timed figure "
        f"is the best of {m['repeat']} runs (restore: of at least 5; the limits and time "
        "travel: of at most 2) and stands beside the baseline it is compared with, "
        "**measured in the same run**: the machine may be "
        "shared and noisy, so the claims are the ratios, not the absolute rates. Every "
        "replay, restore, child process, peer and time travel reaches the state whose digest "
        "is that of `shop_core.fold` of the same events, or the run fails."
    )
    add("")
    add("| | |")
    add("|---|---|")
    add(f"| Date | {m['date']} |")
    load = m.get("load_at_start")
    add(
        f"| Machine | {m['cpu']}, {m['cores']} cores ({m['platform']})"
        + (f"; load average at the start {load}" if load else "")
        + " |"
    )
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
        f"seed={m['seed']})`: 40% TopUp, 20% AddItem, 40% Order |"
    )
    window = m.get("key_window")
    keys = f"idempotency keys honoured (window {window:,} records)" if window else "keys off"
    add(
        "| The runner | `shop_adapters.runner.Runner` as the command line configures it: "
        f"reads of {m['batch']:,} records with read-ahead, {keys} |"
    )
    total = m.get("durations", {}).get("total")
    if total:
        add(f"| Duration | {total / 60:.1f} minutes |")
    status = "all digests equal" if not results.failures else "FAIL: " + "; ".join(results.failures)
    add(f"| Correctness | {status} |")
    if m.get("quick"):
        add("| Note | a `--quick` run: small sizes, one repeat; not the committed figures |")
    add("")


def _targets_section(results: Results, add: Any) -> None:
    add("## Targets (reported, not asserted)")
    add("")
    add(
        "From the issues: performance (12), outcome journal and keys (11), operating it (15). "
        "A target defined at 1M events (or 1M users, 100k events for the peer, three key "
        "windows for the keys) says *n/a at these sizes* when that size was not run, with the "
        "figure at the size that was."
    )
    add("")
    add("| Target | Measured | Status | Why: the measured reason (missed, or not judged) |")
    add("|---|---|---|---|")
    for t in targets(results):
        add(f"| {t.name} | {t.measured} | **{t.status}** | {t.why} |")
    add("")


def _replay_section(results: Results, add: Any) -> None:
    add("## Full replay against its limits")
    add("")
    add(
        "Rates in events/s. *replay*: the runner from scratch (its own restore + catch-up "
        "seconds). *journal on*: the same, publishing every outcome to a fresh outcome journal "
        "of the backend, as the command line does. *raw read*: records fetched, nothing "
        "decoded or folded (Redis: plain XRANGE through the same client; *adapter read* is "
        "`read_after`, which also builds records and, on Redis, runs the byte-budgeted read "
        "script). *decode only*: `decode_records` on records already read. *dict fold*: "
        "`fold_dicts` on decoded events. *serial limit*: n / (raw read + decode only + dict "
        "fold seconds), each stage at its ceiling, one after the other. *fold per batch*: the "
        "naive loop (`shop_core.fold` per batch, default GC), one run."
    )
    add("")
    add(
        "| n | backend | replay ev/s | journal on ev/s | on / off | fold per batch ev/s "
        "| raw read ev/s | **replay / raw read** | adapter read ev/s | decode only ev/s "
        "| dict fold ev/s | serial limit ev/s | replay / serial limit | append s |"
    )
    add("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results.runs:
        s = _size(results, r.n)
        dict_s = s.dict_fold_s if s else float("nan")
        serial = r.raw_read_s + r.decode_s + dict_s
        add(
            f"| {_n(r.n)} | {r.backend} | {_rate(r.n, r.replay_s)} "
            f"| {_rate(r.n, r.replay_journal_s)} | {r.replay_s / r.replay_journal_s:.0%} "
            f"| {_rate(r.n, r.replay_transient_s)} | {_rate(r.n, r.raw_read_s)} "
            f"| **{r.raw_read_s / r.replay_s:.0%}** "
            f"| {_rate(r.n, r.adapter_read_s)} | {_rate(r.n, r.decode_s)} "
            f"| {_rate(r.n, dict_s)} | {_rate(r.n, serial)} | {serial / r.replay_s:.0%} "
            f"| {r.append_s:.2f} |"
        )
    add("")
    if results.breakdown:
        n = results.breakdown[0]["n"]
        add(f"### Per event, where the runner's time goes ({_n(n)} events)")
        add("")
        add(
            "Microseconds per event, from one instrumented catch-up per row "
            "([benchmarks/_stages.py](../_stages.py): timing proxies around the log, the "
            "domain's decoder and folder, and the journal; the runner's own observer for each "
            "batch step). *read*: `read_after`, in the read-ahead thread, overlapping the rest "
            "(not part of the total). On the runner's thread: *waiting* for a read not yet "
            "done and the loop; *decode*: `decode_records`; *fold*: the folder (`fold_each` "
            "when keys are honoured or outcomes wanted); *keys and outcomes*: the rest of each "
            "batch step (key checks, outcome objects, tallies, anchors); *publish*: the "
            "outcome journal's write. *raw read*: the same log's raw read, for scale."
        )
        add("")
        add(
            "| backend | journal | read (overlapped) | waiting | decode | fold "
            "| keys and outcomes | publish | **total** | raw read | total / raw read |"
        )
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in results.breakdown:
            us = row["us"]
            same = _run(results, row["backend"], row["n"])
            raw = 1e6 * same.raw_read_s / same.n if same else float("nan")
            ratio = f"{us['total'] / raw:.1f}x" if row["backend"] != "memory" else "-"
            add(
                f"| {row['backend']} | {'on' if row['journal'] else 'off'} | {us['read']:.2f} "
                f"| {us['waiting']:.2f} | {us['decode']:.2f} | {us['fold']:.2f} "
                f"| {us['bookkeeping']:.2f} | {us['publish']:.2f} | **{us['total']:.2f}** "
                f"| {raw:.2f} | {ratio} |"
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


def _snapshot_section(results: Results, add: Any) -> None:
    add("## Snapshot write and restore (10,000 users)")
    add("")
    add(
        "*write*: `encode_snapshot` + `store.write`; ceiling: `store.write` of the same bytes. "
        "*restore*: the runner's restore (`store.read` + `decode_snapshot`) + catch-up of the "
        "last *tail* events; ceiling: `store.read` + raw read of the tail. *speedup*: replay / "
        "restore."
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


def _big_section(results: Results, add: Any) -> None:
    b = results.big
    if not b:
        return
    add(f"## A state of {b['users']:,} users")
    add("")
    add(
        f"A log of one TopUp per user, 100 AddItems and {b['tail']:,} synthetic events "
        f"({b['events']:,} in all, on {b['backend']}); the snapshot after all but the tail, "
        "with an empty key window, as the runner writes it "
        "([benchmarks/big_state.py](../big_state.py))."
    )
    add("")
    add("| store | write (encode + store) s | store write ms | store read ms | restore s |")
    add("|---|---:|---:|---:|---:|")
    for name, st in b["stores"].items():
        add(
            f"| {name} | **{st['write_s']:.2f}** | {_ms(st['store_write_s'])} "
            f"| {_ms(st['read_s'])} | **{st['restore_s']:.2f}** |"
        )
    add("")
    rss = b["rss"]
    add(
        f"- Codec: `encode_snapshot` {_ms(b['encode_s'])} ms (body `encode_state` "
        f"{_ms(b['encode_state_s'])} ms); `decode_snapshot` {_ms(b['decode_snapshot_s'])} ms "
        f"(body `decode_state` {_ms(b['decode_state_s'])} ms). Restore = store read + "
        "`decode_snapshot`, timed by the runner."
    )
    add(
        f"- Bytes per user: the state **{b['state_bytes_per_user']:,.0f}** "
        f"({b['state_bytes'] / MIB:,.0f} MiB, `tracemalloc` after `decode_state`); the "
        f"snapshot **{b['snapshot_bytes_per_user']:,.1f}** ({b['snapshot_bytes']:,} bytes)."
    )
    add(
        f"- Peak RSS (`VmHWM`) of a runner process (`Runner` in a child, {b['backend']} log, a "
        f"copy of the snapshot): after the restore {rss['peak_restored'] / MIB:,.0f} MiB, "
        f"caught up {rss['peak_caught_up'] / MIB:,.0f} MiB, after its final snapshot "
        f"**{rss['peak_end'] / MIB:,.0f} MiB** (RSS at the end {rss['rss_end'] / MIB:,.0f} "
        f"MiB); an idle child that imported the same modules and opened the log: "
        f"{b['rss_baseline']['maxrss_bytes'] / MIB:,.0f} MiB. That child restored in "
        f"{rss['restore_s']:.2f} s."
    )
    add("")


def _writer_section(results: Results, add: Any) -> None:
    w = results.writer
    if not w.get("runs"):
        return
    m = results.meta
    add("## Snapshotting on the hot path")
    add("")
    add(
        f"The runner alone in a child process ([benchmarks/_replay_child.py](../_replay_child.py)"
        f" `writer`) catching up {_n(w['n'])} events from a file log, batches of "
        f"{w.get('batch', m['batch']):,}: no snapshots, then a snapshot every "
        f"{w['snapshot_every']:,} records handed to the writer thread (it encodes and writes "
        "while the fold goes on; the latest hand-off wins), then written by a forked child "
        "(`snapshot_in_child`, like Redis's BGSAVE: the parent pays the fork). Best of "
        f"{m['repeat']} alternating runs each. *batch*: from one batch report of the runner's "
        "observer to the next (read wait + decode + fold + outcomes + the snapshot hand-off). "
        "*cost*: what snapshotting adds per event (1/rate - 1/rate without)."
    )
    add("")
    add(
        "| snapshots | events/s | **vs none** | cost µs/event | batch p50 ms | batch p99 ms "
        "| batch max ms | due | written | write ms (thread) | fork ms (parent) |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = w["runs"][0]["rate"]
    for r in w["runs"]:
        wm = "-" if r["write_mean_ms"] is None else f"{r['write_mean_ms']:.1f}"
        fm = "-" if r["fork_mean_ms"] is None else f"{r['fork_mean_ms']:.1f}"
        cost = 1e6 / r["rate"] - 1e6 / base
        add(
            f"| {r['mode']} | {r['rate']:,.0f} | **{r['rate'] / base:.0%}** | {cost:+.2f} "
            f"| {r['batch_p50_ms']:.1f} | {r['batch_p99_ms']:.1f} | {r['batch_max_ms']:.1f} "
            f"| {r['snapshots_due']} | {r['snapshots_written']} | {wm} | {fm} |"
        )
    add("")


def _keys_section(results: Results, add: Any) -> None:
    k = results.keys
    if not k:
        return
    add("## Idempotency keys")
    add("")
    add(
        f"The real runner over {_n(k['n'])} events in memory logs "
        "([benchmarks/idempotency_keys.py](../idempotency_keys.py)), best of the runs, "
        "alternating: every entry with its own key (as the `synthetic` producer writes them), "
        f"the same entries without keys (window {k['window']:,} records, none present), and "
        "the runner with keys off (`key_window=None`). Every run instrumented "
        "([benchmarks/_stages.py](../_stages.py)); per event from the best run of each."
    )
    add("")
    add(
        "| case | events/s | vs without keys | decode µs | fold µs | keys and outcomes µs "
        "| total µs |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|")
    labels = {
        "with_keys": "key on every event",
        "without_keys": "no keys (window on)",
        "keys_off": "keys off",
    }
    for name, label in labels.items():
        us = k["stages"][name]["us"]
        rate = k["rates"][name]
        add(
            f"| {label} | {rate:,.0f} | **{rate / k['rates']['without_keys']:.0%}** "
            f"| {us['decode']:.2f} | {us['fold']:.2f} | {us['bookkeeping']:.2f} "
            f"| {us['total']:.2f} |"
        )
    add("")
    mem = k["memory"]
    add(
        f"- Bytes per remembered key: **{mem['bytes_per_key']:,.0f}** in memory "
        f"(`tracemalloc`: a `KeyWindow` filled by `consume` with {mem['keys']:,} keys such as "
        f"`{mem['key_example']}`, fingerprints, positions and verdicts; bytes released when it "
        f"is dropped), **{mem['snapshot_bytes_per_key']:,.0f}** in a snapshot "
        f"(`KeyWindow.encode`: {mem['snapshot_bytes']:,} bytes). A full window of "
        f"{k['window']:,} keys: {mem['bytes_per_key'] * k['window'] / MIB:,.0f} MiB in memory, "
        f"{mem['snapshot_bytes_per_key'] * k['window'] / MIB:,.1f} MiB per snapshot."
    )
    add("")


def _travel_section(results: Results, add: Any) -> None:
    t = results.travel
    if not t:
        return
    chains = t["chains"]
    add("## Time travel (`inspect state --at`)")
    add("")
    add(
        f"A {_n(t['n'])}-event log on {t['backend']}. *From scratch*: "
        "`shop_adapters.inspect_commands.state_at` (what `inspect state --at` runs) with no "
        "snapshot and no history, one run. Then, for each chain, the real runner folded the "
        f"log with a snapshot every {t['snapshot_every']:,} records into a fresh history, "
        "and *time travel* is `state_at` from the nearest snapshot, best of the runs. Every "
        "state has the digest of the fold up to the target "
        "([benchmarks/time_travel.py](../time_travel.py))."
    )
    add("")
    for i, c in enumerate(chains):
        pol = c["policy"]
        add(
            f"- chain {i + 1}, {c['name']}: the last {pol['last']}, plus one every "
            f"{pol['every']:,} records, at most {pol['limit']}; it holds snapshots at "
            + ", ".join(_n(x) if x % 1000 == 0 else f"{x:,}" for x in c["chain"])
            + " records."
        )
    add("")
    head = "| target (records) | from scratch ms |"
    rule = "|---:|---:|"
    for i in range(len(chains)):
        head += f" chain {i + 1}: started from | folded | time travel ms | ratio |"
        rule += "---|---:|---:|---:|"
    add(head)
    add(rule)
    for j, row in enumerate(t["targets"]):
        line = f"| {row['records']:,} | {_ms(row['scratch_s'])} |"
        for c in chains:
            r = c["rows"][j]
            line += (
                f" {_start(r)} | {r['folded']:,} | {_ms(r['travel_s'])} | **{r['ratio']:.1%}** |"
            )
        add(line)
    line = f"| **all** | {_ms(t['scratch_s'])} |"
    for c in chains:
        line += f" | | {_ms(c['travel_s'])} | **{c['ratio']:.1%}** |"
    add(line)
    add("")
    c = t.get("command")
    if c:
        add(
            f"The command itself, `{' '.join(c['argv'])}`, as a process (on the chain of "
            f"{c['chain']}): **{c['wall_s']:.2f} s** wall, the interpreter's start and imports "
            f"included; exit status {c['returncode']}, digest "
            f"{'equal' if c['digest'] else 'missing'}."
        )
        add("")


def _start(row: dict[str, Any]) -> str:
    if row["start"] == "0-0":
        return "the origin"
    return f"snapshot at {row['records'] - row['folded']:,}"


def _peer_section(results: Results, add: Any) -> None:
    if not results.peers:
        return
    m = results.meta
    add("## Peer: eventsourcing " + m.get("libraries", {}).get("eventsourcing", ""))
    add("")
    add(
        "One `Aggregate` holding the shop, its events' bodies calling `shop_core.apply` "
        "(identical rules; *apply share* is the part of its replay spent there); an "
        "`Application` with POPO or SQLite (temp file) persistence; `repository.get` from "
        "scratch (replay) and after `Snapshot.take` + `snapshots.put` at the same place as "
        f"ours (restore). Capped at {m['peer_max']:,} events "
        "([benchmarks/peer_eventsourcing.py](../peer_eventsourcing.py))."
    )
    add("")
    add(
        "| n | persistence | load s | replay s | replay ev/s | apply share "
        "| snapshot write ms | restore ms | ours | our replay ev/s | **ours / peer** |"
    )
    add("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for p in results.peers:
        for b, pers in PEER_FOR.items():
            if pers != p["persistence"]:
                continue
            mine = _run(results, b, p["n"])
            if mine is None:
                continue
            add(
                f"| {_n(p['n'])} | {p['persistence']} | {p['load_s']:.2f} "
                f"| {p['replay_s']:.3f} | {_rate(p['n'], p['replay_s'])} "
                f"| {p['apply_share']:.0%} | {_ms(p['snapshot_write_s'])} "
                f"| {_ms(p['restore_s'])} | {b} | {_rate(mine.n, mine.replay_s)} "
                f"| **{p['replay_s'] / mine.replay_s:.1f}x** |"
            )
    add("")


def _memory_section(results: Results, add: Any) -> None:
    mem = results.memory
    if not mem:
        return
    add("## Memory of a replay")
    add("")
    for rss in mem.get("rss", []):
        rep, base = rss["replay"], rss["baseline"]
        add(
            f"- Peak RSS of a full replay of {_n(rss['n'])} events from the "
            f"{rss['backend']} log in a child process: **{rep['maxrss_bytes'] / MIB:,.0f} "
            f"MiB** (an idle child that opened the same log: "
            f"{base['maxrss_bytes'] / MIB:,.0f} MiB; excess "
            f"{max(0, rep['maxrss_bytes'] - base['maxrss_bytes']) / MIB:,.0f} MiB; that "
            f"fresh process replayed at {_rate(rep['events'], rep['seconds'])} ev/s, one run). "
            "`VmHWM` from `/proc/self/status` in the child"
            + (
                " (a file log is scanned through `mmap` when opened: its pages count)."
                if rss["backend"] == "file"
                else "."
            )
        )
    st = mem.get("state")
    if st:
        add(
            f"- State after {_n(st['n'])} events ({st['users']:,} users, {st['items']} "
            f"items): **{st['bytes_per_user']:,.0f} bytes per user** "
            f"({st['state_bytes'] / MIB:,.1f} MiB); the plain-dict baseline's state: "
            f"{st['dict_bytes_per_user']:,.0f} bytes per user (ours / dicts "
            f"{st['bytes_per_user'] / st['dict_bytes_per_user']:.1f}x). `tracemalloc` bytes "
            "still allocated after `fold` and `gc.collect()`, divided by the number of users."
        )
    add("")


def _live_section(results: Results, add: Any) -> None:
    if not results.live.get("follow"):
        return
    from .live import markdown

    add("## Live: a runner process following a producer")
    add("")
    for line in markdown(results.live):
        add(line)
    add("([benchmarks/live.py](../live.py))")
    add("")


def _durations_section(results: Results, add: Any) -> None:
    d = results.meta.get("durations", {})
    if not d:
        return
    cpu = results.meta.get("cpu_seconds", {})
    add("## Where the run's time went")
    add("")
    add(
        "Wall seconds per part, and CPU seconds (user + system of this process and of the "
        "child processes it waited for; the private redis-server's own CPU on its line)."
    )
    add("")
    add("| part | wall s | CPU s |")
    add("|---|---:|---:|")
    for name, seconds in d.items():
        c = cpu.get(name)
        add(f"| {name} | {seconds:,.1f} | {'' if c is None else f'{c:,.1f}'} |")
    if "redis-server" in cpu:
        add(f"| the private redis-server (its own CPU) | | {cpu['redis-server']:,.1f} |")
    add("")


def _markdown(results: Results, plot_name: str) -> str:
    lines: list[str] = []
    add = lines.append
    _header(results, add)
    _targets_section(results, add)
    _replay_section(results, add)
    _snapshot_section(results, add)
    add(f"![replay and restore]({plot_name})")
    add("")
    _big_section(results, add)
    _writer_section(results, add)
    _keys_section(results, add)
    _travel_section(results, add)
    _peer_section(results, add)
    _memory_section(results, add)
    _live_section(results, add)
    _durations_section(results, add)
    return "\n".join(lines)


# --- the plot --------------------------------------------------------------------------


def _plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.5), dpi=110, sharex=True)
    backends = [b for b in ("memory", "file", "redis") if any(r.backend == b for r in results.runs)]
    for b in backends:
        runs = sorted((r for r in results.runs if r.backend == b), key=lambda r: r.n)
        xs = [r.n for r in runs]
        c = COLORS[b]
        left.plot(xs, [r.replay_s for r in runs], "-o", color=c, lw=2, label=f"{b}: replay")
        right.plot(
            xs,
            [r.restore_s for r in runs],
            "-s",
            color=c,
            lw=2,
            mfc="white",
            label=f"{b}: restore",
        )
        if b == "memory":
            continue  # its "read" is a list slice: no limit worth drawing
        left.plot(xs, [r.raw_read_s for r in runs], "--", color=c, lw=1, label=f"{b}: raw read")
        right.plot(
            xs,
            [r.restore_ceiling_s for r in runs],
            ":",
            color=c,
            lw=1,
            label=f"{b}: store read + raw tail read",
        )
    sizes = sorted(results.sizes, key=lambda s: s.n)
    if sizes:
        left.plot(
            [s.n for s in sizes],
            [s.dict_fold_s for s in sizes],
            "--",
            color="gray",
            lw=1.5,
            label="dict fold of decoded events",
        )
    ps = sorted((p for p in results.peers if p["persistence"] == "sqlite"), key=lambda p: p["n"])
    if ps:
        xs = [p["n"] for p in ps]
        left.plot(
            xs,
            [p["replay_s"] for p in ps],
            "-.D",
            color="black",
            lw=1,
            label="eventsourcing (SQLite): replay",
        )
        right.plot(
            xs,
            [p["restore_s"] for p in ps],
            "-.D",
            color="black",
            lw=1,
            label="eventsourcing (SQLite): restore",
        )
    m = results.meta
    tails = "/".join(f"{t:,}" for t in sorted({r.tail for r in results.runs})) or "0"
    left.set_title("Full replay (the runner, from scratch) and its limits", fontsize=10)
    right.set_title(f"Restore (snapshot + catch-up of {tails} events) and its limits", fontsize=10)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("history length (events)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    left.set_ylabel("seconds (best of runs)")
    fig.suptitle(f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
        {"name": t.name, "measured": t.measured, "status": t.status, "why": t.why}
        for t in targets(results)
    ]
    js.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return [md, js, plot]

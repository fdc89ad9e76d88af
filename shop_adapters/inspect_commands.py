"""``inspect``, generic over the domain: :func:`inspect_group` builds the click group.

Read-only but for ``trim``: it never writes snapshots, dead letters or a lease,
so it can run beside a live runner. ``python -m shop_adapters.inspector`` (console script
``shop-inspect``) is this group for the shop. Connection options as for the
runner; the domain's options (the shop's ``--price-list``) must be the runner's.

- ``state [--json] [--at POSITION | --at-time TIME]``: the nearest snapshot at
  or before the target (the latest, or one the history keeps:
  :mod:`shop_adapters.history`) plus the records after it, folded in memory
  through :func:`shop_adapters.catchup.replay`. ``--json`` prints
  ``{"position", "digest", ...the domain's state_json}``.
- ``verify``: rebuild from scratch up to the snapshot's position and compare:
  exit 0 if equal, 1 with the first difference (or if there is no usable
  snapshot, or the history before it is gone).
- ``audit [--json]``: the operators' decisions (:mod:`shop_adapters.audit`).
- ``trim --below-snapshot [--archive FILE]``: the one command that writes: trims
  the stream below the oldest snapshot kept (``XTRIM MINID``), after copying
  the entries to a file log with ``--archive`` (``verify --archive FILE`` then
  still rebuilds from the origin).
- ``pool [--json]`` (a partitioned domain: the shop's ``--shop``): the live pool
  workers, each partition's lease holder and fencing token, the halted ones.
- ``dead-letters [--json]``: every dead letter with its position, reason and
  raw fields; ``--json`` prints one JSON array (``[]`` when none) of
  ``{"position", "reason", "fields": [[name, value], ...]}`` where a name or
  value is a string if it is UTF-8, else ``{"base64": "..."}``.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from returns.result import Failure, Success

from . import audit
from .archive import ArchivedLog, archive_below
from .catchup import Replayed, record_anchor, replay
from .cli_common import (
    CleanErrorsCommand,
    CleanErrorsGroup,
    DomainCli,
    Partitioning,
    connection_options,
    make_client,
    mask_url,
    resolve_url,
    setup_logging,
)
from .domain import Domain, Outcome, Tally
from .envelope import Snapshot, decode_snapshot, read_header
from .errors import GapError, IntegrityError, OperationalError
from .history import HistoryEntry, RedisSnapshotHistory, SnapshotHistory
from .idempotency import DEFAULT_WINDOW
from .journals import OutcomeJournal, RedisOutcomeJournal
from .keys import StreamKeys
from .logs.file import FileLog
from .logs.redis_stream import RedisStreamLog
from .pool import PoolKeys, pool_status
from .protocols import ORIGIN, DeadLetter, EventLog, Position, SnapshotStore
from .redis_errors import redis_errors
from .snapshots.redis import RedisSnapshotStore

__all__ = [
    "StateAt",
    "at_options",
    "dead_letter_json",
    "fold_for",
    "inspect_group",
    "json_value",
    "latest_snapshot",
    "parse_at",
    "parse_at_time",
    "resolve_at",
    "state_at",
    "text_value",
]

_log = logging.getLogger("shop.inspect")


def latest_snapshot(
    store: SnapshotStore, domain: Domain[Any, Any]
) -> tuple[Snapshot[Any] | None, str | None]:
    """``(snapshot, None)``, ``(None, None)`` if absent, ``(None, reason)`` if unusable.
    The snapshot is read with the idempotency window it was folded with."""
    blob = store.read()
    if blob is None:
        return None, None
    header = read_header(blob)
    window = header.key_window if header is not None else None
    match decode_snapshot(blob, domain, window):
        case Success(snap):
            return snap, None
        case Failure(why):
            return None, str(why)
    return None, "unreachable"  # pragma: no cover


class _Ctx:
    """The command's log, store and domain; connected on first use, so ``--help``
    (and a usage error) never starts the embedded Redis or opens a connection."""

    def __init__(
        self,
        redis_url: str | None,
        data_dir: Path,
        domain: Domain[Any, Any],
        stream: str,
        cluster: bool | None = False,
    ) -> None:
        self.stream = stream
        self.cluster = cluster
        self.keys = StreamKeys.for_stream(stream)
        self.domain = domain
        self._redis_url = redis_url
        self._data_dir = data_dir
        self._log: RedisStreamLog | None = None
        self._store: RedisSnapshotStore | None = None

    def _connect(self) -> tuple[RedisStreamLog, RedisSnapshotStore]:
        if self._log is None or self._store is None:
            url = resolve_url(self._redis_url, self._data_dir, create=False)
            _log.info("stream %s at %s", self.stream, mask_url(url))
            client = make_client(url, cluster=self.cluster)
            self._log = RedisStreamLog(client, self.keys.stream, self.keys.dead)
            self._store = RedisSnapshotStore(client, self.keys.snapshot)
        return self._log, self._store

    @property
    def log(self) -> EventLog:
        return self._connect()[0]

    @property
    def store(self) -> SnapshotStore:
        return self._connect()[1]

    @property
    def history(self) -> SnapshotHistory:
        log, _ = self._connect()
        return RedisSnapshotHistory(log.client, self.keys.history)

    @property
    def journal(self) -> OutcomeJournal:
        log, _ = self._connect()
        return RedisOutcomeJournal(log.client, self.keys.outcomes)

    def close(self) -> None:
        if self._log is not None:
            self._log.client.close()


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(1)


def _gap_detail(error: GapError) -> str:
    """What a GapError says was deleted, without its advice."""
    text = str(error)
    if ": " in text:
        text = text.split(": ", 1)[1]
    return text.split(";", 1)[0]


def json_value(raw: bytes) -> str | dict[str, str]:
    """A field name or value for ``--json``, losslessly: the text if ``raw`` is
    valid UTF-8, else ``{"base64": "<standard base64 of the bytes>"}``.

    >>> json_value(b"TopUp"), json_value(b"\\xff")
    ('TopUp', {'base64': '/w=='})
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}


def text_value(raw: bytes) -> str | bytes:
    """A field name or value for the text output: the text if ``raw`` is valid
    UTF-8, else ``raw`` itself, which a dict's repr shows as a Python bytes repr
    (``b'\\xff'``), so nothing is replaced."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    """``{"position": "ms-seq", "reason": str, "fields": [[name, value], ...]}``,
    names and values as :func:`json_value`, in stored order."""
    return {
        "position": str(letter.position),
        "reason": letter.reason,
        "fields": [[json_value(bytes(k)), json_value(bytes(v))] for k, v in letter.fields.items()],
    }


def inspect_group(domain_cli: DomainCli) -> click.Group:
    """The ``inspect`` click group for the domain ``domain_cli`` builds (see the module)."""

    @click.group(cls=CleanErrorsGroup)
    @connection_options
    @domain_cli.add_options
    @click.pass_context
    def cli(ctx: click.Context, /, **options: Any) -> None:
        """Inspect a stream's state, snapshot and dead letters (read-only)."""
        setup_logging("text", logging.WARNING)
        domain = domain_cli.take(options)
        ctx.obj = _Ctx(
            options["redis_url"],
            options["data_dir"],
            domain,
            options["stream"],
            options["cluster"],
        )
        ctx.call_on_close(ctx.obj.close)

    cli.add_command(_state)
    cli.add_command(_verify)
    cli.add_command(_dead_letters)
    cli.add_command(_audit)
    cli.add_command(_trim)
    if domain_cli.partitioning is not None:
        cli.add_command(_pool_command(domain_cli.partitioning))
    return cli


def _pool_command(partitioning: Partitioning) -> click.Command:
    """``inspect pool``: the pool of runners serving the registry (see :func:`pool_status`)."""
    name = partitioning.name

    @click.command("pool")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @click.pass_obj
    def pool(obj: _Ctx, as_json: bool) -> None:
        """The pool serving every partition of the registry: live workers, each
        partition's lease holder and fencing token, halted partitions (read-only).

        Exit 0; 1 if Redis cannot be read.
        """
        log = obj.log
        assert isinstance(log, RedisStreamLog)
        try:
            status = pool_status(
                log.client, partitioning.keys, PoolKeys.for_registry(partitioning.registry)
            )
        except OperationalError as e:
            _fail(f"{type(e).__name__}: {e}")
            return
        if as_json:
            click.echo(json.dumps(status))
            return
        parts = status["partitions"]
        held = sum(1 for p in parts if p["holder"] is not None)
        halted = [p for p in parts if p["halted"] is not None]
        share = (
            f"fair share {status['share']}"
            if status["workers"]
            else f"no live worker: a worker that starts takes up to {status['share']}"
        )
        click.echo(
            f"workers: {len(status['workers'])} live; {name}s: {len(parts)} registered, "
            f"{held} held, {len(halted)} halted; {share}"
        )
        for w in status["workers"]:
            mine = sum(1 for p in parts if (p["holder"] or "").rsplit("#", 1)[0] == w["id"])
            click.echo(f"  worker {w['id']}: {mine} {name}s")
        for p in parts:
            holder = p["holder"] or "nobody"
            line = f"{p['id']}  held by {holder}  token {p['token']}"
            if p["halted"] is not None:
                line += f"  HALTED: {p['halted']}"
            click.echo(line)

    return pool


def parse_at(text: str) -> Position:
    """A position for ``--at``: ``ms-seq``, or ``ms`` alone, meaning the last entry of
    that millisecond (as Redis reads an end ID without a sequence number).

    >>> parse_at("1700000000000-3"), parse_at("1700000000000") == Position(1700000000000, 2**64 - 1)
    (Position(major=1700000000000, minor=3), True)
    """
    if text.isdigit():
        return Position(int(text), _MAX_SEQ)
    return Position.parse(text)


def parse_at_time(text: str) -> Position:
    """A position for ``--at-time``: the last entry at or before an ISO 8601 time
    (a Redis entry ID carries its time in milliseconds); no zone means UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        raise ValueError(f"not an ISO 8601 time: {text!r} ({e})") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return Position(int(moment.timestamp() * 1000), _MAX_SEQ)


_MAX_SEQ = 2**64 - 1


@dataclass
class StateAt:
    """The state :func:`state_at` folded: ``result``, the snapshot it started from
    (``start``, :data:`ORIGIN` for none) and notes for the operator."""

    result: Replayed[Any]
    start: Position
    notes: list[str] = field(default_factory=list)


def state_at(obj: _Ctx, until: Position | None) -> StateAt:
    """The state at ``until`` (``None``: the log's end): from the nearest snapshot at
    or before it (the latest, or one the history keeps), then a read-only replay.

    Raises ``OperationalError`` and ``IntegrityError`` (``GapError``) as the log does.
    """
    domain, notes = obj.domain, []
    last = obj.log.last_position()
    if last == ORIGIN:
        notes.append(f"warning: stream {obj.stream} does not exist or is empty")
    elif until is not None and until > last:
        target = f"{until.major} (ms)" if until.minor == _MAX_SEQ else str(until)
        notes.append(f"{target} is beyond the end of the log, which ends at {last}: showing {last}")
    latest = obj.store.read()
    header = read_header(latest) if latest is not None else None
    candidates: list[tuple[Position, HistoryEntry | None]] = [
        (e.position, e) for e in obj.history.entries()
    ]
    if header is not None:
        candidates.append((header.position, None))  # None: the latest snapshot
    candidates.sort(key=lambda c: (c[0], c[1] is None), reverse=True)
    for position, entry in candidates:
        if until is not None and position > until:
            continue
        blob = latest if entry is None else obj.history.read(entry)
        snap, why = _decode(blob, domain)
        if snap is None:
            notes.append(f"snapshot at {position} set aside ({why})")
            continue
        if until is not None and until == snap.position:
            # The snapshot is the answer (nothing is folded, so no gap after it
            # matters) if the log still holds the record it was folded to: a
            # snapshot of a history since rolled back is never served.
            held = obj.log.read_at(snap.position)
            if held is None or record_anchor(held.fields) != snap.anchor:
                notes.append(
                    f"snapshot at {position} set aside (the log no longer holds its record)"
                )
                continue
            return StateAt(
                Replayed(snap.state, snap.position, snap.anchor, 0, Tally()), snap.position, notes
            )
        try:
            result = replay(
                obj.log,
                domain,
                snap.state,
                snap.position,
                until=until,
                records_before=snap.records,
                anchor=snap.anchor,
                keys=snap.keys,
                key_window=None,
                gap_accepted=snap.gap_accepted,
            )
        except IntegrityError as e:
            if isinstance(e, GapError):
                raise
            notes.append(f"snapshot at {position} set aside ({e})")
            continue
        return StateAt(result, snap.position, notes)
    window = header.key_window if header is not None else DEFAULT_WINDOW
    return StateAt(replay(obj.log, domain, until=until, key_window=window), ORIGIN, notes)


def _decode(blob: bytes | None, domain: Domain[Any, Any]) -> tuple[Snapshot[Any] | None, str]:
    if blob is None:
        return None, "no longer there"
    header = read_header(blob)
    match decode_snapshot(blob, domain, header.key_window if header is not None else None):
        case Success(snap):
            return snap, ""
        case Failure(why):
            return None, str(why)
    return None, "unreachable"  # pragma: no cover


def at_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--at`` and ``--at-time``, for commands that show a state."""
    f = click.option(
        "--at-time",
        default=None,
        help="The state at this time (ISO 8601; no zone means UTC): the last entry at "
        "or before it.",
    )(f)
    f = click.option(
        "--at",
        default=None,
        help="The state after this position (ms-seq, or ms alone for the last entry of "
        "that millisecond).",
    )(f)
    return f


def resolve_at(at: str | None, at_time: str | None) -> Position | None:
    """The target of ``--at``/``--at-time``; a usage error for a bad or double one."""
    if at is not None and at_time is not None:
        raise click.UsageError("--at and --at-time name the same thing: give one")
    try:
        if at is not None:
            return parse_at(at)
        if at_time is not None:
            return parse_at_time(at_time)
    except ValueError as e:
        raise click.BadParameter(
            str(e), param_hint="--at" if at is not None else "--at-time"
        ) from e
    return None


def fold_for(obj: _Ctx, at: str | None, at_time: str | None) -> StateAt:
    """:func:`state_at` for a command's ``--at``/``--at-time``; notes go to stderr,
    and a log that cannot be read ends the command (exit 1)."""
    until = resolve_at(at, at_time)
    try:
        found = state_at(obj, until)
    except (OperationalError, IntegrityError) as e:
        _fail(f"{type(e).__name__}: {e}")
        raise AssertionError("unreachable") from e
    for note in found.notes:
        click.echo(note, err=True)
    return found


@click.command("state", cls=CleanErrorsCommand)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print the whole state as one JSON object: {"position": "ms-seq", "digest": hex, '
    "...the domain's state as JSON}.",
)
@at_options
@click.pass_obj
def _state(obj: _Ctx, as_json: bool, at: str | None, at_time: str | None) -> None:
    """The current state (or the state at --at / --at-time), read-only.

    It starts from the nearest snapshot at or before the target (the latest,
    or one of the history) and folds the records after it. Text output:
    position, digest, where the fold started, what it folded. Notes (a
    snapshot set aside, a target beyond the end, an empty stream) go to
    stderr; exit 0. Exit 1 if Redis cannot be read or the log does not hold
    the history.
    """
    domain = obj.domain
    found = fold_for(obj, at, at_time)
    result, start = found.result, found.start
    digest = domain.digest(result.state)
    if as_json:
        out = {"position": str(result.position), "digest": digest}
        body = domain.state_json(result.state)
        out.update(body if isinstance(body, dict) else {"state": body})
        click.echo(json.dumps(out))
        return
    click.echo(f"position: {result.position}")
    click.echo(f"digest: {digest}")
    click.echo(
        f"from: {'snapshot at ' + str(start) if start != ORIGIN else 'scratch'}; "
        f"folded {result.records} records after it ({result.tally.events} events, "
        f"{len(result.dead_letters)} undecodable)"
    )


@click.command("verify", cls=CleanErrorsCommand)
@click.option(
    "--archive",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The file `inspect trim --archive` wrote: rebuild from it, then the stream.",
)
@click.pass_obj
def _verify(obj: _Ctx, archive: Path | None) -> None:
    """Rebuild from scratch and compare with the latest snapshot.

    Exit 0 and ``ok: ...`` on stdout if equal; exit 1 with one line on stderr
    if they differ (the first difference), if there is no usable snapshot, or
    if the stream's history up to the snapshot is incomplete (trimmed or
    deleted records).
    """
    domain = obj.domain
    snap: Snapshot[Any] | None = None
    try:
        snap, why = latest_snapshot(obj.store, domain)
        if snap is None:
            _fail(f"no usable snapshot: {why}" if why else "no snapshot to verify")
            return
        window = None if snap.keys is None else snap.keys.size
        outcomes: list[tuple[Position, Outcome]] = []
        log = obj.log if archive is None else ArchivedLog(FileLog(archive), obj.log)
        rebuilt = replay(log, domain, until=snap.position, key_window=window, outcomes=outcomes)
    except GapError as e:
        at = "?" if snap is None else str(snap.position)
        _fail(
            f"GapError: cannot verify the snapshot at {at}: the stream's history "
            f"is incomplete ({_gap_detail(e)}), so a rebuild from scratch is impossible"
        )
        return
    except (OperationalError, IntegrityError) as e:
        _fail(f"{type(e).__name__}: {e}")
        return
    if rebuilt.position != snap.position:
        try:
            h = obj.log.history()
        except OperationalError as e:
            _fail(f"{type(e).__name__}: {e}")
            return
        if h.last < snap.position:
            _fail(f"the log ends at {h.last}, before the snapshot's position {snap.position}")
        else:
            _fail(
                f"the snapshot's record {snap.position} is no longer in the log (its first "
                f"record is now {h.first}): the records the snapshot folded were trimmed or "
                "deleted, so it cannot be verified by a replay from scratch"
            )
        return
    diff = domain.difference(rebuilt.state, snap.state)
    if diff is None and rebuilt.records != snap.records:
        diff = f"records folded: rebuilt {rebuilt.records}, snapshot {snap.records}"
    if diff is None and rebuilt.anchor != snap.anchor:
        diff = f"the record at {snap.position} is not the one the snapshot was folded to"
    if diff is None and rebuilt.keys is not None and snap.keys is not None:
        rebuilt.keys.expire(rebuilt.records)
        snap.keys.expire(snap.records)
        if rebuilt.keys.encode() != snap.keys.encode():
            diff = "the remembered idempotency keys differ"
    if diff is not None:
        _fail(f"snapshot at {snap.position} differs from the rebuild: {diff}")
        return
    try:
        journal_diff, published = _compare_journal(obj.journal, outcomes)
    except OperationalError as e:
        _fail(f"{type(e).__name__}: {e}")
        return
    if journal_diff is not None:
        _fail(f"the outcome journal differs from the rebuild: {journal_diff}")
        return
    click.echo(
        f"ok: snapshot at {snap.position} equals the rebuild from scratch "
        f"({snap.records} records, digest {domain.digest(rebuilt.state)}); "
        f"outcome journal: {published} of {len(outcomes)} outcomes published, all equal"
    )


def _compare_journal(
    journal: OutcomeJournal, rebuilt: list[tuple[Position, Outcome]]
) -> tuple[str | None, int]:
    """The first difference between the published outcomes and ``rebuilt`` (their
    rebuild, in order), and how many were published. Outcomes published before
    the journal existed may be absent at the start; none may be absent after one
    was published, and each published one must equal its rebuild."""
    published = journal.read_after(ORIGIN, 10_000)
    if not published:
        return None, 0
    at = {p: i for i, (p, _) in enumerate(rebuilt)}
    start = at.get(published[0][0])
    if start is None:
        return f"it holds an outcome at {published[0][0]}, which no record has", 0
    count = 0
    expected = iter(rebuilt[start:])
    after = ORIGIN
    while published:
        for position, outcome in published:
            want = next(expected, None)
            if want is None:
                return None, count  # published past the snapshot: not compared
            if want[0] != position:
                return f"the outcome of {want[0]} is missing (next is {position})", count
            if want[1] != outcome:
                return (
                    f"at {position}: published {outcome.to_json()}, rebuilt {want[1].to_json()}",
                    count,
                )
            count += 1
            after = position
        published = journal.read_after(after, 10_000)
    missing = next(expected, None)
    if missing is not None:
        return f"the outcome of {missing[0]} is missing (the journal ends at {after})", count
    return None, count


@click.command("dead-letters", cls=CleanErrorsCommand)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON array ([] when there are none) of "
    '{"position", "reason", "fields": [[name, value], ...]}; a name or value is '
    'a string when it is UTF-8, else {"base64": "..."}.',
)
@click.pass_obj
def _dead_letters(obj: _Ctx, as_json: bool) -> None:
    """List the dead letters: position, reason, raw fields.

    Text output: one line per dead letter, <position>  <reason>  {name:
    value, ...}, values that are not UTF-8 shown as Python bytes reprs,
    then "N dead letters" on stderr. Exit 0, or 1 if Redis cannot be read.
    """
    try:
        letters = obj.log.dead_letters()
    except OperationalError as e:
        _fail(f"{type(e).__name__}: {e}")
        return
    if as_json:
        click.echo(json.dumps([dead_letter_json(letter) for letter in letters]))
        return
    for letter in letters:
        fields = {text_value(bytes(k)): text_value(bytes(v)) for k, v in letter.fields.items()}
        click.echo(f"{letter.position}  {letter.reason}  {fields}")
    click.echo(f"{len(letters)} dead letters", err=True)


@click.command("audit", cls=CleanErrorsCommand)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of the entries.")
@click.pass_obj
def _audit(obj: _Ctx, as_json: bool) -> None:
    """The audit trail: every decision an operator took to resume a runner
    (--accept-gap, --accept-rollback), oldest first, with who, why and when.

    Text output: one block per decision. --json: one JSON array of
    {"id", "decision", "reason", "who", "time", ...}. Exit 0 (an empty trail
    prints nothing), 1 if Redis cannot be read.
    """
    log = obj.log
    assert isinstance(log, RedisStreamLog)
    try:
        entries = audit.read(log.client, obj.keys.audit)
    except OperationalError as e:
        _fail(f"{type(e).__name__}: {e}")
        return
    if as_json:
        click.echo(json.dumps([{"id": str(p), **fields} for p, fields in entries]))
        return
    for position, fields in entries:
        click.echo(f"{position} {fields.get('time', '?')} {fields.get('decision', '?')}")
        for name in ("reason", "who", "runner", "at", "records", "action", "error"):
            if name in fields:
                click.echo(f"  {name}: {fields[name]}")
    click.echo(f"{len(entries)} decisions", err=True)


@click.command("trim", cls=CleanErrorsCommand)
@click.option(
    "--below-snapshot",
    is_flag=True,
    help="Trim the entries below the oldest snapshot kept (the latest, or the oldest "
    "of the history). Required: it names what is trimmed.",
)
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="First copy the entries to this file log (appended to; created if missing).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be trimmed; change nothing.")
@click.pass_obj
def _trim(obj: _Ctx, below_snapshot: bool, archive: Path | None, dry_run: bool) -> None:
    """Trim the stream below the oldest snapshot kept: XTRIM <stream> MINID <position>.

    The only command of inspect that writes. Nothing above the oldest snapshot
    kept is ever trimmed, so the runner resumes and time travel still works
    from every snapshot kept; a rebuild from scratch needs the archive
    (verify --archive FILE). With --archive FILE the entries are first
    appended to FILE (and synced), each with its position. Exit 0; 1 if there
    is no snapshot, or Redis cannot be read or refuses.
    """
    if not below_snapshot:
        raise click.UsageError("say what to trim: --below-snapshot")
    log = obj.log
    assert isinstance(log, RedisStreamLog)
    try:
        latest = obj.store.read()
        header = read_header(latest) if latest is not None else None
        kept = [e.position for e in obj.history.entries()]
        if header is not None:
            kept.append(header.position)
        if not kept:
            _fail("no snapshot: nothing may be trimmed (the log is the only copy of history)")
            return
        below = min(kept)
        older = [r.position for r in log.read_after(ORIGIN, 1) if r.position < below]
        if dry_run or not older:
            what = "would trim" if older else "nothing to trim"
            click.echo(f"{what}: the entries of {obj.stream} below {below}")
            return
        copied = 0
        if archive is not None:
            with FileLog(archive) as file:
                copied = archive_below(log, file, below, obj.stream)
        with redis_errors("XTRIM", obj.stream):
            trimmed = log.client.xtrim(obj.stream, minid=str(below), approximate=False)
    except (OperationalError, IntegrityError) as e:
        _fail(f"{type(e).__name__}: {e}")
        return
    where = f"; archived {copied} entries to {archive}" if archive is not None else ""
    click.echo(f"trimmed {trimmed} entries of {obj.stream} below {below}{where}")

"""``inspect``, generic over the domain: :func:`inspect_group` builds the click group.

Read-only: never writes snapshots, dead letters or a lease, so it can run
beside a live runner. ``python -m shop_adapters.inspector`` (console script
``shop-inspect``) is this group for the shop. Connection options as for the
runner; the domain's options (the shop's ``--price-list``) must be the runner's.

- ``state [--json] [--at POSITION]``: the latest snapshot plus the records
  after it, folded in memory through :func:`shop_adapters.catchup.replay`.
  ``--at`` folds up to and including ``POSITION``, from the snapshot if it is
  at or below it, else from scratch. ``--json`` prints ``{"position",
  "digest", ...the domain's state_json}``.
- ``verify``: rebuild from scratch up to the snapshot's position and compare:
  exit 0 if equal, 1 with the first difference (or if there is no usable
  snapshot, or the history before it is gone).
- ``audit [--json]``: the operators' decisions (:mod:`shop_adapters.audit`).
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
from pathlib import Path
from typing import Any

import click
from returns.result import Failure, Success

from . import audit
from .catchup import Replayed, replay
from .cli_common import (
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
from .journals import OutcomeJournal, RedisOutcomeJournal
from .keys import StreamKeys
from .logs.redis_stream import RedisStreamLog
from .pool import PoolKeys, pool_status
from .protocols import ORIGIN, DeadLetter, EventLog, Position, SnapshotStore
from .snapshots.redis import RedisSnapshotStore

__all__ = ["dead_letter_json", "inspect_group", "json_value", "latest_snapshot", "text_value"]

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
            url = resolve_url(self._redis_url, self._data_dir)
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
        click.echo(
            f"workers: {len(status['workers'])} live; {name}s: {len(parts)} registered, "
            f"{held} held, {len(halted)} halted; fair share {status['share']}"
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


@click.command("state")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print the whole state as one JSON object: {"position": "ms-seq", "digest": hex, '
    "...the domain's state as JSON}.",
)
@click.option("--at", default=None, help="Fold up to and including this position (ms-seq).")
@click.pass_obj
def _state(obj: _Ctx, as_json: bool, at: str | None) -> None:
    """The current state (or the state at --at), read-only.

    Text output: position, digest, where the fold started (snapshot or
    scratch), what it folded. Warnings (a snapshot set aside, a stream that
    does not exist or is empty) go to stderr; exit 0. Exit 1 if Redis cannot
    be read or the log does not hold the history.
    """
    domain = obj.domain
    try:
        until = Position.parse(at) if at is not None else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--at") from e
    try:
        snap, why = latest_snapshot(obj.store, domain)
        if why is not None:
            click.echo(f"snapshot set aside ({why}); folding from scratch", err=True)
        if obj.log.last_position() == ORIGIN:
            click.echo(f"warning: stream {obj.stream} does not exist or is empty", err=True)
        if snap is not None and until is not None and until == snap.position:
            # The snapshot is the answer: nothing is folded, so no gap matters.
            result: Replayed[Any] = Replayed(snap.state, snap.position, snap.anchor, 0, Tally(), [])
            start = snap.position
        elif snap is not None and (until is None or snap.position <= until):
            start = snap.position
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
            )
        else:
            start = ORIGIN
            result = replay(obj.log, domain, until=until)
    except (OperationalError, IntegrityError) as e:
        _fail(f"{type(e).__name__}: {e}")
        return
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


@click.command("verify")
@click.pass_obj
def _verify(obj: _Ctx) -> None:
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
        rebuilt = replay(obj.log, domain, until=snap.position, key_window=window, outcomes=outcomes)
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


@click.command("dead-letters")
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


@click.command("audit")
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

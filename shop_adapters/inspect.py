"""``python -m shop_adapters.inspect``: look at a stream's state, read-only.

Never writes: no snapshots, no dead letters, no lease (it can run beside a
live runner). Connection options as for the runner.

- ``state [--json] [--at POSITION]``: the latest snapshot plus the records
  after it, folded in memory. ``--at`` folds up to and including
  ``POSITION`` (``ms-seq``), from the snapshot if it is at or below it, else
  from scratch. ``--json`` prints ``{"position", "digest", "users": {id:
  balance}, "items": {id: {"price", "stock"}}}`` (ids as JSON strings, money in
  minor units).
- ``verify``: rebuild from scratch up to the snapshot's position and compare
  with the snapshot: exit 0 if equal, 1 with the first difference (or if
  there is no usable snapshot).
- ``dead-letters [--json]``: every dead letter with its position, reason and
  raw fields; ``--json`` prints one JSON array (``[]`` when none) of
  ``{"position", "reason", "fields": [[name, value], ...]}`` where a name or
  value is a string if it is UTF-8, else ``{"base64": "..."}``; the text
  output shows non-UTF-8 values as Python bytes reprs.

``--price-list`` must be the runner's, or v0 AddItem prices differ.
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

from shop_core import EMPTY, Outcomes, ShopState, state_digest

from .cli_common import (
    CleanErrorsGroup,
    connection_options,
    make_client,
    mask_url,
    resolve_url,
    setup_logging,
)
from .codec import (
    Decoder,
    Snapshot,
    decode_snapshot,
    describe_decoder_digest,
    load_price_list,
)
from .errors import GapError, IntegrityError, OperationalError
from .logs.redis_stream import RedisStreamLog
from .protocols import ORIGIN, DeadLetter, EventLog, Position, SnapshotStore
from .runner import replay
from .snapshots.redis import RedisSnapshotStore

__all__ = [
    "cli",
    "dead_letter_json",
    "first_difference",
    "json_value",
    "latest_snapshot",
    "price_list_mismatch",
    "state_json",
    "text_value",
]

_log = logging.getLogger("shop.inspect")


def latest_snapshot(store: SnapshotStore) -> tuple[Snapshot | None, str | None]:
    """``(snapshot, None)``, ``(None, None)`` if absent, ``(None, reason)`` if unusable."""
    blob = store.read()
    if blob is None:
        return None, None
    match decode_snapshot(blob):
        case Success(snap):
            return snap, None
        case Failure(why):
            return None, str(why)
    return None, "unreachable"  # pragma: no cover


def price_list_mismatch(snap: Snapshot, decoder: Decoder) -> str | None:
    """Why ``snap`` cannot be used with ``decoder`` (folded with another price
    list: their digests differ), or ``None`` if it can."""
    if snap.decoder_digest == decoder.config_digest:
        return None
    return (
        f"snapshot was folded with another price list "
        f"(snapshot: {describe_decoder_digest(snap.decoder_digest)}, "
        f"this --price-list: {describe_decoder_digest(decoder.config_digest)})"
    )


def state_json(state: ShopState, position: Position) -> dict[str, Any]:
    """The ``--json`` shape: ``{"position": "ms-seq", "digest": hex, "users":
    {"<id>": balance}, "items": {"<id>": {"price": int | None, "stock": int}}}``,
    ids sorted."""
    return {
        "position": str(position),
        "digest": state_digest(state),
        "users": {str(uid): state.users[uid].balance for uid in sorted(state.users)},
        "items": {
            iid: {"price": state.items[iid].price, "stock": state.items[iid].stock}
            for iid in sorted(state.items)
        },
    }


def first_difference(expected: ShopState, actual: ShopState) -> str | None:
    """The first difference between two states (users, then items, by sorted id),
    described in words, or ``None`` if equal. ``expected`` is the rebuild."""
    for uid in sorted(set(expected.users) | set(actual.users)):
        a, b = expected.users.get(uid), actual.users.get(uid)
        if a != b:
            return f"user {uid}: rebuilt {a}, snapshot {b}"
    for iid in sorted(set(expected.items) | set(actual.items)):
        c, d = expected.items.get(iid), actual.items.get(iid)
        if c != d:
            return f"item {iid!r}: rebuilt {c}, snapshot {d}"
    return None


class _Ctx:
    """The command's log and store, connected on first use, so ``--help`` (and a
    usage error) never starts the embedded Redis or opens a connection."""

    def __init__(
        self, redis_url: str | None, data_dir: Path, decoder: Decoder, stream: str
    ) -> None:
        self.stream = stream
        self.decoder = decoder
        self._redis_url = redis_url
        self._data_dir = data_dir
        self._log: RedisStreamLog | None = None
        self._store: RedisSnapshotStore | None = None

    def _connect(self) -> tuple[RedisStreamLog, RedisSnapshotStore]:
        if self._log is None or self._store is None:
            url = resolve_url(self._redis_url, self._data_dir)
            _log.info("stream %s at %s", self.stream, mask_url(url))
            client = make_client(url)
            self._log = RedisStreamLog(client, self.stream)
            self._store = RedisSnapshotStore(client, f"{self.stream}:snapshot")
        return self._log, self._store

    @property
    def log(self) -> EventLog:
        return self._connect()[0]

    @property
    def store(self) -> SnapshotStore:
        return self._connect()[1]

    def close(self) -> None:
        if self._log is not None:
            self._log.client.close()


@click.group(cls=CleanErrorsGroup)
@connection_options
@click.option(
    "--price-list",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The runner's price list for v0 AddItem entries.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    redis_url: str | None,
    stream: str,
    data_dir: Path,
    price_list: Path | None,
) -> None:
    """Inspect a stream's state, snapshot and dead letters (read-only)."""
    setup_logging("text", logging.WARNING)
    try:
        decoder = Decoder(load_price_list(price_list)) if price_list else Decoder()
    except (OSError, ValueError, TypeError) as e:
        raise click.BadParameter(str(e), param_hint="--price-list") from e
    ctx.obj = _Ctx(redis_url, data_dir, decoder, stream)
    ctx.call_on_close(ctx.obj.close)


def _gap_detail(error: GapError) -> str:
    """What a GapError says was deleted, without its advice for the runner."""
    text = str(error)
    if ": " in text:
        text = text.split(": ", 1)[1]
    return text.split(";", 1)[0]


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(1)


@cli.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print the whole state as one JSON object: {"position": "ms-seq", "digest": hex, '
    '"users": {"<id>": balance}, "items": {"<id>": {"price": int|null, "stock": int}}} '
    "(money in minor units, ids sorted).",
)
@click.option("--at", default=None, help="Fold up to and including this position (ms-seq).")
@click.pass_obj
def state(obj: _Ctx, as_json: bool, at: str | None) -> None:
    """The current state (or the state at --at), read-only.

    Text output: ``position``, ``digest``, user and item counts with totals,
    and where the fold started (snapshot or scratch). Warnings (a snapshot set
    aside, a stream that does not exist or is empty) go to stderr; exit 0.
    Exit 1 if Redis cannot be read or the log is discontinuous.
    """
    try:
        until = Position.parse(at) if at is not None else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--at") from e
    try:
        snap, why = latest_snapshot(obj.store)
        if why is not None:
            click.echo(f"snapshot set aside ({why}); folding from scratch", err=True)
        mismatch = None if snap is None else price_list_mismatch(snap, obj.decoder)
        if mismatch is not None:
            click.echo(f"{mismatch}; rebuilding by replay from scratch", err=True)
            snap = None
        start, after = EMPTY, ORIGIN
        if snap is not None and (until is None or snap.position <= until):
            start, after = snap.state, snap.position
        if obj.log.last_position() == ORIGIN:
            click.echo(f"warning: stream {obj.stream} does not exist or is empty", err=True)
        if snap is not None and until is not None and until == snap.position:
            # The snapshot is the answer: nothing is folded, so no gap matters.
            no_letters: list[DeadLetter] = []
            result, position, outcomes, dead = snap.state, snap.position, Outcomes(), no_letters
        else:
            result, position, outcomes, dead = replay(
                obj.log, obj.decoder, start, after, until=until
            )
    except (OperationalError, IntegrityError) as e:
        _fail(f"{type(e).__name__}: {e}")
        return
    if as_json:
        click.echo(json.dumps(state_json(result, position)))
        return
    click.echo(f"position: {position}")
    click.echo(f"digest: {state_digest(result)}")
    balances = sum(u.balance for u in result.users.values())
    click.echo(f"users: {len(result.users)}, balances total {balances}")
    click.echo(
        f"items: {len(result.items)}, stock total {sum(i.stock for i in result.items.values())}"
    )
    click.echo(
        f"from: {'snapshot at ' + str(after) if after != ORIGIN else 'scratch'}; "
        f"folded {outcomes.events} events after it ({len(dead)} undecodable)"
    )


@cli.command()
@click.pass_obj
def verify(obj: _Ctx) -> None:
    """Rebuild from scratch and compare with the latest snapshot.

    Exit 0 and ``ok: ...`` on stdout if equal; exit 1 with one line on stderr
    if they differ (the first difference), if there is no usable snapshot, if
    it was folded with another --price-list, or if the stream's history up to
    the snapshot is incomplete (trimmed or deleted records).
    """
    try:
        snap, why = latest_snapshot(obj.store)
        if snap is None:
            _fail(f"no usable snapshot: {why}" if why else "no snapshot to verify")
            return
        mismatch = price_list_mismatch(snap, obj.decoder)
        if mismatch is not None:
            _fail(
                f"{mismatch}; the runner rebuilds it by replay on its next start. "
                "Pass the runner's --price-list to verify this snapshot"
            )
            return
        rebuilt, position, outcomes, dead = replay(obj.log, obj.decoder, until=snap.position)
    except GapError as e:
        at = "?" if snap is None else str(snap.position)
        _fail(
            f"GapError: cannot verify the snapshot at {at}: the stream's history "
            f"is incomplete (records before it were trimmed or deleted: {_gap_detail(e)}), so "
            "a rebuild from scratch is impossible. This is expected after XTRIM MINID "
            "<snapshot position>; the runner still resumes from the snapshot"
        )
        return
    except (OperationalError, IntegrityError) as e:
        _fail(f"{type(e).__name__}: {e}")
        return
    if position != snap.position:
        try:
            first, last = obj.log.first_position(), obj.log.last_position()
        except OperationalError as e:
            _fail(f"{type(e).__name__}: {e}")
            return
        if last < snap.position:
            _fail(f"the log ends at {last}, before the snapshot's position {snap.position}")
        else:
            _fail(
                f"the snapshot's record {snap.position} is no longer in the log (its first "
                f"record is now {first}): the records the snapshot folded were trimmed or "
                "deleted, so it cannot be verified by a replay from scratch"
            )
        return
    diff = first_difference(rebuilt, snap.state)
    if diff is None and outcomes.events + len(dead) != snap.events_folded:
        diff = (
            f"records folded: rebuilt {outcomes.events + len(dead)}, snapshot {snap.events_folded}"
        )
    if diff is not None:
        _fail(f"snapshot at {snap.position} differs from the rebuild: {diff}")
        return
    click.echo(
        f"ok: snapshot at {snap.position} equals the rebuild from scratch "
        f"({snap.events_folded} records, digest {state_digest(rebuilt)})"
    )


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
    names and values as :func:`json_value` (a list of pairs, in stored order, so
    that a name that is not UTF-8 is kept exactly too)."""
    return {
        "position": str(letter.position),
        "reason": letter.reason,
        "fields": [[json_value(bytes(k)), json_value(bytes(v))] for k, v in letter.fields.items()],
    }


@cli.command("dead-letters")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON array (``[]`` when there are none) of "
    '{"position", "reason", "fields": [[name, value], ...]}; a name or value is '
    'a string when it is UTF-8, else {"base64": "..."}.',
)
@click.pass_obj
def dead_letters(obj: _Ctx, as_json: bool) -> None:
    """List the dead letters: position, reason, raw fields.

    Text output: one line per dead letter, ``<position>  <reason>  {name:
    value, ...}``, values that are not UTF-8 shown as Python bytes reprs
    (``b'\\xff'``), then ``N dead letters`` on stderr. --json: one JSON array
    on stdout (see the option). Exit 0, or 1 if Redis cannot be read.
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


if __name__ == "__main__":
    cli()

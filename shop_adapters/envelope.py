"""The snapshot envelope: a domain's state body wrapped with where, what and a checksum.

Generic over the :class:`~shop_adapters.domain.Domain`: the body is whatever
``domain.encode_state`` writes; the envelope records everything the shell
needs to decide whether it may reuse it. Layout (never pickle; nothing in a
snapshot is executed)::

    SHOPSNAP\\n
    {"format_version":2,"domain":"shop","semantics_version":1,"config_digest":null,
     "position":"5-9","records":12,"dead_letters":1,"tally":{..},"anchor":"<hex>",
     "key_window":100000,"body_length":N,"keys_length":K}\\n
    <body: N bytes, domain.encode_state(state)><keys: K bytes, KeyWindow.encode()>
    \\nsha256:<64 hex digits: SHA-256 of every byte before this line>\\n

- ``records``: log records consumed up to ``position``, whatever became of
  them (folded, dead-lettered); ``dead_letters`` of them were dead letters;
- ``tally``: the cumulative :class:`~shop_adapters.domain.Tally`;
- ``config_digest``: the folding domain's ``config_digest`` (``null`` for none);
- ``anchor``: :func:`shop_adapters.catchup.record_anchor` of the record at
  ``position`` (``null`` at the origin), so a reader can tell whether the log
  still holds the record the state was folded to;
- ``key_window``: the idempotency window in records (``null``: keys not
  honoured), and the remembered keys after the body
  (:mod:`shop_adapters.idempotency`);
- ``gap_accepted`` (only when set): the highest deleted record an operator
  accepted to fold over (``--accept-gap``), at or after ``position`` (the
  state's own record may be the one deleted), so that the next restore does not
  stop at the same gap again.

:func:`decode_snapshot` refuses (``Failure(reason)``) anything it cannot trust:
empty, truncated, another format or format version (format 1, written before
the envelope was generic, is rebuilt by replay), a checksum mismatch, a header
of the wrong shape, another domain, another semantics version, another
configuration, or a body the domain cannot read. The checksum covers the
magic, the header and the body, so any corrupted byte is detected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from returns.result import Failure, Result, Success

from ._json import strict_json
from .domain import Domain, Tally
from .idempotency import DEFAULT_WINDOW, KeyWindow
from .protocols import ORIGIN, Position

__all__ = [
    "FORMAT_VERSION",
    "Header",
    "Snapshot",
    "decode_snapshot",
    "encode_snapshot",
    "read_header",
]

S = TypeVar("S")

FORMAT_VERSION = 2
"""Version of the byte layout written by :func:`encode_snapshot`."""

_MAGIC = b"SHOPSNAP\n"
_TRAILER_PREFIX = b"\nsha256:"
_TRAILER_LEN = len(_TRAILER_PREFIX) + 64 + 1
_MAX_HEADER = 1 << 16
_KEYS = frozenset(
    {
        "format_version",
        "domain",
        "semantics_version",
        "config_digest",
        "position",
        "records",
        "dead_letters",
        "tally",
        "anchor",
        "key_window",
        "body_length",
        "keys_length",
    }
)


class _Invalid(Exception):
    """Internal: the blob is not a usable snapshot; ``args[0]`` is the reason."""


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[S]):
    """A state and where in the log it was taken.

    - ``state``: the fold of the log up to and including ``position``;
    - ``position``: the last record consumed (:data:`~shop_adapters.protocols.ORIGIN` if none);
    - ``records``: records consumed up to ``position`` (events and dead letters);
    - ``dead_letters``: how many of them were dead letters;
    - ``tally``: cumulative :class:`~shop_adapters.domain.Tally` of the events;
    - ``anchor``: fingerprint of the record at ``position`` (``None`` at the origin);
    - ``keys``: the remembered idempotency keys (``None``: keys not honoured);
    - ``gap_accepted``: see :class:`~shop_adapters.catchup.Checkpoint`.
    """

    state: S
    position: Position
    records: int
    dead_letters: int = 0
    tally: Tally = field(default_factory=Tally)
    anchor: str | None = None
    keys: KeyWindow | None = None
    gap_accepted: Position | None = None


class Header(NamedTuple):
    """Where a stored snapshot claims to be: its ``position``, ``records`` consumed,
    and the idempotency ``key_window`` it was folded with (``None``: none)."""

    position: Position
    records: int
    key_window: int | None


def read_header(blob: bytes) -> Header | None:
    """The header of a stored snapshot, read without checking the body or the
    checksum (cheap for a large state), or ``None`` if it has no readable one.
    For deciding not to overwrite it, never for trusting it."""
    try:
        header, _ = _header(bytes(blob))
        position = Position.parse(header["position"])
        records = header.get("records", header.get("events_folded", 0))
        window = header.get("key_window")
        return Header(
            position,
            records if type(records) is int else 0,
            window if type(window) is int else None,
        )
    except (_Invalid, KeyError, TypeError, ValueError):
        return None


def encode_snapshot(snapshot: Snapshot[S], domain: Domain[S, Any]) -> bytes:
    """``snapshot`` as bytes (layout in the module docstring).

    Equal snapshots give equal bytes when the domain's body is canonical.
    """
    body = domain.encode_state(snapshot.state)
    keys = b"" if snapshot.keys is None else snapshot.keys.encode()
    header = {
        "format_version": FORMAT_VERSION,
        "domain": domain.name,
        "semantics_version": domain.semantics_version,
        "config_digest": domain.config_digest,
        "position": str(snapshot.position),
        "records": snapshot.records,
        "dead_letters": snapshot.dead_letters,
        "tally": snapshot.tally.to_json(),
        "anchor": snapshot.anchor,
        "key_window": None if snapshot.keys is None else snapshot.keys.size,
        "body_length": len(body),
        "keys_length": len(keys),
    }
    if snapshot.gap_accepted is not None:
        header["gap_accepted"] = str(snapshot.gap_accepted)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    sha = hashlib.sha256(_MAGIC)
    sha.update(head)
    sha.update(b"\n")
    sha.update(body)
    sha.update(keys)
    trailer = _TRAILER_PREFIX + sha.hexdigest().encode("ascii") + b"\n"
    return b"".join((_MAGIC, head, b"\n", body, keys, trailer))


def decode_snapshot(
    blob: bytes, domain: Domain[S, Any], key_window: int | None = DEFAULT_WINDOW
) -> Result[Snapshot[S], str]:
    """Read a snapshot of ``domain``: ``Success(snapshot)`` or ``Failure(reason)``.

    ``key_window``: the reader's idempotency window (records; default the
    runner's default), ``None`` if it honours no keys; a snapshot taken with
    another one is refused. Never raises
    for bad input and never executes anything (see the module docstring for
    the reasons).

    >>> from shop_adapters.shop_domain import ShopDomain
    >>> decode_snapshot(b"\\x80\\x04K\\x01.", ShopDomain())
    <Failure: not a shop snapshot (looks like a pickle; never unpickled)>
    """
    try:
        return Success(_decode(blob, domain, key_window))
    except _Invalid as exc:
        return Failure(exc.args[0])


def _nat(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if type(value) is not int or value < 0:
        raise _Invalid(
            f"corrupt snapshot header: {key} must be a non-negative int, got {value!r:.40}"
        )
    return value


def _hex_or_none(header: dict[str, Any], key: str, length: int) -> str | None:
    value = header.get(key)
    if value is None:
        return None
    if type(value) is not str or len(value) != length or value.strip("0123456789abcdef"):
        raise _Invalid(
            f"corrupt snapshot header: {key} must be {length} lowercase hex digits or null, "
            f"got {value!r:.80}"
        )
    return value


def _header(blob: bytes) -> tuple[dict[str, Any], int]:
    """The header object and the offset where the body starts."""
    if not blob.startswith(_MAGIC):
        if _MAGIC.startswith(blob):
            raise _Invalid(f"truncated snapshot: {len(blob)} bytes, ends inside the magic line")
        if blob[:1] == b"\x80":
            raise _Invalid("not a shop snapshot (looks like a pickle; never unpickled)")
        raise _Invalid(f"not a shop snapshot (bad magic: expected {_MAGIC!r}, got {blob[:9]!r})")
    end = blob.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
    if end < 0:
        raise _Invalid("truncated or corrupt snapshot: no end of the header line")
    try:
        header = strict_json(blob[len(_MAGIC) : end])
    except (ValueError, RecursionError) as exc:
        raise _Invalid(f"corrupt snapshot header: not valid JSON ({exc})") from None
    if type(header) is not dict:
        raise _Invalid(
            f"corrupt snapshot header: expected a JSON object, got {type(header).__name__}"
        )
    return header, end + 1


def _decode(blob: bytes, domain: Domain[S, Any], key_window: int | None) -> Snapshot[S]:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise _Invalid(f"a snapshot is bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if not blob:
        raise _Invalid("empty snapshot (0 bytes)")
    header, start = _header(blob)
    fmt = header.get("format_version")
    if fmt != FORMAT_VERSION or type(fmt) is not int:
        raise _Invalid(
            f"unknown snapshot format version {fmt!r:.40} (this build reads {FORMAT_VERSION}; "
            "rebuild by replay)"
        )
    if set(header) != _KEYS and set(header) != _KEYS | {"gap_accepted"}:
        missing, extra = sorted(_KEYS - set(header)), sorted(set(header) - _KEYS)
        what = f"missing field {missing[0]!r}" if missing else f"unexpected field {extra[0]!r:.80}"
        raise _Invalid(f"corrupt snapshot header: {what}")
    body_length = _nat(header, "body_length")
    keys_length = _nat(header, "keys_length")
    expected = start + body_length + keys_length + _TRAILER_LEN
    if len(blob) != expected:
        kind = "truncated" if len(blob) < expected else "corrupt"
        raise _Invalid(f"{kind} snapshot: {len(blob)} bytes, the header announces {expected}")
    trailer = blob[-_TRAILER_LEN:]
    if not trailer.startswith(_TRAILER_PREFIX) or not trailer.endswith(b"\n"):
        raise _Invalid("corrupt snapshot: checksum trailer missing or damaged")
    digest = hashlib.sha256(memoryview(blob)[:-_TRAILER_LEN]).hexdigest().encode("ascii")
    if trailer[len(_TRAILER_PREFIX) : -1] != digest:
        raise _Invalid("snapshot checksum mismatch (SHA-256): the snapshot is corrupt")
    if header["domain"] != domain.name:
        raise _Invalid(f"a snapshot of the domain {header['domain']!r:.40}, not {domain.name!r}")
    semantics = _nat(header, "semantics_version")
    if semantics != domain.semantics_version:
        raise _Invalid(
            f"stale semantics version {semantics}, running {domain.semantics_version}; "
            "rebuild by replay"
        )
    config = _hex_or_none(header, "config_digest", 64)
    if config != domain.config_digest:
        raise _Invalid(
            f"snapshot was folded with another configuration (snapshot: "
            f"{domain.describe_config(config)}, running: "
            f"{domain.describe_config(domain.config_digest)})"
        )
    position_text = header["position"]
    try:
        if type(position_text) is not str:
            raise ValueError("position must be a 'major-minor' string")
        position = Position.parse(position_text)
    except ValueError as exc:
        raise _Invalid(f"corrupt snapshot header: {exc}") from None
    anchor = _hex_or_none(header, "anchor", 40)
    if (anchor is None) != (position == ORIGIN):
        raise _Invalid("corrupt snapshot header: an anchor goes with every position but 0-0")
    gap_accepted: Position | None = None
    if "gap_accepted" in header:
        try:
            text = header["gap_accepted"]
            if type(text) is not str:
                raise ValueError("gap_accepted must be a 'major-minor' string")
            gap_accepted = Position.parse(text)
        except ValueError as exc:
            raise _Invalid(f"corrupt snapshot header: {exc}") from None
        if gap_accepted < position:
            raise _Invalid("corrupt snapshot header: gap_accepted is before the position")
    try:
        tally = Tally.from_json(header["tally"])
    except ValueError as exc:
        raise _Invalid(f"corrupt snapshot header: {exc}") from None
    records, dead = _nat(header, "records"), _nat(header, "dead_letters")
    if dead > records or tally.events > records:
        raise _Invalid(
            f"corrupt snapshot header: {records} records cannot hold {dead} dead letters "
            f"and {tally.events} events"
        )
    window = header["key_window"]
    if window != key_window:
        raise _Invalid(
            f"snapshot was folded with another idempotency window (snapshot: "
            f"{_window(window)}, running: {_window(key_window)}); rebuild by replay"
        )
    keys: KeyWindow | None = None
    if window is not None:
        try:
            keys = KeyWindow.decode(blob[start + body_length : start + body_length + keys_length])
        except ValueError as exc:
            raise _Invalid(f"corrupt snapshot keys: {exc}") from None
        if keys.size != window:
            raise _Invalid("corrupt snapshot keys: the window size differs from the header's")
    try:
        state = domain.decode_state(blob[start : start + body_length])
    except ValueError as exc:
        raise _Invalid(f"corrupt snapshot body: {exc}") from None
    return Snapshot(state, position, records, dead, tally, anchor, keys, gap_accepted)


def _window(size: object) -> str:
    return "no keys" if size is None else f"{size} records"

"""Views in Redis: one hash per view, its documents and its tracking position together.

A view (:mod:`shop_adapters.projections`) named ``<name>`` of the stream
``<stream>`` lives in the hash ``<stream>:view:<name>`` (:class:`ViewKeys`):
one field per document (its JSON, msgspec-encoded, integers exact at any
size) and, beside them, the view's *checkpoint* in fields that start with
``@`` (:class:`ViewCheckpoint`):

- ``@position``: the tracking position, the ID of the last outcome applied
  (``ms-seq``; ``0-0`` before the first);
- ``@anchor``: the SHA-1 of that outcome entry's fields
  (:func:`~shop_adapters.catchup.record_anchor`), so a replaced or rolled-back
  journal is recognised; ``""`` at ``0-0``;
- ``@outcomes``: how many outcomes the view has applied;
- ``@version``: the projection's version that built it;
- ``@generation``: a random token naming this build of the view.

Because documents and checkpoint share one key, every write is one Lua script
on one key (:data:`APPLY`: compare the generation and position, then ``HSET``
and ``HDEL`` the changed documents and the new checkpoint), a reader's
``HGETALL`` or ``HMGET`` sees a whole view at one position, and a crash at any
moment either applied a batch with its position or did not apply it at all.

A rebuild is built beside the live view, in ``<stream>:view:<name>:rebuild``,
and switched in by :data:`SWITCH`: in one script, ``RENAME`` the live view to
``...:retired``, ``RENAME`` the rebuild to the live name, ``UNLINK`` the
retired one (freed in the background). Readers only ever read the live name,
so they see the old view whole, then the new one whole.

Errors: redis-py errors become :class:`~shop_adapters.errors.OperationalError`
(retry) or :class:`~shop_adapters.errors.PermanentError` (for example
``WRONGTYPE``), as :func:`~shop_adapters.redis_errors.classify` says; a field
that is not a valid checkpoint or document is an
:class:`~shop_adapters.errors.IntegrityError` naming the key.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import redis

from .errors import IntegrityError
from .projections import NAME_PATTERN, Doc
from .protocols import Position
from .redis_errors import redis_errors

__all__ = [
    "APPLY",
    "BEGIN",
    "CHECKPOINT_FIELDS",
    "SWITCH",
    "RedisViewStore",
    "Switch",
    "ViewCheckpoint",
    "ViewKeys",
    "decode_document",
    "encode_document",
]

CHECKPOINT_FIELDS = ("@position", "@anchor", "@outcomes", "@version", "@generation")
"""The checkpoint's fields in a view's hash, in the order :meth:`RedisViewStore.checkpoint`
reads them."""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode_document(doc: Doc) -> bytes:
    """A document as compact JSON (msgspec: exact integers of any size).

    >>> encode_document({"units": 2, "revenue": 2**70})
    b'{"units":2,"revenue":1180591620717411303424}'
    """
    return _encoder.encode(doc)


def decode_document(raw: bytes, key: str = "?") -> Doc:
    """The inverse of :func:`encode_document`; ``IntegrityError`` naming ``key`` otherwise."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise IntegrityError(f"view document {key!r:.80} is not valid JSON: {e}") from e


class ViewKeys(NamedTuple):
    """The Redis keys of the view ``name`` of ``stream`` (see the module docstring).

    >>> ViewKeys.of("orders", "sales").live
    'orders:view:sales'
    """

    live: str
    rebuild: str
    retired: str

    @classmethod
    def of(cls, stream: str, name: str) -> ViewKeys:
        """Keys ``<stream>:view:<name>``, ``...:rebuild``, ``...:retired``;
        ``ValueError`` for a name that does not match
        :data:`~shop_adapters.projections.NAME_PATTERN`."""
        if not NAME_PATTERN.match(name):
            raise ValueError(f"not a view name: {name!r:.60}")
        live = f"{stream}:view:{name}"
        return cls(live, f"{live}:rebuild", f"{live}:retired")


@dataclass(frozen=True, slots=True)
class ViewCheckpoint:
    """Where a stored view stands (see the module docstring): ``position`` (the last
    outcome applied), its ``anchor`` (``None`` at the origin), ``outcomes``
    applied, the projection ``version`` and the build's ``generation``."""

    position: Position
    anchor: str | None
    outcomes: int
    version: int
    generation: str

    def advanced(self, position: Position, anchor: str, applied: int) -> ViewCheckpoint:
        """This checkpoint moved on to ``position`` after ``applied`` more outcomes."""
        return ViewCheckpoint(
            position, anchor, self.outcomes + applied, self.version, self.generation
        )

    def fields(self) -> dict[str, str]:
        """The hash fields ``@position``, ``@anchor``, ``@outcomes`` (the others never change)."""
        return {
            "@position": str(self.position),
            "@anchor": self.anchor or "",
            "@outcomes": str(self.outcomes),
        }

    def to_json(self) -> dict[str, Any]:
        """``{"position", "outcomes", "version", "generation"}``."""
        return {
            "position": str(self.position),
            "outcomes": self.outcomes,
            "version": self.version,
            "generation": self.generation,
        }

    @classmethod
    def parse(cls, values: Sequence[bytes | None], key: str) -> ViewCheckpoint | None:
        """From the values of :data:`CHECKPOINT_FIELDS`; ``None`` if the key holds
        no checkpoint (absent), ``IntegrityError`` naming ``key`` if it is malformed."""
        if all(v is None for v in values):
            return None
        try:
            position, anchor, outcomes, version, generation = (
                v.decode("ascii") if v is not None else None for v in values
            )
            if position is None or outcomes is None or version is None or not generation:
                raise ValueError("a checkpoint field is missing")
            return cls(
                Position.parse(position),
                anchor or None,
                int(outcomes),
                int(version),
                generation,
            )
        except (ValueError, UnicodeDecodeError) as e:
            raise IntegrityError(
                f"{key} does not hold a valid view checkpoint ({e}): look at it with "
                f"HMGET {key} {' '.join(CHECKPOINT_FIELDS)}, then delete the key to rebuild it"
            ) from e


_LUA_POSITIONS = """
local function split(p) return string.match(p, '^(%d+)-(%d+)$') end
local function less(a, b) if #a ~= #b then return #a < #b end return a < b end
-- Whether position p comes before position q (decimal 'ms-seq' without leading zeros).
local function before(p, q)
  local pm, ps = split(p)
  local qm, qs = split(q)
  if pm ~= qm then return less(pm, qm) end
  return less(ps, qs)
end
"""

APPLY = """
-- KEYS[1]: the view's hash. ARGV[1], ARGV[2]: the generation and position the writer
-- read. ARGV[3] = n, ARGV[4] = m; then n field/value pairs to set (the new checkpoint's
-- fields among them) and m fields to delete. Nothing is written unless the view is still
-- the build and position the writer read: returns {1}, else {0, generation, position}.
local gen = redis.call('HGET', KEYS[1], '@generation')
local pos = redis.call('HGET', KEYS[1], '@position')
if gen ~= ARGV[1] or pos ~= ARGV[2] then
  return {0, gen or '', pos or ''}
end
local n, m = tonumber(ARGV[3]), tonumber(ARGV[4])
local i, last = 5, 4 + 2 * n
while i <= last do
  local stop = math.min(i + 999, last)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, stop))
  i = stop + 1
end
last = last + m
while i <= last do
  local stop = math.min(i + 999, last)
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, stop))
  i = stop + 1
end
return {1}
"""
"""The compare-and-set write of one batch (see :meth:`RedisViewStore.write`)."""

BEGIN = """
-- KEYS[1]: a rebuild's hash. ARGV[1]: the projection's version, ARGV[2]: a new
-- generation, ARGV[3]: '1' to start afresh. An existing build of the same version is
-- resumed unless ARGV[3] is '1'; anything else there is unlinked and an empty build at
-- 0-0 created. Returns the checkpoint fields (@position, @anchor, @outcomes, @version,
-- @generation).
local fields = {'@position', '@anchor', '@outcomes', '@version', '@generation'}
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[3] ~= '1' and redis.call('HGET', KEYS[1], '@version') == ARGV[1] then
    return redis.call('HMGET', KEYS[1], unpack(fields))
  end
  redis.call('UNLINK', KEYS[1])
end
redis.call('HSET', KEYS[1], '@position', '0-0', '@anchor', '', '@outcomes', '0',
  '@version', ARGV[1], '@generation', ARGV[2])
return redis.call('HMGET', KEYS[1], unpack(fields))
"""
"""Create or resume a rebuild (see :meth:`RedisViewStore.begin`)."""

SWITCH = (
    _LUA_POSITIONS
    + """
-- KEYS[1]: the live view, KEYS[2]: the rebuild, KEYS[3]: where the old view goes.
-- ARGV[1], ARGV[2]: the rebuild's generation and position as its writer knows them,
-- ARGV[3]: its version. Replies {1, old position or ''} when switched; {0, why} when the
-- rebuild is not the one described; {-1, live position} when the live view is further on
-- (catch up, then switch); {-2, live version} when the live view has a newer version.
local gen = redis.call('HGET', KEYS[2], '@generation')
local pos = redis.call('HGET', KEYS[2], '@position')
if gen ~= ARGV[1] or pos ~= ARGV[2] then
  return {0, 'the rebuild is at ' .. tostring(pos) .. ' of generation ' .. tostring(gen)}
end
local live = redis.call('HGET', KEYS[1], '@position')
local version = redis.call('HGET', KEYS[1], '@version')
if version and tonumber(version) and tonumber(version) > tonumber(ARGV[3]) then
  return {-2, version}
end
if live and before(ARGV[2], live) then
  return {-1, live}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[3])
  redis.call('RENAME', KEYS[2], KEYS[1])
  redis.call('UNLINK', KEYS[3])
else
  redis.call('RENAME', KEYS[2], KEYS[1])
end
return {1, live or ''}
"""
)
"""The atomic switch of a rebuild for the live view (see :meth:`RedisViewStore.switch`)."""


class Switch(NamedTuple):
    """What :meth:`RedisViewStore.switch` did: ``outcome`` is ``"switched"``,
    ``"moved"`` (the rebuild is not as described), ``"behind"`` (the live view is
    at ``detail``, further on) or ``"newer"`` (the live view has version ``detail``);
    for ``"switched"``, ``detail`` is the old view's position (``""`` if none)."""

    outcome: str
    detail: str


class RedisViewStore:
    """The views of one stream in Redis (see the module docstring).

    ``client``: a ``redis.Redis`` (bytes or decoded replies); ``stream``: the
    log's stream name, whose views are ``<stream>:view:<name>``.
    """

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream
        self._apply = client.register_script(APPLY)
        self._begin = client.register_script(BEGIN)
        self._switch = client.register_script(SWITCH)

    def keys(self, name: str) -> ViewKeys:
        """:meth:`ViewKeys.of` for this stream."""
        return ViewKeys.of(self.stream, name)

    # -- checkpoints and documents ------------------------------------------------------

    def checkpoint(self, key: str) -> ViewCheckpoint | None:
        """``HMGET <key> @position @anchor @outcomes @version @generation``; ``None`` if
        the view does not exist."""
        with redis_errors("HMGET", key):
            values: Any = self.client.hmget(key, list(CHECKPOINT_FIELDS))
        return ViewCheckpoint.parse([_bytes(v) for v in values], key)

    def checkpoints(self, keys: Sequence[str]) -> list[ViewCheckpoint | None]:
        """:meth:`checkpoint` of several keys, in one pipeline."""
        with redis_errors("HMGET", keys[0] if keys else None):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, list(CHECKPOINT_FIELDS))
            replies: Any = pipe.execute()
        return [
            ViewCheckpoint.parse([_bytes(v) for v in values], key)
            for key, values in zip(keys, replies, strict=True)
        ]

    def documents(self, reads: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, Doc | None]]:
        """For each ``(key, document keys)``, those documents (``None`` if absent):
        ``HMGET <key> <doc> ...``, all in one pipeline."""
        if not reads:
            return []
        with redis_errors("HMGET", reads[0][0]):
            pipe = self.client.pipeline(transaction=False)
            for key, docs in reads:
                if docs:
                    pipe.hmget(key, list(docs))
            replies: Any = iter(pipe.execute())
        out: list[dict[str, Doc | None]] = []
        for key, docs in reads:
            values = [_bytes(v) for v in next(replies)] if docs else []
            out.append(
                {
                    d: None if v is None else decode_document(v, f"{key} {d}")
                    for d, v in zip(docs, values, strict=True)
                }
            )
        return out

    def write(
        self,
        writes: Sequence[tuple[str, ViewCheckpoint, ViewCheckpoint, Mapping[str, Doc | None]]],
    ) -> list[bool]:
        """For each ``(key, expected, new, changes)``: set the changed documents
        (``None``: ``HDEL``) and the checkpoint ``new`` in one ``EVALSHA`` of
        :data:`APPLY`, if the view is still at ``expected`` (same generation and
        position). All in one pipeline; each write is atomic on its own. Returns,
        per write, whether it was applied (``False``: the view moved; re-read it).
        """
        if not writes:
            return []
        with redis_errors("EVALSHA (view write)", writes[0][0]):
            pipe = self.client.pipeline(transaction=False)
            for key, expected, new, changes in writes:
                sets: list[bytes | str] = []
                dels: list[str] = []
                for doc, value in changes.items():
                    if value is None:
                        dels.append(doc)
                    else:
                        sets += [doc, encode_document(value)]
                for field, value in new.fields().items():
                    sets += [field, value]
                self._apply(
                    keys=[key],
                    args=[
                        expected.generation,
                        str(expected.position),
                        len(sets) // 2,
                        len(dels),
                        *sets,
                        *dels,
                    ],
                    client=pipe,
                )
            replies: Any = pipe.execute()
        return [int(reply[0]) == 1 for reply in replies]

    # -- builds and switches -------------------------------------------------------------

    def begin(self, key: str, version: int, *, fresh: bool) -> ViewCheckpoint:
        """Create a build of ``version`` at ``0-0`` in ``key`` (a rebuild's key), or
        resume the one there if it has the same version and not ``fresh``
        (``EVALSHA`` of :data:`BEGIN`; anything else there is ``UNLINK``-ed)."""
        generation = secrets.token_hex(8)
        with redis_errors("EVALSHA (view begin)", key):
            values: Any = self._begin(keys=[key], args=[version, generation, "1" if fresh else ""])
        checkpoint = ViewCheckpoint.parse([_bytes(v) for v in values], key)
        assert checkpoint is not None
        return checkpoint

    def switch(self, name: str, rebuild: ViewCheckpoint) -> Switch:
        """Make the rebuild of ``name`` (at ``rebuild``) the live view, atomically
        (``EVALSHA`` of :data:`SWITCH`: ``RENAME``, ``RENAME``, ``UNLINK``), unless
        the live view is further on or of a newer version (see :class:`Switch`)."""
        keys = self.keys(name)
        with redis_errors("EVALSHA (view switch)", keys.live):
            reply: Any = self._switch(
                keys=[keys.live, keys.rebuild, keys.retired],
                args=[rebuild.generation, str(rebuild.position), rebuild.version],
            )
        code, detail = int(reply[0]), _text(reply[1])
        outcome = {1: "switched", 0: "moved", -1: "behind", -2: "newer"}[code]
        return Switch(outcome, detail)

    # -- readers ---------------------------------------------------------------------------

    def read_view(self, name: str) -> tuple[ViewCheckpoint | None, dict[str, Doc]]:
        """The whole live view of ``name`` at one position: ``HGETALL`` (one command,
        so never a view half-written or half-switched). ``(None, {})`` if it does not exist."""
        key = self.keys(name).live
        with redis_errors("HGETALL", key):
            raw: Any = self.client.hgetall(key)
        fields = {_text(k): v if isinstance(v, bytes) else str(v).encode() for k, v in raw.items()}
        checkpoint = ViewCheckpoint.parse([fields.get(f) for f in CHECKPOINT_FIELDS], key)
        docs = {
            k: decode_document(v, f"{key} {k}") for k, v in fields.items() if not k.startswith("@")
        }
        return checkpoint, docs

    def read_documents(
        self, name: str, docs: Sequence[str]
    ) -> tuple[ViewCheckpoint | None, dict[str, Doc | None]]:
        """Some documents of the live view of ``name`` and its checkpoint, in one
        ``HMGET`` (so all at the same position); absent documents are ``None``."""
        key = self.keys(name).live
        with redis_errors("HMGET", key):
            values: Any = self.client.hmget(key, [*CHECKPOINT_FIELDS, *docs])
        raw = [_bytes(v) for v in values]
        n = len(CHECKPOINT_FIELDS)
        checkpoint = ViewCheckpoint.parse(raw[:n], key)
        found = {
            d: None if v is None else decode_document(v, f"{key} {d}")
            for d, v in zip(docs, raw[n:], strict=True)
        }
        return checkpoint, found


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

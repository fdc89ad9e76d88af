"""A Redis Streams :class:`~shop_adapters.protocols.EventLog` (redis-py, hiredis parser).

Positions are entry IDs ``ms-seq`` parsed with :meth:`Position.parse` and
compared numerically (``5-9`` < ``5-10``). Commands used (Redis >= 6.2):

- append: pipelined ``XADD <stream> * field value ...`` (server-assigned IDs).
- read_after: ``XRANGE <stream> (<id> + COUNT <limit>`` (exclusive start,
  Source: Redis XRANGE docs, "Exclusive ranges", since 6.2).
- wait_after: ``XREAD [BLOCK <ms>] COUNT <limit> STREAMS <stream> <id>`` from
  the caller's last position, never ``$`` (Source: Redis XREAD docs: entries
  with an ID greater than the one given). ``timeout_ms=0`` means do not block
  (unlike Redis ``BLOCK 0``, which waits forever).
- last_position: ``XREVRANGE <stream> + - COUNT 1``; first_position:
  ``XRANGE <stream> - + COUNT 1`` (a missing key reads as an empty stream);
  max_deleted_position, deleted_entries: ``XINFO STREAM`` (``max-deleted-entry-id``,
  ``entries-added``: Redis >= 7.0; ``last-generated-id``: any version), for gap
  detection.
- dead_letter: ``XADD <dead_stream> <original id> position <id> reason <text>
  field:<name> <value> ...``. Reusing the original entry ID as the dead letter's
  explicit ID makes a second dead-lettering of that position (or of any lower
  one) fail with Redis's "equal or smaller than the target stream top item"
  error, so it happens exactly once even across crashes.

Nothing here deletes or trims entries (no ``XDEL``/``XTRIM``).

Errors: redis-py's errors are classified by
:func:`shop_adapters.redis_errors.classify` and raised ``from`` the original:
``ConnectionError``/``TimeoutError`` (and "retry later" replies such as
``LOADING``) become :class:`~shop_adapters.errors.OperationalError`, so the
runner can reconnect and resume from its last position; wrong credentials, a
database index out of range, ``WRONGTYPE`` (the stream key holds another type)
and other error replies become :class:`~shop_adapters.errors.PermanentError`.
Note that redis-py 8 retries commands on connection errors by default: an
``XADD`` whose reply was lost may then land twice, with two IDs
(appends are at least once; the producer's entries should carry an
idempotency key such as ``order_id`` where a duplicate matters).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import redis

from ..errors import IntegrityError
from ..protocols import ORIGIN, DeadLetter, LogHistory, Position, Record
from ..redis_errors import redis_errors as _redis_errors
from ._common import check_limit, check_timeout, encode_entries

__all__ = [
    "BLOCK_MARGIN_MS",
    "BUDGETED_XRANGE",
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_ENTRY_BYTES",
    "RedisStreamLog",
    "xadd_once",
]

BLOCK_MARGIN_MS = 250
"""The client's ``socket_timeout`` must exceed the longest ``BLOCK`` by this much (ms)."""

DEFAULT_BATCH_BYTES = 32 * 1024 * 1024
"""Default byte budget of one read's reply (sum of the entries' field bytes)."""
DEFAULT_ENTRY_BYTES = 8 * 1024 * 1024
"""Default size above which an entry is not read but dead-lettered by reference."""

_FIELD_PREFIX = b"field:"
_REASON = frozenset({b"reason"})
_MAX_ID = Position(2**64 - 1, 2**64 - 1)


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _fields(raw: Mapping[Any, Any]) -> dict[bytes, bytes]:
    """Reply fields as ``bytes -> bytes`` whether the client decodes responses or not."""
    if all(type(k) is bytes and type(v) is bytes for k, v in raw.items()):
        return raw if type(raw) is dict else dict(raw)
    return {_b(k): _b(v) for k, v in raw.items()}


def _position(entry_id: bytes | str) -> Position:
    """An entry ID ``ms-seq`` as a position (fast path of :meth:`Position.parse`)."""
    ms, sep, seq = entry_id.partition(b"-" if isinstance(entry_id, bytes) else "-")  # type: ignore[arg-type]
    if not sep:
        return Position.parse(entry_id)  # raises ValueError naming the bad ID
    return _new_position(Position, (int(ms), int(seq)))


_new_position = tuple.__new__  # a Position or Record without NamedTuple's __new__ frame


def _records(entries: Sequence[Any] | None) -> list[Record]:
    """``[(id, {field: value}), ...]`` as records (bytes or str replies)."""
    if not entries:
        return []
    if type(entries[0][0]) is bytes and all(type(k) is bytes for k in entries[0][1]):
        # A bytes client (decode_responses=False): redis-py's dicts are used as they are.
        return [Record(_position(i), f) for i, f in entries]
    return [Record(_position(i), _fields(f)) for i, f in entries]


def _script_records(raw: list[Any]) -> list[Record]:
    """A bytes reply of :data:`BUDGETED_XRANGE` (``[[id, [name, value, ...]], ...]``)
    as records, in one pass (the catch-up hot path)."""
    out: list[Record] = []
    append = out.append
    for entry_id, flat in raw:
        ms, sep, seq = entry_id.partition(b"-")
        position = _new_position(Position, (int(ms), int(seq))) if sep else _position(entry_id)
        it = iter(flat)
        append(_new_position(Record, (position, dict(zip(it, it, strict=True)))))
    return out


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    """``[name, value, name, value, ...]`` as a dict, in order."""
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _xread_entries(reply: Any) -> Sequence[Any] | None:
    """The entries of the single stream in an XREAD reply (RESP2 list or RESP3 map)."""
    if not reply:
        return None
    if isinstance(reply, dict):  # RESP3: {stream: [[entries]]}
        (value,) = reply.values()
        # redis-py 8 wraps the entry list once more: {stream: [[(id, fields), ...]]}.
        inner = value[0] if value else None
        if isinstance(inner, list) and not (inner and isinstance(inner[0], bytes | str)):
            value = value[0]
        return value  # type: ignore[no-any-return]
    return reply[0][1]  # type: ignore[no-any-return]


def _same(
    held: Mapping[bytes, bytes], new: Mapping[bytes, bytes], ignore: frozenset[bytes]
) -> bool:
    a = {k: v for k, v in held.items() if k not in ignore}
    b = {_b(k): _b(v) for k, v in new.items() if _b(k) not in ignore}
    return a == b


def xadd_once(
    client: redis.Redis,
    stream: str,
    entries: Sequence[tuple[Position, Mapping[bytes, bytes]]],
    *,
    ignore: frozenset[bytes] = frozenset(),
) -> list[bool]:
    """``XADD <stream> <id> ...`` for each ``(id, fields)``, in one pipeline, each at most once.

    Writing under an explicit ID makes a second write of the same ID fail
    ("equal or smaller than the target stream top item"), so a replay after a
    crash adds nothing twice. A refused write counts as already written
    (``False``) only if ``XRANGE <stream> <id> <id>`` shows the same fields
    (those named in ``ignore``, such as a reason worded differently by another
    version of the code, are not compared);
    otherwise something else wrote at or past that ID and
    :class:`~shop_adapters.errors.IntegrityError` is raised: nothing is
    dropped silently. Returns, per entry, whether it was written now.
    Raises ``OperationalError`` if Redis is unreachable (some may have landed:
    calling again is safe).
    """
    if not entries:
        return []
    with _redis_errors("XADD", stream):
        pipe = client.pipeline(transaction=False)
        for position, fields in entries:
            pipe.xadd(stream, fields, id=str(position))  # type: ignore[arg-type]
        replies = pipe.execute(raise_on_error=False)
    out: list[bool] = []
    for (position, fields), reply in zip(entries, replies, strict=True):
        if not isinstance(reply, Exception):
            out.append(True)
            continue
        if not isinstance(reply, redis.exceptions.ResponseError) or "equal or smaller" not in str(
            reply
        ):
            with _redis_errors("XADD", stream):
                raise reply
        with _redis_errors("XRANGE", stream):
            held = _records(client.xrange(stream, str(position), str(position)))
        if held and _same(held[0].fields, fields, ignore):
            out.append(False)
            continue
        what = "holds another entry with that ID" if held else "holds no entry with that ID"
        raise IntegrityError(
            f"cannot write {position} to {stream}: the stream already goes past that ID and "
            f"{what}; something else wrote there (by hand, or another stream's data). "
            f"Refusing to drop the entry silently: inspect {stream} (XRANGE {stream} - +) "
            "and move the foreign entries away"
        )
    return out


BUDGETED_XRANGE = """
-- KEYS[1]: the stream. ARGV[1]: start (an exclusive '(ms-seq'), ARGV[2]: COUNT,
-- ARGV[3]: byte budget of the reply, ARGV[4]: largest entry returned whole (bytes).
-- Returns the entries of XRANGE <stream> <start> + COUNT <n> while their field bytes
-- stay within the budget (always at least one), an entry over the limit replaced by
-- {id, {'\\0oversize', size, '\\0anchor', sha1}} (the anchor as record_anchor computes
-- it). The reply is cut and edited in place.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local budget, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local total = 0
for i = 1, #entries do
  local fields, size = entries[i][2], 0
  for j = 1, #fields do size = size + #fields[j] end
  if size > limit then
    local parts = {}
    for j = 1, #fields do parts[j] = #fields[j] .. ':' .. fields[j] end
    entries[i][2] = {'\\0oversize', tostring(size), '\\0anchor', redis.sha1hex(table.concat(parts))}
    size = 64
  elseif i > 1 and total + size > budget then
    for k = #entries, i, -1 do entries[k] = nil end
    break
  end
  total = total + size
end
return entries
"""
"""The byte-bounded catch-up read (see :meth:`RedisStreamLog.read_after`)."""


class RedisStreamLog:
    """An event log on one Redis stream, with dead letters in a second stream.

    :param client: a ``redis.Redis``; ``decode_responses`` may be either (values
        must then be UTF-8 to be decoded by redis-py; binary values such as the
        seed's MessagePack need ``decode_responses=False``).
    :param stream: the stream key (default ``"orders"``).
    :param dead_stream: the dead-letter stream key, default ``f"{stream}:dead"``.
    :param max_block_ms: longest single ``XREAD BLOCK`` (ms); longer waits loop.
        The client's ``socket_timeout`` (seconds) must be ``None`` or longer than
        ``max_block_ms + BLOCK_MARGIN_MS``, else ``ValueError`` here (redis-py
        would otherwise raise ``TimeoutError`` in the middle of a blocking read).
    :param owns_client: whether :meth:`close` closes ``client`` (``from_url`` sets it).
    :param max_batch_bytes: byte budget of one read (see :meth:`read_after`;
        ``None``: plain ``XRANGE``, bounded by the count only). A reader's peak
        memory for entries is about this budget plus one entry.
    :param max_entry_bytes: an entry larger than this is not read: it is
        dead-lettered by reference (position and size) and stays in the stream.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str = "orders",
        dead_stream: str | None = None,
        *,
        max_block_ms: int = 1000,
        owns_client: bool = False,
        max_batch_bytes: int | None = DEFAULT_BATCH_BYTES,
        max_entry_bytes: int = DEFAULT_ENTRY_BYTES,
    ) -> None:
        if not stream:
            raise ValueError("stream must be a non-empty key name")
        if type(max_block_ms) is not int or max_block_ms < 1:
            raise ValueError(f"max_block_ms must be an int >= 1 (ms), got {max_block_ms!r}")
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        socket_timeout = kwargs.get("socket_timeout")
        if socket_timeout is not None and socket_timeout * 1000 <= max_block_ms + BLOCK_MARGIN_MS:
            raise ValueError(
                f"the client's socket_timeout is {socket_timeout} s but blocking reads last up "
                f"to max_block_ms={max_block_ms} ms; use socket_timeout=None or more than "
                f"{(max_block_ms + BLOCK_MARGIN_MS) / 1000} s, or a smaller max_block_ms"
            )
        self.client = client
        self.stream = stream
        self.dead_stream = dead_stream if dead_stream is not None else f"{stream}:dead"
        self.max_block_ms = max_block_ms
        self._owns_client = owns_client
        if max_batch_bytes is not None and not 0 < max_entry_bytes <= max_batch_bytes:
            raise ValueError(
                f"need 0 < max_entry_bytes <= max_batch_bytes, got {max_entry_bytes} "
                f"and {max_batch_bytes}"
            )
        self.max_batch_bytes = max_batch_bytes
        self.max_entry_bytes = max_entry_bytes
        self._budgeted = client.register_script(BUDGETED_XRANGE) if max_batch_bytes else None

    @classmethod
    def from_url(
        cls,
        url: str,
        stream: str = "orders",
        *,
        dead_stream: str | None = None,
        max_block_ms: int = 1000,
        **client_kwargs: Any,
    ) -> RedisStreamLog:
        """A log on a new client for ``url`` (``redis://[:password@]host:port/db``).

        ``client_kwargs`` go to ``redis.Redis.from_url`` (``socket_timeout`` in
        seconds; default here ``max_block_ms / 1000 + 5``, so a blocking read
        never times out first but a dead connection is still noticed;
        ``socket_connect_timeout`` 5 s). :meth:`close` closes that client.
        """
        client_kwargs.setdefault("socket_timeout", max_block_ms / 1000 + 5.0)
        client_kwargs.setdefault("socket_connect_timeout", 5.0)
        client = redis.Redis.from_url(url, **client_kwargs)
        return cls(client, stream, dead_stream, max_block_ms=max_block_ms, owns_client=True)

    # -- the log ----------------------------------------------------------------------

    def append(self, entries: Sequence[Mapping[str | bytes, str | bytes | int]]) -> list[Position]:
        """``XADD <stream> * ...`` for each entry, in one pipeline (no MULTI).

        Returns the server-assigned IDs as positions, increasing. Raises
        ``TypeError``/``ValueError`` for a bad entry before sending anything,
        ``OperationalError`` if Redis is unreachable (some entries may have been
        appended: the caller cannot tell which).
        """
        encoded = encode_entries(entries)
        if not encoded:
            return []
        with _redis_errors("XADD", self.stream):
            pipe = self.client.pipeline(transaction=False)
            for fields in encoded:
                pipe.xadd(self.stream, fields, id="*")  # type: ignore[arg-type]
            ids = pipe.execute()
        return [Position.parse(i) for i in ids]

    def read_after(self, position: Position, limit: int) -> list[Record]:
        """Up to ``limit`` (>= 1) records strictly after ``position``; ``[]`` at the end
        or if the stream does not exist.

        With ``max_batch_bytes`` (the default): one ``EVALSHA`` of
        :data:`BUDGETED_XRANGE`, ``XRANGE <stream> (<position> + COUNT <limit>``
        cut where the entries' bytes would pass ``max_batch_bytes`` (at least one
        entry), and an entry over ``max_entry_bytes`` replaced by a stand-in
        record (:data:`~shop_adapters.protocols.OVERSIZE_FIELD`) that the shell
        dead-letters: the reply, and so the reader's memory, stays bounded
        whatever the entries. Without: a plain ``XRANGE``.
        """
        check_limit(limit)
        if position >= _MAX_ID:
            return []
        start = f"({position}"
        with _redis_errors("XRANGE", self.stream):
            if self._budgeted is None:
                reply = self.client.xrange(self.stream, start, "+", count=limit)
            else:
                raw: Any = self._budgeted(
                    keys=[self.stream],
                    args=[start, limit, self.max_batch_bytes or 0, self.max_entry_bytes],
                )
                if raw and type(raw[0][0]) is bytes:
                    return _script_records(raw)
                # A script's reply is raw: each entry's fields a flat [name, value, ...].
                reply = [(i, _pairs(f)) for i, f in raw]
        return _records(reply)

    def wait_after(self, position: Position, limit: int, timeout_ms: int) -> list[Record]:
        """``XREAD BLOCK <ms> COUNT <limit> STREAMS <stream> <position>``.

        Returns at once if records exist after ``position``; else blocks up to
        ``timeout_ms`` ms (in slices of at most ``max_block_ms``) and returns
        ``[]`` on time-out. ``timeout_ms=0`` does not block.
        """
        check_limit(limit)
        check_timeout(timeout_ms)
        if position >= _MAX_ID:
            return []
        original = limit
        if self._budgeted is not None:
            found = self.read_after(position, limit)
            if found or timeout_ms == 0:
                return found
            # Block for one entry only (the reply is bounded by one entry), then
            # read the rest within the budget.
            limit = 1
        streams = {self.stream: str(position)}
        if timeout_ms == 0:
            with _redis_errors("XREAD", self.stream):
                reply = self.client.xread(streams, count=limit)  # type: ignore[arg-type]
            return _records(_xread_entries(reply))
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return []
            block = min(remaining_ms, self.max_block_ms)
            with _redis_errors("XREAD BLOCK", self.stream):
                reply = self.client.xread(streams, count=limit, block=block)  # type: ignore[arg-type]
            found = _records(_xread_entries(reply))
            if found:
                return found if self._budgeted is None else self.read_after(position, original)

    def last_position(self) -> Position:
        """ID of the last entry (``XREVRANGE + - COUNT 1``), or ORIGIN if empty or missing."""
        with _redis_errors("XREVRANGE", self.stream):
            reply: Any = self.client.xrevrange(self.stream, "+", "-", count=1)
        return Position.parse(reply[0][0]) if reply else ORIGIN

    def first_position(self) -> Position:
        """ID of the first entry (``XRANGE - + COUNT 1``), or ORIGIN if empty or missing."""
        with _redis_errors("XRANGE", self.stream):
            reply: Any = self.client.xrange(self.stream, "-", "+", count=1)
        return Position.parse(reply[0][0]) if reply else ORIGIN

    def _info(self) -> Mapping[Any, Any] | None:
        """``XINFO STREAM <stream>``, or ``None`` if the stream does not exist."""
        with _redis_errors("XINFO STREAM", self.stream):
            try:
                info: Any = self.client.xinfo_stream(self.stream)
            except redis.exceptions.ResponseError as e:
                if "no such key" in str(e).lower():
                    return None
                raise
        return info  # type: ignore[no-any-return]

    def read_at(self, position: Position) -> Record | None:
        """``XRANGE <stream> <id> <id>``: the entry with exactly that ID, or ``None``."""
        if position == ORIGIN or position >= _MAX_ID:
            return None
        with _redis_errors("XRANGE", self.stream):
            reply = self.client.xrange(self.stream, str(position), str(position))
        found = _records(reply)
        return found[0] if found else None

    def history(self) -> LogHistory:
        """From ``XINFO STREAM``: first and last entries, ``length``, ``entries-added``
        (Redis >= 7.0, else ``None``), and the highest deleted ID known:
        ``max-deleted-entry-id`` (Redis >= 7.0; set by ``XDEL`` and ``XTRIM``)
        or ``last-generated-id`` when it is beyond the last entry (the newest
        entries were deleted; any version). A missing stream reads as empty
        with nothing added. Source: Redis XINFO STREAM docs. Raises ``OperationalError``.
        """
        info = self._info()
        if info is None:
            return LogHistory(ORIGIN, ORIGIN, 0, 0, None)

        def get(name: str) -> Any:
            return info.get(name, info.get(name.encode()))

        first, last = get("first-entry"), get("last-entry")
        first_id = Position.parse(first[0]) if first else ORIGIN
        last_id = Position.parse(last[0]) if last else ORIGIN
        deleted = ORIGIN
        raw = get("max-deleted-entry-id")
        if raw is not None:
            deleted = max(deleted, Position.parse(raw))
        generated = get("last-generated-id")
        if generated is not None and Position.parse(generated) > last_id:
            deleted = max(deleted, Position.parse(generated))
        added = get("entries-added")
        return LogHistory(
            first_id,
            last_id,
            int(get("length") or 0),
            None if added is None else int(added),
            None if deleted == ORIGIN else deleted,
        )

    # -- dead letters -------------------------------------------------------------------

    def dead_letter(self, letter: DeadLetter) -> bool:
        """``XADD <dead_stream> <position> position <id> reason <text> field:<name> <value>...``.

        Written with :func:`xadd_once`: ``False`` if the dead letter of this
        record is already there (the same position and fields; the reason may be
        worded otherwise), :class:`~shop_adapters.errors.IntegrityError` if the dead stream
        already goes past its ID without holding it. Raises ``ValueError`` for
        :data:`ORIGIN` (Redis refuses ID 0-0), ``OperationalError`` if Redis is
        unreachable.
        """
        if letter.position <= ORIGIN:
            raise ValueError("cannot dead-letter ORIGIN (0-0): no record lives there")
        payload: dict[bytes, bytes] = {
            b"position": str(letter.position).encode("ascii"),
            b"reason": letter.reason.encode("utf-8", errors="backslashreplace"),
        }
        for name, value in letter.fields.items():
            payload[_FIELD_PREFIX + _b(name)] = _b(value)
        return xadd_once(
            self.client, self.dead_stream, [(letter.position, payload)], ignore=_REASON
        )[0]

    def dead_letters(self) -> list[DeadLetter]:
        """All dead letters (``XRANGE <dead_stream>`` in batches of 1,000), in position order."""
        out: list[DeadLetter] = []
        start = "-"
        while True:
            with _redis_errors("XRANGE (dead letters)", self.dead_stream):
                reply: Any = self.client.xrange(self.dead_stream, start, "+", count=1000)
            if not reply:
                return out
            for entry_id, raw in reply:
                fields = _fields(raw)
                position = Position.parse(entry_id)
                reason = fields.get(b"reason", b"").decode("utf-8", errors="replace")
                original = {
                    k[len(_FIELD_PREFIX) :]: v
                    for k, v in fields.items()
                    if k.startswith(_FIELD_PREFIX)
                }
                out.append(DeadLetter(position, original, reason))
            start = f"({Position.parse(reply[-1][0])}"

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the client if this log created it (:meth:`from_url`); else leave it open."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> RedisStreamLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisStreamLog(stream={self.stream!r}, dead_stream={self.dead_stream!r})"

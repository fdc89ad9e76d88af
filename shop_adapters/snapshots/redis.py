"""A Redis :class:`~shop_adapters.protocols.SnapshotStore`: one hash key, one command per write.

The snapshot lives in the hash ``key`` with the field ``blob`` (and, when
fenced, ``fence``: the writer's fencing token as a decimal string).

- Unfenced write: ``HSET <key> blob <bytes>``.
- Guarded write: one ``EVALSHA`` of :data:`FENCED_WRITE` (loaded with
  ``SCRIPT LOAD`` on first use by redis-py's ``register_script``), which writes
  ``HSET <key> blob <bytes> fence <token>`` only if, at that moment, (1) the
  lease key holds this writer's owner id (``GET``), (2) the stored ``fence`` is
  not greater than the writer's token, and (3) the stream still holds the
  record the snapshot was folded to, with the same fields (``XRANGE <stream>
  <id> <id>``, its fields hashed with ``redis.sha1hex`` as
  :func:`shop_adapters.catchup.record_anchor` does). Otherwise nothing is
  written and :class:`~shop_adapters.errors.FencedError` (1, 2) or
  :class:`~shop_adapters.errors.IntegrityError` (3) is raised. A Lua script
  runs atomically, so the checks and the write cannot interleave with another
  client's commands. Source: Redis EVAL docs ("Atomicity of scripts"); M.
  Kleppmann, "How to do distributed locking" (2016), on fencing tokens.
- Read: ``HGET <key> blob``.

Every write is a single command, so a reader sees the old blob or the new one,
never a mix. In a Redis Cluster the snapshot, lease and stream keys must share
a slot (:meth:`shop_adapters.keys.StreamKeys.for_shop` gives them one hash tag). Redis's
``ConnectionError``/``TimeoutError`` become
:class:`~shop_adapters.errors.OperationalError`; a key that is not a hash
(``WRONGTYPE``) :class:`~shop_adapters.errors.IntegrityError`; wrong
credentials and other error replies :class:`~shop_adapters.errors.PermanentError`
(see :mod:`shop_adapters.redis_errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import redis

from ..errors import FencedError, IntegrityError
from ..protocols import ORIGIN, Position
from ..redis_errors import REDIS_ERRORS, classify

if TYPE_CHECKING:
    from ..lease import Lease

__all__ = ["FENCED_WRITE", "RedisSnapshotStore"]

FENCED_WRITE = """
-- KEYS[1]: snapshot hash; KEYS[2]: lease key ('' for none); KEYS[3]: the stream ('' for none)
-- ARGV[1]: blob; ARGV[2]: fencing token (decimal, no sign, no leading zeros);
-- ARGV[3]: lease owner; ARGV[4]: position 'ms-seq' ('' for none); ARGV[5]: its anchor.
-- Decimal strings are compared by length, then bytewise, so tokens beyond 2^53 (where
-- Lua numbers lose precision) still compare exactly.
if KEYS[2] ~= '' then
  local holder = redis.call('GET', KEYS[2])
  if holder ~= ARGV[3] then
    return {-1, holder or ''}
  end
end
local stored = redis.call('HGET', KEYS[1], 'fence')
if stored then
  local token = ARGV[2]
  if #stored > #token or (#stored == #token and stored > token) then
    return {0, stored}
  end
end
if KEYS[3] ~= '' and ARGV[4] ~= '' then
  local found = redis.call('XRANGE', KEYS[3], ARGV[4], ARGV[4])
  if #found == 0 then
    return {-2, ''}
  end
  local parts = {}
  for _, value in ipairs(found[1][2]) do
    parts[#parts + 1] = #value .. ':' .. value
  end
  if redis.sha1hex(table.concat(parts)) ~= ARGV[5] then
    return {-3, ''}
  end
end
redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'fence', ARGV[2])
return {1, ARGV[2]}
"""
"""The guarded write, run with ``EVALSHA`` (see the module docstring)."""


@contextmanager
def _translate(what: str, key: str) -> Iterator[None]:
    try:
        yield
    except redis.exceptions.ResponseError as e:
        if "WRONGTYPE" in str(e):
            raise IntegrityError(
                f"snapshot key {key!r} holds a value that is not a hash: {e}"
            ) from e
        raise classify(e, f"{what} {key!r}", key) from e
    except REDIS_ERRORS as e:
        raise classify(e, f"{what} {key!r}", key) from e


class RedisSnapshotStore:
    """The latest snapshot of one log in the Redis hash ``key``.

    :param client: a ``redis.Redis`` with ``decode_responses=False`` (blobs are
        binary; ``ValueError`` otherwise).
    :param key: the hash key holding ``blob`` (and ``fence``).
    :param fencing_token: if given, called before every write for the writer's
        current lease token (an int >= 0); writes are then fenced (see
        :data:`FENCED_WRITE`).
    :param lease_key, owner: if given, a write happens only while ``lease_key``
        holds ``owner`` (:class:`~shop_adapters.lease.Lease` gives both).
    :param stream: if given, a write that names the record it was folded to
        (``write(blob, at=...)``) happens only while ``stream`` holds that record.

    :meth:`write` raises ``OperationalError`` if Redis is unreachable (the old
    snapshot is then intact or the new one is in; retrying is safe).
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        fencing_token: Callable[[], int] | None = None,
        *,
        lease_key: str | None = None,
        owner: str | None = None,
        stream: str | None = None,
    ) -> None:
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        if kwargs.get("decode_responses"):
            raise ValueError("RedisSnapshotStore needs a client with decode_responses=False")
        if not key:
            raise ValueError("key must be a non-empty key name")
        if (lease_key is None) != (owner is None):
            raise ValueError("lease_key and owner go together")
        self.client = client
        self.key = key
        self.fencing_token = fencing_token
        self.lease_key = lease_key
        self.owner = owner
        self.stream = stream
        guarded = fencing_token is not None or lease_key is not None or stream is not None
        self._script = client.register_script(FENCED_WRITE) if guarded else None

    @classmethod
    def for_lease(
        cls, client: redis.Redis, key: str, lease: Lease, stream: str
    ) -> RedisSnapshotStore:
        """A store whose writes need ``lease`` held, its token, and ``stream`` intact."""
        return cls(
            client,
            key,
            lease.fencing_token,
            lease_key=lease.key,
            owner=lease.owner,
            stream=stream,
        )

    def write(self, blob: bytes, at: tuple[Position, str] | None = None) -> None:
        """Replace the snapshot with ``blob`` in one command (``HSET`` or the guarded
        script); ``at`` is ``(position, anchor)`` of the record it was folded to.

        Raises :class:`~shop_adapters.errors.FencedError` if the lease is not held
        by this writer or a newer token has written, and
        :class:`~shop_adapters.errors.IntegrityError` if the stream no longer
        holds the record ``at`` names.
        """
        data = bytes(blob)
        if self._script is None:
            with _translate("HSET", self.key):
                self.client.hset(self.key, b"blob", data)
            return
        token = self.fencing_token() if self.fencing_token is not None else 0
        if type(token) is not int or token < 0:
            raise ValueError(f"fencing_token() must return an int >= 0, got {token!r}")
        position, anchor = ("", "") if at is None or at[0] == ORIGIN else (str(at[0]), at[1])
        keys = [self.key, self.lease_key or "", self.stream or ""]
        with _translate("guarded write", self.key):
            reply = self._script(
                keys=keys, args=[data, str(token), self.owner or "", position, anchor]
            )
        status = int(reply[0])
        if status == 1:
            return
        detail = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        if status == -1:
            holder = (
                f"held by {detail!r}" if detail else "held by nobody (it expired or was deleted)"
            )
            raise FencedError(
                f"snapshot {self.key!r} not written: this runner no longer holds the lease "
                f"{self.lease_key!r} ({holder})"
            )
        if status == 0:
            raise FencedError(
                f"snapshot {self.key!r} not written: fencing token {token} is older than "
                f"{detail}, the token of a later holder of the lease"
            )
        what = "holds no record at" if status == -2 else "holds another record at"
        raise IntegrityError(
            f"snapshot {self.key!r} not written: the stream {self.stream!r} {what} {position}, "
            "the record this state was folded to (it was rolled back, wiped or replaced)"
        )

    def read(self) -> bytes | None:
        """``HGET <key> blob``: the stored blob, or ``None`` if there is none."""
        with _translate("HGET", self.key):
            value = self.client.hget(self.key, b"blob")
        return value  # type: ignore[return-value]

    def stored_fence(self) -> int | None:
        """The fencing token of the last fenced write (``HGET <key> fence``), or ``None``."""
        with _translate("HGET", self.key):
            value = self.client.hget(self.key, b"fence")
        return int(value) if value is not None else None

    def close(self) -> None:
        """Leaves the client open: it belongs to the caller."""

    def __repr__(self) -> str:
        return f"RedisSnapshotStore(key={self.key!r}, fenced={self._script is not None})"

"""A Redis :class:`~shop_adapters.protocols.SnapshotStore`: one hash key, one command per write.

The snapshot lives in the hash ``key`` with the field ``blob`` (and, when
fenced, ``fence``: the writer's fencing token as a decimal string).

- Unfenced write: ``HSET <key> blob <bytes>``.
- Fenced write: one ``EVALSHA`` of :data:`FENCED_WRITE` (loaded with
  ``SCRIPT LOAD`` on first use by redis-py's ``register_script``): if the
  stored ``fence`` is greater than the caller's token, nothing is written and
  :class:`~shop_adapters.errors.FencedError` is raised; else ``HSET <key> blob
  <bytes> fence <token>``. A Lua script runs atomically, so the check and the
  write cannot interleave with another writer's. Source: Redis EVAL docs
  ("Atomicity of scripts"); M. Kleppmann, "How to do distributed locking"
  (2016), on fencing tokens.
- Read: ``HGET <key> blob``.

Every write is a single command on a single key, so a reader sees the old blob
or the new one, never a mix, and in a Redis Cluster the key needs only its own
slot (give it the stream's hash tag, e.g. ``{shop1}:snapshot``). Redis's
``ConnectionError``/``TimeoutError`` become
:class:`~shop_adapters.errors.OperationalError`; a key that is not a hash
(``WRONGTYPE``) :class:`~shop_adapters.errors.IntegrityError`; wrong
credentials and other error replies :class:`~shop_adapters.errors.PermanentError`
(see :mod:`shop_adapters.redis_errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from ..errors import FencedError, IntegrityError
from ..redis_errors import classify

__all__ = ["FENCED_WRITE", "RedisSnapshotStore"]

FENCED_WRITE = """
-- KEYS[1]: snapshot hash; ARGV[1]: blob; ARGV[2]: fencing token (decimal, no sign,
-- no leading zeros). Decimal strings are compared by length, then bytewise, so tokens
-- beyond 2^53 (where Lua numbers lose precision) still compare exactly.
local stored = redis.call('HGET', KEYS[1], 'fence')
if stored then
  local token = ARGV[2]
  if #stored > #token or (#stored == #token and stored > token) then
    return {0, stored}
  end
end
redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'fence', ARGV[2])
return {1, ARGV[2]}
"""
"""The fenced write, run with ``EVALSHA`` (see the module docstring)."""


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
    except redis.exceptions.RedisError as e:
        raise classify(e, f"{what} {key!r}", key) from e


class RedisSnapshotStore:
    """The latest snapshot of one log in the Redis hash ``key``.

    :param client: a ``redis.Redis`` with ``decode_responses=False`` (blobs are
        binary; ``ValueError`` otherwise).
    :param key: the hash key holding ``blob`` (and ``fence``).
    :param fencing_token: if given, called before every write for the writer's
        current lease token (an int >= 0); writes are then fenced (see
        :data:`FENCED_WRITE`) and raise :class:`~shop_adapters.errors.FencedError`
        if a newer token has written.

    :meth:`write` raises ``OperationalError`` if Redis is unreachable (the old
    snapshot is then intact or the new one is in; retrying is safe).
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        fencing_token: Callable[[], int] | None = None,
    ) -> None:
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        if kwargs.get("decode_responses"):
            raise ValueError("RedisSnapshotStore needs a client with decode_responses=False")
        if not key:
            raise ValueError("key must be a non-empty key name")
        self.client = client
        self.key = key
        self.fencing_token = fencing_token
        self._script = client.register_script(FENCED_WRITE) if fencing_token else None

    def write(self, blob: bytes) -> None:
        """Replace the snapshot with ``blob`` in one command (``HSET`` or the fenced script)."""
        data = bytes(blob)
        if self.fencing_token is None or self._script is None:
            with _translate("HSET", self.key):
                self.client.hset(self.key, b"blob", data)
            return
        token = self.fencing_token()
        if type(token) is not int or token < 0:
            raise ValueError(f"fencing_token() must return an int >= 0, got {token!r}")
        with _translate("fenced write", self.key):
            reply = self._script(keys=[self.key], args=[data, str(token)])
        written, stored = reply
        if not written:
            stored_text = stored.decode() if isinstance(stored, bytes) else str(stored)
            raise FencedError(
                f"snapshot {self.key!r} not written: fencing token {token} is older than "
                f"{stored_text}, already written by another runner"
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
        return f"RedisSnapshotStore(key={self.key!r}, fenced={self.fencing_token is not None})"

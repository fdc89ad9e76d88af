"""Idempotent effects: each done at most once per key, so at-least-once delivery
gives an exactly-once effect. Generic.

A worker of a consumer group (:mod:`shop_adapters.consumer_group`) may handle
an outcome more than once (it crashed before acknowledging it, or another
worker claimed it meanwhile). Keyed by something that never changes for the
outcome, its position (the input record's ID), an effect is done once:

- :class:`RedisListSink`: ``RPUSH`` a payload to a list, guarded by a set of
  the keys done, both in one Lua script (:data:`PUT_ONCE`: ``SADD`` then, if
  the key is new, ``RPUSH``), so a crash cannot separate them;
- :class:`DirectorySink`: a file ``<dir>/<key>.json`` written to a temporary
  name, synced and renamed into place (``os.replace``); an existing file is
  left as it is.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

import redis

from ._fs import fsync_dir
from .redis_errors import redis_errors

__all__ = ["PUT_ONCE", "DirectorySink", "RedisListSink", "Sink"]

PUT_ONCE = """
-- KEYS[1]: the list, KEYS[2]: the set of keys done. ARGV[1]: the key, ARGV[2]: the
-- payload. Returns 1 if the payload was appended now, 0 if the key was done before.
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
"""The once-per-key append of :class:`RedisListSink` (``EVALSHA``)."""

_SAFE_KEY = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,199}\Z")


class Sink(Protocol):
    """Somewhere an effect is done once per key."""

    def put(self, key: str, payload: bytes) -> bool:
        """Do the effect for ``key`` with ``payload`` unless it was done; ``True`` if
        done now, ``False`` if it had been done before."""
        ...


class RedisListSink:
    """Payloads appended to the Redis list ``key``, once per key; the keys done are
    the members of the set ``done_key`` (default ``<key>:done``)."""

    def __init__(self, client: redis.Redis, key: str, done_key: str | None = None) -> None:
        self.client = client
        self.key = key
        self.done_key = done_key or f"{key}:done"
        self._script = client.register_script(PUT_ONCE)

    def put(self, key: str, payload: bytes) -> bool:
        """One ``EVALSHA`` of :data:`PUT_ONCE`. Raises ``OperationalError`` if Redis
        is unreachable (calling again is safe)."""
        with redis_errors("EVALSHA (put once)", self.key):
            reply: Any = self._script(keys=[self.key, self.done_key], args=[key, payload])
        return int(reply) == 1


class DirectorySink:
    """One file per key, ``<directory>/<key>.json`` (created with its parents).

    A key is 1 to 200 characters of ``A-Z a-z 0-9 . _ : -`` not starting with a
    punctuation mark (``ValueError`` otherwise), so it is always a plain file name.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where the effect of ``key`` is written."""
        if not _SAFE_KEY.match(key):
            raise ValueError(f"not a key for a file name: {key!r:.60}")
        return self.directory / f"{key}.json"

    def put(self, key: str, payload: bytes) -> bool:
        """Write ``payload`` to :meth:`path` unless it exists: a temporary file in the
        same directory, ``fsync``, ``os.replace``, ``fsync`` of the directory. Raises
        ``OSError`` (the handler's failure: retried, then parked)."""
        target = self.path(key)
        if target.exists():
            return False
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(self.directory)
        return True

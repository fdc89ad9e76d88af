"""A single-writer lease in Redis with a fencing token.

- Key ``<stream>:lease`` holds the owner's id with a TTL; it is taken with
  ``SET key owner NX PX ttl`` and, in the same Lua script, a new fencing token
  is drawn with ``INCR <stream>:lease:token`` (so every acquisition has a token
  greater than every earlier one). The token is also made greater than the
  ``fence`` stored in the snapshot hash ``<stream>:snapshot`` (the counter is
  set to ``fence`` first if it is behind, e.g. deleted or not copied along with
  the stream and snapshot); a ``fence`` that is not a decimal number is an
  :class:`~shop_adapters.errors.IntegrityError` naming the key.
- A daemon thread renews it every ``ttl/3`` with a compare-and-set Lua script
  (``PEXPIRE`` only if the key still holds our id). If the key holds someone
  else's id, or no renewal has succeeded for a whole ``ttl``, the lease is
  lost: ``on_lost(reason)`` is called once and :attr:`Lease.token` goes back
  to ``None``.
- The snapshot store checks the token on every write (``RedisSnapshotStore``'s
  ``fencing_token``): a runner that paused past its TTL and woke up writes with
  a stale token and is refused (``FencedError``), even before it notices.

A second runner on the same stream :meth:`Lease.acquire`\\ s with polling until
the key expires or is released, then takes over. Sources: Redis ``SET`` docs
(``NX``, ``PX``), the "Distributed locks with Redis" page (release with a
compare-and-delete script), and M. Kleppmann, "How to do distributed locking"
(2016) on fencing tokens.

In a Redis Cluster give the stream a hash tag (``{shop1}:orders``) so the
stream, its lease and its token key live in one slot.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from typing import Any

import redis

from .errors import IntegrityError, PermanentError
from .redis_errors import REDIS_ERRORS, classify
from .retry import RetryPolicy, Stopped, event

__all__ = ["Lease", "default_owner"]

_log = logging.getLogger("shop.lease")

# KEYS[1] lease, KEYS[2] token counter, KEYS[3] snapshot hash; ARGV[1] owner,
# ARGV[2] ttl ms. Returns {1, token}, {0, ''} if someone else holds the lease, or
# {-1, stored fence} if the snapshot's 'fence' field is not a decimal token, or
# {-2, type} if the snapshot key is not a hash (then the lease is not taken).
# The new token always exceeds the snapshot's stored fence, even if the counter
# was deleted or the keys were copied without it: the lease (SET NX) gives mutual
# exclusion, and every earlier holder's token is <=
# the stored fence < the new token, so fencing still refuses stale writers.
_ACQUIRE = """
local kind = redis.call('TYPE', KEYS[3])['ok']
if kind ~= 'none' and kind ~= 'hash' then
  return {-2, kind}
end
local fence = redis.call('HGET', KEYS[3], 'fence')
if fence and (not string.match(fence, '^[1-9]%d*$') or #fence > 19) then
  if fence ~= '0' then
    return {-1, fence}
  end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, ''}
end
-- Tokens stay decimal strings (GET after INCR): a Lua number is a double, exact
-- only up to 2^53. Strings compare by length, then bytewise.
redis.call('INCR', KEYS[2])
local token = redis.call('GET', KEYS[2])
if fence and (#token < #fence or (#token == #fence and token <= fence)) then
  redis.call('SET', KEYS[2], fence)
  redis.call('INCR', KEYS[2])
  token = redis.call('GET', KEYS[2])
end
return {1, token}
"""
# Returns 1 if still ours (TTL extended), 0 if the key is gone (expired, evicted,
# deleted), -1 and the holder if someone else holds it.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return {redis.call('PEXPIRE', KEYS[1], ARGV[2]), ''}
end
if not holder then
  return {0, ''}
end
return {-1, holder}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def default_owner() -> str:
    """A unique owner id: ``<hostname>:<pid>:<8 hex digits>``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """The lease on one stream, held by one process at a time.

    - ``client``: a ``redis.Redis`` (``decode_responses=False``);
    - ``stream``: the stream name; keys are ``<stream>:lease`` and ``<stream>:lease:token``;
    - ``ttl_ms``: lease time to live, milliseconds (renewed every ``ttl_ms/3``);
    - ``poll_s``: seconds between attempts while waiting for the lease;
    - ``owner``: this holder's id (default :func:`default_owner`);
    - ``snapshot_key``: the snapshot hash whose ``fence`` every new token must
      exceed (default ``<stream>:snapshot``).

    Not reentrant. Redis connection errors while acquiring surface as
    :class:`OperationalError`, permanent refusals (wrong password, DB index out
    of range, a lease key of another type) as :class:`PermanentError`; during
    renewal connection errors are retried until the TTL runs out, then the
    lease counts as lost (at once for a permanent refusal).
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        ttl_ms: int = 10_000,
        poll_s: float = 0.5,
        owner: str | None = None,
        snapshot_key: str | None = None,
    ) -> None:
        if ttl_ms < 100:
            raise ValueError(f"ttl_ms must be >= 100 (milliseconds), got {ttl_ms}")
        self.client = client
        self.key = f"{stream}:lease"
        self.token_key = f"{stream}:lease:token"
        self.snapshot_key = snapshot_key if snapshot_key is not None else f"{stream}:snapshot"
        self.ttl_ms = ttl_ms
        self.poll_s = poll_s
        self.owner = owner or default_owner()
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._lock = threading.Lock()
        self._token: int | None = None
        self._on_lost: Callable[[str], None] | None = None
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None
        self.longest_gap_s = 0.0
        """Longest time between two successful renewals so far, in seconds (a
        renewal is due every ``ttl_ms / 3``; a longer gap means the renewer was starved)."""

    @property
    def token(self) -> int | None:
        """The fencing token of the current holding, or ``None`` if not held."""
        with self._lock:
            return self._token

    def fencing_token(self) -> int:
        """The current token, for ``RedisSnapshotStore(fencing_token=...)``.

        0 when the lease is not held: older than any real token, so the store
        refuses the write with ``FencedError``."""
        return self.token or 0

    def try_acquire(self) -> int | None:
        """One attempt: the new fencing token, or ``None`` if someone else holds it.

        Raises :class:`OperationalError` if Redis is unreachable, and
        :class:`PermanentError` if it refuses for good (wrong password, DB index
        out of range, the lease or token key holding another type), and
        :class:`IntegrityError` if the snapshot's ``fence`` field is not a
        decimal fencing token (nothing is taken then).
        """
        try:
            raw: Any = self._acquire(
                keys=[self.key, self.token_key, self.snapshot_key],
                args=[self.owner, self.ttl_ms],
            )
        except REDIS_ERRORS as e:
            raise classify(e, f"lease {self.key}", self._wrong_key(e)) from e
        status, value = int(raw[0]), raw[1]
        if status == -2:
            kind = bytes(value).decode("utf-8", "replace")
            raise IntegrityError(
                f"snapshot key {self.snapshot_key!r} holds a value that is not a hash "
                f"(a {kind}); it is not a shop snapshot and is never read as one: "
                f"inspect it (TYPE/DUMP {self.snapshot_key}) and delete it"
            )
        if status < 0:
            text = bytes(value).decode("utf-8", "replace")
            raise IntegrityError(
                f"snapshot key {self.snapshot_key!r} holds a 'fence' field that is not a "
                f"fencing token (a decimal number of at most 19 digits): {text[:60]!r}; "
                f"inspect it (HGETALL {self.snapshot_key}) and delete the field or the key"
            )
        if status == 0:
            return None
        token = int(value)
        with self._lock:
            self._token = token
        return token

    def holder(self) -> str | None:
        """Who holds the lease now (owner id), or ``None``. Raises OperationalError
        or PermanentError as :meth:`try_acquire`."""
        try:
            raw: Any = self.client.get(self.key)
        except REDIS_ERRORS as e:
            raise classify(e, f"GET {self.key}", self.key) from e
        return None if raw is None else bytes(raw).decode("utf-8", "replace")

    def _wrong_key(self, error: Exception) -> str | None:
        """Which of our keys a WRONGTYPE reply is about (the script touches three)."""
        if "WRONGTYPE" not in str(error):
            return None
        try:
            for key, expected in (
                (self.key, "string"),
                (self.token_key, "string"),
                (self.snapshot_key, "hash"),
            ):
                kind: Any = self.client.type(key)
                kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                if kind not in ("none", expected):
                    return key
        except REDIS_ERRORS:
            pass
        return self.key

    def acquire(
        self,
        stop: threading.Event | None = None,
        on_lost: Callable[[str], None] | None = None,
        on_wait: Callable[[str | None], None] | None = None,
        retry: RetryPolicy | None = None,
    ) -> int | None:
        """Wait (polling every ``poll_s``) until the lease is ours; start renewing.

        ``stop``: give up when set (returns ``None``); ``on_lost(reason)``:
        called once, from the renewal thread, if the lease is lost later;
        ``on_wait(holder)``: called once when we first find it held by someone
        else. Connection errors (:class:`OperationalError`) are retried under
        ``retry`` (default :class:`~shop_adapters.retry.RetryPolicy`: for ever),
        which raises the last one when it gives up. A :class:`PermanentError`
        (wrong password, DB index out of range, ...) or an
        :class:`IntegrityError` is raised at once. Returns the token.
        """
        policy = retry or RetryPolicy()
        waited = False
        try:
            while stop is None or not stop.is_set():
                for attempt in policy.attempts(f"taking the lease {self.key}", stop=stop):
                    with attempt:
                        token = self.try_acquire()
                        if token is None and not waited and on_wait is not None:
                            on_wait(self.holder())
                if token is not None:
                    self._start_renewing(on_lost)
                    return token
                waited = True
                if stop is None:
                    time.sleep(self.poll_s)
                elif stop.wait(self.poll_s):
                    break
        except Stopped:
            pass
        return None

    def _start_renewing(self, on_lost: Callable[[str], None] | None) -> None:
        self._on_lost = on_lost
        self._stop_renewing = threading.Event()
        self._renewer = threading.Thread(
            target=self._renew_loop, args=(self._stop_renewing,), name="lease-renewer", daemon=True
        )
        self._renewer.start()

    def _renew_loop(self, stop: threading.Event) -> None:
        last_ok = time.monotonic()
        due = self.ttl_ms / 3000
        # After a failed renewal (Redis restarting, a failover), try again soon:
        # the lease is kept if Redis is back before the TTL runs out.
        retry = min(due, 0.25)
        interval = due
        while not stop.wait(interval):
            attempted = time.monotonic()
            try:
                raw: Any = self._renew(keys=[self.key], args=[self.owner, self.ttl_ms])
            except REDIS_ERRORS as e:
                error = classify(e, f"lease renewal {self.key}", self.key)
                if isinstance(error, PermanentError):
                    self._lost(f"Redis refuses the renewal: {error}")
                    return
                first_failure = interval != retry or retry == due
                interval = retry
                self.longest_gap_s = max(self.longest_gap_s, time.monotonic() - last_ok)
                if time.monotonic() - last_ok < self.ttl_ms / 1000:
                    if first_failure:
                        event(
                            _log,
                            WARNING,
                            "lease_renewal_failed",
                            "lease renewal failed (%s); retrying every %.2f s until the TTL",
                            e,
                            retry,
                            error=str(e),
                        )
                    continue
                self._lost(f"no renewal for {self.ttl_ms} ms ({e})")
                return
            status = int(raw[0])
            if status == 1:
                self.longest_gap_s = max(self.longest_gap_s, attempted - last_ok)
                last_ok = time.monotonic()
                interval = due
                continue
            stalled = attempted - last_ok
            self.longest_gap_s = max(self.longest_gap_s, stalled)
            if status == 0:
                why = "the lease key is gone: it expired, was evicted or was deleted"
            else:
                holder = bytes(raw[1]).decode("utf-8", "replace")
                why = f"the lease is held by {holder!r}: it expired and was taken over"
            if stalled * 1000 >= self.ttl_ms:
                why += f" (this process did not renew it for {stalled:.1f} s, past its TTL)"
            self._lost(why)
            return

    def _lost(self, reason: str) -> None:
        with self._lock:
            self._token = None
        event(
            _log,
            ERROR,
            "lease_lost",
            "lease %s lost: %s",
            self.key,
            reason,
            reason=reason,
            longest_gap_s=round(self.longest_gap_s, 3),
        )
        if self._on_lost is not None:
            self._on_lost(reason)

    def release(self) -> None:
        """Stop renewing and delete the key if it is still ours (best effort:
        if Redis is unreachable the key simply expires after its TTL)."""
        self._stop_renewing.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()
        self._renewer = None
        with self._lock:
            held, self._token = self._token is not None, None
        if held:
            try:
                self._release(keys=[self.key], args=[self.owner])
            except REDIS_ERRORS as e:
                event(
                    _log,
                    WARNING,
                    "lease_not_released",
                    "lease %s not released (%s); it expires by itself",
                    self.key,
                    e,
                )
                return
            event(
                _log,
                INFO,
                "lease_released",
                "lease %s released (longest gap between renewals %.3f s, TTL %.3f s)",
                self.key,
                self.longest_gap_s,
                self.ttl_ms / 1000,
                longest_gap_s=round(self.longest_gap_s, 3),
                ttl_s=self.ttl_ms / 1000,
            )

"""Which Redis errors are transient and which are not: one classification for
the log, the snapshot store, the lease and the command-line tools.

:func:`classify` turns a ``redis.exceptions.RedisError`` into

- :class:`~shop_adapters.errors.OperationalError` (retry after a back-off) for a
  lost or refused connection, a time-out, and the error replies that mean "not
  now": ``LOADING`` (a restarting server reading its data), ``BUSY`` (a script
  running), ``TRYAGAIN``, ``CLUSTERDOWN``, ``MASTERDOWN``, ``READONLY`` (a
  fail-over in progress); and, in a Redis Cluster, ``MOVED``/``ASK`` that reach
  the caller (a plain client pinned to a node whose slot moved: the cluster
  client's map is refreshed by the next command), redis-py's ``ClusterError``
  (its redirections ran out, "TTL exhausted"), ``SlotNotCoveredError`` and a
  cluster client that could not reach any node to learn the topology. A
  failover is thus retried with the same back-off as a lost connection;
  a cluster client pointed at a server that is not in cluster mode is permanent;
- :class:`~shop_adapters.errors.PermanentError` for everything else, which no
  retry can fix: ``AuthenticationError`` (``WRONGPASS``, ``NOAUTH``; redis-py
  makes it a subclass of its ``ConnectionError``, so it must be tested first),
  ``NOPERM``, a ``SELECT`` refused ("DB index is out of range", "Invalid
  Database"), ``WRONGTYPE`` (the key holds another type), ``CROSSSLOT`` (keys of
  one command or script in two hash slots: a key naming bug) and any other
  error reply.

redis-py's ``RedisClusterException`` is not a ``RedisError``: catch
:data:`REDIS_ERRORS` where a cluster client may be in use.

Sources: redis-py ``redis/exceptions.py`` and its reply-prefix table
(``redis/_parsers/base.py``); Redis "Errors" reference (error prefixes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.cluster import RedisCluster

from .errors import OperationalError, PermanentError, ShopError

__all__ = [
    "REDIS_ERRORS",
    "TRANSIENT_REPLIES",
    "classify",
    "redis_errors",
    "refuse_eviction",
    "refuse_own_stream",
]

TRANSIENT_REPLIES = ("LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY")
"""Error-reply prefixes that mean "retry later", not "you are wrong"."""

REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
)
"""What a Redis client, plain or cluster, raises (redis-py's ``RedisClusterException``
is not a ``RedisError``): ``except REDIS_ERRORS as e: raise classify(e, ...)``."""

_CLUSTER_TRANSIENT: tuple[type[Exception], ...] = (
    redis.exceptions.ClusterError,  # ClusterDownError, MasterDownError, "TTL exhausted"
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,  # MovedError too
    redis.exceptions.ReadOnlyError,
    redis.exceptions.SlotNotCoveredError,
)
_NOT_A_CLUSTER = "Cluster mode is not enabled"
_UNREACHABLE_CLUSTER = ("cannot be connected", "slots are not covered", "not covered by")

_OWN_SUFFIXES = (":snapshot", ":lease:token", ":lease", ":dead", ":outcomes", ":audit", ":history")


def refuse_own_stream(client: redis.Redis, stream: str) -> None:
    """Raise :class:`PermanentError` if ``stream`` is the dead-letter stream
    (``<base>:dead``) of an existing stream ``<base>``: folding it, or appending
    to it, would mix events with dead letters. (The snapshot and lease keys are
    not streams: using them as the log fails with ``WRONGTYPE`` anyway.) Raises
    ``OperationalError`` if Redis is unreachable."""
    if not stream.endswith(":dead") or len(stream) == len(":dead"):
        return
    base = stream[: -len(":dead")]
    with redis_errors("TYPE", base):
        kind: object = client.type(base)
    if kind in (b"stream", "stream"):
        raise PermanentError(
            f"{stream!r} is the dead-letter stream of {base!r}, not a log of events; "
            f"did you mean --stream {base!r}?"
        )


def _wrong_type_hint(key: str | None) -> str:
    if key is None:
        return ""
    for suffix in _OWN_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            base = key[: -len(suffix)]
            return (
                f"; {key!r} is the {suffix[1:]} key of the stream {base!r}, and something "
                f"else stored another kind of value there: inspect it (TYPE {key}) and "
                "delete or rename it"
            )
    return ""


def classify(error: Exception, what: str, key: str | None = None) -> ShopError:
    """The shop error for ``error`` (one of :data:`REDIS_ERRORS`), raised during
    ``what`` (a command name and key, for the message) on ``key`` (named in a
    ``WRONGTYPE`` message). Never raises."""
    text = str(error) or type(error).__name__
    if isinstance(error, redis.exceptions.AskError):  # MovedError too
        return OperationalError(
            f"Redis Cluster redirected {what} to another node ({type(error).__name__} {text}): "
            "a plain client is talking to a cluster node (a failover moved the slot, or "
            "the server is a Redis Cluster and --no-cluster was given)"
        )
    if isinstance(error, _CLUSTER_TRANSIENT):
        return OperationalError(
            f"Redis Cluster not ready during {what}: {type(error).__name__} {text}"
        )
    if isinstance(error, redis.exceptions.RedisClusterException):
        if _NOT_A_CLUSTER in text:
            return PermanentError(
                f"the server is not a Redis Cluster node (during {what}: {text}); "
                "drop --cluster to use it as a single Redis"
            )
        if any(s in text for s in _UNREACHABLE_CLUSTER):
            return OperationalError(f"Redis Cluster unavailable during {what}: {text}")
        return PermanentError(f"Redis Cluster refused {what}: {text}")
    if isinstance(error, redis.exceptions.AuthenticationError):
        return PermanentError(
            f"Redis refused the credentials during {what}: {text} "
            "(check the user and password in --redis-url / REDIS_URL)"
        )
    if isinstance(error, redis.exceptions.ConnectionError) and "Invalid Database" in text:
        return PermanentError(f"Redis refused the database number during {what}: {text}")
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return OperationalError(f"Redis unavailable during {what}: {text}")
    if isinstance(error, redis.exceptions.ResponseError):
        if text.startswith(TRANSIENT_REPLIES):
            return OperationalError(f"Redis busy during {what}: {text}")
        if "WRONGTYPE" in text:  # also inside a script's error reply
            where = f"key {key!r}" if key is not None else "the key"
            return PermanentError(
                f"{where} holds a value of the wrong type for {what} "
                f"(WRONGTYPE: another kind of key already has this name){_wrong_type_hint(key)}"
            )
        if "DB index" in text:
            return PermanentError(
                f"Redis refused the database number in the URL during {what}: {text}"
            )
    return PermanentError(f"Redis refused {what}: {text}")


@contextmanager
def redis_errors(what: str, key: str | None = None) -> Iterator[None]:
    """Re-raise any ``RedisError`` in the block as :func:`classify` says, ``from`` it."""
    try:
        yield
    except REDIS_ERRORS as e:
        raise classify(e, what, key) from e


def refuse_eviction(client: redis.Redis) -> None:
    """Raise :class:`PermanentError` if the server may evict keys: a ``maxmemory``
    limit with any ``maxmemory-policy`` but ``noeviction``. Such a server silently
    drops streams, snapshots and lease tokens under memory pressure, so the log
    would no longer be the truth. Read from ``INFO memory`` (works where ``CONFIG``
    is disabled; in a Redis Cluster, of every master). Source: Redis "Key eviction"
    docs. Raises ``OperationalError`` if Redis is unreachable.
    """
    with redis_errors("INFO memory"):
        if isinstance(client, RedisCluster):  # every master, not one default node
            infos: Any = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            nodes = list(infos.items())
        else:
            nodes = [("", client.info("memory"))]
    for node, info in nodes:
        limit = int(info.get("maxmemory", 0) or 0)
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if limit and policy != "noeviction":
            where = f" (node {node})" if node else ""
            raise PermanentError(
                f"Redis may evict keys{where}: maxmemory is {limit} bytes with "
                f"maxmemory-policy {policy}, so under memory pressure it would silently drop "
                "the stream, its snapshot and its lease token. Set maxmemory-policy "
                "noeviction (writes are then refused when memory is full, and nothing is "
                "lost), or pass --allow-eviction to run anyway at your own risk"
            )

"""The audit trail: operators' decisions, recorded where the log lives.

When the runner stops because the log no longer holds the history of its
state (a gap, a rollback, a wipe, a replaced stream), going on is a decision
an operator takes explicitly (``--accept-gap`` or ``--accept-rollback`` with
``--reason``), never a silent skip. :func:`record` appends it to the stream
``<stream>:audit`` (``XADD <key> * ...``): the decision, the operator's reason,
who took it (user and host), the runner's owner id, the position and records
of the state it concerned, the error that stopped the runner, what was done,
and the time (UTC). ``inspect audit`` lists the trail; nothing deletes it.
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Mapping
from typing import Any

import redis

from .protocols import Position
from .redis_errors import redis_errors

__all__ = ["operator", "read", "record"]


def operator() -> str:
    """``<user>@<host>`` of this process, for the ``who`` field."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def record(client: redis.Redis, key: str, entry: Mapping[str, str]) -> Position:
    """``XADD <key> * ...`` of ``entry`` plus ``time`` (ISO 8601, UTC); returns its ID.
    Raises ``OperationalError`` or ``PermanentError`` (see ``redis_errors.classify``)."""
    fields = dict(entry)
    fields.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    with redis_errors("XADD (audit)", key):
        entry_id: Any = client.xadd(key, fields)  # type: ignore[arg-type]
    return Position.parse(entry_id)


def read(client: redis.Redis, key: str) -> list[tuple[Position, dict[str, str]]]:
    """Every entry of the trail (``XRANGE <key> - +``), oldest first, as text."""
    with redis_errors("XRANGE (audit)", key):
        reply: Any = client.xrange(key, "-", "+")
    out = []
    for entry_id, fields in reply:
        text = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            )
            for k, v in fields.items()
        }
        out.append((Position.parse(entry_id), text))
    return out

"""Helpers shared by the event logs: entry encoding and argument checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["check_limit", "check_timeout", "encode_entries", "encode_entry", "to_bytes"]


def to_bytes(value: str | bytes | int, what: str) -> bytes:
    """``bytes`` as is, ``str`` as UTF-8, ``int`` as ASCII decimal; ``TypeError`` otherwise.

    ``bool`` is refused (as redis-py does) rather than stored as ``True``.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if type(value) is int:
        return b"%d" % value
    raise TypeError(f"{what} must be bytes, str or int, got {type(value).__name__} {value!r:.80}")


def encode_entry(entry: Mapping[str | bytes, str | bytes | int]) -> dict[bytes, bytes]:
    """An entry's fields as ``bytes -> bytes``. Raises ``ValueError`` if it has no field."""
    if not entry:
        raise ValueError("a log entry needs at least one field, got an empty mapping")
    out: dict[bytes, bytes] = {}
    for key, value in entry.items():
        if isinstance(key, int):
            raise TypeError(f"a field name must be bytes or str, got int {key!r}")
        out[to_bytes(key, "a field name")] = to_bytes(value, f"field {key!r:.40}")
    return out


def encode_entries(
    entries: Sequence[Mapping[str | bytes, str | bytes | int]],
) -> list[dict[bytes, bytes]]:
    """:func:`encode_entry` over ``entries``; all are checked before any is appended."""
    return [encode_entry(e) for e in entries]


def check_limit(limit: int) -> int:
    """``limit`` must be an int >= 1 (records); ``ValueError`` otherwise."""
    if type(limit) is not int or limit < 1:
        raise ValueError(f"limit must be an int >= 1 (records), got {limit!r}")
    return limit


def check_timeout(timeout_ms: int) -> int:
    """``timeout_ms`` must be an int >= 0 (milliseconds; 0 means do not block)."""
    if type(timeout_ms) is not int or timeout_ms < 0:
        raise ValueError(f"timeout_ms must be an int >= 0 (milliseconds), got {timeout_ms!r}")
    return timeout_ms

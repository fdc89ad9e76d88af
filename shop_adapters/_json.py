"""Strict JSON for files and headers the shell reads: exact integers, no floats,
no ``NaN``/``Infinity``, no repeated keys (standard-library ``json``)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["strict_json"]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _refuse_float(text: str) -> Any:
    raise ValueError(f"a float ({text:.40}) is not allowed: use integers")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r:.80}")
        out[key] = value
    return out


def strict_json(text: bytes | str) -> Any:
    """Parse ``text``; raises ``ValueError`` (including ``JSONDecodeError`` and
    ``UnicodeDecodeError``) for invalid JSON, a float, ``NaN`` or a repeated key.

    >>> strict_json(b'{"a": 18446744073709551617}')
    {'a': 18446744073709551617}
    """
    return json.loads(
        text,
        parse_float=_refuse_float,
        parse_constant=_refuse_constant,
        object_pairs_hook=_unique_object,
    )

"""The Redis keys of one log: the stream and its companions, named in one place.

``StreamKeys.for_stream("orders")`` names ``orders``, ``orders:dead``,
``orders:snapshot``, ``orders:lease``, ``orders:lease:token``,
``orders:outcomes``, ``orders:audit`` and ``orders:history``;
``StreamKeys.for_shop("acme")`` names ``shop:{acme}``, ``shop:{acme}:dead``, ...:
every key of one shop carries the hash tag ``{acme}``, so in a Redis Cluster
they all live in one slot and one Lua script may touch several of them
(Source: Redis cluster specification, "Hash tags").

>>> keys = StreamKeys.for_shop("acme")
>>> keys.stream, keys.snapshot, keys.lease
('shop:{acme}', 'shop:{acme}:snapshot', 'shop:{acme}:lease')
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["COMPANION_SUFFIXES", "StreamKeys"]

COMPANION_SUFFIXES = (
    ":dead",
    ":snapshot",
    ":lease",
    ":lease:token",
    ":outcomes",
    ":audit",
    ":history",
)
"""Suffixes of a stream's companion keys; a stream name ending with one is refused."""


class StreamKeys(NamedTuple):
    """Every key that belongs to one log (see the module docstring)."""

    stream: str
    dead: str
    snapshot: str
    lease: str
    lease_token: str
    outcomes: str
    audit: str
    history: str

    @classmethod
    def for_stream(cls, stream: str) -> StreamKeys:
        """Keys ``<stream>``, ``<stream>:dead``, ``<stream>:snapshot``, ...

        Raises ``ValueError`` for an empty name or one that ends like a
        companion key (``orders:snapshot``), before anything is written.
        """
        if not stream:
            raise ValueError("the stream name must not be empty")
        for suffix in COMPANION_SUFFIXES:
            if stream.endswith(suffix) and len(stream) > len(suffix):
                base = stream[: -len(suffix)]
                raise ValueError(
                    f"{stream!r} is the name of a companion key of the stream {base!r} "
                    f"(its {suffix[1:]}), not a log: did you mean --stream {base!r}?"
                )
        return cls(
            stream,
            f"{stream}:dead",
            f"{stream}:snapshot",
            f"{stream}:lease",
            f"{stream}:lease:token",
            f"{stream}:outcomes",
            f"{stream}:audit",
            f"{stream}:history",
        )

    @classmethod
    def for_shop(cls, shop: str) -> StreamKeys:
        """The keys of shop ``shop``: stream ``shop:{<shop>}`` and its companions.

        Raises ``ValueError`` for an empty id or one holding ``{`` or ``}``.
        """
        if not shop or "{" in shop or "}" in shop:
            raise ValueError(f"a shop id is a non-empty name without braces, got {shop!r}")
        return cls.for_stream(f"shop:{{{shop}}}")

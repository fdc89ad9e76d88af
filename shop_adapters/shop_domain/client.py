"""The shop's client: :class:`ShopClient`, a ``LogClient`` of shop events.

>>> from shop_core import TopUp
>>> import fakeredis
>>> from shop_adapters.keys import StreamKeys
>>> client = ShopClient(fakeredis.FakeRedis(), StreamKeys.for_stream("orders"))
>>> answer = client.submit(TopUp(7, 500), key="topup-7-1", wait=False)
>>> str(answer.position) != "0-0", answer.outcome is None
(True, True)
"""

from __future__ import annotations

import redis

from shop_core import Event

from ..client import LogClient
from ..keys import StreamKeys
from ..retry import RetryPolicy
from .wire import encode_event

__all__ = ["ShopClient"]


class ShopClient(LogClient[Event]):
    """Submit shop events (v1 wire format) to a Redis stream and read their outcomes.

    ``submit(event, key=None, wait=True, timeout=10.0)`` returns an
    :class:`~shop_adapters.client.Answer`; see :class:`~shop_adapters.client.LogClient`.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        *,
        retry: RetryPolicy | None = None,
        max_block_ms: int = 1_000,
    ) -> None:
        super().__init__(client, keys, encode_event, retry=retry, max_block_ms=max_block_ms)

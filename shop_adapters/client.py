"""Submitting requests and getting their answers: :class:`LogClient`, generic over the domain.

``LogClient(client, keys, encode).submit(request, key=None, wait=True, timeout=10)``
appends one entry carrying an idempotency key (a random one when none is
given), retries the append when its reply is lost (safe: the runner answers
a repeat of the key as a ``duplicate`` and never applies it twice), then waits
on the outcome journal with a blocking read (``XREAD BLOCK``) for the runner's
answer. :meth:`LogClient.append` appends many, in pipelined chunks, retrying a
chunk whose reply was lost only when every entry in it carries a key.

:class:`shop_adapters.shop_domain.client.ShopClient` is this for the shop.

Exactly once, and where it stops: an append retried after a lost reply may
land twice in the log (the first attempt may have landed), but the runner
applies a key once and answers the repeat as a duplicate of the first, with
the first's verdict. A repeat that arrives after the key left the runner's
window (:data:`~shop_adapters.idempotency.DEFAULT_WINDOW` records) is applied
again: keep retries well inside the window.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis
from tqdm import tqdm

from .domain import Outcome
from .errors import OperationalError, PermanentError, ShopError
from .idempotency import KEY_FIELD
from .journals import RedisOutcomeJournal
from .keys import StreamKeys
from .logs.redis_stream import RedisStreamLog
from .protocols import Position
from .retry import RetryPolicy

__all__ = ["Answer", "AppendInterrupted", "LogClient"]

E = TypeVar("E")
Entry = Mapping[str | bytes, str | bytes | int]


@dataclass(frozen=True, slots=True)
class Answer:
    """What became of one submitted request: its ``position`` in the log, and its
    ``outcome`` (``None`` if none was published within the time-out)."""

    position: Position
    outcome: Outcome | None


class AppendInterrupted(ShopError):
    """The log failed part-way through :meth:`LogClient.append`: Redis refused for
    good (out of memory, say), or the chunk could not be retried (an entry
    without a key), or the retries gave up.

    ``appended``: entries appended and acknowledged before the failure;
    ``last``: the last acknowledged position (``None`` if none); ``in_flight``:
    size of the chunk being written, which may or may not have landed.
    """

    def __init__(
        self, appended: int, last: Position | None, in_flight: int, cause: BaseException
    ) -> None:
        self.appended, self.last, self.in_flight = appended, last, in_flight
        where = f" (last at {last})" if last is not None else ""
        what = "interrupted" if isinstance(cause, KeyboardInterrupt) else str(cause).rstrip(". ")
        super().__init__(
            f"{what}; {appended} entries were appended before the "
            f"failure{where}; the chunk of {in_flight} being written may or may not have "
            "landed. Entries with idempotency keys can be appended again safely"
        )


class LogClient(Generic[E]):
    """Appends requests of one domain to a Redis stream and reads their outcomes.

    - ``client``: a ``redis.Redis`` (``decode_responses=False``), best with
      redis-py's own retry turned off (``retry=False`` in
      :func:`shop_adapters.cli_common.make_client`): this class retries, and
      only what is safe to retry;
    - ``keys``: the stream's :class:`~shop_adapters.keys.StreamKeys`;
    - ``encode``: a request to its wire entry (field name to value);
    - ``retry``: the :class:`~shop_adapters.retry.RetryPolicy` of appends
      (default: give up after 30 s of failures).
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        encode: Callable[[E], Mapping[str, bytes]],
        *,
        retry: RetryPolicy | None = None,
        max_block_ms: int = 1_000,
    ) -> None:
        self.keys = keys
        self.encode = encode
        self.retry = retry or RetryPolicy(give_up_after=30.0)
        self.log = RedisStreamLog(client, keys.stream, keys.dead, max_block_ms=max_block_ms)
        self.journal = RedisOutcomeJournal(client, keys.outcomes, max_block_ms=max_block_ms)

    def entry(self, request: E, key: str | None) -> dict[str | bytes, str | bytes | int]:
        """The wire entry of ``request`` with its idempotency ``key`` field (if any)."""
        out: dict[str | bytes, str | bytes | int] = {}
        out.update(self.encode(request).items())
        if key is not None:
            out[KEY_FIELD] = key.encode()
        return out

    def submit(
        self, request: E, key: str | None = None, *, wait: bool = True, timeout: float = 10.0
    ) -> Answer:
        """Append ``request`` with idempotency ``key`` (default: a random UUID), retrying
        a lost reply; with ``wait``, block up to ``timeout`` seconds for its outcome.

        Raises :class:`AppendInterrupted` if the append still fails when the
        retry policy gives up (the request may or may not be in the log: submit
        it again with the same key).
        """
        key = key if key is not None else uuid.uuid4().hex
        _n, last = self.append([self.entry(request, key)])
        assert last is not None
        if not wait:
            return Answer(last, None)
        return Answer(last, self.journal.wait_for(last, int(timeout * 1000)))

    def append(
        self,
        entries: Iterable[Entry],
        *,
        chunk: int = 1_000,
        rate: float | None = None,
        total: int | None = None,
        progress: bool | None = None,
    ) -> tuple[int, Position | None]:
        """Append ``entries`` in chunks of ``chunk`` (one pipeline each); at most
        ``rate`` entries per second when given. A chunk whose reply is lost is sent
        again under the retry policy if each of its entries has a key field;
        otherwise :class:`AppendInterrupted` is raised at once (a blind retry
        could apply it twice). Returns ``(entries appended, last position)``;
        ``total`` sizes the progress bar (on stderr when it is a terminal, or as
        ``progress`` says).
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        n = 0
        last: Position | None = None
        started = time.monotonic()
        it = iter(entries)
        disable = None if progress is None else not progress
        with tqdm(total=total, unit="ev", desc="append", disable=disable) as bar:
            while batch := list(itertools.islice(it, chunk)):
                try:
                    positions = self._append_chunk(batch, n, last)
                except KeyboardInterrupt as e:
                    raise AppendInterrupted(n, last, len(batch), e) from e
                n += len(batch)
                last = positions[-1] if positions else last
                bar.update(len(batch))
                if rate:
                    ahead = n / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        return n, last

    def _append_chunk(
        self, batch: Sequence[Entry], appended: int, last: Position | None
    ) -> list[Position]:
        keyed = all(KEY_FIELD in e or KEY_FIELD.decode() in e for e in batch)
        try:
            if not keyed:
                return self.log.append(batch)
            positions: list[Position] = []
            for attempt in self.retry.attempts(f"appending to {self.keys.stream}"):
                with attempt:
                    positions = self.log.append(batch)
            return positions
        except (OperationalError, PermanentError) as e:
            raise AppendInterrupted(appended, last, len(batch), e) from e

    def close(self) -> None:
        """Close the Redis client."""
        self.log.client.close()

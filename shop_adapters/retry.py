"""One retry policy for everything that talks to a log or a store (tenacity).

:class:`RetryPolicy` says how long to wait between attempts after an
:class:`~shop_adapters.errors.OperationalError` (the service is unreachable)
and when to give up; :meth:`RetryPolicy.attempts` gives tenacity's attempt
iterator for it. Only ``OperationalError`` is retried: a
:class:`~shop_adapters.errors.PermanentError` (wrong password, a key of
another type) or an :class:`~shop_adapters.errors.IntegrityError` passes
through at once. The wait is exponential with full jitter, ``uniform(0,
min(cap, base * 2**(n-1)))`` seconds before retry ``n`` (tenacity's
``wait_random_exponential``; Source: AWS Architecture Blog, "Exponential
Backoff And Jitter"). A ``stop`` event ends the waiting at once with
:class:`Stopped`.

>>> policy = RetryPolicy(base=0.001, cap=0.001, max_attempts=3)
>>> calls = []
>>> for attempt in policy.attempts("reading"):
...     with attempt:
...         calls.append(1)
...         if len(calls) < 3:
...             raise OperationalError("connection refused")
>>> len(calls)
3
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tenacity import (
    AttemptManager,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from .errors import OperationalError

__all__ = ["RetryPolicy", "Stopped", "event"]

_log = logging.getLogger("shop.retry")


def event(
    logger: logging.Logger, level: int, name: str, message: str, *args: object, **fields: Any
) -> None:
    """Log ``message % args`` as the event ``name`` with ``fields`` (figures a JSON log
    line carries as members, a text line as ``key=value``)."""
    logger.log(level, message, *args, extra={"fields": {"event": name, **fields}})


class Stopped(Exception):
    """The ``stop`` event was set while waiting to retry."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How to retry an ``OperationalError``.

    - ``base``, ``cap``: the back-off window grows from ``base`` seconds and
      doubles up to ``cap`` seconds;
    - ``give_up_after``: seconds since the first failure of a streak after which
      the last error is raised (``None``: no limit);
    - ``max_attempts``: attempts (the first included) after which the last error
      is raised (``None``: no limit).
    """

    base: float = 0.1
    cap: float = 5.0
    give_up_after: float | None = None
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base):
            raise ValueError(f"need 0 < base <= cap seconds, got {self.base}, {self.cap}")
        if self.give_up_after is not None and not self.give_up_after >= 0:
            raise ValueError(
                f"give_up_after must be >= 0 seconds or None, got {self.give_up_after}"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, got {self.max_attempts}")

    def attempts(
        self,
        what: str,
        *,
        stop: threading.Event | None = None,
        logger: logging.Logger | None = None,
        where: Callable[[], str] | None = None,
    ) -> Iterator[AttemptManager]:
        """tenacity's attempt iterator for ``what`` (``"reading the log"``):
        ``for attempt in policy.attempts(...): with attempt: ...``.

        Each failure is logged as a WARNING (``<what> failed (<error>); retry N
        in S s[ from <where()>]``). Raises :class:`Stopped` when ``stop`` is set
        during a wait, and the last ``OperationalError``, its message saying how
        long it tried, when the policy gives up.
        """
        log = logger or _log
        limits: list[stop_base] = [stop_never]
        if self.give_up_after is not None:
            limits.append(stop_after_delay(self.give_up_after))
        if self.max_attempts is not None:
            limits.append(stop_after_attempt(self.max_attempts))

        def sleep(seconds: float) -> None:
            if stop is None:
                time.sleep(seconds)
            elif stop.wait(seconds):
                raise Stopped(what)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            delay = state.upcoming_sleep
            suffix = f" from {where()}" if where is not None else ""
            log.warning(
                "%s failed (%s); retry %d in %.2fs%s",
                what,
                error,
                state.attempt_number,
                delay,
                suffix,
            )

        def give_up(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            assert isinstance(error, OperationalError)
            if self.max_attempts is not None and state.attempt_number >= self.max_attempts:
                raise error
            raise OperationalError(
                f"{what}: gave up after {state.attempt_number} attempt(s) over "
                f"{state.seconds_since_start:.1f} s (limit {self.give_up_after:g} s): {error}"
            ) from error

        return iter(
            Retrying(
                sleep=sleep,
                stop=stop_any(*limits),
                wait=wait_random_exponential(multiplier=self.base, max=self.cap),
                retry=retry_if_exception_type(OperationalError),
                before_sleep=before_sleep,
                retry_error_callback=give_up,
            )
        )

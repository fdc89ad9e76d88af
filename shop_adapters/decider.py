"""A :class:`~shop_adapters.domain.Domain` from a Decider: the quickest way to bring your own.

A Decider is three things: an initial state, ``decide(state, command)`` and
``evolve(state, event)`` (J. Chassaing, "Functional Event Sourcing Decider",
2021). The log holds commands (an input journal); for each one the fold calls
``decide``, which returns ``Success(events)`` (a list, possibly empty) or
``Failure(rejection)``; accepted events are folded with ``evolve``. A
rejection is any object with ``code`` and ``message`` (:class:`Rejected`), or a
plain ``str`` code.

Wire and snapshot codecs are plain functions too: ``decode_command(fields)``
turns one entry's raw fields (``Mapping[bytes, bytes]``) into a command, raising
``ValueError``, ``TypeError`` or ``KeyError`` for a dead letter (the message is
the reason); ``state_to_json``/``state_from_json`` give the snapshot body as
canonical JSON (keys sorted) and the digest is the SHA-256 of that body.

It folds one command at a time through your pure functions; the shop's own
domain (:mod:`shop_adapters.shop_domain`) shows a faster folder.

>>> from returns.result import Success, Failure
>>> counter = DeciderDomain(
...     name="counter",
...     initial=0,
...     decide=lambda s, n: Success([n]) if n > 0 else Failure(Rejected("not_positive", str(n))),
...     evolve=lambda s, n: s + n,
...     decode_command=lambda fields: int(fields[b"n"]),
...     state_to_json=lambda s: s,
...     state_from_json=int,
... )
>>> folder = counter.folder(counter.initial)
>>> folder.fold([2, -1, 3])
Tally(accepted={'int': 2}, rejected={'not_positive': 1}, duplicates=0)
>>> folder.persistent()
5
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from returns.result import Failure, Result, Success

from .domain import Folder, Json, Outcome, Tally
from .protocols import DeadLetter, Fields, Position, Record

__all__ = ["DeciderDomain", "Rejected"]

S = TypeVar("S")
C = TypeVar("C")
Ev = TypeVar("Ev")


class Rejected(NamedTuple):
    """Why ``decide`` refused a command: a stable ``code`` and a human ``message``."""

    code: str
    message: str = ""


def canonical_json(value: Json) -> bytes:
    """``value`` as compact JSON with sorted keys, UTF-8: equal values, equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class DeciderDomain(Generic[S, C, Ev]):
    """A domain from plain functions (see the module docstring).

    - ``decide(state, command) -> Result[Sequence[event], Rejected | str]``;
    - ``evolve(state, event) -> state``, pure;
    - ``kind(command) -> str``: how the tally names a command (default: its type's name);
    - ``detail(command, events) -> JSON | None``: what the outcome journal says
      about an accepted command (default ``None``);
    - ``config``: JSON-ready configuration that changes the fold (hashed into
      ``config_digest``), ``None`` for none.
    """

    name: str
    initial: S
    decide: Callable[[S, C], Result[Sequence[Ev], Any]]
    evolve: Callable[[S, Ev], S]
    decode_command: Callable[[Fields], C]
    state_to_json: Callable[[S], Json]
    state_from_json: Callable[[Json], S]
    semantics_version: int = 1
    kind: Callable[[C], str] = field(default=lambda c: type(c).__name__)
    detail: Callable[[C, Sequence[Ev]], Json] = field(default=lambda c, events: None)
    config: Json = None

    @property
    def config_digest(self) -> str | None:
        """SHA-256 hex of ``canonical_json(config)``, ``None`` without a config."""
        if self.config is None:
            return None
        return hashlib.sha256(canonical_json(self.config)).hexdigest()

    def describe_config(self, digest: str | None) -> str:
        """``"no configuration"`` or ``"configuration sha256:<12 hex digits>"``."""
        return "no configuration" if digest is None else f"configuration sha256:{digest[:12]}"

    def folder(self, state: S) -> Folder[S, C]:
        """A folder calling ``decide`` then ``evolve`` for each command."""
        return _DeciderFolder(self, state)

    def decode_records(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[Position, C]], list[DeadLetter]]:
        """``decode_command`` on each record; its ``ValueError``/``TypeError``/``KeyError``
        (or a non-UTF-8 value, a ``UnicodeDecodeError``) becomes a dead letter."""
        events: list[tuple[Position, C]] = []
        dead: list[DeadLetter] = []
        for record in records:
            try:
                events.append((record.position, self.decode_command(record.fields)))
            except KeyError as e:
                dead.append(DeadLetter(record.position, record.fields, f"missing field {e}"))
            except (ValueError, TypeError) as e:
                dead.append(DeadLetter(record.position, record.fields, str(e) or repr(e)))
        return events, dead

    def encode_state(self, state: S) -> bytes:
        """``canonical_json(state_to_json(state))``."""
        return canonical_json(self.state_to_json(state))

    def decode_state(self, body: bytes) -> S:
        """``state_from_json`` of the JSON body; ``ValueError`` if it cannot be read."""
        try:
            return self.state_from_json(json.loads(body))
        except (TypeError, KeyError) as e:
            raise ValueError(f"snapshot body does not hold a {self.name} state: {e}") from e

    def digest(self, state: S) -> str:
        """SHA-256 hex of :meth:`encode_state`."""
        return hashlib.sha256(self.encode_state(state)).hexdigest()

    def state_json(self, state: S) -> Json:
        """``state_to_json(state)``."""
        return self.state_to_json(state)

    def difference(self, expected: S, actual: S) -> str | None:
        """The first differing JSON member (by sorted key), or ``None`` if equal."""
        a, b = self.state_to_json(expected), self.state_to_json(actual)
        if a == b:
            return None
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b), key=str):
                if a.get(key) != b.get(key):
                    return f"{key}: rebuilt {a.get(key)!r:.80}, snapshot {b.get(key)!r:.80}"
        return f"rebuilt {a!r:.80}, snapshot {b!r:.80}"


def _rejection(reason: Any) -> tuple[str, str]:
    if isinstance(reason, str):
        return reason, ""
    return str(reason.code), str(getattr(reason, "message", ""))


class _DeciderFolder(Generic[S, C, Ev]):
    def __init__(self, domain: DeciderDomain[S, C, Ev], state: S) -> None:
        self._d = domain
        self._state = state

    def _step(self, command: C) -> Outcome:
        d = self._d
        match d.decide(self._state, command):
            case Success(events):
                state = self._state
                for event in events:
                    state = d.evolve(state, event)
                self._state = state
                return Outcome("accepted", d.kind(command), detail=d.detail(command, events))
            case Failure(reason):
                code, message = _rejection(reason)
                return Outcome("rejected", d.kind(command), code, message)
        raise TypeError("decide must return a returns.result.Result")  # pragma: no cover

    def fold(self, events: Sequence[C]) -> Tally:
        accepted: dict[str, int] = {}
        rejected: dict[str, int] = {}
        for command in events:
            out = self._step(command)
            if out.status == "accepted":
                accepted[out.kind or ""] = accepted.get(out.kind or "", 0) + 1
            else:
                rejected[out.code or ""] = rejected.get(out.code or "", 0) + 1
        return Tally(accepted, rejected)

    def fold_each(self, events: Sequence[C]) -> list[Outcome]:
        return [self._step(command) for command in events]

    def persistent(self) -> S:
        return self._state

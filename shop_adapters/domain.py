"""The domain contract: everything the shell needs from a domain, and nothing more.

The shell (runner, snapshot envelope, logs, stores, lease, ``inspect``) is
generic over a :class:`Domain`: a Decider-shaped value that folds a log of
requests. The shop (:mod:`shop_adapters.shop_domain`) is one instance; a test
domain of bank accounts is another (``tests/bank_domain.py``).

The log is an input journal (LMAX): each record is a request, and the domain
decides and applies it in one step, so a domain gives a *folder* (apply
batches in place, an immutable state on demand) rather than separate
``decide`` and ``evolve`` functions. What a domain provides:

- ``name`` and ``semantics_version``: recorded in every snapshot; a snapshot of
  another domain or version is set aside and the state rebuilt by replay;
- ``config_digest``: SHA-256 hex of any configuration that changes the fold
  (the shop's price list), or ``None``; ``describe_config(digest)`` says one
  in words, for messages;
- ``initial``: the state before the first record;
- ``folder(state)``: a :class:`Folder`;
- ``decode_records(records)``: the wire codec, raw records to events or
  dead letters with a reason (its upcasters included);
- ``encode_state(state)`` / ``decode_state(body)``: the snapshot body, canonical
  (equal states, equal bytes);
- ``digest(state)``: a stable hex digest of the state;
- ``state_json(state)`` and ``difference(expected, actual)``: for ``inspect``.

:class:`Tally` counts what a fold did, generically: accepted requests by kind,
rejections by code. Tallies add up.

>>> Tally({"TopUp": 2}, {}) + Tally({"TopUp": 1, "Order": 1}, {"out_of_stock": 1})
Tally(accepted={'Order': 1, 'TopUp': 3}, rejected={'out_of_stock': 1}, duplicates=0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from .protocols import DeadLetter, Position, Record

__all__ = ["STATUSES", "Domain", "Folder", "Outcome", "Tally"]

S = TypeVar("S")
E = TypeVar("E")
S_co = TypeVar("S_co", covariant=True)
E_contra = TypeVar("E_contra", contravariant=True)

Json = Any
"""A value ``json.dumps`` accepts."""


def _add(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, n in b.items():
        out[k] = out.get(k, 0) + n
    return dict(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class Tally:
    """What a fold did: ``accepted`` requests by kind (``{"Order": 3}``), ``rejected``
    requests by stable code (``{"out_of_stock": 1}``) and ``duplicates`` (records
    answered from an earlier one with the same idempotency key)."""

    accepted: Mapping[str, int] = field(default_factory=dict)
    rejected: Mapping[str, int] = field(default_factory=dict)
    duplicates: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            _add(self.accepted, other.accepted),
            _add(self.rejected, other.rejected),
            self.duplicates + other.duplicates,
        )

    @property
    def events(self) -> int:
        """Requests decided: accepted, rejected and duplicates."""
        return sum(self.accepted.values()) + sum(self.rejected.values()) + self.duplicates

    def to_json(self) -> dict[str, Any]:
        """``{"accepted": {kind: n}, "rejected": {code: n}, "duplicates": n}``, keys sorted."""
        return {
            "accepted": dict(sorted(self.accepted.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "duplicates": self.duplicates,
        }

    @classmethod
    def from_json(cls, raw: object) -> Tally:
        """The inverse of :meth:`to_json`; raises ``ValueError`` naming what is wrong."""
        if type(raw) is not dict or set(raw) != {"accepted", "rejected", "duplicates"}:
            raise ValueError('a tally is {"accepted": {...}, "rejected": {...}, "duplicates": n}')
        parts: list[dict[str, int]] = []
        for name in ("accepted", "rejected"):
            counts = raw[name]
            if type(counts) is not dict:
                raise ValueError(f"tally {name} must be an object")
            for k, n in counts.items():
                if type(n) is not int or n < 0:
                    raise ValueError(f"tally {name}[{k!r:.40}] must be a non-negative int")
            parts.append(counts)
        duplicates = raw["duplicates"]
        if type(duplicates) is not int or duplicates < 0:
            raise ValueError("tally duplicates must be a non-negative int")
        return cls(parts[0], parts[1], duplicates)


class Outcome(NamedTuple):
    """The answer to one request, as the outcome journal publishes it (a named tuple:
    immutable and cheap to build, one per record).

    - ``status``: ``"accepted"``, ``"rejected"``, ``"dead_letter"`` or ``"duplicate"``;
    - ``kind``: the request's kind (``"Order"``), ``None`` for a dead letter;
    - ``code`` and ``message``: the stable rejection code and its text (a dead
      letter's reason in ``message``);
    - ``detail``: what the domain says about the request, JSON-ready (for an
      accepted shop order ``{"total": 300, "user": 7, "lines": [["cpu", 3, 100]]}``,
      for a rejected one ``{"user": 7, "items": ["cpu"]}``), for the read side;
    - ``duplicate_of``: for a duplicate, the position of the first record with
      its idempotency key; ``verdict``: the first record's status (its kind,
      code, message and detail are carried too).
    """

    status: str
    kind: str | None = None
    code: str | None = None
    message: str | None = None
    detail: Mapping[str, Json] | None = None
    duplicate_of: Position | None = None
    verdict: str | None = None

    def to_json(self) -> dict[str, Json]:
        """The non-empty members as a JSON-ready dict (``duplicate_of`` as ``"ms-seq"``).

        >>> Outcome("rejected", "Order", "out_of_stock", "none left").to_json()
        {'status': 'rejected', 'kind': 'Order', 'code': 'out_of_stock', 'message': 'none left'}
        """
        out: dict[str, Json] = {"status": self.status}
        for name in ("kind", "code", "message", "detail", "verdict"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.duplicate_of is not None:
            out["duplicate_of"] = str(self.duplicate_of)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Json]) -> Outcome:
        """The inverse of :meth:`to_json`; ``ValueError`` or ``KeyError`` for anything else."""
        if raw.get("status") not in STATUSES:
            raise ValueError(f"unknown outcome status {raw.get('status')!r:.40}")
        duplicate_of = raw.get("duplicate_of")
        return cls(
            raw["status"],
            raw.get("kind"),
            raw.get("code"),
            raw.get("message"),
            raw.get("detail"),
            None if duplicate_of is None else Position.parse(duplicate_of),
            raw.get("verdict"),
        )


STATUSES = frozenset({"accepted", "rejected", "dead_letter", "duplicate"})
"""Every :attr:`Outcome.status`."""


class Folder(Protocol[S_co, E_contra]):
    """A working copy of a state that folds batches in place.

    Like a pyrsistent evolver: :meth:`fold` and :meth:`fold_each` apply events
    in order; :meth:`persistent` returns an immutable state equal to folding
    everything so far from the starting state, and never changes a state it
    returned. Not thread-safe.
    """

    def fold(self, events: Sequence[E_contra]) -> Tally:
        """Apply ``events`` in order; return what happened (counts only, the fast path)."""
        ...

    def fold_each(self, events: Sequence[E_contra]) -> list[Outcome]:
        """Apply ``events`` in order; return one :class:`Outcome` per event."""
        ...

    def persistent(self) -> S_co:
        """The immutable state so far."""
        ...


class Domain(Protocol[S, E]):
    """Everything the shell needs from a domain (see the module docstring)."""

    @property
    def name(self) -> str:
        """A short stable name (``"shop"``), recorded in snapshots."""
        ...

    @property
    def semantics_version(self) -> int:
        """Bumped whenever the same log could fold to a different state."""
        ...

    @property
    def config_digest(self) -> str | None:
        """SHA-256 hex of the configuration that changes the fold, or ``None``."""
        ...

    @property
    def initial(self) -> S:
        """The state before the first record."""
        ...

    def describe_config(self, digest: str | None) -> str:
        """A configuration digest in a few words, for messages (``"no price list"``)."""
        ...

    def folder(self, state: S) -> Folder[S, E]:
        """A :class:`Folder` starting at ``state``."""
        ...

    def decode_records(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[Position, E]], list[DeadLetter]]:
        """Raw records to ``([(position, event), ...], [DeadLetter, ...])``, both in
        log order; every record is in exactly one of the two. Never raises for bad input."""
        ...

    def encode_state(self, state: S) -> bytes:
        """The canonical snapshot body of ``state``."""
        ...

    def decode_state(self, body: bytes) -> S:
        """The state of a body written by :meth:`encode_state`; raises
        ``ValueError`` with a one-line reason for anything else."""
        ...

    def digest(self, state: S) -> str:
        """A stable hex digest: equal states, equal digests, on any machine."""
        ...

    def state_json(self, state: S) -> Json:
        """The state as JSON-ready data, for ``inspect state --json``."""
        ...

    def difference(self, expected: S, actual: S) -> str | None:
        """The first difference between two states in words, or ``None`` if equal."""
        ...

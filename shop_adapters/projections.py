"""Projections: read models as pure folds over the outcome journal. Generic, no I/O.

The runner publishes one :class:`~shop_adapters.domain.Outcome` per record
(``<stream>:outcomes``, :mod:`shop_adapters.journals`). A *projection* folds
those outcomes into a *view*: the answers to the questions the write side does
not answer (what sold, what a customer bought, why requests fail).

A view is a mapping of *documents*: ``{document key: JSON value}``. Every
document starts absent (the initial view is the empty mapping), and a
projection is two pure functions over one outcome and its position:

- ``keys(position, outcome)``: the keys of the documents the outcome reads
  and may change (``[]`` for an outcome the projection ignores);
- ``evolve(documents, position, outcome)``: given those documents
  (``None`` for an absent one), their new values (``None`` deletes one).
  Documents it does not mention stay as they are.

So the view after a sequence of outcomes is a left fold, :func:`fold`, and
``fold(p, a + b) == fold(p, b, fold(p, a))`` for every split (the tests prove
it with hypothesis). Because a projection declares which documents each
outcome touches, the projector (:mod:`shop_adapters.projector_engine`) reads
only those documents from Redis for a batch, runs the same :func:`evolve_batch`
as :func:`fold` over them, and writes back only the ones that changed, with
the view's tracking position, in one atomic step.

A projection also has a ``name`` (``[a-z][a-z0-9_]*``, at most 48 characters,
part of its Redis key) and an integer ``version``, bumped whenever ``evolve``
would give another view for the same outcomes: a stored view of an older
version is rebuilt beside the live one, and one of a newer version is left
alone. Document keys are non-empty strings that do not start with ``@``
(reserved for the tracking position stored beside the documents).

>>> from shop_adapters.domain import Outcome
>>> from shop_adapters.protocols import Position
>>> class Counts:
...     name, version = "counts", 1
...     def keys(self, position, outcome):
...         return [outcome.status]
...     def evolve(self, docs, position, outcome):
...         return {outcome.status: (docs[outcome.status] or 0) + 1}
>>> outcomes = [(Position(1, 0), Outcome("accepted")), (Position(2, 0), Outcome("rejected")),
...             (Position(3, 0), Outcome("accepted"))]
>>> fold(Counts(), outcomes)
{'accepted': 2, 'rejected': 1}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

from .domain import Outcome
from .errors import ShopError
from .protocols import Position

__all__ = [
    "NAME_PATTERN",
    "Doc",
    "Projection",
    "ProjectionError",
    "check_document_key",
    "check_projection",
    "evolve_batch",
    "fold",
    "keys_of_batch",
]

Doc = Any
"""A document: a value ``json.dumps`` accepts (dicts with string keys, lists,
strings, ints of any size, floats, booleans, ``None`` inside containers)."""

NAME_PATTERN = re.compile(r"\A[a-z][a-z0-9_]{0,47}\Z")
"""What a projection's name must match (it is part of Redis key names)."""


class ProjectionError(ShopError):
    """A projection cannot apply an outcome (its ``keys`` or ``evolve`` raised, or it
    wrote a document it did not name): the outcome is never skipped, so the view
    stops there. ``name`` and ``position`` say which view and which outcome."""

    def __init__(self, name: str, position: Position, error: BaseException) -> None:
        super().__init__(
            f"projection {name} cannot apply the outcome at {position}: "
            f"{type(error).__name__}: {error}"
        )
        self.name = name
        self.position = position


class Projection(Protocol):
    """A read model as a pure fold over outcomes (see the module docstring)."""

    @property
    def name(self) -> str:
        """The view's name, ``[a-z][a-z0-9_]*``, at most 48 characters (``"sales"``)."""
        ...

    @property
    def version(self) -> int:
        """Bumped whenever :meth:`evolve` would give another view for the same outcomes."""
        ...

    def keys(self, position: Position, outcome: Outcome) -> Sequence[str]:
        """The documents ``outcome`` reads and may change; ``[]`` to ignore it. Pure."""
        ...

    def evolve(
        self, docs: Mapping[str, Doc | None], position: Position, outcome: Outcome
    ) -> Mapping[str, Doc | None]:
        """The new values of the documents ``outcome`` changes (``None``: delete).

        ``docs`` holds exactly the documents :meth:`keys` named, ``None`` for an
        absent one; the result may only name those keys. Pure: never changes
        ``docs``, no I/O. Raising means the projection cannot apply this
        outcome: the projector stops there (it never skips an outcome).
        """
        ...


def check_projection(projection: Projection) -> None:
    """Raise ``ValueError`` if the projection's name or version is not valid."""
    if not NAME_PATTERN.match(projection.name):
        raise ValueError(
            f"a projection's name is [a-z][a-z0-9_]*, at most 48 characters, "
            f"got {projection.name!r:.60}"
        )
    if type(projection.version) is not int or projection.version < 0:
        raise ValueError(
            f"projection {projection.name}: version must be an int >= 0, "
            f"got {projection.version!r:.40}"
        )


def check_document_key(key: object) -> str:
    """``key`` if it is a valid document key (a non-empty ``str`` not starting
    with ``@``); ``ValueError`` otherwise."""
    if type(key) is not str or not key or key[0] == "@":
        raise ValueError(
            f"a document key is a non-empty string not starting with '@', got {key!r:.60}"
        )
    return key


def keys_of_batch(
    projection: Projection, outcomes: Iterable[tuple[Position, Outcome]]
) -> list[str]:
    """Every document key the outcomes touch, each once, in order of first use.

    Raises :class:`ProjectionError` (naming the outcome) if ``keys`` raises.
    """
    seen: dict[str, None] = {}
    for position, outcome in outcomes:
        try:
            keys = projection.keys(position, outcome)
        except Exception as e:
            raise ProjectionError(projection.name, position, e) from e
        for key in keys:
            seen[key] = None
    return list(seen)


def evolve_batch(
    projection: Projection,
    docs: MutableMapping[str, Doc | None],
    outcomes: Iterable[tuple[Position, Outcome]],
) -> set[str]:
    """Apply ``outcomes`` in order to ``docs`` in place; return the keys changed.

    ``docs`` must hold (``None`` for absent) every document the outcomes touch
    (:func:`keys_of_batch`); a document set to ``None`` stays in ``docs`` as
    ``None`` (deleted). Document values are replaced, never changed in place,
    so a value shared with another mapping is safe as long as the projection
    builds new values. Raises :class:`ProjectionError` (naming the outcome) if
    the projection raises, writes a key it did not name, or names a key that is
    not a valid document key (:func:`check_document_key`); the outcomes before
    it stay applied to ``docs``.
    """
    changed: set[str] = set()
    for position, outcome in outcomes:
        try:
            keys = projection.keys(position, outcome)
            if not keys:
                continue
            view = {k: docs.get(k) for k in keys}
            updates = projection.evolve(view, position, outcome)
            for key in updates:
                if key not in view:
                    raise ValueError(f"it wrote document {key!r:.60} without naming it in keys()")
                check_document_key(key)
        except ProjectionError:
            raise
        except Exception as e:
            raise ProjectionError(projection.name, position, e) from e
        docs.update(updates)
        changed.update(updates)
    return changed


def fold(
    projection: Projection,
    outcomes: Iterable[tuple[Position, Outcome]],
    view: Mapping[str, Doc] | None = None,
) -> dict[str, Doc]:
    """The view after ``outcomes`` (in journal order), starting from ``view``
    (default: the initial, empty view). Pure: ``view`` is not changed.

    ``fold(p, a + b) == fold(p, b, fold(p, a))``. Raises :class:`ProjectionError`
    as :func:`evolve_batch`.
    """
    docs: dict[str, Doc | None] = dict(view or {})
    evolve_batch(projection, docs, outcomes)
    return {k: v for k, v in docs.items() if v is not None}

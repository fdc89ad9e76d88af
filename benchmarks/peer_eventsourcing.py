"""The peer: the same shop in the ``eventsourcing`` library (9.x), set up idiomatically.

What is built
-------------
- One aggregate, :class:`ShopAggregate`, holds the whole shop. Its commands
  ``top_up``, ``add_item`` and ``order`` are decorated with
  ``eventsourcing.domain.event``, so each call records one aggregate event
  (``ToppedUp``, ``ItemAdded``, ``OrderPlaced``) whose ``apply`` runs the method
  body; replay runs the same bodies again.
- The rules are kept identical by calling :func:`shop_core.apply` inside each
  event's body (``self.state = apply(self.state, TopUp(...))``), so the peer's
  state is a :class:`shop_core.ShopState` and its :func:`shop_core.state_digest`
  is compared with ours. This costs the peer one-by-one ``apply`` per event
  (about 5 us, a minority of its per-event cost; :func:`measure_peer` reports
  it as ``apply_share``).
- One :class:`ShopApp` (an ``eventsourcing.application.Application``) with
  ``is_snapshotting_enabled = True`` and a registered transcoding
  (:class:`ShopStateAsLists`) so the library's JSON transcoder can store the
  state in its snapshots. Persistence: POPO (in memory, the library's default)
  or SQLite (``PERSISTENCE_MODULE=eventsourcing.sqlite``, a temporary file DB).

What is measured (each the best of ``repeat`` runs)
---------------------------------------------------
- ``load``: the commands for ``n`` events on a new aggregate plus ``app.save``
  (one transaction), timed separately, not part of replay;
- ``replay``: ``app.repository.get(id)`` with no snapshot stored: every event is
  selected, deserialised (JSON + topic resolution) and applied;
- ``snapshot write``: ``Snapshot.take(aggregate)`` + ``app.snapshots.put`` of the
  aggregate at version ``n - 1000`` (the same place we snapshot; reconstructing
  that version is not timed). The library's automatic snapshotting
  (``snapshotting_intervals``) would take snapshots inside ``save``, each after a
  ``repository.get``; we call the same ``take``/``put`` directly so the figure is
  the write alone;
- ``restore``: ``app.repository.get(id)`` once that snapshot exists: the newest
  snapshot, then the 1,000 events after it.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import JSONTranscoder, Transcoding
from pyrsistent import pmap

from shop_core import (
    EMPTY,
    AddItem,
    Event,
    Item,
    Order,
    ShopState,
    TopUp,
    User,
    apply,
    state_digest,
)

__all__ = ["PeerResult", "ShopAggregate", "ShopApp", "ShopStateAsLists", "measure_peer"]

TAIL = 1_000
"""Events after the snapshot that restore must catch up (as in our measurement)."""


class ShopAggregate(Aggregate):
    """The whole shop as one ``eventsourcing`` aggregate; ``state`` is a ``ShopState``."""

    def __init__(self) -> None:
        self.state: ShopState = EMPTY

    @event("ToppedUp")
    def top_up(self, user_id: int, amount: int) -> None:
        """Record and apply a TopUp (rules: :func:`shop_core.apply`)."""
        self.state = apply(self.state, TopUp(user_id, amount))

    @event("ItemAdded")
    def add_item(self, item_id: str, count: int, price: int | None) -> None:
        """Record and apply an AddItem."""
        self.state = apply(self.state, AddItem(item_id, count, price))

    @event("OrderPlaced")
    def order(self, user_id: int, lines: Sequence[Sequence[Any]]) -> None:
        """Record and apply an Order; ``lines`` come back from JSON as lists of lists."""
        self.state = apply(self.state, Order(user_id, lines))  # type: ignore[arg-type]


class ShopStateAsLists(Transcoding):
    """JSON transcoding of a ``ShopState`` as its canonical sorted lists."""

    type = ShopState
    name = "shop_state"

    def encode(self, obj: Any) -> Any:
        """``ShopState`` -> ``{"users": [[id, balance]...], "items": [[id, price, stock]...]}``."""
        return obj.canonical()

    def decode(self, data: Any) -> Any:
        """The inverse of :meth:`encode`."""
        return ShopState(
            users=pmap({uid: User(balance) for uid, balance in data["users"]}),
            items=pmap({iid: Item(price, stock) for iid, price, stock in data["items"]}),
        )


class ShopApp(Application):  # type: ignore[type-arg]
    """An ``eventsourcing`` application around :class:`ShopAggregate`, with snapshotting."""

    is_snapshotting_enabled = True

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        """The library's defaults plus :class:`ShopStateAsLists`."""
        super().register_transcodings(transcoder)
        transcoder.register(ShopStateAsLists())


def _command(shop: ShopAggregate, e: Event) -> None:
    match e:
        case TopUp(user_id=uid, amount=amount):
            shop.top_up(uid, amount)
        case AddItem(item_id=iid, count=count, price=price):
            shop.add_item(iid, count, price)
        case Order(user_id=uid, lines=lines):
            shop.order(uid, lines)


@dataclass(frozen=True, slots=True)
class PeerResult:
    """One peer measurement (seconds are the best of the repeats)."""

    persistence: str  # "popo" or "sqlite"
    n: int
    load_s: float
    replay_s: float
    snapshot_write_s: float
    restore_s: float
    replay_digest: str
    restore_digest: str
    apply_share: float  # fraction of replay spent in one-by-one shop_core.apply

    @property
    def replay_rate(self) -> float:
        """Events per second of full replay."""
        return self.n / self.replay_s


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best = float("inf")
    result: object = None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def measure_peer(
    events: Sequence[Event],
    persistence: str,
    repeat: int = 3,
    workdir: str | None = None,
    tail: int = TAIL,
) -> PeerResult:
    """Load ``events`` into a fresh :class:`ShopApp` and time replay, snapshot and restore.

    ``persistence`` is ``"popo"`` (in memory) or ``"sqlite"`` (a temporary file
    DB under ``workdir``, removed afterwards). The snapshot is taken ``tail``
    events before the end (``0 < tail < len(events)``). Raises ``ValueError``
    for another persistence name or a bad ``tail``.
    """
    n = len(events)
    if not 0 < tail < n:
        raise ValueError(f"need 0 < tail < len(events), got tail {tail} for {n} events")
    env: dict[str, str] = {}
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if persistence == "sqlite":
        tmp = tempfile.TemporaryDirectory(prefix="shop-peer-", dir=workdir)
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": os.path.join(tmp.name, "peer.sqlite"),
        }
    elif persistence != "popo":
        raise ValueError(f"persistence must be 'popo' or 'sqlite', got {persistence!r}")
    try:
        app = ShopApp(env=env)
        shop = ShopAggregate()
        t0 = time.perf_counter()
        for e in events:
            _command(shop, e)
        app.save(shop)
        load_s = time.perf_counter() - t0
        shop_id: UUID = shop.id
        del shop

        replay_s, replayed = _best(lambda: app.repository.get(shop_id), repeat)
        replay_digest = state_digest(replayed.state)  # type: ignore[attr-defined]
        del replayed

        # The aggregate after n - tail shop events (version 1 is the creation event).
        version = n - tail + 1
        at: ShopAggregate = app.repository.get(shop_id, version=version)
        assert app.snapshots is not None
        snapshot_class = ShopAggregate.Snapshot
        snapshot_write_s, _ = _best(
            lambda: app.snapshots.put([snapshot_class.take(at)]),  # type: ignore[union-attr]
            1,
        )
        restore_s, restored = _best(lambda: app.repository.get(shop_id), max(repeat, 5))
        restore_digest = state_digest(restored.state)  # type: ignore[attr-defined]

        # How much of replay is our rules (one-by-one apply), for the reader.
        apply_s, _ = _best(lambda: _apply_one_by_one(events), 1)
        return PeerResult(
            persistence=persistence,
            n=n,
            load_s=load_s,
            replay_s=replay_s,
            snapshot_write_s=snapshot_write_s,
            restore_s=restore_s,
            replay_digest=replay_digest,
            restore_digest=restore_digest,
            apply_share=min(1.0, apply_s / replay_s),
        )
    finally:
        if tmp is not None:
            tmp.cleanup()


def _apply_one_by_one(events: Sequence[Event]) -> ShopState:
    s = EMPTY
    for e in events:
        s = apply(s, e)
    return s

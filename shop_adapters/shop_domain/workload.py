"""The synthetic workload: a seeded, reproducible stream of shop events.

Used by the producer (``python -m shop_adapters.producer synthetic``), the
benchmarks and the tests. Lives in the shell, not the core, because it draws
random numbers (``random.Random(seed)``; the same seed gives the same events on
every machine and Python version >= 3.11).

Mix: 40% TopUp (100 to 10,000 minor units), 20% AddItem (1 to 50 units; the
first AddItem of an item sets a price of 100 to 5,000, later ones change it
one time in four), 40% Order of 1 to 3 lines of 1 to 5 units. User ids are
``1..users``, item ids ``"item-0".."item-{items-1}"``. Orders from users who
never topped up, of items never added, and beyond stock or funds all occur,
so every rejection reason is exercised.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from shop_core import AddItem, Event, Order, TopUp

__all__ = ["synthetic_events"]


def synthetic_events(
    n: int, users: int = 10_000, items: int = 100, seed: int = 42
) -> Iterator[Event]:
    """Yield ``n`` events of the synthetic workload (see the module docstring).

    ``users`` >= 1 and ``items`` >= 1; raises ``ValueError`` otherwise.
    """
    if users < 1 or items < 1 or n < 0:
        raise ValueError(f"need n >= 0, users >= 1, items >= 1; got {n}, {users}, {items}")
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    rand = rng.random
    randint = rng.randint
    item_names = [f"item-{i}" for i in range(items)]
    priced: set[str] = set()
    for _ in range(n):
        r = rand()
        if r < 0.4:
            yield TopUp(randint(1, users), randint(100, 10_000))
        elif r < 0.6:
            name = item_names[randint(0, items - 1)]
            price: int | None
            if name not in priced:
                priced.add(name)
                price = randint(100, 5_000)
            else:
                price = randint(100, 5_000) if rand() < 0.25 else None
            yield AddItem(name, randint(1, 50), price)
        else:
            k = randint(1, 3)
            lines = tuple((item_names[randint(0, items - 1)], randint(1, 5)) for _ in range(k))
            yield Order(randint(1, users), lines)

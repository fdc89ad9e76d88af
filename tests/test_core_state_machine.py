"""A hypothesis rule-based state machine: the persistent fold against the plain-dict model
of ``tests/model.py``."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from model import Model, model_of

from shop_core import EMPTY, AddItem, Event, Order, ShopState, TopUp, apply, decide, fold

USERS = st.integers(0, 6)
ITEMS = st.sampled_from(["a", "b", "c", "d"])


class ShopMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state: ShopState = EMPTY
        self.history: list[Event] = []
        self.model = Model()
        self.snapshots: list[tuple[int, ShopState]] = []

    def _do(self, e: Event) -> None:
        accepted = decide(self.state, e).value_or(None) is e
        self.state = apply(self.state, e)
        self.history.append(e)
        verdict = self.model.apply(e)
        assert accepted == (not isinstance(verdict, str)), (e, verdict)

    @rule(user=USERS, amount=st.integers(0, 1_000))
    def top_up(self, user: int, amount: int) -> None:
        self._do(TopUp(user, amount))

    @rule(item=ITEMS, count=st.integers(0, 5), price=st.none() | st.integers(0, 300))
    def add_item(self, item: str, count: int, price: int | None) -> None:
        self._do(AddItem(item, count, price))

    @rule(user=USERS, lines=st.lists(st.tuples(ITEMS, st.integers(0, 3)), min_size=1, max_size=4))
    def order(self, user: int, lines: list[tuple[str, int]]) -> None:
        self._do(Order(user, tuple(lines)))

    @rule()
    def take_snapshot(self) -> None:
        self.snapshots.append((len(self.history), self.state))

    @precondition(lambda self: bool(self.snapshots))
    @rule(data=st.data())
    def restore_from_a_snapshot(self, data: st.DataObject) -> None:
        n, snap = data.draw(st.sampled_from(self.snapshots))
        assert fold(self.history[n:], snap) == self.state

    @invariant()
    def matches_model(self) -> None:
        assert model_of(self.state) == self.model

    @invariant()
    def replay_matches(self) -> None:
        assert fold(self.history) == self.state


ShopMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestShopMachine = ShopMachine.TestCase

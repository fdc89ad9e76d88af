"""A second domain for the generic shell: bank accounts, built as a Decider.

Commands (also the events, once accepted): ``Open(account)``,
``Deposit(account, amount)``, ``Withdraw(account, amount)``,
``Transfer(source, target, amount)``; amounts are positive integers (cents).
Rejections: ``account_exists``, ``unknown_account``, ``insufficient_funds``,
``same_account``. State: ``PMap[str, int]``, account to balance.

Wire format: fields ``type`` (the command's name) and ``data`` (a JSON object
of its fields). Anything else is a dead letter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

from pyrsistent import pmap
from pyrsistent.typing import PMap
from returns.result import Failure, Result, Success

from shop_adapters.cli_common import DomainCli
from shop_adapters.decider import DeciderDomain, Rejected
from shop_adapters.protocols import Fields


def _amount(value: object) -> int:
    if type(value) is not int or value <= 0:
        raise ValueError(f"an amount is a positive int (cents), got {value!r:.40}")
    return value


def _account(value: object) -> str:
    if type(value) is not str or not 0 < len(value) <= 64:
        raise ValueError(f"an account is a str of 1 to 64 characters, got {value!r:.40}")
    return value


@dataclass(frozen=True, slots=True)
class Open:
    account: str

    def __post_init__(self) -> None:
        _account(self.account)


@dataclass(frozen=True, slots=True)
class Deposit:
    account: str
    amount: int

    def __post_init__(self) -> None:
        _account(self.account)
        _amount(self.amount)


@dataclass(frozen=True, slots=True)
class Withdraw:
    account: str
    amount: int

    def __post_init__(self) -> None:
        _account(self.account)
        _amount(self.amount)


@dataclass(frozen=True, slots=True)
class Transfer:
    source: str
    target: str
    amount: int

    def __post_init__(self) -> None:
        _account(self.source)
        _account(self.target)
        _amount(self.amount)


Command: TypeAlias = Open | Deposit | Withdraw | Transfer
Accounts: TypeAlias = PMap[str, int]
_TYPES: Mapping[str, type] = {c.__name__: c for c in (Open, Deposit, Withdraw, Transfer)}


def decide(state: Accounts, command: Command) -> Result[Sequence[Command], Rejected]:
    """Accept ``command`` as its own event, or say why not."""
    match command:
        case Open(account):
            if account in state:
                return Failure(Rejected("account_exists", f"{account} is already open"))
        case Deposit(account, _):
            if account not in state:
                return Failure(Rejected("unknown_account", f"no account {account}"))
        case Withdraw(account, amount):
            if account not in state:
                return Failure(Rejected("unknown_account", f"no account {account}"))
            if state[account] < amount:
                return Failure(
                    Rejected("insufficient_funds", f"{account} has {state[account]}, not {amount}")
                )
        case Transfer(source, target, amount):
            for account in (source, target):
                if account not in state:
                    return Failure(Rejected("unknown_account", f"no account {account}"))
            if source == target:
                return Failure(Rejected("same_account", f"{source} to itself"))
            if state[source] < amount:
                return Failure(
                    Rejected("insufficient_funds", f"{source} has {state[source]}, not {amount}")
                )
    return Success([command])


def evolve(state: Accounts, event: Command) -> Accounts:
    """The state after an accepted command."""
    match event:
        case Open(account):
            return state.set(account, 0)
        case Deposit(account, amount):
            return state.set(account, state[account] + amount)
        case Withdraw(account, amount):
            return state.set(account, state[account] - amount)
        case Transfer(source, target, amount):
            return state.set(source, state[source] - amount).set(target, state[target] + amount)
    raise TypeError(f"not a bank command: {event!r}")


def encode(command: Command) -> dict[str, bytes]:
    """The wire entry of ``command``."""
    return {"type": type(command).__name__.encode(), "data": json.dumps(asdict(command)).encode()}


def decode(fields: Fields) -> Command:
    """A command from its wire entry; ``KeyError``/``ValueError``/``TypeError`` otherwise."""
    kind = _TYPES.get(fields[b"type"].decode())
    if kind is None:
        raise ValueError(f"unknown command type {fields[b'type']!r:.40}")
    data: Any = json.loads(fields[b"data"])
    if type(data) is not dict:
        raise ValueError("data must be a JSON object")
    command: Command = kind(**data)
    return command


def state_from_json(raw: Any) -> Accounts:
    """The state of a snapshot body."""
    if type(raw) is not dict or any(type(v) is not int or v < 0 for v in raw.values()):
        raise ValueError("a bank state is an object of non-negative balances")
    return pmap(raw)


BANK = DeciderDomain(
    name="bank",
    initial=pmap(),
    decide=decide,
    evolve=evolve,
    decode_command=decode,
    state_to_json=dict,
    state_from_json=state_from_json,
    detail=lambda command, events: {"amount": getattr(command, "amount", 0)},
)
"""The bank domain."""


BANK_CLI = DomainCli(name="bank", options=[], build=lambda: BANK)
"""The bank for the generic command lines (it has no configuration)."""

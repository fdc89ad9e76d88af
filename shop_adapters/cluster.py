"""A local Redis Cluster on loopback, for trying the pool and for tests.

``python -m shop_adapters.cluster up --masters 3 --replicas 1 [--dir D] [--base-port P]``
starts ``masters * (1 + replicas)`` ``redis-server`` processes with the binary the
embedded Redis uses (:func:`shop_adapters.embedded_redis.find_redis_server`), each
through :class:`~shop_adapters.embedded_redis.RedisServer` (127.0.0.1 only, never port
6379, its own directory ``D/<port>`` holding ``redis.conf``, the AOF, ``nodes.conf`` and
``redis.log``), and joins them into one cluster without ``redis-cli``:

1. ``CLUSTER SET-CONFIG-EPOCH i`` and ``CLUSTER ADDSLOTSRANGE`` on each master (the
   16,384 slots split evenly; Redis >= 7.0);
2. ``CLUSTER MEET 127.0.0.1 <port>`` from the first node to every other;
3. ``CLUSTER REPLICATE <master id>`` on each replica (replica ``j`` of master ``i`` is
   node ``masters + i * replicas + j``);
4. wait until every node says ``cluster_state:ok`` with every slot assigned and every
   replica's link to its master is up.

Nodes use ``cluster-node-timeout`` 2,000 ms (a dead master's replica is promoted a few
seconds after it stops answering) and ``cluster-require-full-coverage no`` (the slots
of the other masters keep serving while one master is down). A node's cluster bus
listens on ``port + 10000``, so every port must be at most 55,535 with ``port + 10000``
free too: without ``--base-port`` a base is picked at random in 20,000-44,999 and
checked. ``D/cluster.json`` records the ports and the binary; ``up`` on a directory
that has one starts the same nodes again (they keep their ``nodes.conf``), ``down``
stops them (``SHUTDOWN NOSAVE``; the AOF stays), ``status`` shows each node's role.

Source: Redis cluster specification and the ``CLUSTER`` command pages (ADDSLOTSRANGE,
MEET, REPLICATE, SET-CONFIG-EPOCH, INFO, NODES).
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from .embedded_redis import (
    RedisServer,
    RedisServerError,
    find_redis_server,
    redis_server_version,
    stop_embedded,
)

__all__ = [
    "BUS_PORT_OFFSET",
    "DEFAULT_CLUSTER_DIR",
    "SLOTS",
    "LocalCluster",
    "NodeStatus",
    "cli",
    "cluster_status",
    "slot_ranges",
]

SLOTS = 16_384
"""Hash slots of a Redis Cluster."""
BUS_PORT_OFFSET = 10_000
"""A node's cluster bus listens on its port plus this."""
DEFAULT_CLUSTER_DIR = "./.shop-cluster"
"""Where ``python -m shop_adapters.cluster up`` keeps its nodes by default."""

_HOST = "127.0.0.1"
_STATE = "cluster.json"


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The 16,384 slots split into ``masters`` contiguous inclusive ranges.

    >>> slot_ranges(3)
    [(0, 5460), (5461, 10921), (10922, 16383)]
    """
    if masters < 1:
        raise ValueError(f"need at least one master, got {masters}")
    bounds = [round(i * SLOTS / masters) for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def _free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound now (``SO_REUSEADDR``, as Redis binds)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
    return True


def _ports_usable(ports: Sequence[int]) -> str | None:
    """Why ``ports`` cannot serve cluster nodes (``None`` if they can)."""
    for port in ports:
        bus = port + BUS_PORT_OFFSET
        if port < 1024 or bus > 65_535:
            return f"port {port}: a node needs 1024 <= port and port + {BUS_PORT_OFFSET} <= 65535"
        if 6379 in (port, bus):
            return f"port {port}: 6379 belongs to the machine's shared Redis"
        if not _free(port) or not _free(bus):
            return f"port {port} or its bus port {bus} is taken"
    return None


def _choose_ports(count: int, base_port: int | None) -> list[int]:
    if base_port is not None:
        ports = list(range(base_port, base_port + count))
        if why := _ports_usable(ports):
            raise RedisServerError(f"--base-port {base_port}: {why}")
        return ports
    for _attempt in range(50):
        base = random.randrange(20_000, 45_000 - count)  # noqa: S311 (not cryptographic)
        ports = list(range(base, base + count))
        if _ports_usable(ports) is None:
            return ports
    raise RedisServerError(f"found no {count} free consecutive ports (and their bus ports)")


def _node_config(node_timeout_ms: int) -> dict[str, str | int]:
    return {
        "cluster-enabled": "yes",
        "cluster-config-file": "nodes.conf",
        "cluster-node-timeout": node_timeout_ms,
        "cluster-require-full-coverage": "no",
    }


def _node(port: int, timeout: float, **kwargs: Any) -> redis.Redis:
    """A plain client of the node on ``port``: ``str`` replies, ``timeout`` s, no retry."""
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("socket_timeout", timeout)
    kwargs.setdefault("socket_connect_timeout", timeout)
    return redis.Redis(_HOST, port, retry=Retry(NoBackoff(), 0), **kwargs)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node as ``CLUSTER NODES`` and ``INFO`` describe it: ``port``, ``node_id``,
    ``role`` (``"master"``, ``"replica"`` or ``"down"``), ``master_port`` (of a
    replica), ``slots`` (count, of a master) and ``pid``."""

    port: int
    node_id: str | None
    role: str
    master_port: int | None
    slots: int
    pid: int | None


class LocalCluster:
    """A Redis Cluster of local ``redis-server`` processes (see the module docstring).

    - ``data_dir``: where the nodes live (``<data_dir>/<port>``); ``None``: a temporary
      directory that :meth:`close` removes;
    - ``masters`` (>= 3: fewer cannot elect a replica), ``replicas`` per master;
    - ``base_port``: the first node's port (the others follow); ``None``: random, checked;
    - ``node_timeout_ms``: ``cluster-node-timeout``; ``executable``: the ``redis-server``
      (default :func:`~shop_adapters.embedded_redis.find_redis_server`, >= 7.0 for
      ``CLUSTER ADDSLOTSRANGE``); ``startup_timeout``: seconds for the cluster to form.

    A context manager (:meth:`start`, :meth:`close`). Raises
    :class:`~shop_adapters.embedded_redis.RedisServerError` if a node cannot start or
    the cluster does not form in time (the nodes started are stopped then).
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        masters: int = 3,
        replicas: int = 0,
        base_port: int | None = None,
        node_timeout_ms: int = 2_000,
        executable: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ValueError(f"a cluster needs at least 3 masters to fail over, got {masters}")
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        self._owns_dir = data_dir is None
        root = tempfile.mkdtemp(prefix="shop-cluster-") if data_dir is None else data_dir
        self.data_dir = Path(root).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.masters, self.replicas = masters, replicas
        self.base_port, self.node_timeout_ms = base_port, node_timeout_ms
        self.executable = executable or find_redis_server()
        self.startup_timeout = startup_timeout
        self.nodes: dict[int, RedisServer] = {}
        """The node servers by port (masters first, as created; roles change on failover)."""

    # -- lifecycle ------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        """Every node's port, in creation order."""
        return list(self.nodes)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>`` of the first node (any node bootstraps a client)."""
        return f"redis://{_HOST}:{self.ports[0]}"

    def start(self) -> LocalCluster:
        """Start the nodes and form the cluster; ``self``. On a directory that records a
        cluster, start its nodes again (adopting those still running) and wait for it."""
        if redis_server_version(self.executable) < (7, 0, 0):
            raise RedisServerError(
                f"{self.executable} is Redis {redis_server_version(self.executable)}: the "
                "local cluster needs 7.0 or later (CLUSTER ADDSLOTSRANGE)"
            )
        recorded = self._read_state()
        if recorded is not None:
            self.masters, self.replicas = int(recorded["masters"]), int(recorded["replicas"])
            self._start_nodes([int(p) for p in recorded["ports"]], adopt=True)
            return self
        count = self.masters * (1 + self.replicas)
        attempts = 1 if self.base_port is not None else 5
        for attempt in range(attempts):
            try:
                self._start_nodes(_choose_ports(count, self.base_port), adopt=False)
                return self
            except RedisServerError as e:
                # Another process took a port between the check and the bind: new ports.
                if "was taken" not in str(e) or attempt == attempts - 1:
                    raise
                for port in list(self.nodes):
                    shutil.rmtree(self.data_dir / str(port), ignore_errors=True)
                self.nodes.clear()
        return self  # pragma: no cover (the loop returns or raises)

    def _start_nodes(self, ports: Sequence[int], *, adopt: bool) -> None:
        try:
            for port in ports:
                server = RedisServer(
                    port=port,
                    data_dir=self.data_dir / str(port),
                    executable=self.executable,
                    config=_node_config(self.node_timeout_ms),
                )
                self.nodes[port] = server
                if not (adopt and server.attach()):  # a recorded node may still run
                    server.start()
            if not adopt:
                self._form()
            self._write_state()
            self.wait_ok(self.startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _form(self) -> None:
        ports = self.ports
        masters = ports[: self.masters]
        for i, (port, (first, last)) in enumerate(
            zip(masters, slot_ranges(self.masters), strict=True)
        ):
            with self.node_client(port) as c:
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        with self.node_client(ports[0]) as c:
            for port in ports[1:]:
                c.execute_command("CLUSTER", "MEET", _HOST, port)
        self._wait(lambda: all(self._knows_all(p) for p in ports), "the nodes to meet")
        for i, master in enumerate(masters):
            master_id = self.node_id(master)
            for j in range(self.replicas):
                replica = ports[self.masters + i * self.replicas + j]
                with self.node_client(replica) as c:
                    c.execute_command("CLUSTER", "REPLICATE", master_id)

    def _knows_all(self, port: int) -> bool:
        with self.node_client(port) as c:
            nodes = _text(c.execute_command("CLUSTER", "NODES")).splitlines()
        return len(nodes) == len(self.nodes) and not any("handshake" in n for n in nodes)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node says ``cluster_state:ok`` with all slots served by
        a master it knows as up, and every replica's link to its master is up.
        Raises :class:`RedisServerError` after ``timeout`` seconds."""
        self._wait(self._ok, "cluster_state:ok on every node", timeout)

    def _ok(self) -> bool:
        try:
            for port, server in self.nodes.items():
                if server.pid is None:
                    continue
                with self.node_client(port) as c:
                    info = _text(c.execute_command("CLUSTER", "INFO"))
                    if "cluster_state:ok" not in info or f"cluster_slots_ok:{SLOTS}" not in info:
                        return False
                    replication = c.info("replication")
                    if replication.get("role") == "slave" and (
                        replication.get("master_link_status") != "up"
                    ):
                        return False
        except redis.exceptions.RedisError:
            return False
        return True

    def _wait(self, condition: Any, what: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while not condition():
            if time.monotonic() > deadline:
                raise RedisServerError(f"the local cluster in {self.data_dir}: no {what} in time")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every node (``SHUTDOWN NOSAVE``; the AOF and ``nodes.conf`` stay)."""
        for server in self.nodes.values():
            with suppress(RedisServerError):
                server.stop()

    def close(self) -> None:
        """:meth:`stop`, then remove the data directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clients and roles --------------------------------------------------------------

    def node_client(self, port: int, **kwargs: Any) -> redis.Redis:
        """A plain client of one node (``str`` replies, 2 s time-outs, no retry)."""
        return _node(port, 2.0, **kwargs)

    def client(self, **kwargs: Any) -> RedisCluster:
        """A ``RedisCluster`` client bootstrapped from every node (bytes replies)."""
        nodes = [ClusterNode(_HOST, p) for p in self.ports]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, **kwargs)

    def node_id(self, port: int) -> str:
        """``CLUSTER MYID`` of the node on ``port``."""
        with self.node_client(port) as c:
            return _text(c.execute_command("CLUSTER", "MYID"))

    def status(self) -> list[NodeStatus]:
        """Each node's role as the live nodes see it (see :class:`NodeStatus`)."""
        return cluster_status(self.ports, {p: s.pid for p, s in self.nodes.items()})

    def master_of_slot(self, slot: int) -> int:
        """The port of the master serving ``slot`` now (``CLUSTER SHARDS``/``NODES`` of a
        live node). Raises :class:`RedisServerError` if no live node knows one."""
        for node in self.status():
            if node.role != "master":
                continue
            with suppress(redis.exceptions.RedisError), self.node_client(node.port) as c:
                for line in _text(c.execute_command("CLUSTER", "NODES")).splitlines():
                    parts = line.split()
                    if "myself" in parts[2] and _serves(parts[8:], slot):
                        return node.port
        raise RedisServerError(f"no live master serves slot {slot}")

    def replicas_of(self, master_port: int) -> list[int]:
        """Ports of the live replicas of the master on ``master_port``."""
        return [n.port for n in self.status() if n.master_port == master_port]

    # -- the record ---------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any] | None:
        path = self.data_dir / _STATE
        if not path.is_file():
            return None
        state: dict[str, Any] = json.loads(path.read_text())
        return state

    def _write_state(self) -> None:
        state = {
            "ports": self.ports,
            "masters": self.masters,
            "replicas": self.replicas,
            "executable": self.executable,
            "node_timeout_ms": self.node_timeout_ms,
        }
        tmp = self.data_dir / (_STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.data_dir / _STATE)


def _serves(ranges: Sequence[str], slot: int) -> bool:
    for item in ranges:
        if item.startswith("["):
            continue  # a slot being migrated or imported
        first, _, last = item.partition("-")
        if int(first) <= slot <= int(last or first):
            return True
    return False


def cluster_status(
    ports: Sequence[int], pids: dict[int, int | None] | None = None
) -> list[NodeStatus]:
    """Each of ``ports`` as the first live node's ``CLUSTER NODES`` describes it
    (``role="down"`` for a node that does not answer itself)."""
    view: dict[int, tuple[str, str, int | None, int]] = {}
    ids: dict[str, int] = {}
    for port in ports:
        with suppress(redis.exceptions.RedisError), _node(port, 2.0) as client:
            lines = _text(client.execute_command("CLUSTER", "NODES")).splitlines()
            for line in lines:
                parts = line.split()
                node_port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                ids[parts[0]] = node_port
            for line in lines:
                parts = line.split()
                node_port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                flags = parts[2].split(",")
                role = "down" if "fail" in flags else "master" if "master" in flags else "replica"
                slots = sum(_count(r) for r in parts[8:])
                view[node_port] = (parts[0], role, None if parts[3] == "-" else 0, slots)
                if parts[3] != "-":
                    view[node_port] = (parts[0], role, ids.get(parts[3]), slots)
            break
    out = []
    for port in ports:
        live = _answers(port)
        node_id, role, master, slots = view.get(port, (None, "down", None, 0))
        out.append(
            NodeStatus(
                port,
                node_id,
                role if live else "down",
                master if role == "replica" else None,
                slots if role == "master" else 0,
                (pids or {}).get(port),
            )
        )
    return out


def _count(item: str) -> int:
    if item.startswith("["):
        return 0
    first, _, last = item.partition("-")
    return int(last or first) - int(first) + 1


def _answers(port: int) -> bool:
    client = _node(port, 1.0)
    try:
        with client:
            return bool(client.ping())
    except redis.exceptions.RedisError:
        return False


def _recorded_ports(data_dir: Path) -> list[int]:
    path = data_dir / _STATE
    if not path.is_file():
        return []
    return [int(p) for p in json.loads(path.read_text())["ports"]]


def _each(ports: Sequence[int]) -> Iterator[str]:
    for node in cluster_status(ports):
        what = node.role
        if node.role == "master":
            what += f" of {node.slots} slots"
        elif node.role == "replica" and node.master_port is not None:
            what += f" of {node.master_port}"
        yield f"127.0.0.1:{node.port} {what}"


_dir_option = click.option(
    "--dir",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_CLUSTER_DIR,
    show_default=True,
    help="Directory of the nodes (one sub-directory per port) and cluster.json.",
)


@click.group()
def cli() -> None:
    """A local Redis Cluster on 127.0.0.1 for trying the pool (up, status, down)."""


@cli.command()
@_dir_option
@click.option("--masters", type=click.IntRange(min=3), default=3, show_default=True)
@click.option(
    "--replicas",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Replicas per master.",
)
@click.option(
    "--base-port",
    type=click.IntRange(min=1024, max=55_535),
    default=None,
    help="Port of the first node; the others follow (each port + 10000 must be "
    "free too). Default: a free range picked at random in 20000-44999.",
)
@click.option(
    "--node-timeout-ms",
    type=click.IntRange(min=100),
    default=2_000,
    show_default=True,
    help="cluster-node-timeout: how soon a dead master fails over.",
)
def up(
    data_dir: Path, masters: int, replicas: int, base_port: int | None, node_timeout_ms: int
) -> None:
    """Start the cluster (or start the one recorded in --dir again); print its URL."""
    cluster = LocalCluster(
        data_dir,
        masters=masters,
        replicas=replicas,
        base_port=base_port,
        node_timeout_ms=node_timeout_ms,
    )
    try:
        cluster.start()
    except (RedisServerError, OSError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    for line in _each(cluster.ports):
        click.echo(line)
    click.echo(f"cluster up: --redis-url {cluster.url} --cluster (data in {cluster.data_dir})")


@cli.command()
@_dir_option
def status(data_dir: Path) -> None:
    """Each node's role (master of N slots, replica of a port, down). Exit 3 if none."""
    ports = _recorded_ports(data_dir.resolve())
    if not ports:
        click.echo(f"no cluster in {data_dir}")
        raise SystemExit(3)
    for line in _each(ports):
        click.echo(line)


@cli.command()
@_dir_option
def down(data_dir: Path) -> None:
    """Stop every node of the cluster in --dir (SHUTDOWN NOSAVE; the data stays)."""
    root = data_dir.resolve()
    ports = _recorded_ports(root)
    stopped = 0
    for port in ports:
        try:
            stopped += stop_embedded(root / str(port))
        except RedisServerError as e:
            raise click.ClickException(str(e)) from e
    click.echo(f"stopped {stopped} of {len(ports)} nodes in {root}")


if __name__ == "__main__":
    cli()

"""What the command-line tools share: connection options, URL masking, logging.

- :func:`connection_options`: ``--redis-url`` (env ``REDIS_URL``), ``--stream``
  (default ``orders``), ``--data-dir`` (default ``./.shop-data``, for the
  embedded Redis started when no URL is given), ``--cluster/--no-cluster``;
- :class:`Partitioning`: a domain whose logs are partitioned by an id (the
  shop's ``--shop ID``), with :func:`partition_option` and :func:`resolve_stream`;
- :func:`resolve_url`, :func:`make_client`: a ``redis.Redis`` built with
  ``Redis.from_url`` (so ``redis://user:pass@host``, ``rediss://`` TLS and
  ``?db=`` work), or a ``RedisCluster`` (:mod:`shop_adapters.redis_cluster`),
  with a ``socket_timeout`` longer than any blocking read;
- :func:`mask_url`: a URL with its password replaced by ``***``, the only form
  in which a URL is ever logged or printed;
- :func:`setup_logging`: ``text`` or ``json`` lines on stderr; a record's
  ``extra={"fields": {...}}`` becomes key=value pairs or JSON members;
- :class:`FiniteFloat`: a float option refusing ``nan``/``inf`` (exit 2);
- :class:`CleanErrorsCommand`, :class:`CleanErrorsGroup`: a
  :class:`~shop_adapters.errors.ShopError` or ``redis.exceptions.RedisError``
  escaping a command is printed as one line, ``Error: ...``, exit status 1,
  never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .domain import Domain
from .errors import ShopError
from .keys import StreamKeys
from .redis_errors import REDIS_ERRORS, classify

__all__ = [
    "DEFAULT_DATA_DIR",
    "LOG_CONTEXT",
    "CleanErrorsCommand",
    "CleanErrorsGroup",
    "DomainCli",
    "FiniteFloat",
    "JsonFormatter",
    "Partitioning",
    "TextFormatter",
    "clean_error_message",
    "connection_options",
    "make_client",
    "mask_url",
    "partition_option",
    "plain_help",
    "resolve_stream",
    "resolve_url",
    "setup_logging",
    "single_server_options",
]

DEFAULT_DATA_DIR = "./.shop-data"
"""Where the embedded Redis keeps its files when no ``--redis-url`` is given."""

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Partitioning:
    """A domain whose logs are partitioned by an id: one log per tenant.

    - ``name``: what an id names, for the option ``--<name> ID`` (the shop: ``shop``);
    - ``keys``: the keys of the log of one id (the shop:
      :meth:`~shop_adapters.keys.StreamKeys.for_shop`, every key with the hash tag
      ``{ID}``, so one id lives in one Redis Cluster slot); ``ValueError`` for a bad id;
    - ``registry``: the Redis set of ids (``SADD`` by producers before their first
      append, read by a pool of runners: :mod:`shop_adapters.pool`).
    """

    name: str
    keys: Callable[[str], StreamKeys]
    registry: str


def partition_option(partitioning: Partitioning) -> Callable[[F], F]:
    """The click option ``--<name> ID`` (parameter ``partition``), exclusive with an
    explicit ``--stream`` (checked by :func:`resolve_stream`)."""
    return click.option(
        f"--{partitioning.name}",
        "partition",
        default=None,
        metavar="ID",
        help=f"The {partitioning.name} whose log to use: its stream and every key of it "
        "carry the hash tag {ID} (one Redis Cluster slot). Not with --stream.",
    )


def resolve_stream(partitioning: Partitioning | None, partition: str | None, stream: str) -> str:
    """The stream to use: ``partitioning.keys(partition).stream`` if a partition id was
    given, else ``stream``. Raises ``click.UsageError`` if both an id and an explicit
    ``--stream`` were given, ``click.BadParameter`` for a bad id."""
    if partition is None or partitioning is None:
        return stream
    ctx = click.get_current_context(silent=True)
    explicit = ctx is not None and ctx.get_parameter_source("stream") not in (
        None,
        click.core.ParameterSource.DEFAULT,
    )
    option = f"--{partitioning.name}"
    if explicit:
        raise click.UsageError(f"{option} and --stream both name the log: give one of them")
    try:
        return partitioning.keys(partition).stream
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from e


@dataclass(frozen=True)
class DomainCli:
    """How a command-line tool gets its :class:`~shop_adapters.domain.Domain`.

    - ``name``: the domain's name, for ``--help`` texts;
    - ``options``: click option decorators for the domain's configuration
      (the shop's ``--price-list``), added to every generic command;
    - ``build(**values)``: the domain, given those options' values by parameter
      name; raises ``click.BadParameter`` for a bad value;
    - ``partitioning``: how its logs are partitioned by id (the shop's ``--shop``),
      or ``None`` (one stream, named by ``--stream``; no pool).
    """

    name: str
    options: Sequence[Callable[[Any], Any]]
    build: Callable[..., Domain[Any, Any]]
    partitioning: Partitioning | None = None

    def add_options(self, f: F) -> F:
        """``f`` with the domain's options added (and ``--<partition> ID``)."""
        for option in reversed(self.options):
            f = option(f)
        if self.partitioning is not None:
            f = partition_option(self.partitioning)(f)
        return f

    def take(self, values: dict[str, Any]) -> Domain[Any, Any]:
        """Pop the domain's option values from ``values`` and build the domain; the
        partition id, if any, becomes ``values["stream"]`` (:func:`resolve_stream`)."""
        if self.partitioning is not None and "stream" in values:
            partition = values.pop("partition", None)
            values["stream"] = resolve_stream(self.partitioning, partition, values["stream"])
        names = [p.name for p in _params(self.options)]
        return self.build(**{n: values.pop(n) for n in names if n is not None})


def _params(options: Sequence[Callable[[Any], Any]]) -> list[click.Parameter]:
    def probe() -> None:
        """Only carries the options."""

    for option in options:
        probe = option(probe)
    return list(getattr(probe, "__click_params__", []))


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``±inf`` (a usage
    error, exit 2): ``nan`` passes every range comparison, ``inf`` means nothing
    as a duration or a rate.

    >>> FiniteFloat(min=0).convert("1.5", None, None)
    1.5
    """

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The float, or a usage error for ``nan``/``inf`` or outside the range."""
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds or units", param, ctx)
        return super().convert(number, param, ctx)


def clean_error_message(error: BaseException) -> str:
    """One line for an error escaping a command: ``<Type>: <message>``, a Redis
    error first classified by :func:`shop_adapters.redis_errors.classify`."""
    if isinstance(error, REDIS_ERRORS):
        error = classify(error, "a command")
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"


def plain_help(text: str | None) -> str | None:
    """``text`` without reStructuredText markup, for ``--help``: ``x`` and
    :role:`x` become x.

    >>> plain_help("Use ``--at`` (see :func:`~shop_adapters.catchup.replay`).")
    'Use --at (see replay).'
    """
    if text is None:
        return None
    text = re.sub(r"``([^`]*)``", r"\1", text)
    return re.sub(r":[a-z]+:`~?(?:[\w.]*\.)?([^`.]+)`", r"\1", text)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _CleanErrors(click.Command):
    """Mixin: shop and Redis errors escaping ``invoke`` end it with one line, exit 1;
    help texts lose their reStructuredText markup."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = plain_help(self.help)
        for param in self.params:
            if isinstance(param, click.Option):
                param.help = plain_help(param.help)

    def invoke(self, ctx: click.Context) -> Any:
        """``click.Command.invoke`` (or the group's), with those errors as ``ClickException``;
        an argument that is not UTF-8 text (undecodable bytes on the command line) is
        a usage error (exit 2) before anything runs."""
        for param in self.params:
            value = ctx.params.get(param.name or "")
            for text in value if isinstance(value, tuple | list) else (value,):
                if isinstance(text, str) and not _utf8(text):
                    label = param.opts[0] if isinstance(param, click.Option) else None
                    shown = text.encode("utf-8", "backslashreplace").decode()
                    raise click.UsageError(
                        f"{label or param.human_readable_name} {shown!r}: not UTF-8 text", ctx
                    )
        try:
            return super().invoke(ctx)
        except (
            ShopError,
            redis.exceptions.RedisError,
            redis.exceptions.RedisClusterException,
        ) as e:
            raise click.ClickException(clean_error_message(e)) from e


class CleanErrorsCommand(_CleanErrors):
    """A command whose shop and Redis errors end it with one line and exit 1."""


class CleanErrorsGroup(_CleanErrors, click.Group):
    """A group whose subcommands' shop and Redis errors end them with one line, exit 1
    (its ``command`` decorator makes :class:`CleanErrorsCommand` subcommands)."""

    command_class = CleanErrorsCommand


def _stream_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        StreamKeys.for_stream(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e
    return value


def mask_url(url: str) -> str:
    """``url`` with any password (userinfo or ``password=`` query) replaced by ``***``.

    >>> mask_url("rediss://alice:s3cret@cache.example:6380/0")
    'rediss://alice:***@cache.example:6380/0'
    >>> mask_url("redis://:s3cret@localhost")
    'redis://:***@localhost'
    >>> mask_url("redis://localhost:6379/0?password=s3cret&db=1")
    'redis://localhost:6379/0?password=%2A%2A%2A&db=1'
    >>> mask_url("unix:///tmp/redis.sock")
    'unix:///tmp/redis.sock'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def connection_options(f: F) -> F:
    """Click options ``--redis-url``, ``--stream``, ``--data-dir``, ``--cluster`` (see
    the module)."""
    f = click.option(
        "--cluster/--no-cluster",
        default=None,
        help="The URL names a node of a Redis Cluster: use redis-py's RedisCluster "
        "(default: ask the server, INFO cluster).",
    )(f)
    return single_server_options(f)


def single_server_options(f: F) -> F:
    """Click options ``--redis-url``, ``--stream``, ``--data-dir``: for commands that
    talk to one Redis server (the read side: its scripts span keys of no one slot)."""
    f = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA_DIR,
        show_default=True,
        help="Data directory of the embedded redis-server started when no URL is given.",
    )(f)
    f = click.option(
        "--stream",
        default="orders",
        show_default=True,
        callback=_stream_name,
        help="Redis stream of the log (a non-empty key name; its snapshot, lease and "
        "dead letters live at <stream>:snapshot, <stream>:lease, <stream>:dead).",
    )(f)
    f = click.option(
        "--redis-url",
        envvar="REDIS_URL",
        default=None,
        help="redis:// or rediss:// URL (default: env REDIS_URL, else an embedded Redis).",
    )(f)
    return f


def resolve_url(redis_url: str | None, data_dir: Path, *, create: bool = True) -> str:
    """``redis_url`` if given, else the URL of the embedded Redis in ``data_dir``
    (started if needed by :func:`shop_adapters.embedded_redis.ensure_embedded`;
    with ``create=False``, only if that directory already has one: a read-only
    tool must not leave a new server behind).

    Raises ``click.ClickException`` if the embedded server cannot start.
    """
    if redis_url:
        return redis_url
    from .embedded_redis import RedisServerError, embedded_status, ensure_embedded

    if not create and embedded_status(data_dir) is None:
        raise click.ClickException(
            f"no embedded Redis in {data_dir}: nothing was ever produced or run there. "
            "Give the --data-dir of your runner (or run from its directory), or --redis-url"
        )

    try:
        url = ensure_embedded(Path(data_dir))
    except (RedisServerError, OSError) as e:
        raise click.ClickException(f"cannot start the embedded redis-server: {e}") from e
    logging.getLogger("shop").info("using the embedded Redis in %s: %s", data_dir, mask_url(url))
    return url


def make_client(
    url: str, block_ms: int = 1_000, *, retry: bool = True, cluster: bool | None = False
) -> redis.Redis:
    """A ``redis.Redis`` from ``url`` whose ``socket_timeout`` (seconds) exceeds
    ``block_ms`` (the longest XREAD BLOCK, milliseconds) by 5 s, so a blocking
    read never times out on the socket first. Source: redis-py docs
    (``socket_timeout``) and Redis XREAD docs (``BLOCK`` in ms).

    ``retry=False`` turns off redis-py's automatic retry of a command whose
    connection failed: for writers (``XADD``), where a retried command whose
    reply was lost would append the entries twice. The caller then sees the
    error and decides.

    ``cluster``: ``True`` gives a ``RedisCluster`` (typed as ``redis.Redis``: it has
    the same command methods; see :func:`shop_adapters.redis_cluster.connect`), ``None``
    asks the server (``INFO cluster``), ``False`` a plain client.

    Raises ``click.BadParameter`` for a malformed URL (the message masks it).
    """
    if cluster is not False:
        from .redis_cluster import connect

        try:
            return connect(url, block_ms, cluster=cluster, retry=retry)
        except ValueError as e:
            raise click.BadParameter(
                f"not a Redis URL: {mask_url(url)} (expected redis://, rediss:// or unix://)",
                param_hint="--redis-url",
            ) from e
    extra: dict[str, Any] = {} if retry else {"retry": Retry(NoBackoff(), 0)}
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=block_ms / 1000 + 5.0,
            socket_connect_timeout=5.0,
            health_check_interval=30,
            **extra,
        )
    except ValueError as e:
        raise click.BadParameter(
            f"not a Redis URL: {mask_url(url)} (expected redis://, rediss:// or unix://)",
            param_hint="--redis-url",
        ) from e


class TextFormatter(logging.Formatter):
    """``2024-01-01T12:00:00Z INFO shop.runner message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one text line (plus a traceback if it carries one)."""
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts}Z {record.levelname} {record.name} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += "".join(
                f" {k}={json.dumps(v, separators=(',', ':'), default=str)}"
                for k, v in fields.items()
            )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC ISO 8601), ``level``, ``logger``,
    ``event`` (the record's event name, else ``"message"``), the process's
    :data:`LOG_CONTEXT` (``stream``, ``runner``), ``msg``, then the record's
    ``fields`` (and ``exc`` for an exception)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        fields = getattr(record, "fields", None)
        fields = fields if isinstance(fields, dict) else {}
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": fields.get("event", "message"),
            **LOG_CONTEXT,
            "msg": record.getMessage(),
        }
        for k, v in fields.items():
            out.setdefault(k, v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


LOG_CONTEXT: dict[str, str] = {}
"""Members every JSON log line of this process carries (set by the command lines:
``stream`` and, once known, ``runner``, the lease owner id)."""


def setup_logging(
    fmt: str = "text", level: int = logging.INFO, context: dict[str, str] | None = None
) -> None:
    """Send the ``shop`` loggers to stderr as ``text`` or ``json`` lines; ``context``
    goes into every JSON line (see :data:`LOG_CONTEXT`)."""
    LOG_CONTEXT.clear()
    LOG_CONTEXT.update(context or {})
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("shop")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False

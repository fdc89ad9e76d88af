"""``shop``: one command for the shop's tools (console script ``shop``).

- ``shop run ...``: the runner (``python -m shop_adapters.redis_runner``);
- ``shop produce ...``: the producer (``python -m shop_adapters.producer``);
- ``shop inspect ...``: inspect (``python -m shop_adapters.inspector``);
- ``shop redis status [--data-dir DIR] [--json]``: the embedded Redis of a data
  directory (running, pid, port, binary, version);
- ``shop redis stop [--data-dir DIR]``: stop it (``SHUTDOWN``; its data stays in
  the directory, and the next shop command that needs it starts it again);
- ``shop cluster up|status|down``: a local Redis Cluster
  (``python -m shop_adapters.cluster``).

The ``python -m`` forms and the ``shop-runner``, ``shop-producer`` and
``shop-inspect`` scripts stay.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli_common import DEFAULT_DATA_DIR, CleanErrorsGroup
from .cluster import cli as cluster_cli
from .embedded_redis import RedisServerError, embedded_status, stop_embedded
from .inspector import cli as inspect_cli
from .producer import cli as produce_cli
from .redis_runner import main as run_cli

__all__ = ["main"]


@click.group(cls=CleanErrorsGroup)
def main() -> None:
    """The shop: run the runner, produce events, inspect a stream, manage the
    embedded Redis or a local Redis Cluster. Each subcommand has its own --help."""


main.add_command(run_cli, "run")
main.add_command(produce_cli, "produce")
main.add_command(inspect_cli, "inspect")
main.add_command(cluster_cli, "cluster")

_data_dir = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Data directory of the embedded redis-server.",
)


@main.group(cls=CleanErrorsGroup)
def redis() -> None:
    """The embedded Redis that the shop commands start when no --redis-url is given."""


@redis.command()
@_data_dir
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(data_dir: Path, as_json: bool) -> None:
    """Whether the embedded Redis of DATA_DIR runs: pid, port, binary, version.

    Exit 0 if it runs, 3 if it does not (or the directory has none).
    """
    found = embedded_status(data_dir)
    if as_json:
        click.echo(json.dumps(found))
    elif found is None:
        click.echo(f"no embedded Redis in {data_dir}")
    elif found["running"]:
        click.echo(
            f"running: pid {found['pid']}, port {found['port']}, redis-server "
            f"{found['version']} ({found['executable']}), data in {found['data_dir']}"
        )
    else:
        click.echo(
            f"stopped (it starts again with the next shop command on {data_dir}): port "
            f"{found['port']}, redis-server {found['version']}, data in {found['data_dir']}"
        )
    if found is None or not found["running"]:
        raise SystemExit(3)


@redis.command()
@_data_dir
def stop(data_dir: Path) -> None:
    """Stop the embedded Redis of DATA_DIR (SHUTDOWN); its data stays in the directory."""
    try:
        stopped = stop_embedded(data_dir)
    except RedisServerError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"stopped the embedded Redis in {data_dir}" if stopped else "it was not running")


if __name__ == "__main__":
    main()

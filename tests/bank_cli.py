"""The generic runner and inspect commands for the bank domain, as a user would wire them:
``python tests/bank_cli.py run ...`` and ``python tests/bank_cli.py inspect ...``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
from bank_domain import BANK_CLI  # noqa: E402

from shop_adapters.inspect_commands import inspect_group  # noqa: E402
from shop_adapters.run_command import runner_command  # noqa: E402

cli = click.Group(commands={"run": runner_command(BANK_CLI), "inspect": inspect_group(BANK_CLI)})

if __name__ == "__main__":
    cli()

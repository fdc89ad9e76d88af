"""The generic runner and inspect commands for the bank domain, as a user would wire them:
``python tests/bank_cli.py run ...`` and ``python tests/bank_cli.py inspect ...``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import click
from bank_domain import BANK_CLI

from shop_adapters.inspect_commands import inspect_group
from shop_adapters.run_command import runner_command

cli = click.Group(commands={"run": runner_command(BANK_CLI), "inspect": inspect_group(BANK_CLI)})

if __name__ == "__main__":
    cli()

"""``python -m shop_adapters.inspector`` (console script ``shop-inspect``): inspect a
shop stream, read-only.

The group is :func:`shop_adapters.inspect_commands.inspect_group` with the shop
domain (``--price-list``, which must be the runner's); see that module for
the commands and their output.
"""

from __future__ import annotations

from .inspect_commands import inspect_group
from .shop_domain.cli import SHOP_CLI

__all__ = ["cli"]

cli = inspect_group(SHOP_CLI)

if __name__ == "__main__":
    cli()

"""The shop's :class:`~shop_adapters.cli_common.DomainCli`: ``--price-list`` and the domain."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_common import DomainCli, Partitioning
from ..keys import StreamKeys
from . import ShopDomain
from .wire import load_price_list

__all__ = ["SHOPS_REGISTRY", "SHOP_CLI", "SHOP_PARTITIONING", "build_shop"]

SHOPS_REGISTRY = "shops"
"""The Redis set of shop ids: producers ``SADD`` a shop before its first append; a pool
of runners (``redis_runner --pool``) serves every member. One key without a hash tag:
only single-key commands touch it (``SADD``, ``SCARD``, ``SMEMBERS``), so its slot may
be any; it is read by each pool worker about twice a second (``SCARD``) and in full
only when its size changed (shops are never removed)."""

SHOP_PARTITIONING = Partitioning("shop", StreamKeys.for_shop, SHOPS_REGISTRY)
"""Shops as partitions: ``--shop ID`` is the stream ``shop:{ID}`` and its companions."""


def build_shop(price_list: Path | None = None) -> ShopDomain:
    """The shop domain, with the price list read from ``price_list`` if given.

    Raises ``click.BadParameter`` naming ``--price-list`` for a file that cannot
    be read or is not a valid price list.
    """
    try:
        return ShopDomain(load_price_list(price_list)) if price_list else ShopDomain()
    except (OSError, ValueError, TypeError) as e:
        raise click.BadParameter(str(e), param_hint="--price-list") from e


SHOP_CLI = DomainCli(
    name="shop",
    options=[
        click.option(
            "--price-list",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="JSON {item_id: price in minor units} for the seed's v0 AddItem entries "
            "(give inspect the runner's).",
        )
    ],
    build=build_shop,
    partitioning=SHOP_PARTITIONING,
)
"""The shop for the generic command lines (runner, inspect)."""

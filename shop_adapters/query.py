"""``python -m shop_adapters.query`` (console script ``shop-query``): answers from the
shop's read models: ``top-items``, ``history USER``, ``rejections``,
``top-customers``, ``status``, ``parked``, each with ``--json``.

The group is :func:`shop_adapters.read_model_commands.query_group` with the
shop's queries (:data:`shop_adapters.shop_domain.read_side.SHOP_QUERIES`).
"""

from __future__ import annotations

from .read_model_commands import query_group
from .shop_domain.read_side import SHOP_QUERIES, SHOP_READ_MODELS

__all__ = ["cli"]

cli = query_group(SHOP_READ_MODELS, SHOP_QUERIES)

if __name__ == "__main__":
    cli()

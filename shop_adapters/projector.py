"""``python -m shop_adapters.projector`` (console script ``shop-projector``): the shop's
projector, keeping its read models in Redis.

The command is :func:`shop_adapters.read_model_commands.projector_command` with
the shop's projections (:data:`shop_adapters.shop_domain.read_side.SHOP_READ_MODELS`);
see that module for the options and exit statuses, and ``docs/read-models.md``.
"""

from __future__ import annotations

from .read_model_commands import projector_command
from .shop_domain.read_side import SHOP_READ_MODELS

__all__ = ["main"]

main = projector_command(SHOP_READ_MODELS)

if __name__ == "__main__":
    main()

"""``python -m shop_adapters.worker`` (console script ``shop-worker``): the shop's
receipt worker, one consumer of the Redis consumer group ``receipts`` on the
outcome journal.

The command is :func:`shop_adapters.read_model_commands.worker_command` with
the shop's receipt handler (:data:`shop_adapters.shop_domain.read_side.SHOP_READ_MODELS`);
see that module for the options and exit statuses, and ``docs/read-models.md``.
"""

from __future__ import annotations

from .read_model_commands import worker_command
from .shop_domain.read_side import SHOP_READ_MODELS

__all__ = ["main"]

main = worker_command(SHOP_READ_MODELS)

if __name__ == "__main__":
    main()

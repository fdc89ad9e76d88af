"""``python -m shop_adapters.redis_runner``: the runner wired to Redis, for the shop.

The command is :func:`shop_adapters.run_command.runner_command` with the shop
domain (:data:`shop_adapters.shop_domain.cli.SHOP_CLI`, which adds
``--price-list``); see that module for the options and exit statuses.
"""

from __future__ import annotations

import signal

from .run_command import runner_command
from .shop_domain.cli import SHOP_CLI

__all__ = ["entry", "main"]

main = runner_command(SHOP_CLI)


def entry() -> None:
    """The ``shop-runner`` script: :func:`main`, then SIGINT and SIGTERM ignored
    while the interpreter exits. (At shutdown Python resets a signal whose
    handler is a Python function to the default action, so a second signal
    arriving then would kill the process with status -15/143 after the final
    snapshot was written; an ignored signal stays ignored.)"""
    try:
        main()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    entry()

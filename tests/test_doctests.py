"""The ``>>>`` examples in public docstrings run as tests."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "shop_core",
    "shop_core.events",
    "shop_core.state",
    "shop_core.rules",
    "shop_core.strategies",
    "shop_adapters.protocols",
    "shop_adapters.logs.memory",
    "shop_adapters.logs.file",
    "shop_adapters.logs.redis_stream",
    "shop_adapters.snapshots.memory",
    "shop_adapters.snapshots.file",
    "shop_adapters.snapshots.redis",
    "shop_adapters.lease",
    "shop_adapters.embedded_redis",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

"""The ``>>>`` examples in public docstrings run as tests."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

MODULES = [
    "shop_core",
    "shop_core.events",
    "shop_core.state",
    "shop_core.rules",
    "shop_core.strategies",
    "shop_adapters.protocols",
    "shop_adapters.domain",
    "shop_adapters.decider",
    "shop_adapters.catchup",
    "shop_adapters.envelope",
    "shop_adapters.retry",
    "shop_adapters.keys",
    "shop_adapters.runner",
    "shop_adapters.shop_domain",
    "shop_adapters.shop_domain.wire",
    "shop_adapters.shop_domain.state_codec",
    "shop_adapters._json",
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


def test_the_readme_core_example_is_true() -> None:
    """The README's "core in 30 seconds" block runs as a doctest."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The core in 30 seconds") :]
    block = section[section.index("```python") + len("```python") : section.index("```\n", 10)]
    test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 5
    assert result.failed == 0

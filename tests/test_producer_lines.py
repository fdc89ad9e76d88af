"""The producer's ITEM:QTY order lines split at the last colon, and say so in --help."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from shop_adapters import producer
from shop_adapters.producer import parse_line


def test_an_order_line_splits_at_the_last_colon() -> None:
    assert parse_line("cpu:2:3") == ("cpu:2", 3)
    assert parse_line("cpu:2") == ("cpu", 2)
    for bad in ("cpu", ":3", "cpu:x", "cpu:2:"):
        with pytest.raises(ValueError, match=r"ITEM:QTY|integer"):
            parse_line(bad)


def test_the_order_help_says_how_lines_are_split() -> None:
    shown = CliRunner().invoke(producer.cli, ["order", "--help"])
    assert shown.exit_code == 0
    assert "LAST colon" in shown.output and "cpu:2:3" in shown.output

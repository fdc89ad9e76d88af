"""The shell is generic: its modules import nothing of the shop and name none of its terms.

An AST scan of every generic module of ``shop_adapters``: no import of ``shop_core``
or ``shop_adapters.shop_domain``, and no identifier or non-docstring string that names
a shop term (its events, state, price list, digest function). Docstrings may mention
the shop as an example. The shop's own wiring (``shop_domain``, ``redis_runner``,
``inspector``, ``producer``, ``projector``, ``worker``, ``query``, ``cli``) is outside
the scan.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shop_adapters"

SHOP_WIRING = {
    "shop_domain",
    "redis_runner.py",
    "inspector.py",
    "producer.py",
    "projector.py",
    "worker.py",
    "query.py",
    "cli.py",
    "__init__.py",
}

GENERIC = sorted(
    p
    for p in PACKAGE.rglob("*.py")
    if p.relative_to(PACKAGE).parts[0] not in SHOP_WIRING
    and not (p.name == "__init__.py" and p.parent == PACKAGE)
)

SHOP_TERMS = re.compile(
    r"TopUp|AddItem|\bOrder\b|OrderType|ShopState|ShopDomain|\bTransient\b|state_digest|"
    r"\bUser\b|\bItem\b|\bbalance|(?i:price[ _-]?list)"
)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        # An attribute docstring: a string statement right after an assignment.
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for prev, stmt in itertools.pairwise(body):
                if (
                    isinstance(prev, ast.Assign | ast.AnnAssign)
                    and isinstance(stmt, ast.Expr)
                    and isinstance(stmt.value, ast.Constant)
                ):
                    ids.add(id(stmt.value))
    return ids


def test_the_scan_covers_the_shell() -> None:
    names = {str(p.relative_to(PACKAGE)) for p in GENERIC}
    assert {
        "runner.py",
        "envelope.py",
        "catchup.py",
        "domain.py",
        "decider.py",
        "lease.py",
        "inspect_commands.py",
        "run_command.py",
        "logs/redis_stream.py",
        "logs/file.py",
        "logs/memory.py",
        "snapshots/redis.py",
        "protocols.py",
        "projections.py",
        "view_store.py",
        "projector_engine.py",
        "consumer_group.py",
        "effects.py",
        "read_model_commands.py",
    } <= names


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_generic_module_imports_nothing_of_the_shop(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [("." * node.level) + (node.module or "")]
            modules += [f"{modules[0]}.{a.name}" for a in node.names]
        else:
            continue
        for module in modules:
            assert not module.startswith("shop_core"), f"{path.name} imports {module}"
            assert "shop_domain" not in module, f"{path.name} imports {module}"


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_generic_module_names_no_shop_term(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = _docstring_nodes(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name | ast.arg):
            text = node.id if isinstance(node, ast.Name) else node.arg
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            text = node.name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            text = node.value
        else:
            continue
        if SHOP_TERMS.search(text):
            found.append(f"line {getattr(node, 'lineno', '?')}: {text[:80]!r}")
    assert not found, f"{path.relative_to(PACKAGE)} names shop terms: {found}"

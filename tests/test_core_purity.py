"""shop_core imports nothing that does I/O: checked on the source, statically."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import shop_core

CORE = Path(shop_core.__file__).parent
ALLOWED = {
    "__future__",
    "collections",
    "dataclasses",
    "enum",
    "hashlib",
    "json",
    "re",
    "typing",
    "pyrsistent",
    "returns",
    "shop_core",
}
ALLOWED_IN_STRATEGIES = ALLOWED | {"hypothesis"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside shop_core
                found.add("shop_core")
            elif node.module:
                found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") in {
            "__import__",
            "open",
            "eval",
            "exec",
            "print",
            "input",
        }:
            found.add(f"call:{node.func.id}")  # type: ignore[attr-defined]
    return found


def test_core_modules_import_only_pure_libraries() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 5
    for path in modules:
        allowed = ALLOWED_IN_STRATEGIES if path.name == "strategies.py" else ALLOWED
        extra = _imports(path) - allowed
        assert not extra, f"{path.name} imports or calls {sorted(extra)}"


def test_importing_shop_core_loads_no_io_module() -> None:
    code = (
        "import sys, shop_core;"
        "bad = {'socket', 'subprocess', 'logging', 'random', 'asyncio', 'redis', 'shop_adapters'}"
        " & set(sys.modules); print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

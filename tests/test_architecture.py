"""The layering rules of the repository, checked on every module's imports.

- ``server/`` never imports ``client/`` and ``client/`` never imports ``server/``: the two apps
  share only ``tardiff_common`` (the method and the wire contract ``tardiff_common.protocol``).
- ``tardiff_common`` never imports an app or a study, and its method never imports Flower; the
  one module allowed to is the wire contract.

Imports are read from the source (``ast``), including function-local ones, so a lazy import
cannot hide a violation; a subprocess also checks that loading the ServerApp loads no client
module at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOWER_ALLOWED = {"tardiff_common/protocol.py"}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def violations(package: str, forbidden: tuple[str, ...], allowed: set[str] = frozenset()) -> list[str]:
    found = []
    for path in sources(package):
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        for name in sorted(imported_modules(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{rel} imports {name}")
    return found


def test_the_walk_sees_imports():
    """The checker itself: it must find the imports we know exist (else every check is vacuous)."""
    server_imports = set().union(*(imported_modules(p) for p in sources("server")))
    client_imports = set().union(*(imported_modules(p) for p in sources("client")))
    assert "tardiff_common.protocol" in server_imports
    assert "tardiff_common.protocol" in client_imports
    assert "server.run" in server_imports  # relative "from ..run import" resolved
    assert any(n.startswith("flwr") for n in imported_modules(ROOT / "tardiff_common/protocol.py"))


@pytest.mark.parametrize(("package", "forbidden"), [
    ("server", ("client",)),
    ("client", ("server",)),
    ("tardiff_common", ("client", "server", "simulations", "benchmarks", "tests")),
])
def test_layers_do_not_import_each_other(package, forbidden):
    assert violations(package, forbidden) == []


def test_method_is_flower_free_except_the_wire_contract():
    assert violations("tardiff_common", ("flwr",), allowed=FLOWER_ALLOWED) == []


def test_loading_the_server_app_loads_no_client_module():
    code = ("import sys, server.app; "
            "bad = sorted(m for m in sys.modules if m == 'client' or m.startswith('client.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

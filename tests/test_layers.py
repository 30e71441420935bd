"""The house's arrows point one way (shared/design.md): api → jobs → dynamics. Checked on the source, so a
lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"


def imported_modules(package: str) -> set[tuple[str, str]]:
    """(file, module) for every import statement in service/<package>/, relative imports resolved."""
    found = set()
    for path in (SERVICE / package).rglob("*.py"):
        parts = ["service", *path.relative_to(SERVICE).with_suffix("").parts]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(str(path), alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = parts[:-1]  # the package the file is in (also for __init__.py)
                if node.level:
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                found.add((str(path), module))
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("jobs", ("service.api", "fastapi", "starlette")),
    ("dynamics", ("service.api", "service.jobs", "service.schemas", "fastapi", "starlette", "pydantic")),
])
def test_lower_layers_do_not_import_upper_ones(package, forbidden):
    bad = sorted((f, m) for f, m in imported_modules(package) if m.startswith(forbidden))
    assert not bad, bad


def test_problem_documents_are_framework_free():
    # the worker builds problem documents too: the catalogue imports no web framework
    tree = ast.parse((SERVICE / "problems.py").read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in modules if m and m.split(".")[0] in ("fastapi", "starlette", "pydantic")}

"""The house's arrows point one way (README.md, "Where the code lives"): api → jobs → build/codec → schemas
→ dynamics. Checked on the source, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"


def imported_modules(package: str) -> set[tuple[str, str]]:
    """(file, module) for every import statement in service/<package>/ (or the file service/<package>), relative
    imports resolved."""
    found = set()
    for path in (SERVICE / package).rglob("*.py") if (SERVICE / package).is_dir() else [SERVICE / package]:
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
    ("schemas", ("service.api", "service.jobs", "service.build", "service.codec", "fastapi", "starlette")),
    ("dynamics", ("service.api", "service.jobs", "service.schemas", "fastapi", "starlette", "pydantic")),
    ("plots", ("service.api", "service.jobs", "fastapi", "starlette")),
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


ROUTERS = sorted(p.stem for p in (SERVICE / "api").glob("*.py") if "APIRouter(" in p.read_text())


@pytest.mark.parametrize("router", ROUTERS)
def test_no_router_imports_another_router(router):
    imported = {m for _, m in imported_modules(f"api/{router}.py")}
    assert not imported & {f"service.api.{r}" for r in ROUTERS if r != router}


@pytest.mark.parametrize("router", ROUTERS)
def test_routers_stay_thin(router):
    # the work lives in service/jobs (submission) and below: a router parses, delegates and answers
    assert len((SERVICE / "api" / f"{router}.py").read_text().splitlines()) <= 300


@pytest.mark.parametrize("module", ["build.py", "codec.py", "limits.py", "problems.py", "status.py"])
def test_the_border_modules_import_no_job_or_web_code(module):
    imported = {m for _, m in imported_modules(module)}
    assert not {m for m in imported if m.startswith(("service.api", "service.jobs", "fastapi", "starlette"))}

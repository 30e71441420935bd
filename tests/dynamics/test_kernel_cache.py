"""numba's disk cache and the kernels' sources (service.dynamics.kernel_cache.stale_with).

numba keeps a cached kernel while its own source file is unchanged, but the kernel's machine code also holds what
it calls in other modules and the constants it reads from them. The checks: every cached kernel of the core is
made stale by every module it is compiled from (read from its bytecode and its module's imports, no compile), and
``stale_with`` does make numba recompile a kernel after an edit of a module it calls (a kernel cached by a
separate process, as workers and the warm-up do).
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from numba.core.dispatcher import Dispatcher

import service.dynamics
from service.dynamics import kernel_cache

ROOT = Path(__file__).resolve().parents[2]
SERVICE = os.path.realpath(ROOT / "service")


def core_modules() -> list[types.ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(service.dynamics.__path__, "service.dynamics.")]
    return [importlib.import_module(n) for n in names]


def repo_file(obj) -> str | None:
    path = getattr(obj, "__file__", None)
    path = os.path.realpath(path) if path else None
    return path if path and path.startswith(SERVICE) else None


def imported_names(module: types.ModuleType) -> dict[str, str]:
    """name → source file of the core module it was imported from (``from .x import name``)."""
    tree = ast.parse(Path(module.__file__).read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), module.__package__)
            for alias in node.names:
                target = sys.modules.get(f"{base}.{alias.name}") or sys.modules.get(base)
                if repo_file(target):
                    out[alias.asname or alias.name] = repo_file(target)
    return out


def names_in(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= names_in(const)
    return names


def compiled_from(kernel: Dispatcher, seen: set) -> set[str]:
    """Source files a kernel's machine code is built from: its own, those of the kernels it calls (recursively), and
    the modules of the names it imported (kernels, overloads, constants)."""
    func = kernel.py_func
    module = sys.modules[func.__module__]
    files = {repo_file(module)}
    imports = imported_names(module)
    for name in names_in(func.__code__):
        value = func.__globals__.get(name)
        if name in imports:
            files.add(imports[name])
        if isinstance(value, types.ModuleType) and repo_file(value):
            files.add(repo_file(value))
        if isinstance(value, Dispatcher) and value not in seen:
            seen.add(value)
            files |= compiled_from(value, seen)
    return files


def cached_kernels():
    for module in core_modules():
        for value in vars(module).values():
            if (isinstance(value, Dispatcher) and value.py_func.__module__ == module.__name__
                    and getattr(value._cache, "_cache_file", None) is not None):
                yield value


def test_every_cached_kernel_is_made_stale_by_every_module_it_is_compiled_from():
    kernels = list(cached_kernels())
    assert any(k.py_func.__name__ == "gd_lanes_steps" for k in kernels)  # the case that had the hazard
    for kernel in kernels:
        covered = set(kernel_cache.sources(kernel.py_func.__module__))
        missing = compiled_from(kernel, set()) - covered
        assert not missing, (f"{kernel.py_func.__module__}.{kernel.py_func.__name__} is compiled from {missing}: "
                             f"add kernel_cache.stale_with(globals(), …) at the end of its module")


CALLEE = "from numba import njit\n\n\n@njit(cache=True)\ndef inner(x):\n    return x + {increment}\n"
CALLER = """\
    import callee
    from numba import njit

    from service.dynamics import kernel_cache


    @njit(cache=True)
    def outer(x):
        return callee.inner(x)
    """


def run_outer(tmp_path: Path) -> int:
    """outer(1) in a fresh process (loading it from the disk cache when fresh)."""
    code = f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {str(ROOT)!r}]; import caller; print(caller.outer(1))"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("NUMBA_CACHE_DIR", None)  # the cache beside these files, in tmp_path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         timeout=120)
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("tracked", [True, False], ids=["stale_with", "numba alone"])
def test_an_edit_of_a_called_module_recompiles_the_caller_only_with_stale_with(tmp_path, tracked):
    (tmp_path / "callee.py").write_text(CALLEE.format(increment=1))
    caller = textwrap.dedent(CALLER) + ("\n\nkernel_cache.stale_with(globals(), callee)\n" if tracked else "")
    (tmp_path / "caller.py").write_text(caller)
    assert run_outer(tmp_path) == 2  # compiled and cached
    (tmp_path / "callee.py").write_text(CALLEE.format(increment=10))
    # numba alone keeps the cached caller, with the old callee compiled into it (why stale_with exists)
    assert run_outer(tmp_path) == (11 if tracked else 2)

"""Starting the service (issue 21, "a fresh start in 90 s"): what `make run` installs, what the service says while it
starts and when it is ready, one line for a busy port, the install-time kernel compile, the packaging metadata.

The fresh start itself (clone, `make run`, /readyz 200) takes a minute or more and is measured, not tested:
`python3 bench/fresh_start.py` (bench/results.md, "Fresh start").
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.server import ROOT, held_port, wait_for_line

FAST = 60  # seconds: what fails at once must not take longer than this even on a loaded machine


def service_env(port: int, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DLNSIM_HOST": "127.0.0.1", "DLNSIM_PORT": str(port),
            "DLNSIM_DATA_DIR": str(tmp_path / "data"), "DLNSIM_WORKERS": "1", **extra}


# -- a busy port ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[sys.executable, "-m", "service"], [sys.executable, "-m", "service.listen"]],
                         ids=["python -m service", "make run's check"])
def test_a_busy_port_is_one_line_naming_DLNSIM_PORT_and_a_failure_exit(command, tmp_path):
    with held_port() as port:
        result = subprocess.run(command, cwd=ROOT, env=service_env(port, tmp_path), capture_output=True, text=True,
                                timeout=FAST)
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode != 0
    assert len(lines) == 1, lines
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0]
    assert f"DLNSIM_PORT={port + 1} make run" in lines[0]
    assert not (tmp_path / "data").exists()  # nothing started: the store was never opened


@pytest.mark.parametrize("command", [[sys.executable, "-m", "service"], [sys.executable, "-m", "service.listen"]],
                         ids=["python -m service", "make run's check"])
def test_a_port_out_of_range_is_one_line_too(command, tmp_path):
    result = subprocess.run(command, cwd=ROOT, env=service_env(70000, tmp_path), capture_output=True, text=True,
                            timeout=FAST)
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode != 0 and len(lines) == 1, lines
    assert "DLNSIM_PORT" in lines[0] and "65535" in lines[0]


def test_the_port_check_is_silent_and_succeeds_on_a_free_port(tmp_path):
    from tests.support.server import free_port

    result = subprocess.run([sys.executable, "-m", "service.listen"], cwd=ROOT,
                            env=service_env(free_port(), tmp_path), capture_output=True, text=True, timeout=FAST)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_port_check_runs_on_the_standard_library_alone():
    """make run asks it with the system python, before the venv exists."""
    source = (ROOT / "service" / "listen.py").read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines()
               if line.startswith(("import ", "from ")) and "__future__" not in line}
    assert imports <= set(sys.stdlib_module_names), imports
    assert "import" not in (ROOT / "service" / "__init__.py").read_text()  # which `-m service.listen` runs first


# -- the ready line ---------------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_the_service_prints_one_ready_line_with_its_url(server):
    """`ready: http://127.0.0.1:<port> — docs at /docs`, once, when /readyz answers 200 (the shared server has)."""
    lines = wait_for_line(server.log_path, "ready: ")
    assert lines == [f"ready: {server.url} — docs at /docs"]


def test_the_announcer_says_what_it_waits_for_then_prints_ready_once(capsys, monkeypatch):
    import service.ready as ready

    answers = iter([(["1 of 1 workers still compiling the GD kernels"], 1, 0)] * 3 + [([], 1, 1)])

    async def readiness(app):
        return next(answers)

    monkeypatch.setattr(ready, "readiness", readiness)
    asyncio.run(ready.announce_when_ready(object(), "http://127.0.0.1:8123", poll=0.01, progress=0.0))
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "ready: http://127.0.0.1:8123 — docs at /docs"
    assert sum(line.startswith("ready: ") for line in out) == 1
    assert all("still compiling the GD kernels" in line for line in out[:-1]) and out[:-1]


# -- make run installs the runtime only, make test the extras on top --------------------------------------------------

def make_dry_run(target: str) -> str:
    """The commands `make <target>` would run from scratch (-B: as if nothing were installed yet)."""
    return subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=FAST,
                          check=True).stdout


def test_make_run_installs_the_runtime_dependencies_only():
    """First what the kernels import, then the rest beside the compile (a sub-make with 2 jobs)."""
    commands = make_dry_run("run")
    installs = {line.split("pip install", 1)[1].split()[-1] for line in commands.splitlines() if "pip install" in line}
    assert installs == {".venv/kernel-requirements.txt", "."}, installs
    assert "[test]" not in commands and "test-requirements" not in commands and "client" not in commands
    assert "-m service.listen" in commands.split("pip install")[0]  # the port is checked before installing
    assert "-m service.jobs.warmup" in commands
    assert "-j2 .venv/.runtime-installed .venv/.kernels-compiled" in commands


def test_the_kernels_requirements_are_runtime_dependencies_of_pyproject():
    makefile = (ROOT / "Makefile").read_text()
    names = set(makefile.split("KERNEL_DEPS :=", 1)[1].splitlines()[0].split())
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for d in deps}
    assert names and names <= declared, names - declared


def test_make_test_adds_the_test_extras_without_installing_the_project_twice():
    installs = {line for line in make_dry_run("test").splitlines() if "pip install" in line}
    assert sum(line.rstrip().endswith("-e .") for line in installs) == 1
    assert any("-r .venv/test-requirements.txt" in line for line in installs)
    assert not any("[test]" in line for line in installs)


# -- packaging --------------------------------------------------------------------------------------------------------

def test_the_license_is_an_spdx_expression_for_setuptools_77():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    assert "setuptools>=77" in project["build-system"]["requires"]


# -- the install-time compile -----------------------------------------------------------------------------------------

def test_the_two_tiers_cover_every_warm_up_step_once_and_the_eager_one_is_float64():
    from service.jobs.warmup import EAGER, REST, STEPS

    assert sorted(EAGER + REST) == list(range(len(STEPS)))
    assert not any("float32" in STEPS[i][0] or "SGD" in STEPS[i][0] or "Hessian" in STEPS[i][0] for i in EAGER)


def test_the_warm_up_leaves_the_process_s_blas_threads_alone(monkeypatch):
    """The later tier runs beside jobs in the worker: its tiny runs must not pin the process's BLAS to one thread
    (nor restore a stale count) under a job. Outside the warm-up the same run does limit it."""
    import service.dynamics.gd as gd
    from service.jobs.warmup import run_steps

    asked = []
    original = gd._threadpools
    monkeypatch.setattr(gd, "_threadpools", lambda: asked.append(1) or original())
    run_steps([0])
    assert asked == []
    with gd.blas_threads_for(1.0):
        pass
    assert asked == [1]

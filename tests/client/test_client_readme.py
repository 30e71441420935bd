"""client/README.md's Python blocks run as written against a real service: all of them, in order, as one
script (the first block creates the client and the request the others use), with only the service's address
replaced by the test server's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "client" / "README.md"
ADDRESS = "http://127.0.0.1:8000"   # what `make run` listens on, and what the README says

pytestmark = pytest.mark.e2e


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_python_blocks_run_as_written(service, tmp_path):
    code = "\n".join(python_blocks())
    assert code.count(ADDRESS) == 1, f"the README's Python should address {ADDRESS} exactly once"
    script = tmp_path / "readme.py"
    script.write_text(code.replace(ADDRESS, service.url), encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, check=False, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert " succeeded completed" in result.stdout
    assert "network.hidden[0] → " in result.stdout
    assert {"modes.svg", "loss.svg", "learning_time.svg"} <= {p.name for p in tmp_path.iterdir()}


ROOT_README = ROOT / "README.md"


def test_the_root_readmes_client_snippet_runs_in_a_fresh_venv_after_pip_install_client(service, tmp_path):
    """The quickstart as a new user follows it: a new virtual environment, `pip install ./client` (httpx, numpy and
    httpx-sse only), then the README's Python block, against a running service."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", ROOT_README.read_text(encoding="utf-8"), re.S)
              if "import dlnsim" in b]
    assert len(blocks) == 1 and blocks[0].count(ADDRESS) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(ROOT / "client")],
                             capture_output=True, text=True, timeout=600, check=False)
    assert install.returncode == 0, install.stderr
    script = tmp_path / "quickstart.py"
    script.write_text(blocks[0].replace(ADDRESS, service.url) + "\nprint(sim.status, len(sim.trajectory()['loss']))\n",
                      encoding="utf-8")
    result = subprocess.run([str(python), str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert result.stdout.split()[0] == "succeeded"

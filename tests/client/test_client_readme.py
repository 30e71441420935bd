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

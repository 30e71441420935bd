"""Generate the Python client from the committed openapi/openapi.json with the pinned openapi-python-client.

Shared by tests/client (imports it) and tests/examples (runs examples/client.py against it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi" / "openapi.json"
CONFIG = ROOT / "openapi" / "openapi-python-client.yml"   # the configuration users generate with
PACKAGE = "dlnsim_client"


def generate_client(dest: Path) -> Path:
    """Write the package ``dlnsim_client`` into ``dest`` and return ``dest`` (for sys.path / PYTHONPATH).

    ``--fail-on-warning``: a spec construct the generator cannot express makes it skip an endpoint or a model
    with a warning; that must fail here, not leave users with a client that silently lacks a route.
    """
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(SPEC),
               "--output-path", str(dest / PACKAGE), "--meta", "none", "--fail-on-warning", "--config", str(CONFIG)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise AssertionError(f"openapi-python-client failed on {SPEC}:\n{result.stdout}\n{result.stderr}")
    return dest

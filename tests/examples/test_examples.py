"""Every example in examples/ runs and its claim holds, so the examples never rot.

The Python scripts reproduce known results with the core and assert them (a failed claim exits non-zero);
curl.sh and client.py run against a real ``python -m service`` on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.generate import generate_client

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NEEDS_SERVER = {"client.py", "curl.sh"}
# One BLAS thread, as in the workers: on matrices this small OpenBLAS's thread pool only adds overhead, and on a
# loaded machine (2 cores shared by parallel jobs) it made a 0.1 s run take 10 s.
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name not in NEEDS_SERVER)


def run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def test_the_known_results_have_their_scripts():
    assert {"saxe_modes.py", "hierarchy_stages.py", "lazy_vs_rich.py", "generalization.py", "forgetting.py",
            "progressive_sharpening.py", "lazy_linearized.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_reproduces_its_result(script):
    out = run([sys.executable, str(EXAMPLES / script)], **ONE_BLAS_THREAD).stdout
    assert out.strip(), "an example prints what it shows"


@pytest.mark.e2e
def test_curl_example_fetches_a_trajectory(server, tmp_path):
    # stderr to a file, as `sh examples/curl.sh 2> simulation.json` does: curl's `-o /dev/stderr` had reopened that
    # file from its start, and the shell's `echo >&2` then overwrote its first byte (a pipe hid it)
    with open(tmp_path / "stderr.json", "wb") as stderr:
        result = subprocess.run(["sh", str(EXAMPLES / "curl.sh")], cwd=ROOT, env={**os.environ, "DLNSIM_URL": server.url},
                                stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300, check=False)
    assert result.returncode == 0, (tmp_path / "stderr.json").read_text()
    trajectory = json.loads(result.stdout)
    assert trajectory["outcome"] == "completed"
    assert len(trajectory["time"]) == 50
    assert trajectory["modes"]["theory_model"] == "saxe_decoupled_modes"
    simulation = json.loads((tmp_path / "stderr.json").read_text())
    assert simulation["status"] == "succeeded"   # Prefer: wait returned the finished simulation


@pytest.mark.e2e
def test_curl_example_shows_a_problem_and_fails_on_a_bad_request(server, tmp_path):
    """A 4xx: the problem document on stderr (valid JSON), a non-zero exit, no trajectory."""
    result = subprocess.run(["sh", str(EXAMPLES / "curl.sh")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DLNSIM_URL": f"{server.url}/nowhere"}, check=False)
    assert result.returncode != 0 and result.stdout == ""
    # curl's own line ("curl: (22) The requested URL returned error: 404"), then the body
    assert json.loads(result.stderr[result.stderr.index("{"):])["status"] == 404


def test_curl_example_needs_no_curl_newer_than_ubuntu_22_04_s():
    """curl 7.81 (Ubuntu 22.04): no `-w '%header{…}'` (7.83); --fail-with-body is 7.76."""
    script = (EXAMPLES / "curl.sh").read_text()
    assert "%header{" not in script and "%{header_json}" not in script


@pytest.mark.e2e
def test_client_example_runs_through_the_generated_client(server, tmp_path):
    client_dir = generate_client(tmp_path)
    out = run([sys.executable, str(EXAMPLES / "client.py")], DLNSIM_URL=server.url, PYTHONPATH=str(client_dir)).stdout
    assert "outcome completed" in out

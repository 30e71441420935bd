"""Time a fresh start (issue 21): clone this checkout into a new directory, run `make run` there, and report the
seconds until /readyz answers 200, with each line `make run` printed and when, and the parts read off them (pip,
the kernel compile, the service's start).

    python3 bench/fresh_start.py                # clones HEAD of this checkout into /tmp/dlnsim-fresh
    python3 bench/fresh_start.py --write        # and replaces the "## Fresh start" section of bench/results.md
    python3 bench/fresh_start.py --commit cbc52e2   # an older commit (before issue 21: 241.9 s, results.md)
    python3 bench/fresh_start.py --source URL --dest DIR --port 8123

Stdlib only: runs under the system python3 before any venv exists. Stops the service (its whole process group)
once ready. pip's cache is left as it is (a machine that installed once keeps the wheels it downloaded), so this
measures installing, not downloading.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(ROOT), help="what to clone (default: this checkout)")
    parser.add_argument("--dest", default="/tmp/dlnsim-fresh", help="where (removed first)")
    parser.add_argument("--port", type=int, default=0, help="DLNSIM_PORT (default: a free one)")
    parser.add_argument("--commit", help="check this commit out in the clone (default: the source's HEAD)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--write", action="store_true", help='replace the "## Fresh start" section of bench/results.md')
    args = parser.parse_args()
    dest = Path(args.dest)
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", args.source, str(dest)], check=True)
    if args.commit:
        subprocess.run(["git", "-C", str(dest), "checkout", "-q", args.commit], check=True)
    commit = subprocess.run(["git", "-C", str(dest), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    port = args.port or free_port()
    env = {**os.environ, "DLNSIM_PORT": str(port)}
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cpu0 = os.times()
    t0 = time.monotonic()
    proc = subprocess.Popen(["make", "run"], cwd=dest, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))
            print(f"{lines[-1][0]:7.1f}  {lines[-1][1]}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready = None
    try:
        while time.monotonic() - t0 < args.timeout and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        ready = time.monotonic() - t0
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
    finally:
        time.sleep(0.5)  # the ready line, if any
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    cpu1 = os.times()
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    reader.join(5)
    if ready is None:
        print(f"not ready (make run exited {proc.returncode})")
        return 1
    parts = summarise(lines, ready)
    summary = (f"fresh start of {commit}: /readyz 200 after {ready:.1f} s ({parts}); load average at the start "
               f"{load} on {os.cpu_count()} cores; CPU time of make run and its children until stopped {cpu:.0f} s")
    print(summary)
    if args.write:
        shown = [(t, line) for t, line in lines if t <= ready]
        write_section(RESULTS, "## Fresh start", section(summary, shown))
    return 0


# Where each part starts: the first line `make run` prints that matches (the Makefile's and the warm-up's own lines).
# Earlier Makefiles echoed their commands instead: those lines count too, so that old commits are measured alike.
# Since make run installs the rest beside the compile, the second part is both; the compile's own time is its last line.
MARKERS = [("venv and pip", lambda line: any(s in line for s in ("installing numpy", "-m venv", "pip install"))),
           ("kernel compile and the rest of pip", lambda line: any(s in line for s in (
               "installing the service", "compiling", "-m service.jobs.warmup"))),
           ("service start", lambda line: "starting the API" in line or line.rstrip().endswith("-m service"))]
RESULTS = ROOT / "bench" / "results.md"


def summarise(lines: list[tuple[float, str]], ready: float) -> str:
    """"venv and pip 31.2 s, kernel compile 20.5 s, service start 6.1 s" from the times the markers appeared."""
    starts = []
    for name, matches in MARKERS:
        t = next((t for t, line in lines if matches(line)), None)
        if t is not None and (not starts or t >= starts[-1][1]):
            starts.append((name, t))
    ends = [t for _, t in starts[1:]] + [ready]
    parts = ", ".join(f"{name} {end - start:.1f} s" for (name, start), end in zip(starts, ends))
    compiled = next((line.split("compiled and cached in ")[1].split(" s")[0] for _, line in lines
                     if "compiled and cached in " in line), None)
    return parts + (f"; the compile alone {compiled} s" if compiled else "")


def section(summary: str, lines: list[tuple[float, str]]) -> list[str]:
    shown = [f"    {t:6.1f}  {line}" for t, line in lines
             if line.startswith(("dlnsim:", "ready:")) or "make" in line[:6]]
    return ["## Fresh start", "",
            f"`python3 bench/fresh_start.py --write` ({time.strftime('%Y-%m-%d %H:%M')}): a clone of HEAD, `make run` "
            "in it, /readyz polled every 0.5 s. The target (issue 21): ready within 90 s on 2 cores.", "",
            f"- {summary}", "",
            "What `make run` printed, seconds after it started:", "", *shown, ""]


def write_section(path: Path, heading: str, lines: list[str]) -> None:
    """Replace the section ``heading`` of ``path`` (up to the next "## "), or append it (as bench.common does;
    repeated here because this script runs without the venv)."""
    text = path.read_text() if path.exists() else ""
    block = "\n".join(lines).rstrip("\n") + "\n"
    start = text.find(f"\n{heading}\n")
    if start < 0:
        path.write_text(text.rstrip("\n") + "\n\n" + block)
        return
    nxt = text.find("\n## ", start + 1)
    path.write_text(text[:start + 1] + block + ("\n" + text[nxt + 1:] if nxt >= 0 else ""))


if __name__ == "__main__":
    sys.exit(main())

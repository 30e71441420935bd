"""The installable client (client/, ``import dlnsim``) against a real ``python -m service`` on loopback.

What the client returns is compared with what the service sends as JSON, fetched here with plain httpx: the
.npz arrays, the DataFrame and the Dataset hold the JSON trajectory's numbers; sweep results the JSON rows'.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import dlnsim
import httpx
import numpy as np
import pandas as pd
import pytest
from dlnsim.fields import arrays_from_json, spec_of

from tests.support.server import Server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

SMALL = {"data": {"kind": "preset", "name": "hierarchy", "depth": 2}, "network": {"hidden": [8]},
         "init": {"scheme": "gaussian", "scale": 0.01, "seed": 1},
         "training": {"method": "gd", "learning_rate": 0.05, "steps": 600}, "record": {"points": 30}}
# Everything a trajectory can hold: held-out data (test loss, early stopping, loss theory), three layers' weights,
# the hidden similarity and the kernel's Grams.
FULL = {"data": {"kind": "preset", "name": "noisy_teacher", "n_in": 4, "n_out": 4, "n_samples": 4},
        "network": {"hidden": [6, 5]}, "init": {"scheme": "gaussian", "scale": 0.1, "seed": 3},
        "training": {"method": "gd", "learning_rate": 0.05, "steps": 400, "stop_at_convergence": False},
        "record": {"points": 25, "weights": True, "similarity": True, "kernel": True, "sharpness": True,
                   "linearized": True}}
# What only a task sequence records (task losses, phases), beside the rest: two noisy-teacher tasks.
FULL_SEQUENCE = {"data": {"kind": "sequence", "phases": [{"data": FULL["data"], "until": 10.0},
                                                         {"data": {**FULL["data"], "seed": 1}}]},
                 "network": FULL["network"], "init": FULL["init"], "training": FULL["training"],
                 "record": {**FULL["record"], "linearized": False, "sharpness_k": 2}}
# A run of a few seconds, recording often: for live events.
SECONDS = {"data": {"kind": "preset", "name": "random_teacher", "n_in": 64, "n_out": 64, "n_samples": 128},
           "network": {"hidden": [128]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 2},
           "training": {"method": "gd", "learning_rate": 0.01, "steps": 20000, "stop_at_convergence": False},
           "record": {"points": 60}}
# A run that takes minutes: for waiting, progress and cancelling (each test cancels it again).
LONG = {"data": {"kind": "preset", "name": "hierarchy", "depth": 3}, "network": {"hidden": [64, 64]},
        "training": {"method": "gd", "learning_rate": 0.01, "steps": 10_000_000, "stop_at_convergence": False},
        "record": {"points": 10}}


def json_trajectory(server: Server, job_id: str, **params) -> dict:
    response = httpx.get(f"{server.url}/v1/simulations/{job_id}/trajectory", params=params, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def small(dl) -> dlnsim.Simulation:
    return dl.simulate(SMALL, progress=False, timeout=120)


@pytest.fixture(scope="module")
def full(dl) -> dlnsim.Simulation:
    return dl.simulate(FULL, progress=False, timeout=120)


@pytest.fixture(scope="module")
def full_arrays(full) -> dict[str, np.ndarray]:
    return full.trajectory()


@pytest.fixture(scope="module")
def full_sequence(dl) -> dlnsim.Simulation:
    return dl.simulate(FULL_SEQUENCE, progress=False, timeout=120)


@pytest.fixture
def running(dl) -> Iterator[dlnsim.Simulation]:
    sim = dl.simulate(LONG, wait=False)
    try:
        wait_until(lambda: sim.refresh().status == "running", timeout=60)
        yield sim
    finally:
        sim.cancel()


# ------------------------------------------------------------------------------------------------
# a simulation end to end


def test_simulate_with_wait_returns_the_succeeded_simulation(small):
    assert small.status == "succeeded", small.error
    assert small.outcome == "completed"
    assert small.progress == 1.0
    assert small.request["training"] == {**SMALL["training"], "weight_decay": 0.0, "allow_unstable": False,
                                         "stop_at_convergence": True, "momentum": 0.0, "nesterov": False}
    assert small.error is None


def test_get_returns_the_same_simulation(dl, small):
    again = dl.get(small.id)
    assert again.document == small.document


def test_trajectory_arrays_hold_the_json_trajectorys_values(service, full, full_arrays):
    doc = json_trajectory(service, full.id)
    assert full_arrays["time"].tolist() == doc["time"]
    assert full_arrays["step"].dtype == np.int64 and full_arrays["step"].tolist() == doc["step"]
    assert full_arrays["loss"].tolist() == doc["loss"]
    assert full_arrays["test_loss"].tolist() == doc["test_loss"]
    assert full_arrays["modes_strength"].tolist() == doc["modes"]["strength"]
    assert full_arrays["product"].tolist() == doc["product"]
    for layer in range(3):
        assert full_arrays[f"weights_{layer}"].tolist() == [w[layer] for w in doc["weights"]]
    assert full_arrays["kernel_output_grams_1"].tolist() == [g[1] for g in doc["kernel"]["output_grams"]]
    assert str(full_arrays["outcome"]) == doc["outcome"]
    assert int(full_arrays["optimum_rank"]) == doc["optimum"]["rank"]


def test_json_trajectory_converts_to_the_same_arrays_as_the_npz_download(service, full, full_arrays):
    converted = arrays_from_json(json_trajectory(service, full.id))
    assert sorted(converted) == sorted(full_arrays)
    for name, array in full_arrays.items():
        assert converted[name].dtype == array.dtype, name
        np.testing.assert_array_equal(converted[name], array, err_msg=name)


def test_every_array_of_a_full_trajectory_is_in_the_dims_table(full_arrays, full_sequence):
    assert [name for name in full_arrays if spec_of(name) is None] == []
    sequence_arrays = full_sequence.trajectory()
    assert {"task_loss", "task_loss_kind", "phase", "phase_starts", "sharpness"} <= set(sequence_arrays)
    assert [name for name in sequence_arrays if spec_of(name) is None] == []


def test_a_sequence_trajectory_converts_from_json_and_names_its_task_dimension(service, full_sequence):
    arrays = full_sequence.trajectory()
    converted = arrays_from_json(json_trajectory(service, full_sequence.id))
    assert sorted(converted) == sorted(arrays)
    for name, array in arrays.items():
        assert converted[name].dtype == array.dtype, name
        np.testing.assert_array_equal(converted[name], array, err_msg=name)
    ds = full_sequence.to_xarray()
    assert ds["task_loss"].dims == ("time", "task") and ds.sizes["task"] == 2
    assert ds["task_loss_kind"].values.tolist() == ["loss", "loss"]
    assert ds["sharpness"].dims == ("time", "eigenvalue") and ds.sizes["eigenvalue"] == 2
    assert ds["final_weights_2"].dims == ("output", "unit_2")
    assert full_sequence.to_pandas()["phase"].tolist() == arrays["phase"].tolist()


def test_trajectory_fields_and_every_keep_those_members_and_records(service, full):
    arrays = full.trajectory(fields=["time", "modes"], every=10)
    doc = json_trajectory(service, full.id)
    assert {spec_of(name)[0].member for name in arrays} == {"time", "modes"}
    assert arrays["time"].tolist() == [doc["time"][i] for i in (0, 10, 20, 24)]
    assert arrays["modes_strength"].tolist() == [doc["modes"]["strength"][i] for i in (0, 10, 20, 24)]


def test_to_pandas_has_one_row_per_record_indexed_by_time(full, full_arrays):
    df = full.to_pandas()
    assert df.index.name == "time"
    assert df.index.tolist() == full_arrays["time"].tolist()
    k = full_arrays["modes_strength"].shape[1]
    assert list(df.columns) == (
        ["step", "loss", "excess_loss", "test_loss", "gradient_norm", "balance_drift", "distance_to_optimum",
         "kernel_distance", "loss_theory", "test_loss_theory", "linearized_loss", "linearized_excess_loss",
         "loss_theory_random_matrix", "test_loss_theory_random_matrix"]
        + [f"strength_{i}" for i in range(1, k + 1)] + [f"strength_theory_{i}" for i in range(1, k + 1)])


def test_to_pandas_columns_hold_the_trajectory_values(full, full_arrays):
    df = full.to_pandas()
    assert df["step"].tolist() == full_arrays["step"].tolist()
    assert df["test_loss"].tolist() == full_arrays["test_loss"].tolist()
    assert df["test_loss_theory"].tolist() == full_arrays["loss_theory_test_loss"].tolist()
    for i in range(full_arrays["modes_strength"].shape[1]):
        assert df[f"strength_{i + 1}"].tolist() == full_arrays["modes_strength"][:, i].tolist()


def test_to_xarray_names_the_dimensions_of_every_array(full):
    ds = full.to_xarray()
    assert ds["product"].dims == ("time", "output", "input")
    assert ds["weights_0"].dims == ("time", "unit_1", "input")
    assert ds["weights_1"].dims == ("time", "unit_2", "unit_1")
    assert ds["weights_2"].dims == ("time", "output", "unit_2")
    assert ds.sizes["unit_1"] == 6 and ds.sizes["unit_2"] == 5
    assert ds["modes_strength"].dims == ("time", "mode")
    assert ds["modes_singular_values"].dims == ("mode",)
    assert ds["similarity"].dims == ("time", "item", "item_")
    assert ds["kernel_input_grams_0"].dims == ("time", "input", "input_")
    assert ds["optimum_product"].dims == ("output", "input")
    assert ds["step"].dims == ("time",) and "step" in ds.coords
    assert ds["mode"].values.tolist() == list(range(1, ds.sizes["mode"] + 1))


def test_to_xarray_values_equal_the_arrays(full, full_arrays):
    ds = full.to_xarray()
    for name, array in full_arrays.items():
        if name in ds.variables:
            np.testing.assert_array_equal(ds[name].values, array, err_msg=name)
        else:
            assert ds.attrs[name] == (int(array) if array.dtype == bool else str(array)), name


def test_to_xarray_carries_the_request_as_json_text(full):
    ds = full.to_xarray()
    assert json.loads(ds.attrs["request"]) == full.request
    assert ds.attrs["simulation_id"] == full.id
    assert ds.attrs["method"] == "gd"


def test_plot_returns_an_svg_figure_that_jupyter_shows_and_save_writes(small, tmp_path):
    fig = small.plot("modes", log_time=True)
    assert fig._repr_svg_().lstrip().startswith("<?xml") and "<svg" in fig.svg
    path = fig.save(tmp_path / "modes.svg")
    assert path.read_text(encoding="utf-8") == fig.svg


def test_plot_sends_its_kind_to_the_service(small):
    with pytest.raises(dlnsim.ProblemError) as caught:
        small.plot("similarity")     # not recorded by SMALL
    assert caught.value.status == 409 and caught.value.type == "/problems/not-recorded"


def test_events_bring_every_record_then_the_end(dl):
    sim = dl.simulate(SECONDS, wait=False)
    events = list(sim.events())
    assert events[-1].event == "end" and events[-1].data["status"] == "succeeded"
    records = [e.data for e in events if e.event == "record"]
    arrays = sim.trajectory(fields=["time", "loss"])
    assert [r["index"] for r in records] == list(range(len(arrays["time"])))
    np.testing.assert_allclose([r["loss"] for r in records], arrays["loss"], rtol=1e-12)


def test_events_of_a_finished_simulation_are_its_end(small):
    assert [e.event for e in small.events()] == ["end"]


# ------------------------------------------------------------------------------------------------
# problems


def test_a_refused_request_raises_problem_error_with_field_and_fix(dl):
    with pytest.raises(dlnsim.ProblemError) as caught:
        dl.simulate({**SMALL, "network": {"hidden": [0]}}, progress=False)
    problem = caught.value
    assert problem.status == 422 and problem.type == "/problems/validation-error"
    assert problem.errors[0].field == ("network", "hidden", 0)
    assert problem.errors[0].fix
    assert problem.problem["errors"][0]["fix"] == problem.errors[0].fix


def test_problem_error_reads_title_detail_then_one_line_per_error(dl):
    with pytest.raises(dlnsim.ProblemError) as caught:
        dl.simulate({**SMALL, "network": {"hidden": [0]}}, progress=False)
    problem = caught.value
    lines = str(problem).splitlines()
    assert lines[0] == f"{problem.title} ({problem.status})"
    assert lines[1] == problem.detail
    assert lines[2:] == [f"  network.hidden[0] → {e.message}; {e.fix}" for e in problem.errors]


def has_records(sim: dlnsim.Simulation) -> bool:
    try:
        sim.trajectory(fields="time")
    except dlnsim.ProblemError as exc:
        assert exc.status == 409
        return False
    return True


def test_a_running_simulations_trajectory_is_its_records_so_far(running):
    wait_until(lambda: has_records(running), timeout=30)
    arrays = running.trajectory()
    assert bool(arrays["partial"]) and str(arrays["outcome"]) == "running"
    assert arrays["time"][0] == 0.0 and "product" not in arrays


# ------------------------------------------------------------------------------------------------
# waiting, progress, cancelling


def test_wait_raises_timeout_error_while_the_simulation_runs(running):
    with pytest.raises(TimeoutError):
        running.wait(timeout=0.5)
    assert running.status == "running"


def test_wait_with_progress_shows_a_tqdm_bar_of_the_running_simulation(running, capsys):
    with pytest.raises(TimeoutError):
        running.wait(timeout=1.5, progress=True)
    err = capsys.readouterr().err
    assert f"simulation {running.id[:8]}:" in err
    assert "running" in err and "%|" in err


def test_cancel_stops_a_running_simulation(running):
    running.cancel().wait(timeout=30)
    assert running.status == "cancelled"


def test_a_cancelled_simulation_keeps_the_records_it_made(running):
    wait_until(lambda: has_records(running), timeout=30)
    running.cancel()
    wait_until(lambda: running.refresh().outcome == "stopped", timeout=30)
    arrays = running.trajectory()
    assert bool(arrays["partial"]) and str(arrays["outcome"]) == "stopped"
    assert arrays["product"].shape[0] == arrays["time"].shape[0] >= 1


# ------------------------------------------------------------------------------------------------
# lists


@pytest.fixture(scope="module")
def three_more(dl) -> list[dlnsim.Simulation]:
    return [dl.simulate({**SMALL, "init": {**SMALL["init"], "seed": seed}}, progress=False) for seed in (11, 12, 13)]


def test_simulations_iterates_across_pages(dl, service, three_more):
    listed = [sim.id for sim in dl.simulations(page_size=2)]
    everything = httpx.get(f"{service.url}/v1/simulations", params={"page_size": 100}, timeout=30).json()
    assert len(listed) >= 3
    assert listed == [item["id"] for item in everything["items"]]


def test_simulations_with_a_status_lists_only_those(dl, three_more, running):
    running.cancel()
    cancelled = [sim.id for sim in dl.simulations(status="cancelled")]
    assert running.id in cancelled
    assert not {sim.id for sim in three_more} & set(cancelled)


def test_simulations_are_found_by_tag_and_name(dl, small):
    tagged = dl.simulate({**SMALL, "name": "lazy run", "tags": ["lazy", "lambda=-25"]}, wait=True, progress=False)
    assert (tagged.name, tagged.tags) == ("lazy run", ["lazy", "lambda=-25"])
    assert [sim.id for sim in dl.simulations(tag="lambda=-25")] == [tagged.id]
    assert [sim.id for sim in dl.simulations(name="lazy run")] == [tagged.id]
    assert small.id not in {sim.id for sim in dl.simulations(tag="lazy")}


# ------------------------------------------------------------------------------------------------
# sweeps


SWEEP = {"base": SMALL, "grid": {"init.scale": [0.001, 0.01], "network.hidden": [[8], [8, 8]]},
         "keep": "trajectories"}


@pytest.fixture(scope="module")
def sweep(dl) -> dlnsim.Sweep:
    return dl.sweep(SWEEP, progress=False, timeout=120)


@pytest.fixture(scope="module")
def json_rows(service, sweep) -> list[dict]:
    response = httpx.get(f"{service.url}/v1/sweeps/{sweep.id}/results", timeout=30)
    return response.json()["items"]


def test_sweep_with_wait_returns_the_finished_sweep(sweep):
    assert sweep.status == "succeeded", sweep.error
    assert sweep.size == 4 and sweep.counts["succeeded"] == 4


def test_sweep_results_have_one_flat_column_per_parameter_result_and_mode(sweep, json_rows):
    df = sweep.results()
    k = len(json_rows[0]["learning_time"])
    assert df.index.name == "point" and df.index.tolist() == [0, 1, 2, 3]
    assert {"init.scale", "network.hidden", "status", "final_loss", "theory_model", "steps_to_convergence",
            "error_type"} <= set(df.columns)
    assert [c for c in df.columns if c.startswith("learning_time_") and "theory" not in c] == [
        f"learning_time_{i}" for i in range(1, k + 1)]
    assert not [c for c in df.columns if df[c].map(lambda v: isinstance(v, list | dict)).any()]


def same(cell, value) -> bool:
    """A DataFrame cell holds a JSON value: null as NaN or NA, numbers and strings as themselves."""
    if value is None:
        return bool(pd.isna(cell))
    return cell == value


def test_sweep_results_values_equal_the_json_rows(sweep, json_rows):
    df = sweep.results()
    for row in json_rows:
        got = df.loc[row["index"]]
        assert got["init.scale"] == row["parameters"]["init.scale"]
        assert json.loads(got["network.hidden"]) == row["parameters"]["network.hidden"]
        for name, value in row.items():
            if name in ("index", "parameters", "links", "error", "finished_at"):
                continue
            if isinstance(value, list):
                assert all(same(got[f"{name}_{i}"], v) for i, v in enumerate(value, start=1)), name
            else:
                assert same(got[name], value), name
        assert got["finished_at"] == pd.Timestamp(row["finished_at"])


def test_a_sweep_points_trajectory_equals_the_simulation_of_its_request(dl, sweep, small):
    # point 0 sets init.scale 0.001 and hidden [8]: run that request as a simulation
    point_request = {**SMALL, "init": {**SMALL["init"], "scale": 0.001}}
    single = dl.simulate(point_request, progress=False).trajectory()
    point = sweep.point(0).trajectory()
    assert sorted(point) == sorted(single)
    for name, array in single.items():
        if np.issubdtype(array.dtype, np.floating) and array.size:
            # the simulation steps with BLAS, the sweep's two-layer nets in SIMD lanes (service/dynamics/gd_lanes.py):
            # equal to round-off, ≤ 4e-14 relative over 10,000 steps (tests/dynamics/test_lanes.py). Entries near 0
            # (strengths, excess loss) and differences of larger terms (the balance drift, of Grams as large as the
            # network map) carry the round-off of the map's scale, so that is the absolute tolerance's scale.
            scale = max(float(np.nanmax(np.abs(a), initial=0.0)) for a in (array, single["product"]))
            np.testing.assert_allclose(point[name], array, rtol=1e-12, atol=1e-12 * scale, err_msg=name)
        else:
            np.testing.assert_array_equal(point[name], array, err_msg=name)


def test_a_sweep_points_trajectory_takes_fields_and_every(sweep):
    full = sweep.point(1).trajectory()
    some = sweep.point(1).trajectory(fields=["time", "loss"], every=7)
    assert sorted(some) == ["loss", "time"]
    assert some["time"].tolist() == full["time"][[0, 7, 14, 21, 28, 29]].tolist()


def test_a_summary_sweeps_point_trajectory_is_a_409_not_recorded(dl):
    summary = dl.sweep({**SWEEP, "grid": {"init.seed": [5]}, "keep": "summary"}, progress=False, timeout=120)
    with pytest.raises(dlnsim.ProblemError) as caught:
        summary.point(0).trajectory()
    assert caught.value.status == 409 and caught.value.type == "/problems/not-recorded"


def test_get_sweep_and_sweeps_find_the_sweep(dl, sweep):
    assert dl.get_sweep(sweep.id).document["request"] == sweep.request
    assert sweep.id in [s.id for s in dl.sweeps()]


# ------------------------------------------------------------------------------------------------
# synchronous routes


GRADIENTS = {"data": {"kind": "preset", "name": "hierarchy", "depth": 1},
             "weights": [np.array([[0.5, 0.0], [0.0, 0.5], [0.1, 0.2]])], "weight_decay": 0.01}


def test_gradients_answer_the_services_numbers_as_arrays(dl, service):
    got = dl.gradients(GRADIENTS)
    body = {**GRADIENTS, "weights": [w.tolist() for w in GRADIENTS["weights"]]}
    raw = httpx.post(f"{service.url}/v1/gradients", json=body, timeout=30).json()
    assert got.loss == raw["loss"] and got.objective == raw["objective"]
    assert got.gradient_norm == raw["gradient_norm"]
    assert [g.tolist() for g in got.gradients] == raw["gradients"]
    assert got.gradients[0].shape == (3, 2)


def test_presets_list_the_built_in_problems(dl, service):
    raw = httpx.get(f"{service.url}/v1/presets", timeout=30).json()["items"]
    assert dl.presets() == raw
    assert "hierarchy" in [p["name"] for p in dl.presets()]


def test_preset_builds_one_preset_with_its_parameters(dl, service):
    got = dl.preset("noisy_teacher", n_in=5, n_out=3, n_samples=5, singular_values=[3.0, 2.0], rank=None)
    raw = httpx.get(f"{service.url}/v1/presets/noisy_teacher", timeout=30,
                    params={"n_in": 5, "n_out": 3, "n_samples": 5, "singular_values": "3.0,2.0", "rank": "null"}).json()
    assert got == raw
    assert got["values"]["singular_values"] == [3.0, 2.0] and got["n_in"] == 5


def test_service_info_reports_version_and_readiness(dl, service):
    info = dl.service_info()
    assert info["url"] == service.url and info["title"] == "dlnsim"
    assert info["version"] == httpx.get(f"{service.url}/openapi.json", timeout=30).json()["info"]["version"]
    assert info["ready"] is True and info["workers"] == info["workers_warm"] == 1


def test_numpy_arrays_and_scalars_are_sent_as_json_numbers(dl):
    sim = dl.simulate({**SMALL, "training": {**SMALL["training"], "learning_rate": np.float64(0.05),
                                             "steps": np.int64(100)}}, progress=False)
    assert sim.request["training"]["steps"] == 100 and sim.request["training"]["learning_rate"] == 0.05


# ------------------------------------------------------------------------------------------------
# API keys


TOKEN_ALICE = "alice-token-0123456789abcdef"
TOKEN_BOB = "bob-token-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("dlnsim-client-keys")
    srv = Server(base / "data", base / "server.log", workers=1,
                 DLNSIM_API_KEYS=f"alice:{TOKEN_ALICE},bob:{TOKEN_BOB}").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def alice(keyed_service) -> Iterator[dlnsim.Client]:
    with dlnsim.Client(keyed_service.url, api_key=TOKEN_ALICE) as client:
        yield client


@pytest.fixture(scope="module")
def alice_simulation(alice) -> dlnsim.Simulation:
    return alice.simulate(SMALL, progress=False, timeout=120)


def test_an_api_key_is_sent_as_a_bearer_token(alice_simulation):
    assert alice_simulation.status == "succeeded"
    assert alice_simulation.trajectory(fields=["time"])["time"].shape == (30,)


def test_without_a_key_a_keyed_service_answers_a_401_problem(keyed_service):
    with dlnsim.Client(keyed_service.url) as anonymous, pytest.raises(dlnsim.ProblemError) as caught:
        anonymous.simulate(SMALL, progress=False)
    assert caught.value.status == 401 and caught.value.type == "/problems/unauthorized"


def test_another_keys_simulation_is_not_found(keyed_service, alice_simulation):
    with dlnsim.Client(keyed_service.url, api_key=TOKEN_BOB) as bob, pytest.raises(dlnsim.ProblemError) as caught:
        bob.get(alice_simulation.id)
    assert caught.value.status == 404

"""GET /v1/simulations/{id}/trajectory: JSON or .npz by Accept, ?fields= and ?every= (service.codec)."""

from __future__ import annotations

import functools
import io

import numpy as np
import orjson
import pytest
import zstandard

from service import codec
from service.api.negotiation import NPZ, negotiate
from service.build import build_run
from service.codec import MEMBERS as FIELDS
from service.codec import arrays_of, field_of, npz_arrays, record_indices, to_npz
from service.dynamics.simulate import simulate
from service.schemas import SimulationRequest, Trajectory
from tests.api.conftest import assert_problem, small_request
from tests.support.real_runs import (
    CORRELATIONS_EXACT,
    HIERARCHY_GD,
    create_finished,
    run_document,
)
from tests.support.trajectories import document_arrays, trajectory_document

pytestmark = pytest.mark.anyio

REQUEST = {**HIERARCHY_GD, "record": {"points": 25, "weights": True, "similarity": True}}


@functools.cache
def _stored() -> bytes:
    return orjson.dumps(run_document(REQUEST))


def doc() -> dict:
    return orjson.loads(_stored())


async def finished(service) -> str:
    return await create_finished(service, REQUEST, doc())


async def get(service, job_id: str, accept: str | None = None, **params):
    headers = {"accept": accept} if accept is not None else {}
    return await service.client.get(f"/v1/simulations/{job_id}/trajectory", params=params, headers=headers)


def load_npz(body: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(body), allow_pickle=False) as archive:  # no pickle: plain arrays only
        return {name: archive[name] for name in archive.files}


# ------------------------------------------------------------------------------------------------
# JSON


async def test_plain_json_is_the_stored_document_byte_for_byte(service):
    job = await finished(service)
    response = await get(service, job)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["vary"] == "Accept"
    assert response.content == orjson.dumps(doc())


async def test_fields_keeps_only_the_named_members(service):
    job = await finished(service)
    body = (await get(service, job, fields="time,loss,modes")).json()
    assert list(body) == ["time", "loss", "modes"]
    assert body["modes"] == doc()["modes"] and body["time"] == doc()["time"]


async def test_fields_may_be_repeated(service):
    job = await finished(service)
    body = (await get(service, job, fields=["time", "excess_loss,outcome"])).json()
    assert set(body) == {"time", "excess_loss", "outcome"}


async def test_every_keeps_every_kth_record_and_the_last(service):
    job = await finished(service)
    body = (await get(service, job, every=7)).json()
    full = doc()
    idx = list(range(0, len(full["time"]), 7))
    idx += [len(full["time"]) - 1] if idx[-1] != len(full["time"]) - 1 else []
    assert body["time"] == [full["time"][i] for i in idx]
    for name in ("step", "loss", "product", "weights", "similarity", "gradient_norm"):
        assert body[name] == [full[name][i] for i in idx], name
    assert body["modes"]["strength"] == [full["modes"]["strength"][i] for i in idx]
    assert body["modes"]["theory"] == [full["modes"]["theory"][i] for i in idx]
    # per-run members are untouched
    assert body["modes"]["singular_values"] == full["modes"]["singular_values"]
    assert body["optimum"] == full["optimum"]


def test_record_indices_always_end_at_the_last_record():
    assert record_indices(10, 3).tolist() == [0, 3, 6, 9]
    assert record_indices(11, 3).tolist() == [0, 3, 6, 9, 10]
    assert record_indices(1, 5).tolist() == [0]


def test_fields_are_the_trajectory_schema_members():
    assert FIELDS == tuple(Trajectory.model_fields)
    per_record = {f.member for f in map(field_of, npz_arrays(document_arrays(doc()))) if f.kind == "record"}
    assert per_record < set(FIELDS)


# ------------------------------------------------------------------------------------------------
# npz


async def test_npz_on_accept_holds_the_same_numbers(service):
    job = await finished(service)
    response = await get(service, job, accept=NPZ)
    assert response.status_code == 200
    assert response.headers["content-type"] == NPZ
    assert response.headers["content-disposition"] == f'attachment; filename="trajectory-{job}.npz"'
    arrays = load_npz(response.content)
    full = doc()
    t = len(full["time"])
    # JSON floats are the shortest round-trip repr: parsing them back gives the same float64s, bit for bit.
    assert np.array_equal(arrays["time"], np.array(full["time"]))
    assert arrays["step"].dtype == np.int64 and arrays["step"].tolist() == full["step"]
    assert arrays["product"].shape == (t, 7, 4) and np.array_equal(arrays["product"], np.array(full["product"]))
    assert arrays["weights_0"].shape == (t, 6, 4) and arrays["weights_1"].shape == (t, 7, 6)
    assert np.array_equal(arrays["weights_1"], np.array([w[1] for w in full["weights"]]))
    assert arrays["similarity"].shape == (t, 4, 4)
    assert arrays["modes_strength"].shape == (t, 4) and arrays["modes_singular_values"].shape == (4,)
    assert str(arrays["modes_theory_model"]) == full["modes"]["theory_model"]
    assert bool(arrays["modes_theory_exact"]) is False
    assert arrays["optimum_product"].shape == (7, 4) and int(arrays["optimum_rank"]) == 4
    assert str(arrays["outcome"]) == full["outcome"] and str(arrays["method"]) == "gd"
    assert "stability_hint" not in arrays and "diverged_at_step" not in arrays  # null members are left out


async def test_npz_honours_fields_and_every(service):
    job = await finished(service)
    arrays = load_npz((await get(service, job, accept=NPZ, fields="time,modes", every=5)).content)
    full = doc()
    assert set(arrays) == {f"modes_{k}" for k, v in full["modes"].items() if v is not None} | {"time"}
    assert arrays["time"].tolist() == [full["time"][i] for i in record_indices(len(full["time"]), 5)]
    assert arrays["modes_strength"].shape[0] == len(arrays["time"])


def test_null_entries_become_nan_in_npz():
    d = doc()
    d["loss"][3] = None
    d["product"][2][0][1] = None
    arrays = npz_arrays(document_arrays(d))
    assert np.isnan(arrays["loss"][3]) and np.isnan(arrays["product"][2, 0, 1])
    assert np.isfinite(np.delete(arrays["loss"], 3)).all()
    assert load_npz(to_npz(document_arrays(d)))["loss"].dtype == np.float64


# ------------------------------------------------------------------------------------------------
# negotiation


@pytest.mark.parametrize(("accept", "chosen"), [
    (None, "application/json"),
    ("", "application/json"),
    ("*/*", "application/json"),
    ("application/*", "application/json"),
    ("application/json", "application/json"),
    ("application/x-npz", NPZ),
    ("application/x-npz;q=0.9, application/json;q=0.1", NPZ),
    ("application/json;q=0, */*", NPZ),
    ("text/html, application/xhtml+xml, application/xml;q=0.9, */*;q=0.8", "application/json"),  # a browser
    ("application/x-npz, */*", NPZ),  # named outright beats the wildcard
    ("text/csv", None),
    ("application/json;q=0", None),
])
def test_negotiate_picks_the_highest_ranked_representation(accept, chosen):
    assert negotiate(accept) == chosen


async def test_unsupported_accept_is_a_406_problem_naming_the_header(service):
    job = await finished(service)
    body = assert_problem(await get(service, job, accept="text/csv"), 406, "not-acceptable")
    assert body["errors"][0]["field"] == ["Accept"] and body["errors"][0]["in"] == "header"
    assert "application/x-npz" in body["errors"][0]["fix"]


# ------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(("params", "field"), [
    ({"fields": "time,speed"}, "fields"),
    ({"fields": ","}, "fields"),
    ({"every": 0}, "every"),
    ({"every": "often"}, "every"),
])
async def test_bad_selection_is_a_422_naming_the_query_parameter(service, params, field):
    job = await finished(service)
    body = assert_problem(await get(service, job, **params), 422)
    assert body["errors"][0]["field"][0] == field and body["errors"][0]["in"] == "query"


async def test_npz_of_an_unfinished_simulation_is_a_409(service):
    response = await service.client.post("/v1/simulations", content=orjson.dumps(small_request()),
                                         headers={"content-type": "application/json"})
    assert_problem(await get(service, response.json()["id"], accept=NPZ), 409, "not-finished")


async def test_npz_of_an_unknown_simulation_is_a_404(service):
    assert_problem(await get(service, "nope", accept=NPZ), 404, "not-found")


@pytest.mark.parametrize("request_", [
    REQUEST,
    CORRELATIONS_EXACT,  # loss null, exact theory, no steps
    {"data": {"kind": "correlations", "sigma11": [[1.0]], "sigma31": [[3.0]]}, "network": {"hidden": [1]},
     "init": {"scheme": "gaussian", "scale": 0.5, "seed": 0},
     "training": {"method": "gd", "learning_rate": 2.0, "steps": 50, "allow_unstable": True}},  # diverges
    {"data": {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]], "sigma31": [[2.0, 0.0], [0.0, 0.5]],
              "sigma33": [[4.5, 0.0], [0.0, 0.5]],
              "test": {"kind": "dataset", "x": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "y": [[2.1, 0.0], [0.1, 0.4],
                                                                                         [1.9, 0.6]]}},
     "network": {"hidden": [3]}, "init": {"scheme": "aligned", "strength": 0.01},
     "training": {"method": "gd", "learning_rate": 0.05, "steps": 200}},  # test loss, early stopping, loss theory
])
def test_npz_from_the_core_trajectory_equals_the_npz_from_its_json(request_):
    spec = build_run(SimulationRequest.model_validate(request_))
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    direct = npz_arrays(arrays_of(traj))
    via_json = npz_arrays(document_arrays(orjson.loads(orjson.dumps(trajectory_document(traj)))))
    assert list(direct) == list(via_json)
    for name, array in direct.items():
        assert array.dtype == via_json[name].dtype and array.shape == via_json[name].shape, name
        # the JSON carries the shortest round-trip repr of each float64: equal bit for bit (NaN where null)
        assert np.array_equal(array, via_json[name], equal_nan=array.dtype.kind == "f"), name
    if "test" in request_["data"]:
        assert {"test_loss", "early_stopping_step", "loss_theory_test_loss", "loss_theory_exact"} <= set(direct)
    if request_["training"].get("allow_unstable"):  # the diverging case carries the optional scalars too
        assert traj.outcome == "diverged" and {"stability_hint", "diverged_at_step"} <= set(direct)


# ------------------------------------------------------------------------------------------------
# storage


async def test_a_result_stored_as_json_text_by_earlier_versions_is_still_served(service):
    job = await finished(service)
    # what versions before the array store wrote: the document's JSON text as one zstd frame, codec "zstd"
    text = orjson.dumps(doc())
    with service.store.db.write() as conn:
        conn.execute("UPDATE results SET codec = 'zstd', size = ?, data = ? WHERE job_id = ?",
                     (len(text), zstandard.ZstdCompressor(level=1).compress(text), job))
    assert (await get(service, job)).content == text
    assert np.array_equal(load_npz((await get(service, job, accept=NPZ, fields="product")).content)["product"],
                          np.array(doc()["product"]))


def test_a_large_trajectory_is_printed_in_pieces_one_array_at_a_time(monkeypatch):
    monkeypatch.setattr(codec, "JSON_PIECE_BYTES", 4096)
    arrays = document_arrays(doc())
    blob = codec.pack(arrays)
    reads = []
    stored = codec.StoredTrajectory(codec.reader_of(blob), len(blob))
    original = stored.get
    monkeypatch.setattr(stored, "get", lambda name: reads.append(name) or original(name))
    pieces = codec.iter_json(stored)
    first = next(pieces)
    assert reads == []  # nothing is read before the first array's piece is asked for
    rest = list(pieces)
    assert len(rest) > 10 and max(map(len, rest)) < 3 * 4096
    assert first + b"".join(rest) == orjson.dumps(doc())
    assert sorted(reads) == sorted(set(reads))  # every array read once


def test_packs_made_on_several_threads_at_once_equal_one_made_alone():
    """Each thread keeps its own compressor (``codec._compressor``): sharing one across threads would mix frames."""
    from concurrent.futures import ThreadPoolExecutor

    arrays = document_arrays(doc())
    alone = codec.pack(arrays)
    with ThreadPoolExecutor(4) as pool:
        blobs = list(pool.map(lambda _: codec.pack(arrays), range(64)))
    assert all(blob == alone for blob in blobs)
    stored = codec.StoredTrajectory(codec.reader_of(alone), len(alone))
    assert np.array_equal(stored.get("product"), np.asarray(arrays["product"]))


def _damage_last_array(service, job: str) -> None:
    with service.store.db.write() as conn:
        blob = bytearray(conn.execute("SELECT data FROM results WHERE job_id = ?", (job,)).fetchone()[0])
        blob[-20] ^= 0xFF  # inside the last array's frame: the header reads, the frame fails its checks
        conn.execute("UPDATE results SET data = ? WHERE job_id = ?", (bytes(blob), job))


async def test_an_array_stored_damaged_is_a_500_before_any_byte_and_the_simulation_runs_again(service):
    job = await finished(service)
    _damage_last_array(service, job)
    problem = assert_problem(await get(service, job), 500, "corrupt-result")
    assert "CRC-32" in problem["detail"] and "queued to run again" in problem["detail"]
    assert (await service.client.get(f"/v1/simulations/{job}")).json()["status"] == "queued"


async def test_fields_not_asked_for_are_not_checked_or_read(service):
    job = await finished(service)
    _damage_last_array(service, job)  # the last array is similarity's: not asked for
    assert (await get(service, job, fields="time")).json() == {"time": doc()["time"]}


async def test_an_array_found_damaged_mid_stream_cuts_the_response_and_queues_the_simulation_again(service,
                                                                                                 monkeypatch):
    from service.jobs.database import TrajectoryReader

    monkeypatch.setattr(TrajectoryReader, "verify", lambda self, names: None)  # bytes that change after the check
    job = await finished(service)
    _damage_last_array(service, job)
    with pytest.raises(Exception):  # noqa: B017 - the transport's error for a body cut short
        body = (await get(service, job)).content
        orjson.loads(body)  # a body that did arrive is not the whole document
    simulation = (await service.client.get(f"/v1/simulations/{job}")).json()
    assert simulation["status"] == "queued"
    assert_problem(await get(service, job), 409, "not-finished")


# ------------------------------------------------------------------------------------------------
# netCDF, and one route per binary representation


def load_netcdf(body: bytes):
    import xarray

    return xarray.open_dataset(io.BytesIO(body), engine="scipy").load()


async def test_netcdf_on_accept_has_named_dimensions_and_the_numbers_of_the_json(service):
    job = await finished(service)
    response = await get(service, job, accept="application/x-netcdf")
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-netcdf"
    ds = load_netcdf(response.content)
    full = doc()
    assert ds["product"].dims == ("time", "output", "input")
    assert ds["weights_1"].dims == ("time", "unit_2", "unit_1") and ds.sizes["unit_1"] == 6
    assert ds["modes_strength"].dims == ("time", "mode") and ds["mode"].values.tolist() == [1, 2, 3, 4]
    assert np.array_equal(ds["time"].values, np.array(full["time"]))
    assert ds["step"].values.tolist() == full["step"] and "step" in ds.coords
    assert np.array_equal(ds["product"].values, np.array(full["product"]))
    assert ds.attrs["outcome"] == full["outcome"] and ds.attrs["modes_theory_model"] == full["modes"]["theory_model"]
    assert "W = W_D⋯W_1" in ds["product"].attrs["description"]


async def test_netcdf_carries_the_request_provenance_and_labels_as_attributes(service):
    response = await service.client.post("/v1/simulations", content=orjson.dumps({**REQUEST, "name": "λ run",
                                                                                  "tags": ["rich"]}),
                                         headers={"content-type": "application/json"})
    job = response.json()["id"]
    service.finish(job, doc())
    ds = load_netcdf((await service.client.get(f"/v1/simulations/{job}/trajectory.nc")).content)
    assert orjson.loads(ds.attrs["request"])["network"] == REQUEST["network"]
    assert orjson.loads(ds.attrs["provenance"]) == {"dtype": "float64"}
    assert (ds.attrs["name"], orjson.loads(ds.attrs["tags"]), ds.attrs["simulation"]) == ("λ run", ["rich"], job)


async def test_netcdf_honours_fields_and_every(service):
    job = await finished(service)
    ds = load_netcdf((await service.client.get(f"/v1/simulations/{job}/trajectory.nc",
                                               params={"fields": "time,loss", "every": 5})).content)
    assert set(ds.data_vars) == {"loss"}
    assert ds["time"].values.tolist() == [doc()["time"][i] for i in record_indices(len(doc()["time"]), 5)]


async def test_the_npz_route_serves_the_npz_of_the_accept_header(service):
    job = await finished(service)
    by_route = await service.client.get(f"/v1/simulations/{job}/trajectory.npz", params={"fields": "time,modes"})
    by_accept = await get(service, job, accept=NPZ, fields="time,modes")
    assert by_route.headers["content-type"] == NPZ
    assert by_route.headers["content-disposition"] == f'attachment; filename="trajectory-{job}.npz"'
    a, b = load_npz(by_route.content), load_npz(by_accept.content)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


async def test_binary_routes_of_an_unfinished_simulation_are_409(service):
    response = await service.client.post("/v1/simulations", content=orjson.dumps(small_request()),
                                         headers={"content-type": "application/json"})
    for suffix in ("npz", "nc"):
        assert_problem(await service.client.get(f"/v1/simulations/{response.json()['id']}/trajectory.{suffix}"),
                       409, "not-finished")


def test_every_theory_overlay_in_the_document_names_its_source_with_a_doi():
    assert doc()["modes"]["theory_model"] is not None
    assert "doi:10." in doc()["modes"]["theory_source"] and "docs/theory.md#" in doc()["modes"]["theory_source"]

"""A sweep's results as one flat table: GET /v1/sweeps/{id}/results with Accept: text/csv or
application/vnd.apache.parquet. Every cell is compared with the JSON rows of the same sweep."""

from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest

from service.results_table import CSV, PARQUET
from tests.api.conftest import assert_problem
from tests.support.sweeps import SUMMARY, create, finish, results

pytestmark = pytest.mark.anyio

MODE_COLUMNS = ["final_strength_1", "final_strength_2", "learning_time_1", "learning_time_2",
                "learning_time_theory_1", "learning_time_theory_2"]


async def finished_sweep(service) -> tuple[dict, list[dict]]:
    """Four points over two axes (one list-valued): three succeeded, one failed."""
    sweep = await create(service, grid={"init.seed": [0, 1], "network.hidden": [[3], [4]]})
    for k in (0, 1, 3):
        finish(service, sweep["id"], k)
    finish(service, sweep["id"], 2, error={"type": "/problems/internal", "title": "Internal server error",
                                           "status": 500, "detail": "worker died"})
    return sweep, (await results(service, sweep["id"]))["items"]


async def download(service, sweep_id: str, media: str, **params):
    response = await service.client.get(f"/v1/sweeps/{sweep_id}/results", headers={"Accept": media}, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media)
    assert response.headers["vary"] == "Accept"
    return response


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_csv_has_one_row_per_point_and_the_documented_columns(service):
    sweep, _ = await finished_sweep(service)
    text = (await download(service, sweep["id"], CSV)).text
    header = next(csv.reader(io.StringIO(text)))
    assert header[:6] == ["point", "init.seed", "network.hidden", "status", "finished_at", "outcome"]
    assert set(MODE_COLUMNS) <= set(header) and header[-2:] == ["error_type", "error_detail"]
    assert not {"final_strength", "learning_time", "parameters", "links"} & set(header)
    assert [r["point"] for r in csv_rows(text)] == ["0", "1", "2", "3"]


async def test_csv_cells_round_trip_to_the_json_values(service):
    sweep, items = await finished_sweep(service)
    rows = csv_rows((await download(service, sweep["id"], CSV)).text)
    for row, item in zip(rows, items, strict=True):
        assert int(row["init.seed"]) == item["parameters"]["init.seed"]
        assert json.loads(row["network.hidden"]) == item["parameters"]["network.hidden"]
        assert row["status"] == item["status"] and (row["outcome"] or None) == item["outcome"]
        for name in ("final_loss", "final_excess_loss", "final_distance_to_optimum", "time_to_convergence"):
            assert (float(row[name]) if row[name] else None) == item[name]
        for name in ("final_strength", "learning_time", "learning_time_theory"):
            values = [float(row[f"{name}_{i}"]) if row[f"{name}_{i}"] else None for i in (1, 2)]
            assert values == (item[name] or [None, None])


async def test_a_failed_points_error_is_in_its_row(service):
    sweep, _ = await finished_sweep(service)
    row = csv_rows((await download(service, sweep["id"], CSV)).text)[2]
    assert (row["status"], row["error_type"], row["error_detail"]) == ("failed", "/problems/internal", "worker died")
    assert row["final_loss"] == ""


async def test_csv_floats_are_exact(service):
    sweep = await create(service, grid={"init.seed": [0]})
    finish(service, sweep["id"], 0)
    row = csv_rows((await download(service, sweep["id"], CSV)).text)[0]
    assert float(row["final_excess_loss"]) == SUMMARY["final_excess_loss"]


async def test_csv_takes_the_status_filter(service):
    sweep, _ = await finished_sweep(service)
    rows = csv_rows((await download(service, sweep["id"], CSV, status="failed")).text)
    assert [r["point"] for r in rows] == ["2"]


async def test_parquet_holds_the_same_table_typed(service):
    sweep, items = await finished_sweep(service)
    table = pq.read_table(io.BytesIO((await download(service, sweep["id"], PARQUET)).content))
    csv_header = next(csv.reader(io.StringIO((await download(service, sweep["id"], CSV)).text)))
    assert table.column_names == csv_header
    assert str(table.schema.field("point").type) == "int64"
    assert str(table.schema.field("final_loss").type) == "double"
    assert str(table.schema.field("finished_at").type) == "timestamp[us, tz=UTC]"
    columns = table.to_pydict()
    assert columns["final_loss"] == [item["final_loss"] for item in items]
    assert columns["learning_time_1"] == [(item["learning_time"] or [None])[0] for item in items]
    assert columns["error_detail"] == [None, None, "worker died", None]


async def test_json_stays_the_default_representation(service):
    sweep, _ = await finished_sweep(service)
    response = await service.client.get(f"/v1/sweeps/{sweep['id']}/results", headers={"Accept": "*/*"})
    assert response.headers["content-type"].startswith("application/json")


async def test_an_unoffered_representation_is_a_406_naming_the_offered_ones(service):
    sweep, _ = await finished_sweep(service)
    body = assert_problem(await service.client.get(f"/v1/sweeps/{sweep['id']}/results",
                                                   headers={"Accept": "application/xml"}), 406)
    assert CSV in body["detail"] and body["errors"][0]["field"] == ["Accept"]


async def test_without_pyarrow_parquet_is_a_406_saying_how_to_get_it(service, monkeypatch):
    import service.api.representations as representations

    monkeypatch.setattr(representations, "parquet_available", lambda: False)
    sweep, _ = await finished_sweep(service)
    body = assert_problem(await service.client.get(f"/v1/sweeps/{sweep['id']}/results",
                                                   headers={"Accept": PARQUET}), 406)
    assert "dlnsim[parquet]" in body["detail"]

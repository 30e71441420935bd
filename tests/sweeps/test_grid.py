"""Grid expansion, parameter paths, error field mapping and chunk sizing (pure functions)."""

from __future__ import annotations

import pytest

from service.grid import (
    GridError,
    apply_params,
    expand_grid,
    grid_size,
    overlapping,
    remap_field,
    split_path,
)
from service.jobs.sweep_engine import chunk_sizes


def test_grid_is_the_product_with_the_first_axis_slowest():
    grid = {"a.x": [1, 2], "b.y": ["p", "q", "r"]}
    points = [params for params, _ in expand_grid(grid)]
    assert grid_size(grid) == len(points) == 6
    assert points[:4] == [{"a.x": 1, "b.y": "p"}, {"a.x": 1, "b.y": "q"}, {"a.x": 1, "b.y": "r"},
                          {"a.x": 2, "b.y": "p"}]


def test_origin_names_the_grid_entry_of_each_value():
    _, origin = list(expand_grid({"a.x": [1, 2], "b.y": [3]}))[1]
    assert origin == {"a.x": ["grid", "a.x", 1], "b.y": ["grid", "b.y", 0]}


def test_apply_params_sets_nested_fields_without_touching_the_base():
    base = {"init": {"scale": 0.1, "seed": 0}, "network": {"hidden": [4, 4]}, "data": {"x": [[1.0]]}}
    point = apply_params(base, {"init.scale": 1.0, "network.hidden.1": 8})
    assert point["init"] == {"scale": 1.0, "seed": 0} and point["network"]["hidden"] == [4, 8]
    assert base["init"]["scale"] == 0.1 and base["network"]["hidden"] == [4, 4]
    assert point["data"] is base["data"]  # untouched parts are shared, not copied


@pytest.mark.parametrize("path", ["nope.x", "init.scale.deeper", "network.hidden.2", "network.0"])
def test_path_that_leads_nowhere_is_a_grid_error_at_its_origin(path):
    base = {"init": {"scale": 0.1}, "network": {"hidden": [4, 4]}}
    with pytest.raises(GridError) as info:
        apply_params(base, {path: 1}, {path: ["grid", path, 0]})
    assert info.value.field == ["grid", path, 0]


def test_split_path_reads_list_indices():
    assert split_path("network.hidden.0") == ("network", "hidden", 0)


def test_overlapping_paths_are_found():
    assert overlapping(["init", "training.steps", "init.scale"]) == ("init", "init.scale")
    assert overlapping(["init.scale", "init.seed"]) is None


def test_error_inside_a_swept_value_is_mapped_to_its_entry_else_to_base():
    params = {"network.hidden": [3, 0], "init.scale": 1.0}
    origin = {"network.hidden": ["grid", "network.hidden", 2], "init.scale": ["grid", "init.scale", 0]}
    assert remap_field(("network", "hidden", 1), params, origin) == ["grid", "network.hidden", 2, 1]
    assert remap_field(("init", "scale"), params, origin) == ["grid", "init.scale", 0]
    assert remap_field(("training", "steps"), params, origin) == ["base", "training", "steps"]


@pytest.mark.parametrize(("n", "workers", "max_chunk", "sizes"), [
    (12, 2, 2, [2] * 6),          # capped by the chunk size
    (64, 2, 128, [32, 32]),       # one chunk per worker when the cap allows
    (5, 2, 128, [3, 2]),          # balanced within one point
    (1, 4, 128, [1]),             # never an empty chunk
    (300, 1, 128, [100, 100, 100]),
])
def test_chunks_are_capped_balanced_and_cover_every_worker(n, workers, max_chunk, sizes):
    assert chunk_sizes(n, workers, max_chunk) == sizes
    assert sum(sizes) == n

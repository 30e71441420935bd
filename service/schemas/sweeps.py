"""POST /v1/sweeps and its resources: the sweep, its points' results."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from service.dynamics.methods import Outcome
from service.grid import PATH_PATTERN
from service.status import Status

from .common import (
    MAX_TAGS,
    NAME_DESCRIPTION,
    STRICT,
    TAGS_DESCRIPTION,
    Name,
    Num,
    Provenance,
    StrictModel,
    Tag,
    is_none,
)
from .problems import ProblemDetails
from .requests import GD_HIERARCHY_EXAMPLE, SimulationRequest
from .trajectory import LEARNING_TIME_DEFINITION

ParamPath = Annotated[str, StringConstraints(pattern=PATH_PATTERN, max_length=200)]
SweepKeep = Literal["summary", "trajectories"]

SWEEP_EXAMPLE = {
    "base": GD_HIERARCHY_EXAMPLE,
    "grid": {"init.scale": [0.001, 0.01, 0.1, 1.0], "training.learning_rate": [0.02, 0.05], "init.seed": [0, 1]},
    "keep": "summary",
}
SWEEP_POINTS_EXAMPLE = {
    "base": GD_HIERARCHY_EXAMPLE,
    "points": [{"network.hidden": [4], "init.scale": 0.001}, {"network.hidden": [64], "init.scale": 0.5}],
    "keep": "trajectories",
}
SWEEP_REQUEST_EXAMPLES = {
    "grid": {"summary": "Lazy vs rich: init scale × learning rate × seed on the hierarchy task (16 points)",
             "value": SWEEP_EXAMPLE},
    "points": {"summary": "Two explicit points, keeping their trajectories", "value": SWEEP_POINTS_EXAMPLE},
}


def _keys_by_pattern(node: Any) -> None:
    """pydantic writes ``dict[<str with a pattern>, V]`` as ``patternProperties``, which leaves keys that do not
    match the pattern unconstrained in JSON Schema, while the validator refuses them: say it in the schema
    (``propertyNames`` carries the pattern, ``additionalProperties`` the value schema)."""
    if isinstance(node, list):
        for item in node:
            _keys_by_pattern(item)
    elif isinstance(node, dict):
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1:
            (pattern, value), = patterns.items()
            del node["patternProperties"]
            node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": pattern}
            node["additionalProperties"] = value
        for item in node.values():
            _keys_by_pattern(item)


def _sweep_schema_extra(schema: dict[str, Any]) -> None:
    schema["examples"] = [SWEEP_EXAMPLE]
    _keys_by_pattern(schema.get("properties", {}))
    # Exactly one of grid and points given (the route refuses neither and both with a problem naming the field;
    # null counts as not given, as in the echoed request of a sweep resource), said with `not` alone: a
    # top-level oneOf/anyOf makes openapi-python-client treat the model as a union and drop it.
    grid = {"required": ["grid"], "properties": {"grid": {"type": "object"}}}
    points = {"required": ["points"], "properties": {"points": {"type": "array"}}}
    schema["not"] = {"anyOf": [{"allOf": [grid, points]}, {"not": {"anyOf": [grid, points]}}]}


class SweepRequest(StrictModel):
    """A parameter sweep: a base request and either a ``grid`` (every combination of its axes' values;
    the first axis varies slowest) or an explicit list of ``points``. A point is the base with the named
    fields set. Names are dotted paths into the request as it is after defaults are filled in:
    ``init.scale``, ``init.seed``, ``training.learning_rate``, ``network.hidden`` (whose values are
    lists), ``data.depth``, ``network.hidden.0``, ... Every point is validated like a single simulation
    before anything runs."""

    model_config = ConfigDict(**STRICT, json_schema_extra=_sweep_schema_extra)

    base: SimulationRequest
    grid: dict[ParamPath, Annotated[list[JsonValue], Field(min_length=1)]] | None = Field(
        None, description="Axes: parameter path → its values. The sweep is their product.")
    points: Annotated[list[Annotated[dict[ParamPath, JsonValue], Field(min_length=1)]], Field(min_length=1)] | None = (
        Field(None, description="Explicit points, each a map parameter path → value (instead of a grid)."))
    keep: SweepKeep = Field(
        "summary", description="summary: one results row per point; trajectories: also each point's full "
                               "trajectory, at /v1/sweeps/{id}/points/{k}/trajectory.")
    name: Name | None = Field(None, description=NAME_DESCRIPTION, exclude_if=is_none)
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS, description=TAGS_DESCRIPTION)] = Field(
        default_factory=list, exclude_if=lambda tags: not tags)


class SweepCounts(BaseModel):
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class SweepLinks(BaseModel):
    self: str
    results: str


class Sweep(BaseModel):
    """A sweep. ``status`` is succeeded once every point succeeded, failed once every point finished and
    some failed (the others' results are there), cancelled when cancelled (finished points keep their
    results). ``progress`` counts finished points and the running chunks' progress."""

    id: str
    status: Status
    progress: float = Field(ge=0, le=1)
    created_at: str = Field(description="UTC, ISO 8601.")
    started_at: str | None = None
    finished_at: str | None = None
    size: int = Field(description="Number of points.")
    counts: SweepCounts = Field(description="Points per status.")
    keep: SweepKeep
    request: SweepRequest
    error: ProblemDetails | None = Field(None, description="Why a failed sweep failed (which points).")
    name: str | None = Field(None, description="The sweep's name, as given.")
    tags: list[str] = Field(default_factory=list, description="The sweep's tags, as given.")
    provenance: Provenance | None = Field(None, description="What its first chunk of points ran with (null until "
                                                            "one started).")
    links: SweepLinks


class SweepList(BaseModel):
    items: list[Sweep]
    next_page_token: str | None = Field(None, description="Pass as page_token for the next page; null on the last.")


class SweepPointLinks(BaseModel):
    trajectory: str | None = Field(None, description="The point's trajectory (keep: trajectories, succeeded).")


class SweepPointResult(BaseModel):
    """One point of a sweep: its parameter values and, once it succeeded, what its run reached."""

    index: int = Field(description="k: the point's position in the grid's product order (or in points).")
    parameters: dict[str, JsonValue] = Field(description="The values this point sets, by parameter path.")
    status: Status
    finished_at: str | None = None
    outcome: Outcome | None = None
    final_time: Num = Field(None, description="t at the last record (t = η·step for GD).")
    final_loss: Num = Field(None, description="L at the last record; null when Σ33 is unknown.")
    final_excess_loss: Num = Field(None, description="L − L* at the last record.")
    optimum_loss: Num = Field(None, description="L* of the network's rank; null when Σ33 is unknown.")
    final_distance_to_optimum: Num = Field(None, description="‖W − W*‖_F at the last record.")
    final_strength: list[Num] | None = Field(None, description="Mode strengths u_α at the last record.")
    learning_time: list[Num] | None = Field(
        None, description=f"Per mode, the learning time: {LEARNING_TIME_DEFINITION} (null: never, or u*_α ≈ 0); "
                          "measured as the point's trajectory measures it (modes.learning_time).")
    learning_time_theory: list[Num] | None = Field(None, description="The same, predicted (where a formula applies).")
    theory_model: str | None = None
    steps_to_convergence: int | None = Field(None, description="GD steps until the run converged (null otherwise).")
    time_to_convergence: Num = Field(None, description="t at which the run converged (null otherwise).")
    diverged_at_step: int | None = None
    final_test_loss: Num = Field(None, description="L_test at the last record (null without data.test).")
    min_test_loss: Num = Field(None, description="The smallest recorded L_test (null without data.test).")
    early_stopping_time: Num = Field(None, description="t of the record of least L_test (null without data.test).")
    final_kernel_distance: Num = Field(None, description="The NTK's kernel distance from its initial value at the "
                                                         "last record, lazy ≈ 0 (null unless record.kernel).")
    error: ProblemDetails | None = Field(None, description="Why the point failed.")
    links: SweepPointLinks


class SweepResults(BaseModel):
    items: list[SweepPointResult]
    next_page_token: str | None = Field(None, description="Pass as page_token for the next page; null on the last.")


# The result fields a point's summary fills (null until it succeeded).
SUMMARY_FIELDS: tuple[str, ...] = tuple(
    name for name in SweepPointResult.model_fields
    if name not in ("index", "parameters", "status", "finished_at", "outcome", "error", "links"))

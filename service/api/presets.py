"""/v1/presets: the built-in learning problems, their parameters, and (per preset) their spectrum and names.

Everything comes from the core's registry (service.dynamics.presets.PRESETS), which also generates the
request schema's preset models, so what is listed here is exactly what POST /v1/simulations accepts.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from service.api.deps import SettingsDep
from service.api.errors import problem_responses
from service.api.strict import known_query
from service.dynamics.errors import DynamicsError
from service.dynamics.modes import mode_basis
from service.dynamics.presets import PRESETS, PresetParam, build_preset, preset_labels
from service.jobs.admission import HEAVY_FLOPS
from service.limits import Limits, check_preset_cost, check_shape_limits, preset_cost, preset_shape
from service.problems import ProblemError, dynamics_problem, field_error
from service.schemas import PRESET_MODELS, PresetDetail, PresetList
from service.schemas.validation import validation_problem

router = APIRouter(prefix="/v1/presets", tags=["presets"])

_TYPES = {"int": "integer", "int_or_null": "integer", "float": "number", "float_list": "number_list"}


def _bound(p: PresetParam, value: float | None) -> int | float | None:
    return None if value is None else (int(value) if _TYPES[p.kind] == "integer" else float(value))


def _parameter(p: PresetParam) -> dict[str, Any]:
    return {"name": p.name, "type": _TYPES[p.kind], "nullable": p.kind == "int_or_null",
            "default": list(p.default) if isinstance(p.default, list) else p.default,
            "minimum": _bound(p, p.minimum), "maximum": _bound(p, p.maximum), "description": p.description}


def _info(name: str) -> dict[str, Any]:
    preset = PRESETS[name]
    example = {"kind": "preset", "name": name}
    for p in preset.params:
        example[p.name] = list(p.default) if isinstance(p.default, list) else p.default
    return {"name": name, "description": preset.description, "parameters": [_parameter(p) for p in preset.params],
            "example": example, "links": {"self": f"/v1/presets/{name}"}}


@router.get(
    "",
    response_model=PresetList,
    summary="List the built-in problems and their parameters",
    responses={**problem_responses()},
)
async def list_presets() -> dict[str, Any]:
    """Each preset with its parameters (type, default, bounds, meaning) and a ready-to-use ``data`` member."""
    return {"items": [_info(name) for name in PRESETS]}


def _query_value(raw: str, param: PresetParam | None) -> Any:
    """A query string value as the JSON value it spells: 3 -> 3, 0.5 -> 0.5, null, [3,2] or 3,2,1 -> a list."""
    for text in (raw, f"[{raw}]" if "," in raw else None):
        if text is None:
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if param is not None and param.kind == "float_list" and isinstance(value, (int, float)):
            value = [value]
        return value
    return raw  # left as a string: strict validation then says which type was expected


def _build_detail(name: str, query: list[tuple[str, str]], limits: Limits) -> dict[str, Any]:
    params = {p.name: p for p in PRESETS[name].params}
    raw: dict[str, Any] = {}
    for key, value in query:
        if key in raw:
            raise ProblemError(422, "validation-error", f"{key}: given more than once",
                               errors=[_query_error(key, "given more than once", f"give {key} once")])
        raw[key] = _query_value(value, params.get(key))
    if "kind" in raw or "name" in raw or "test" in raw:
        key = next(k for k in ("kind", "name", "test") if k in raw)
        raise ProblemError(422, "validation-error", f"{key}: not a parameter of the preset",
                           errors=[_query_error(key, "not a preset parameter", f"remove {key} from the query")])
    try:
        data = PRESET_MODELS[name].model_validate({"kind": "preset", "name": name, **raw})
    except ValidationError as exc:
        problem = validation_problem(exc.errors(include_url=False), where="query")
        for e in problem.errors:
            if e["code"] == "extra_forbidden":
                e["fix"] = f"remove it: the parameters of {name} are {', '.join(params)}"
        raise problem from None
    values = data.model_dump(exclude={"kind", "name", "test"})
    shape = preset_shape(name, values, limits)
    try:
        if shape is not None:  # the service's size limits, checked before anything is allocated
            n_in, n_out, in_field, out_field = shape
            check_shape_limits(n_in, n_out, [], in_field, out_field, limits)
        check_preset_cost(name, values, limits)  # and what building it would cost
        # field_prefix (): errors name the query parameter itself ("depth"), not data.depth
        problem = build_preset(name, values, field_prefix=())
    except DynamicsError as exc:
        if tuple(exc.field)[:1] == ("data",):  # from the limit checks, which speak of the request body
            exc.field = tuple(exc.field)[1:]
        problem_error = dynamics_problem(exc)
        for e in problem_error.errors:
            e["in"] = "query"
        raise problem_error from None
    labels = preset_labels(name, values) or {}
    return {**_info(name), "values": values, "n_in": problem.n_in, "n_out": problem.n_out,
            "singular_values": [float(s) for s in mode_basis(problem).s],
            "items": labels.get("items"), "features": labels.get("features"),
            "example": {"kind": "preset", "name": name, **values}}


def _query_error(key: str, message: str, fix: str) -> dict:
    return field_error([key], "invalid_query", message, fix, "query")


def _preset_parameters(request: Request) -> list[str] | None:
    """The query parameters of GET /v1/presets/{name}: the named preset's (None for an unknown name: its 404)."""
    name = request.path_params.get("name")
    return [p.name for p in PRESETS[name].params] if name in PRESETS else None


@router.get(
    "/{name}",
    response_model=PresetDetail,
    summary="One preset, built: dimensions, singular values of Σ31, item and feature names",
    responses={**problem_responses(404, 422, 503)},
)
@known_query(_preset_parameters)
async def get_preset(
    name: Annotated[str, Path(description="The preset's name, e.g. hierarchy.")],
    request: Request,
    settings: SettingsDep,
) -> dict[str, Any]:
    """Builds the problem with the parameters given as query parameters (e.g. ``?depth=4``,
    ``?singular_values=3,2,1``), defaults for the rest, and reports what a simulation of it will see."""
    if name not in PRESETS:
        raise ProblemError(404, "not-found", f"no preset named {name!r}; the presets are {', '.join(PRESETS)}")
    query = list(request.query_params.multi_items())
    limits = Limits.from_settings(settings)
    # Building a preset (an SVD of up to 2047 × 1024) is CPU work: off the event loop, and when costly, in one of
    # the few validation slots (service/jobs/admission.py) that bound what the API spends at once.
    admission = getattr(request.app.state, "admission", None)
    heavy = False
    try:
        values = dict(query)
        heavy = preset_cost(name, {**{p.name: p.default for p in PRESETS[name].params},
                                   **{k: _query_value(v, None) for k, v in values.items()}}, limits
                            ).validation_flops > HEAVY_FLOPS
    except Exception:  # noqa: BLE001 - the parameters are checked properly in _build_detail
        heavy = False
    if admission is None or not heavy:
        return await run_in_threadpool(_build_detail, name, query, limits)
    async with admission.validating(0) as ticket:
        await ticket.hold()
        return await run_in_threadpool(_build_detail, name, query, limits)

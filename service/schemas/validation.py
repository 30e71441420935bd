"""Pydantic's errors in our words: each becomes a field error (path as the caller wrote it, message, fix), and a
body becomes a model or a 400/422 ``ProblemError``. Framework-free: the job services parse bodies too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError

from service.json_guard import check_duplicate_keys
from service.problems import MAX_FIELD_ERRORS, ProblemError, dotted, field_error

from .requests import strip_union_tags


def _number_token(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


_JSON_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                    list: "an array", dict: "an object", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(err: dict, name: str) -> tuple[str, str]:
    """(message, fix) for one pydantic error dict."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "missing":
        return "this field is required", f"add {name}"
    if kind == "extra_forbidden":
        last = name.rsplit(".", 1)[-1]
        hint = " (the init parameter is spelled 'lambda')" if last == "lam" else ""
        return f"unknown field {last!r}{hint}", "remove it or fix its spelling (see the SimulationRequest schema)"
    if kind == "finite_number":
        token = _number_token(value)
        return (f"{token} is not allowed: every number must be finite",
                f"replace {token} with a finite number (JSON has no NaN/Infinity; literals beyond ±1.8e308 overflow)")
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_json_type(value)} {_short(value)}", \
            "send a JSON number without quotes (true/false are not numbers)"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {_json_type(value)} {_short(value)}", \
            "send a JSON integer without quotes or decimal point, e.g. 3"
    if kind == "bool_type":
        return f"expected true or false, got {_json_type(value)} {_short(value)}", "send true or false"
    if kind == "string_type":
        return f"expected a string, got {_json_type(value)}", "send a JSON string"
    if kind == "list_type":
        return f"expected an array, got {_json_type(value)}", "send a JSON array"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected an object, got {_json_type(value)}", "send a JSON object"
    if kind == "literal_error":
        return f"{_short(value)} is not allowed", f"use one of {ctx.get('expected', 'the documented values')}"
    if kind == "union_tag_invalid":
        return f"unknown {name} {ctx.get('tag')!r}", f"use one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{name} is missing (it selects the variant)", f"add {name}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(ctx.values()), None)
        relation = {"greater_than": ">", "greater_than_equal": "≥", "less_than": "<", "less_than_equal": "≤"}[kind]
        return f"must be {relation} {bound}, got {_short(value)}", f"give a value {relation} {bound}"
    if kind in ("too_short", "too_long"):
        return err["msg"], ("give at least {} item(s)".format(ctx.get("min_length"))
                            if kind == "too_short" else "give at most {} item(s)".format(ctx.get("max_length")))
    if kind in ("ragged_matrix", "empty_matrix", "matrix_shape"):
        return err["msg"], ctx.get("fix", "give a list of rows of equal length, each a list of numbers")
    return err.get("msg", "invalid value"), "see the SimulationRequest schema in the OpenAPI document"


def validation_field_errors(errors: Iterable[dict], *, where: str = "body",
                            prefix_len: int = 0) -> list[dict]:
    """Translate pydantic ``errors()`` into our field errors (union tags removed from the paths).

    ``prefix_len`` drops leading loc entries (FastAPI's "query"/"path"/"body" marker).
    """
    out = []
    for err in errors:
        loc = tuple(err.get("loc", ()))[prefix_len:]
        # a union's member names in a parameter's path (e.g. literal['queued'] of a union of literals) go too
        path = list(strip_union_tags(loc))
        ctx = err.get("ctx") or {}
        if err["type"] == "ragged_matrix" and "row" in ctx:
            path.append(int(ctx["row"]))
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path.append(str(ctx.get("discriminator", "kind")).strip("'"))
        name = dotted(path) if path else "the body"
        message, fix = _describe(err, name)
        if out and out[-1]["field"] == path and err["type"] == out[-1]["code"] == "literal_error":
            # one value outside a union of literals: one error listing every allowed value
            allowed = out[-1].setdefault("_allowed", [out[-1]["fix"].removeprefix("use one of ")])
            allowed.append(str(ctx.get("expected", "")))
            out[-1]["fix"] = f"use one of {', '.join(allowed)}"
            continue
        if out and out[-1]["field"] == path:
            # One value failing every member of a plain union (e.g. strength: number | array).
            out[-1]["message"] += f"; or {message}"
            out[-1]["fix"] += f"; or {fix}"
            continue
        out.append(field_error(path, err["type"], message, fix, where))
    for entry in out:
        entry.pop("_allowed", None)
    return out


def summarize(errors: Sequence[dict], total: int | None = None) -> str:
    """One-line detail: the first error, and how many more."""
    if not errors:
        return "the request is invalid"
    first = errors[0]
    text = f"{dotted(first['field'])}: {first['message']}"
    total = len(errors) if total is None else total
    if total > 1:
        text += f" (and {total - 1} more error{'s' if total > 2 else ''}; see errors)"
    return text


def validation_problem(errors: Sequence[dict], *, where: str = "body", prefix_len: int = 0) -> ProblemError:
    """422 problem from pydantic errors (capped at MAX_FIELD_ERRORS entries)."""
    errors = list(errors)
    fields = validation_field_errors(errors[:MAX_FIELD_ERRORS], where=where, prefix_len=prefix_len)
    return ProblemError(422, "validation-error", summarize(fields, len(errors)), errors=fields)


def parse_body(body: bytes, model: Any) -> Any:
    """``model`` (a strict pydantic model) from a JSON body; 400 malformed-json or 422 validation-error."""
    name = model.__name__
    if not body.strip():
        raise ProblemError(400, "malformed-json", f"the request body is empty: send a {name} JSON object",
                           errors=[field_error([], "empty_body", "the request body is empty",
                                               f"send a {name} JSON object (with curl: -d @request.json)")])
    try:
        result = model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            message = next(e for e in errors if e["type"] == "json_invalid")["ctx"].get("error", "invalid JSON")
            raise ProblemError(400, "malformed-json", f"the request body is not valid JSON: {message}",
                               errors=[field_error([], "json_invalid", str(message),
                                                   "send a valid JSON document (check quotes, commas, brackets)")]
                               ) from None
        raise validation_problem(errors) from None
    check_duplicate_keys(body)  # valid JSON whose meaning is open: {"steps": 200, "steps": 1e7} (service/json_guard.py)
    return result

"""Sweep points: parameter paths, grid expansion, each point's request, and a point's summary.

    grid = {"init.scale": [1e-3, 1e-1], "training.learning_rate": [0.01, 0.05]}
    n = grid_size(grid)                                   # 4: the product of the axis lengths
    for params, origin in expand_grid(grid): ...          # first axis slowest (itertools.product order)
    point = apply_params(base_dict, params)               # the base request with the values set

A parameter path is dotted: ``init.scale``, ``training.learning_rate``, ``network.hidden`` (the value
is then a list), ``data.depth`` (a preset parameter), ``network.hidden.0`` (a list element). It names
a field of the base request *after* validation, i.e. with every default filled in, so ``init.seed``
works even when the base leaves ``init.seed`` to its default. The API validates every point's request
exactly as POST /v1/simulations would (``build.admit_simulation`` with the limits) and the worker
rebuilds it from the same base and values, so a sweep point and the same request sent as a single
simulation run the same inputs.

No web imports: the API process and the workers both use this module.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$"
_PATH = re.compile(PATH_PATTERN)

FieldPath = tuple[str | int, ...]


class GridError(ValueError):
    """A grid or point that cannot be expanded: ``field`` is the request path to blame."""

    def __init__(self, field: Sequence[str | int], code: str, message: str, fix: str) -> None:
        super().__init__(message)
        self.field, self.code, self.message, self.fix = list(field), code, message, fix


def split_path(path: str) -> FieldPath:
    """"network.hidden.0" -> ("network", "hidden", 0): the field path as errors name it."""
    if not _PATH.match(path):
        raise ValueError(f"not a parameter path: {path!r}")
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def overlapping(paths: Sequence[str]) -> tuple[str, str] | None:
    """Two paths of which one contains the other (e.g. "init" and "init.scale"), or None."""
    split = [split_path(p) for p in paths]
    for (a, pa), (b, pb) in itertools.combinations(zip(paths, split, strict=True), 2):
        shorter, longer = (pa, pb) if len(pa) <= len(pb) else (pb, pa)
        if longer[:len(shorter)] == shorter:
            return (a, b)
    return None


def grid_size(grid: Mapping[str, Sequence[Any]]) -> int:
    """Number of points of a grid: the product of its axis lengths."""
    return math.prod(len(values) for values in grid.values())


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> Iterator[tuple[dict[str, Any], dict[str, list]]]:
    """(params, origin) per point in itertools.product order (first axis slowest); ``origin[path]``
    is where the value sits in the request: ["grid", path, index]."""
    axes = list(grid.items())
    for index in itertools.product(*(range(len(values)) for _, values in axes)):
        params = {path: values[i] for (path, values), i in zip(axes, index, strict=True)}
        origin = {path: ["grid", path, i] for (path, _), i in zip(axes, index, strict=True)}
        yield params, origin


def expand_points(points: Sequence[Mapping[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, list]]]:
    """(params, origin) per explicit point; ``origin[path]`` is ["points", k, path]."""
    for k, point in enumerate(points):
        yield dict(point), {path: ["points", k, path] for path in point}


def non_finite(value: Any) -> bool:
    """Whether a JSON value holds NaN or ±Infinity anywhere (JSON cannot carry them)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    return False


def _child(container: Any, key: str | int) -> dict | list:
    """The object or list at ``key`` (KeyError/IndexError/TypeError if there is none)."""
    if not ((isinstance(container, dict) and isinstance(key, str))
            or (isinstance(container, list) and isinstance(key, int))):
        raise TypeError(key)
    child = container[key]
    if not isinstance(child, dict | list):
        raise TypeError(key)
    return child


def apply_params(base: dict[str, Any], params: Mapping[str, Any],
                 origin: Mapping[str, Sequence[str | int]] | None = None) -> dict[str, Any]:
    """The base request (a JSON dict, defaults filled in) with each path set to its value.

    Only the containers on the paths are copied: the rest (e.g. a large dataset) is shared with
    ``base``, which is never modified. Raises GridError naming ``origin[path]`` when a path does not
    lead to an existing object (or list element) of the base.
    """
    out = dict(base)
    for path, value in params.items():
        parts = split_path(path)
        field = list(origin[path]) if origin and path in origin else [path]
        node = out
        try:
            for key in parts[:-1]:
                child = _child(node, key)
                child = dict(child) if isinstance(child, dict) else list(child)
                node[key] = child
                node = child
            last = parts[-1]
            # A dict gains or replaces the key (validation then names an unknown one); a list element
            # must exist.
            if not ((isinstance(node, dict) and isinstance(last, str))
                    or (isinstance(node, list) and isinstance(last, int) and last < len(node))):
                raise TypeError(path)
            node[last] = value
        except (KeyError, IndexError, TypeError):
            raise GridError(field, "unknown_parameter",
                            f"{path!r} does not name a field of the base request",
                            "use a dotted path to a field of base as it is after defaults are filled in, e.g. "
                            "init.scale, init.seed, training.learning_rate, network.hidden, data.depth") from None
    return out


def remap_field(field: Sequence[str | int], params: Mapping[str, Any],
                origin: Mapping[str, Sequence[str | int]]) -> list[str | int]:
    """A point request's field path -> the sweep request's: inside a swept value it is the grid (or
    points) entry that set it, anywhere else it is in ``base``."""
    field = tuple(field)
    best: tuple[int, list] | None = None
    for path in params:
        parts = split_path(path)
        if field[:len(parts)] == parts and (best is None or len(parts) > best[0]):
            best = (len(parts), [*origin[path], *field[len(parts):]])
    return best[1] if best else ["base", *field]


def describe_params(params: Mapping[str, Any], limit: int = 120) -> str:
    text = ", ".join(f"{path}={value!r}" for path, value in params.items())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------------------------------
# batching


def group_key(spec: Any) -> str:
    """Points with the same key share layer shapes, method, record schedule and dtype, so one chunk of
    them runs as one vectorised batch (``simulate_batch`` groups again exactly; this only keeps the
    chunks homogeneous). Learning rates, scales, seeds and weight decays may differ within a group."""
    from service.dynamics.methods import Exact, GradientDescent, GradientFlow, StochasticGradientDescent

    method = spec.method
    shapes = [list(np.shape(w)) for w in spec.weights0]
    if isinstance(method, GradientDescent):
        run = f"gd:{method.steps}"
    elif isinstance(method, StochasticGradientDescent):  # runs point by point: seeds, rates, momenta share a chunk
        run = f"sgd:{method.steps}:{method.epochs}:{method.batch_size}"
    elif isinstance(method, GradientFlow):
        run = f"flow:{method.t_max!r}:{method.rtol!r}:{method.atol!r}"
    elif isinstance(method, Exact):
        run = f"exact:{method.t_max!r}"
    else:  # a method added to the core later: its own group
        run = repr(method)
    return f"{run}|{spec.dtype}|{shapes}|{spec.record!r}"


# ------------------------------------------------------------------------------------------------
# a point's summary


def _number(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _numbers(a: Any) -> list[float | None] | None:
    if a is None:
        return None
    return [_number(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def point_summary(traj: Any) -> dict[str, Any]:
    """What a sweep's results row reports of a trajectory (NaN/Inf as None):

    final_time, final_loss (L at the last record; None without Σ33), final_excess_loss (L − L*),
    optimum_loss (L*), final_distance_to_optimum ‖W − W*‖_F, final_strength (mode strengths u_α at the
    last record), learning_time / learning_time_theory (per mode: the time a mode's strength first reaches
    half its strength at the optimum, measured and predicted), theory_model, steps_to_convergence and time_to_convergence
    (the last record of a converged run: the run stops when the gradient norm is below tolerance),
    diverged_at_step; with test data (data.test) final_test_loss, min_test_loss and early_stopping_time (t of the
    record of least test loss); with record.kernel final_kernel_distance.
    """
    converged = traj.outcome == "converged"
    modes = traj.modes
    return {
        "final_time": _number(traj.time[-1]),
        "final_loss": None if traj.loss is None else _number(traj.loss[-1]),
        "final_excess_loss": _number(traj.excess_loss[-1]),
        "optimum_loss": _number(traj.optimum.loss),
        "final_distance_to_optimum": _number(traj.distance_to_optimum[-1]),
        "final_strength": _numbers(modes.strength[-1]),
        "learning_time": _numbers(modes.learning_time),
        "learning_time_theory": _numbers(modes.learning_time_theory),
        "theory_model": modes.theory_model,
        "steps_to_convergence": int(traj.step[-1]) if converged and traj.step is not None else None,
        "time_to_convergence": _number(traj.time[-1]) if converged else None,
        "diverged_at_step": None if traj.diverged_at_step is None else int(traj.diverged_at_step),
        "final_test_loss": None if traj.test_loss is None else _number(traj.test_loss[-1]),
        "min_test_loss": None if traj.early_stopping is None else _number(traj.early_stopping.test_loss),
        "early_stopping_time": None if traj.early_stopping is None else _number(traj.early_stopping.time),
        "final_kernel_distance": None if traj.kernel is None else _number(traj.kernel.distance[-1]),
    }

"""The trajectory's arrays and their named dimensions: the one table the client reads them by.

Every array of the service's ``.npz`` trajectory layout (``Accept: application/x-npz``; the server's
``service/codec.py``, ``NPZ_LAYOUT``, describes it) is listed in ``ARRAYS`` with the trajectory member it comes
from, its named dimensions, its ``to_pandas`` column (per-record scalars only) and its place in ``to_xarray``'s
Dataset. ``to_pandas``, ``to_xarray``, the client-side ``fields``/``every`` selection and the JSON-to-arrays
conversion all read this table, and nothing else; the server's netCDF representation is to use the same names.

Dimensions: ``time`` (one per record; ``step`` is a second coordinate along it for GD), ``mode`` (1..k, the
SVD modes of Σ31, k = min(n_in, n_out)), ``output`` and ``input`` (n_out and n_in), for the layer weights
``unit_0`` … ``unit_D`` with ``unit_0`` = ``input`` and ``unit_D`` = ``output`` (so ``weights_l`` has dims
``(time, unit_{l+1}, unit_l)``, ``final_weights_l`` ``(unit_{l+1}, unit_l)``), ``item``/``item_`` for the
hidden-layer similarity, ``input_``/``output_`` for the second axis of the kernel's Grams, ``eigenvalue`` (1..k, the
largest first) for the sharpness, and ``task`` (one per phase of a task sequence).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["ARRAYS", "FRAME_MEMBERS", "ArraySpec", "array_dims", "arrays_from_json", "depth_of", "record_indices", "select_arrays",
           "spec_of"]

Role = Literal["coord", "data", "attr"]


@dataclass(frozen=True)
class ArraySpec:
    """One array of the trajectory layout.

    ``name`` is the npz array's name (``{l}`` stands for a layer index, 0-based, input→output); ``member`` the
    top-level trajectory member it belongs to (what ``fields=`` names); ``dims`` its named dimensions
    (``unit_{l}`` and ``unit_{l+1}`` resolve by layer and depth); ``column`` its ``to_pandas`` column, with
    ``{i}`` for the 1-based mode of a (time, mode) array; ``role`` where ``to_xarray`` puts it: a coordinate,
    a data variable, or an attribute (strings, and booleans as 0/1, which netCDF3 attributes can hold).
    """

    name: str
    member: str
    dims: tuple[str, ...]
    column: str | None = None
    role: Role = "data"


ARRAYS: tuple[ArraySpec, ...] = (
    # per record
    ArraySpec("time", "time", ("time",), role="coord"),
    ArraySpec("step", "step", ("time",), column="step", role="coord"),
    ArraySpec("loss", "loss", ("time",), column="loss"),
    ArraySpec("excess_loss", "excess_loss", ("time",), column="excess_loss"),
    ArraySpec("test_loss", "test_loss", ("time",), column="test_loss"),
    ArraySpec("gradient_norm", "gradient_norm", ("time",), column="gradient_norm"),
    ArraySpec("balance_drift", "balance_drift", ("time",), column="balance_drift"),
    ArraySpec("distance_to_optimum", "distance_to_optimum", ("time",), column="distance_to_optimum"),
    ArraySpec("kernel_distance", "kernel_distance", ("time",), column="kernel_distance"),
    ArraySpec("loss_theory_loss", "loss_theory", ("time",), column="loss_theory"),
    ArraySpec("loss_theory_test_loss", "loss_theory", ("time",), column="test_loss_theory"),
    ArraySpec("linearized_loss", "linearized_loss", ("time",), column="linearized_loss"),
    ArraySpec("linearized_excess_loss", "linearized_excess_loss", ("time",), column="linearized_excess_loss"),
    ArraySpec("loss_theory_random_matrix_loss", "loss_theory_random_matrix", ("time",),
              column="loss_theory_random_matrix"),
    ArraySpec("loss_theory_random_matrix_test_loss", "loss_theory_random_matrix", ("time",),
              column="test_loss_theory_random_matrix"),
    ArraySpec("phase", "phase", ("time",), column="phase"),
    ArraySpec("modes_strength", "modes", ("time", "mode"), column="strength_{i}"),
    ArraySpec("modes_theory", "modes", ("time", "mode"), column="strength_theory_{i}"),
    ArraySpec("product", "product", ("time", "output", "input")),
    ArraySpec("weights_{l}", "weights", ("time", "unit_{l+1}", "unit_{l}")),
    ArraySpec("similarity", "similarity", ("time", "item", "item_")),
    ArraySpec("kernel_input_grams_{l}", "kernel", ("time", "input", "input_")),
    ArraySpec("kernel_output_grams_{l}", "kernel", ("time", "output", "output_")),
    ArraySpec("sharpness", "sharpness", ("time", "eigenvalue")),
    ArraySpec("task_loss", "task_loss", ("time", "task")),
    ArraySpec("task_excess_loss", "task_excess_loss", ("time", "task")),
    # per mode
    ArraySpec("modes_singular_values", "modes", ("mode",)),
    ArraySpec("modes_optimum_strength", "modes", ("mode",)),
    ArraySpec("modes_learning_time", "modes", ("mode",)),
    ArraySpec("modes_learning_time_theory", "modes", ("mode",)),
    # per task of a sequence
    ArraySpec("task_loss_kind", "task_loss_kind", ("task",)),
    ArraySpec("phase_starts", "phase_starts", ("task",)),
    # once
    ArraySpec("final_weights_{l}", "final_weights", ("unit_{l+1}", "unit_{l}")),
    ArraySpec("sharpness_threshold", "sharpness_threshold", ()),
    ArraySpec("optimum_product", "optimum", ("output", "input")),
    ArraySpec("optimum_loss", "optimum", ()),
    ArraySpec("optimum_loss_without_sigma33", "optimum", ()),
    ArraySpec("optimum_rank", "optimum", ()),
    ArraySpec("early_stopping_time", "early_stopping", ()),
    ArraySpec("early_stopping_step", "early_stopping", ()),
    ArraySpec("early_stopping_test_loss", "early_stopping", ()),
    ArraySpec("diverged_at_step", "diverged_at_step", ()),
    ArraySpec("outcome", "outcome", (), role="attr"),
    ArraySpec("partial", "partial", (), role="attr"),
    ArraySpec("method", "method", (), role="attr"),
    ArraySpec("stability_hint", "stability_hint", (), role="attr"),
    ArraySpec("modes_theory_model", "modes", (), role="attr"),
    ArraySpec("modes_theory_exact", "modes", (), role="attr"),
    ArraySpec("modes_theory_assumptions", "modes", (), role="attr"),
    ArraySpec("modes_theory_source", "modes", (), role="attr"),
    ArraySpec("loss_theory_model", "loss_theory", (), role="attr"),
    ArraySpec("loss_theory_exact", "loss_theory", (), role="attr"),
    ArraySpec("loss_theory_assumptions", "loss_theory", (), role="attr"),
    ArraySpec("loss_theory_source", "loss_theory", (), role="attr"),
    ArraySpec("loss_theory_random_matrix_model", "loss_theory_random_matrix", (), role="attr"),
    ArraySpec("loss_theory_random_matrix_exact", "loss_theory_random_matrix", (), role="attr"),
    ArraySpec("loss_theory_random_matrix_assumptions", "loss_theory_random_matrix", (), role="attr"),
    ArraySpec("loss_theory_random_matrix_source", "loss_theory_random_matrix", (), role="attr"),
)

# The trajectory members to_pandas needs (so a DataFrame of a large network does not download its matrices).
FRAME_MEMBERS: tuple[str, ...] = tuple(dict.fromkeys(spec.member for spec in ARRAYS
                                                     if spec.column is not None or spec.name == "time"))

_EXACT = {spec.name: spec for spec in ARRAYS if "{l}" not in spec.name}
_LAYERED = [(re.compile(re.escape(spec.name).replace(re.escape("{l}"), r"(\d+)") + "$"), spec)
            for spec in ARRAYS if "{l}" in spec.name]


def spec_of(name: str) -> tuple[ArraySpec, int | None] | None:
    """The table's entry for an array name and its layer index (None for unlayered arrays); None if unknown."""
    if name in _EXACT:
        return _EXACT[name], None
    for pattern, spec in _LAYERED:
        match = pattern.match(name)
        if match:
            return spec, int(match.group(1))
    return None


def depth_of(arrays: Mapping[str, Any]) -> int | None:
    """D, the number of weight matrices, from the recorded ``weights_l`` arrays (None without them)."""
    layers = [layer for name in arrays if (found := spec_of(name)) and found[0].member in ("weights", "final_weights")
              and (layer := found[1]) is not None]
    return max(layers) + 1 if layers else None


def _unit(index: int, depth: int | None) -> str:
    if index == 0:
        return "input"
    if depth is not None and index == depth:
        return "output"
    return f"unit_{index}"


def array_dims(name: str, ndim: int, depth: int | None = None) -> tuple[str, ...]:
    """Named dimensions of array ``name`` (``depth`` resolves the layer units); an array the table does not
    know (a newer server's) gets ``<name>_0``, ``<name>_1``, …"""
    found = spec_of(name)
    if found is None or len(found[0].dims) != ndim:
        return tuple(f"{name}_{axis}" for axis in range(ndim))
    spec, layer = found
    if layer is None:
        return spec.dims
    units = {"unit_{l}": _unit(layer, depth), "unit_{l+1}": _unit(layer + 1, depth)}
    return tuple(units.get(dim, dim) for dim in spec.dims)


# ------------------------------------------------------------------------------------------------
# the trajectory JSON document as the npz layout's arrays (for responses served as JSON only)

_NESTED = ("modes", "optimum", "early_stopping", "loss_theory", "loss_theory_random_matrix")


def _array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, bool):
        return np.array(value)
    if isinstance(value, str):
        return np.array(value, dtype=np.str_)
    if isinstance(value, int):
        return np.array(value, dtype=np.int64)
    if name in ("step", "phase"):
        return np.array(value, dtype=np.int64)
    if isinstance(value, list) and value and isinstance(value[0], str):  # task_loss_kind
        return np.array(value, dtype=np.str_)
    return np.array(value, dtype=np.float64)   # nested lists; null -> NaN


def arrays_from_json(doc: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays the service's ``.npz`` holds for this trajectory document, equal array for array."""
    out: dict[str, np.ndarray] = {}
    for name, value in doc.items():
        if value is None:
            continue
        if name == "weights":
            for layer in range(len(value[0]) if value else 0):
                out[f"weights_{layer}"] = np.array([per_time[layer] for per_time in value], dtype=np.float64)
        elif name == "final_weights":  # one matrix per layer
            for layer, matrix in enumerate(value):
                out[f"final_weights_{layer}"] = np.array(matrix, dtype=np.float64)
        elif name == "kernel":
            for sub in ("input_grams", "output_grams"):
                for layer in range(len(value[sub][0]) if value[sub] else 0):
                    out[f"kernel_{sub}_{layer}"] = np.array([per_time[layer] for per_time in value[sub]],
                                                            dtype=np.float64)
        elif name in _NESTED:
            for sub, v in value.items():
                if v is not None:
                    out[f"{name}_{sub}"] = _array(sub, v)
        else:
            out[name] = _array(name, value)
    return out


# ------------------------------------------------------------------------------------------------
# fields= and every= on arrays (what the service does for the simulation route)


def record_indices(count: int, every: int) -> list[int]:
    """Records 0, every, 2·every, … and always the last one."""
    if every < 1:
        raise ValueError(f"every must be ≥ 1, got {every}")
    indices = list(range(0, count, every))
    if count and indices[-1] != count - 1:
        indices.append(count - 1)
    return indices


def _member(name: str) -> str:
    found = spec_of(name)
    return found[0].member if found else name


def select_arrays(arrays: Mapping[str, np.ndarray], fields: Sequence[str] | str | None = None,
                  every: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of the members named by ``fields`` (names, or one comma-separated string; all when None),
    per-record arrays thinned to every ``every``-th record and the last."""
    if isinstance(fields, str):
        fields = [fields]
    wanted = set(_split_fields(fields)) if fields is not None else None
    out = {name: a for name, a in arrays.items() if wanted is None or _member(name) in wanted}
    if every is None or every == 1 or "time" not in arrays:
        return out
    indices = record_indices(len(arrays["time"]), every)
    for name, a in out.items():
        if array_dims(name, a.ndim)[:1] == ("time",):
            out[name] = a[indices]
    return out


def _split_fields(fields: Iterable[str]) -> list[str]:
    return [name.strip() for value in fields for name in value.split(",") if name.strip()]

"""Trajectories and sweep results as pandas DataFrames and xarray Datasets (the optional extras).

pandas and xarray are imported when first needed; without them the call raises ImportError naming the extra
to install. The layout of every table is decided here and in ``dlnsim.fields``, nowhere else.
"""

from __future__ import annotations

import importlib
import io
import json
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from dlnsim.fields import ARRAYS, array_dims, depth_of, spec_of

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["sweep_frame", "trajectory_dataset", "trajectory_frame"]


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs {module}, which is not installed: pip install './client[{extra}]' "
                          f"(from a checkout of dlnsim) or pip install 'dlnsim-client[{extra}]'") from exc


# ------------------------------------------------------------------------------------------------
# trajectories


def _mode_column(template: str, i: int) -> str:
    return template.replace("{i}", str(i))


def trajectory_frame(arrays: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per record, indexed by ``time``: the per-record scalars of ``ARRAYS`` that are present (``step``
    for GD), and the per-mode ones as ``<column>_1 … <column>_k``."""
    pandas = require("pandas", "pandas", "to_pandas()")
    columns: dict[str, np.ndarray] = {}
    for spec in ARRAYS:
        array = arrays.get(spec.name)
        if spec.column is None or array is None:
            continue
        if spec.dims == ("time",):
            columns[spec.column] = array
        elif spec.dims == ("time", "mode"):
            for mode in range(array.shape[1]):
                columns[_mode_column(spec.column, mode + 1)] = array[:, mode]
    index = pandas.Index(arrays["time"], name="time") if "time" in arrays else None
    frame: pd.DataFrame = pandas.DataFrame(columns, index=index)
    return frame


def _attr_value(array: np.ndarray) -> str | int | float:
    value = array.item()
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, str | int | float):
        return value
    return str(value)


def trajectory_dataset(arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The arrays as an xarray Dataset with the named dimensions of ``dlnsim.fields``: ``time`` (and ``step``
    for GD) and ``mode`` (1..k) as coordinates, strings and flags as attributes; ``attrs`` added to them
    (nested values as JSON text)."""
    xarray = require("xarray", "xarray", "to_xarray()")
    depth = depth_of(arrays)
    coords: dict[str, Any] = {}
    data_vars: dict[str, Any] = {}
    out_attrs: dict[str, Any] = {}
    for name, array in arrays.items():
        found = spec_of(name)
        role = found[0].role if found else "data"
        dims = array_dims(name, array.ndim, depth)
        if role == "attr" or (found is None and array.ndim == 0 and array.dtype.kind in "USb"):
            out_attrs[name] = _attr_value(array)
        elif role == "coord":
            coords[name] = (dims, array)
        else:
            data_vars[name] = (dims, array)
    k = next((array.shape[dims.index("mode")] for name, array in arrays.items()
              if "mode" in (dims := array_dims(name, array.ndim, depth))), None)
    if k is not None:
        coords["mode"] = ("mode", np.arange(1, k + 1))
    for key, value in (attrs or {}).items():
        if value is not None:
            out_attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    dataset: xr.Dataset = xarray.Dataset(data_vars, coords=coords, attrs=out_attrs)
    return dataset


# ------------------------------------------------------------------------------------------------
# sweep results: the service's CSV (GET /v1/sweeps/{id}/results, Accept: text/csv) -> a typed DataFrame
#
# The CSV's columns are the service's (service/results_table.py): point, one per swept parameter (list values as
# JSON text), status, finished_at, outcome, the scalar results, per-mode vectors as <name>_1 … <name>_k, error_type,
# error_detail. Only the dtypes are decided here.

INDEX = "point"
SWEEP_DTYPES: dict[str, str] = {
    "status": "string", "outcome": "string", "theory_model": "string", "error_type": "string",
    "error_detail": "string", "finished_at": "datetime",
    "final_time": "float64", "final_loss": "float64", "final_excess_loss": "float64", "optimum_loss": "float64",
    "final_distance_to_optimum": "float64", "time_to_convergence": "float64", "final_test_loss": "float64",
    "min_test_loss": "float64", "early_stopping_time": "float64", "final_kernel_distance": "float64",
    "steps_to_convergence": "Int64", "diverged_at_step": "Int64",
}
# per-mode vectors: each is <name>_1 … <name>_k (float64)
MODE_VECTORS = ("final_strength", "learning_time", "learning_time_theory")


def _is_mode_column(name: str) -> bool:
    base, _, number = name.rpartition("_")
    return base in MODE_VECTORS and number.isdigit()


def sweep_frame(csv_text: str) -> pd.DataFrame:
    """The service's results CSV as a DataFrame indexed by ``point``, with the dtypes of ``SWEEP_DTYPES`` (per-mode
    columns float64; parameters as pandas infers them). Floats are read exactly (round_trip)."""
    pandas = require("pandas", "pandas", "Sweep.results()")
    # pandas 3 reads floats exactly by default (and deprecates the option); pandas 2 needs round_trip for that
    exact = {} if int(pandas.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    frame: pd.DataFrame = pandas.read_csv(io.StringIO(csv_text), keep_default_na=False, na_values=[""], **exact)
    for name in frame.columns:
        kind = "float64" if _is_mode_column(name) else SWEEP_DTYPES.get(name)
        if kind == "datetime":
            frame[name] = pandas.to_datetime(frame[name], utc=True)
        elif kind == "float64":
            frame[name] = pandas.to_numeric(frame[name], errors="coerce").astype("float64")
        elif kind == "Int64":
            frame[name] = pandas.to_numeric(frame[name], errors="coerce").astype("Int64")
        elif kind == "string":
            frame[name] = frame[name].astype("string")
    return frame.set_index(INDEX)

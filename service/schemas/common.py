"""What every schema shares: strict, closed models; matrices as lists of rows; nullable numbers in documents.

Requests are strict (pydantic strict mode: no true -> 1.0, no "3" -> 3; an integer where a number is
expected is fine), closed (unknown fields are errors naming the field) and finite (NaN/Infinity are
rejected where they appear).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

# Largest seed: 2^53 − 1, the largest integer every JSON client holds exactly (JavaScript numbers are
# doubles; so are the numbers of JSON Schema validators that compare bounds as floats: with 2^63 − 1,
# 9223372036854775999 passed their check and failed ours).
MAX_SEED = 2**53 - 1

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, serialize_by_alias=True,
                    validate_by_alias=True, validate_by_name=False)


class StrictModel(BaseModel):
    model_config = STRICT


# ------------------------------------------------------------------------------------------------
# matrices


def _rectangular(rows: list[list[float]]) -> list[list[float]]:
    """Rows of equal length (the row that differs is reported, its index appended to the path)."""
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise PydanticCustomError(
                "ragged_matrix", "row {row} has {got} entries but row 0 has {expected}",
                {"row": i, "got": len(row), "expected": width,
                 "fix": "give a rectangular matrix: a list of rows, all of the same length"})
    return rows


Row = Annotated[list[float], Field(min_length=1)]
Matrix = Annotated[
    list[Row], Field(min_length=1, description="A matrix as a list of rows (each a list of numbers)."),
    AfterValidator(_rectangular)]


def is_none(value: Any) -> bool:
    """Left out of the canonical request when absent: requests without an optional member keep their bytes (and
    hashes)."""
    return value is None


Num = float | None  # null where a value is not a finite float64 (undefined, or overflow in a diverged run)
NumMatrix = list[list[Num]]


# ------------------------------------------------------------------------------------------------
# labels: a name and tags on a simulation or sweep, stored and returned, never part of the computation

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:=+-]*$")]
MAX_TAGS = 32
NAME_DESCRIPTION = ("A name for the run, shown in lists, legends and downloads (`GET …?name=` finds it); not part of "
                    "the computation: requests that differ only in name and tags are the same request.")
TAGS_DESCRIPTION = ("Tags (letters, digits and . _ : = + -, up to 64 characters each, at most 32), e.g. `lazy`, "
                    "`lr=0.05`; `GET …?tag=` filters on them. Not part of the computation.")
LABELS = {"name", "tags"}  # left out of the canonical request, the one an Idempotency-Key is checked against


class Provenance(BaseModel):
    """Where and with what a run was computed: the software versions and the BLAS of the worker that ran it (the
    API process's for GET /v1/service-info), the run's precision and the host's cores."""

    dlnsim: str | None = Field(None, description="dlnsim's version.")
    python: str | None = None
    numpy: str | None = None
    scipy: str | None = None
    numba: str | None = None
    blas: dict[str, Any] | None = Field(None, description="The BLAS numpy calls (threadpoolctl: library, version, "
                                                          "threads at the run's start), and the one the GD loop calls.")
    blas_threads_setting: str | None = Field(None, description="DLNSIM_BLAS_THREADS of the worker (auto: a run takes "
                                                               "its share of the host's cores).")
    host_cores: int | None = Field(None, description="CPU cores of the host.")
    dtype: str | None = Field(None, description="The run's floating-point precision.")

"""GET /v1/presets: the built-in learning problems and their parameters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class PresetParameter(BaseModel):
    """One parameter of a preset, as it goes beside ``name`` in the request's ``data``."""

    name: str
    type: Literal["integer", "number", "number_list"]
    nullable: bool = Field(False, description="null is allowed (e.g. random_teacher.rank: null = full rank).")
    default: int | float | list[float] | None
    minimum: int | float | None = Field(None, description="Smallest allowed value (of each entry for lists).")
    maximum: int | float | None = Field(None, description="Largest allowed value.")
    description: str


class PresetInfo(BaseModel):
    """A built-in learning problem: use it as ``data`` = ``example`` (with your parameter values)."""

    name: str
    description: str
    parameters: list[PresetParameter]
    example: dict[str, Any] = Field(description="The request's data member for this preset with every default.")
    links: dict[str, str] = Field(description="self: this preset's details.")


class PresetList(BaseModel):
    items: list[PresetInfo]


class PresetDetail(PresetInfo):
    """A preset built with the given parameters (query) or its defaults: dimensions, spectrum and names."""

    values: dict[str, Any] = Field(description="The parameter values used (defaults filled in).")
    n_in: int = Field(description="Input dimension (the number of items for one-hot presets).")
    n_out: int = Field(description="Output dimension (the number of features).")
    singular_values: list[float] = Field(description="Singular values of Σ31, descending: the modes' strengths "
                                                     "to be learned (min(n_in, n_out) of them).")
    items: list[str] | None = Field(None, description="Names of the items (inputs), where they have names.")
    features: list[str] | None = Field(None, description="Names of the features (outputs), where they have names.")

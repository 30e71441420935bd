"""RFC 9457 problem details: the body of every 4xx and 5xx."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FieldError(BaseModel):
    field: list[str | int] = Field(description='Path of the offending field, e.g. ["data", "sigma11", 2].')
    pointer: str = Field(description="The same path as a JSON pointer (RFC 6901), e.g. /data/sigma11/2.")
    in_: Literal["body", "query", "path", "header"] = Field("body", alias="in")
    code: str = Field(description="Machine-readable error code, e.g. ragged_matrix, not_symmetric.")
    message: str
    fix: str = Field(description="How to fix it, in one sentence.")

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, served as application/problem+json for every 4xx and 5xx."""

    type: str = Field(description="The problem type, a URI relative to the service, e.g. "
                                  "/problems/validation-error (GET it for a description).")
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="The request path this problem occurred on.")
    errors: list[FieldError] = Field(default_factory=list)

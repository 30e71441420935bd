"""POST /v1/gradients: the vector field GD and gradient flow follow, at given weights, answered synchronously
(no job; docs/theory.md#gradient).

The body is validated like a simulation's data and given init (same limits, same problem documents), then the
core's ``network.vector_field`` evaluates L and ∂L/∂W_l in a worker thread (a large Σ is BLAS work the event
loop must not do).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from service.api.bodies import check_media_type, json_request_body
from service.api.deps import SettingsDep
from service.api.documents import gradients_document
from service.api.errors import problem_responses
from service.build import build_gradients
from service.dynamics.errors import DynamicsError
from service.dynamics.network import vector_field
from service.limits import Limits
from service.problems import dynamics_problem
from service.schemas import GRADIENTS_EXAMPLES, Gradients, GradientsRequest
from service.schemas.validation import parse_body

router = APIRouter(prefix="/v1/gradients", tags=["gradients"])



def _compute(body: bytes, limits: Limits) -> dict[str, Any]:
    request = parse_body(body, GradientsRequest)
    try:
        spec = build_gradients(request, limits)
    except DynamicsError as exc:
        raise dynamics_problem(exc) from None
    return gradients_document(vector_field(spec.problem, spec.weights, spec.weight_decay))


@router.post(
    "",
    response_model=Gradients,
    summary="The loss and its gradient at given weights",
    responses={**problem_responses(400, 413, 415, 422, 503)},
    openapi_extra=json_request_body("GradientsRequest", GRADIENTS_EXAMPLES),
)
async def compute_gradients(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """L and ∂L/∂W_l (+ γW_l) for l = 1 … D at the given weights: the vector field GD and gradient flow follow
    (docs/theory.md#gradient; some texts print Σ32ᵀ; W32ᵀ is right, see docs/theory.md#gradient-typo).
    Synchronous: nothing is stored. The data and weights are validated as in a simulation (shapes, Σ11
    symmetric PSD, finite entries, the service's size limits)."""
    check_media_type(request)
    body = await request.body()
    admission = getattr(request.app.state, "admission", None)
    if admission is None:
        return await run_in_threadpool(_compute, body, Limits.from_settings(settings))
    # A large body is parsed and validated in one of the few validation slots (service/jobs/admission.py).
    async with admission.validating(len(body)):
        return await run_in_threadpool(_compute, body, Limits.from_settings(settings))

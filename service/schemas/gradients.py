"""POST /v1/gradients: the loss and its gradient at given weights."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from .common import STRICT, Matrix, Num, NumMatrix, StrictModel
from .requests import TaskData, WeightDecay

GRADIENTS_EXAMPLE = {
    "data": {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]], "sigma31": [[2.0, 0.0], [0.0, 0.5]],
             "sigma33": [[4.0, 0.0], [0.0, 0.25]]},
    "weights": [[[0.1, 0.0], [0.0, 0.1], [0.05, -0.05]], [[0.2, 0.0, 0.1], [0.0, 0.2, -0.1]]],
    "weight_decay": 0.0,
}
GRADIENTS_EXAMPLES = {
    "two_layer": {"summary": "A 2-3-2 network on given correlations: L, ∂L/∂W21, ∂L/∂W32", "value": GRADIENTS_EXAMPLE},
    "hierarchy_regression": {
        "summary": "Linear regression (one layer) on the PNAS hierarchy at W = 0",
        "value": {"data": {"kind": "preset", "name": "hierarchy", "depth": 1},
                  "weights": [[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]]}},
}


class GradientsRequest(StrictModel):
    """The vector field at given weights (docs/theory.md#gradient): any data kind, the weights of every layer
    (input→output, as ``init.weights``: weights[0] is W21, hidden[0] × n_in) and an optional weight decay γ."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [GRADIENTS_EXAMPLE]})

    data: TaskData
    weights: Annotated[list[Matrix], Field(min_length=1, description=(
        "W_1 … W_D input→output; the widths are the weights' own (hidden width k = rows of weights[k]); "
        "one matrix is linear regression."))]
    weight_decay: WeightDecay = 0.0


# Discriminator tags that pydantic puts into error locations; HTTP paths name fields only.


class Gradients(BaseModel):
    """L and its gradient at the given weights (docs/theory.md#gradient). ``gradients`` is the gradient itself, so GD is
    W_l ← W_l − η·gradients[l] and gradient flow dW_l/dt = −gradients[l]; for two layers
    gradients = [−2 W32ᵀ(Σ31 − W32W21Σ11), −2 (Σ31 − W32W21Σ11) W21ᵀ] (+ γ W_l with weight decay)."""

    loss: Num = Field(description="L = (1/N) Σ ‖y − W x‖² (no ½, no weight decay term); null when Σ33 is unknown.")
    loss_without_sigma33: Num = Field(description="L − tr Σ33 = −2 tr(W Σ31ᵀ) + tr(W Σ11 Wᵀ), always known.")
    objective: Num = Field(description="L + (γ/2) Σ_l ‖W_l‖²_F, the function whose gradient `gradients` is "
                                       "(equal to loss without weight decay); null when Σ33 is unknown.")
    gradients: list[NumMatrix] = Field(description="∂L/∂W_l + γ W_l for l = 1 … D, input→output, each shaped like "
                                                   "its weight matrix.")
    gradient_norm: Num = Field(description="sqrt(Σ_l ‖gradients[l]‖²_F), as in trajectories.")

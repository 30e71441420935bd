"""Closed-form ("exact") gradient-flow solutions of deep linear networks (docs/theory.md#exact-method).

Conventions (docs/theory.md#conventions): L = (1/N) Σ ||y − W x||², gradient flow dW_l/dt = −∂L/∂W_l,
t = η·step, so the papers' τ is 1/2 here. Σ11 = c·I ("scaled whitening", docs/theory.md#whitening) is handled
everywhere by the exact rescaling

    W̃_l = c^{1/2} W_l  (two layers):  W̃ follows the c = 1 flow with the same Σ31 and the same t,

so every two-layer formula here is the c = 1 formula applied to ũ = c·u, ã = √c·a (and λ̃ = c·λ for Riccati).
For depth D the mode ODE is du/dt = 2D |u|^{2−2/D} (s − c·u), derived from the per-layer equations and
checked against the matrix flow in tests/dynamics/test_exact.py.

What is here:

* scalar mode solutions: two-layer modes for any (a0, b0) (balanced, anti-balanced, unbalanced in hyperbolic
  coordinates: docs/theory.md#saxe-two-layer), with weight decay for |a0| = |b0|; deep balanced modes D ≥ 3
  (docs/theory.md#saxe-deep) through a closed-form antiderivative of the learning-time integral, inverted by
  safeguarded Newton;
* learning times t(u0 → uf) and half-way times for all of them;
* exact GD maps per mode for decoupled inits, and shallow GD / flow for any Σ11 and weight decay
  (docs/theory.md#exact-gd);
* the matrix Riccati solution (docs/theory.md#riccati) for λ-balanced two-layer nets, evaluated in chunks by the
  semigroup law in an F-invariant subspace of dimension ≤ 2·rank Σ31 + 2·hidden (not Ni + No), refused past
  RICCATI_MAX_DIM;
* ``exact_run`` / ``check_exact``: pick the closed form that applies to a problem and initial condition, or
  raise ``ExactNotApplicableError`` naming the failed condition and its measured deviation.

Cost: with hidden layers nothing here builds an orthonormal basis of the whole input or output space or
decomposes an n_out × n_out (n_in × n_in) matrix: alignment is measured with projections on the thin SVD of Σ31
and thin factors of the layers, balance with hidden-size Grams. Tall tasks (few inputs, many output features)
and wide ones cost O(n_out·n_in·(k + hidden)) plus what is returned. (D = 1 diagonalises Σ11, as any Σ11 needs.)

Tolerances (all relative, see the constants): Σ11 = c·I within WHITENING_RTOL·c; an init is "aligned" when
its Gram and cross matrices in the mode frame are diagonal within ALIGN_RTOL of the layer norms; λ-balanced
when W32ᵀW32 − W21W21ᵀ − λI is within BALANCE_RTOL of ‖W21‖² + ‖W32‖².

Modules, one closed form each (the package re-exports the names listed in ``__all__``):

    scalar_modes  two-layer modes                  deep_modes  deep balanced modes D ≥ 3
    gd_maps       exact GD maps per mode           shallow     shallow regression, GD and flow
    riccati       matrix Riccati solution          decouple    decoupled (aligned) initial conditions
    dispatch      ``exact_run`` / ``check_exact``  _common     shared tolerances and helpers
    factorise     weights from the Riccati state (a factorisation of QQᵀ, for continuing from an exact run's end)
"""

from __future__ import annotations

from ._common import (
    ALIGN_RTOL,
    BALANCE_RTOL,
    DEGENERATE_RTOL,
    NEAR_BALANCED_RTOL,
    ROUNDOFF_RTOL,
    S_ZERO_RTOL,
    WHITENING_RTOL,
)
from .decouple import DecoupledInit, balance_deviation, decouple
from .deep_modes import (
    deep_balanced_mode,
    deep_limit,
    half_time_deep,
    learning_time_deep,
)
from .dispatch import (
    MODEL_DEEP,
    MODEL_MODES,
    MODEL_RICCATI,
    MODEL_SHALLOW,
    ExactRun,
    _check_shapes,
    check_exact,
    decoupled_flow,
    exact_run,
)
from .factorise import riccati_factors
from .gd_maps import _gd_modes_kernel, gd_balanced_mode, gd_mode_map
from .riccati import (
    FLUSH_RTOL,
    RICCATI_CONV_ULPS,
    RICCATI_MAX_CHUNK,
    RICCATI_MAX_DIM,
    RICCATI_SLOW_RTOL,
    RICCATI_SPREAD_CHUNK,
    RiccatiEvaluator,
    RiccatiSolution,
    RiccatiSubspace,
    lambda_balance,
    riccati_flow,
    riccati_gradient_norm,
    riccati_subspace,
)
from .scalar_modes import (
    _reach,
    balanced_mode,
    half_time_two_layer,
    learning_time_two_layer,
    two_layer_limit,
    two_layer_mode,
)
from .shallow import _shallow_terms, shallow_coefficients, shallow_solution

# The names ``from service.dynamics import exact`` users read (the private ones for theory.py). Constants are
# re-exported copies: to change one at run time (a test's monkeypatch), set it on the submodule that reads it.
__all__ = [
    "ALIGN_RTOL", "BALANCE_RTOL", "DEGENERATE_RTOL", "FLUSH_RTOL", "MODEL_DEEP", "MODEL_MODES", "MODEL_RICCATI",
    "MODEL_SHALLOW", "NEAR_BALANCED_RTOL", "RICCATI_CONV_ULPS", "RICCATI_MAX_CHUNK", "RICCATI_MAX_DIM",
    "RICCATI_SLOW_RTOL", "RICCATI_SPREAD_CHUNK", "ROUNDOFF_RTOL", "S_ZERO_RTOL", "WHITENING_RTOL", "DecoupledInit",
    "ExactRun", "RiccatiEvaluator", "RiccatiSolution", "RiccatiSubspace", "_check_shapes", "_gd_modes_kernel",
    "_reach", "_shallow_terms", "balance_deviation", "balanced_mode", "check_exact", "decouple", "decoupled_flow",
    "deep_balanced_mode", "deep_limit", "exact_run", "gd_balanced_mode", "gd_mode_map", "half_time_deep",
    "half_time_two_layer", "lambda_balance", "learning_time_deep", "learning_time_two_layer", "riccati_flow",
    "riccati_factors", "riccati_gradient_norm", "riccati_subspace", "shallow_coefficients", "shallow_solution", "two_layer_limit",
    "two_layer_mode",
]

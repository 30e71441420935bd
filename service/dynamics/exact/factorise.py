"""Weights from the Riccati state: a factorisation Q̂ of P = QQᵀ, so that a later run can start from the network an
exact run ends with (docs/theory.md#task-sequences).

The Riccati solution determines P = QQᵀ with Q = [W21ᵀ; W32] ((Ni + No) × Nh), i.e. the network map W32W21 = P[Ni:, :Ni]
and the Gram blocks W21ᵀW21 = P[:Ni, :Ni], W32W32ᵀ = P[Ni:, Ni:], but not the weights: every (W21, W32) = (R W21, W32 Rᵀ)
with R orthogonal (Nh × Nh) has the same P. Any of them is as good a starting point, because gradient flow is
equivariant under that rotation of the hidden layer (dW21/dt and dW32/dt depend on the weights only through
W32ᵀ(·) and (·)W21ᵀ): the network map, both Grams, the NTK and the balance W32ᵀW32 − W21W21ᵀ = Rᵀ(λI)R = λI of every
later time are the same. Here R is fixed by the eigendecomposition of P:

    P = O P' Oᵀ / c,   P' = V diag(μ) Vᵀ (μ descending),   Q̂ = O V_h diag(√μ_h) / √c,   W21 = Q̂[:Ni]ᵀ, W32 = Q̂[Ni:]

with V_h the top Nh eigenvectors (P has rank ≤ Nh; the eigenvalues beyond are round-off of zeros), and eigenvalues at
or below ROUNDOFF_EIG_RTOL·r·μ_max (r the dimension of P') set to 0, so that Q̂Q̂ᵀ = P up to those dropped round-off
eigenvalues: the product and both Grams of the factors equal the state's to round-off (tests/dynamics/test_sequence.py
measures it). Why drop the small ones: P' is exact only to ~eps·μ_max, so where P has rank < Nh (a zero-balanced init
of rank below the hidden width) the eigenvalues of its null directions are round-off of either sign, and √μ of one
(~1e-8·√μ_max) would put a garbage hidden unit into the factors whose balance W32ᵀW32 − W21W21ᵀ is off by ~1e-8
relative (measured 2.9e-9 at 3-6-2, λ = 0); zeroing them keeps the balance to round-off. O and P' are
the solution's reduced eigen-coordinates (``RiccatiSolution``), so the cost is one r × r eigendecomposition
(r ≤ 2·rank Σ31 + 2Nh), never an (Ni + No)² matrix.
"""

from __future__ import annotations

import numpy as np

from .riccati import RiccatiSolution

# Eigenvalues of P' at or below this × r × the largest are round-off of zeros (r × eps is the accuracy of P'), 10× that.
ROUNDOFF_EIG_RTOL = 10.0 * float(np.finfo(np.float64).eps)


def riccati_factors(sol: RiccatiSolution, hidden: int, index: int = -1) -> list[np.ndarray]:
    """[W21 (Nh × Ni), W32 (No × Nh)] with W32W21, W21ᵀW21 and W32W32ᵀ equal to the Riccati state at record ``index``
    (module docstring): Q̂ = O V_h diag(√μ_h)/√c from the top Nh eigenpairs of P'."""
    state = np.asarray(sol.states[index], dtype=np.float64)
    state = 0.5 * (state + state.T)
    mu, vecs = np.linalg.eigh(state)                     # ascending
    r = mu.size
    keep = min(hidden, r)
    mu_h = mu[::-1][:keep].copy()
    mu_h[mu_h <= ROUNDOFF_EIG_RTOL * r * max(float(mu[-1]), 0.0)] = 0.0
    v_h = vecs[:, ::-1][:, :keep]
    q = (sol.o @ (v_h * np.sqrt(mu_h))) / np.sqrt(sol.c)  # (Ni + No) × keep
    if keep < hidden:                                     # P has rank < Nh: the other hidden units carry nothing
        q = np.hstack([q, np.zeros((q.shape[0], hidden - keep))])
    ni = sol.n_in
    return [np.ascontiguousarray(q[:ni].T), np.ascontiguousarray(q[ni:])]

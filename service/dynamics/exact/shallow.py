"""Shallow regression (docs/theory.md#exact-gd-shallow), any Σ11 and weight decay: GD and gradient flow in closed
form.

W(t) = W* + (W0 − W*) expm(−(2Σ11 + γI) t) with W* = 2Σ31(2Σ11 + γI)⁻¹ where that inverse exists, and the exact
limit along null directions of 2Σ11 + γI (see ``shallow_coefficients``); GD replaces e^{−α t} by (1 − ηα)^k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..problem import Problem
from ._common import _phi


@dataclass(frozen=True)
class _ShallowTerms:
    """Σ11 = Q diag(σ) Qᵀ; per eigen-direction j the rate α_j = 2σ_j + γ, W̃0 = W0 Q, S̃ = Σ31 Q."""

    rates: np.ndarray
    q: np.ndarray
    w0q: np.ndarray
    s31q: np.ndarray


def _shallow_terms(problem: Problem, w0: np.ndarray, weight_decay: float) -> _ShallowTerms:
    sig, q = np.linalg.eigh(problem.sigma11)
    return _ShallowTerms(2.0 * sig + weight_decay, q, w0 @ q, problem.sigma31 @ q)


def _gd_geometric(rates, eta: float, k):
    """(1 − ρ^k)/α with ρ = 1 − ηα (= η Σ_{j<k} ρ^j), stable for small ηα, η k at α = 0; and ρ^k."""
    rates, k = np.broadcast_arrays(np.asarray(rates, dtype=np.float64), np.asarray(k, dtype=np.float64))
    rho = 1.0 - eta * rates
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        pos = rho > 0
        log_rho = np.log1p(-eta * rates, where=pos, out=np.zeros(rates.shape))
        pow_k = np.where(pos, np.exp(k * log_rho), np.power(rho, k))
        geo = np.where(pos, -np.expm1(k * log_rho), 1.0 - pow_k) / np.where(rates != 0, rates, 1.0)
        geo = np.where(rates == 0, eta * k, geo)
    return pow_k, geo


def shallow_coefficients(problem: Problem, w0: np.ndarray, times=None, *, learning_rate: float | None = None,
                         steps=None, weight_decay: float = 0.0):
    """Per eigen-direction j of Σ11 the two time factors of the shallow solution
    (docs/theory.md#exact-gd-shallow):

        flow: W(t) = Σ_j [ W̃0_j e^{−α_j t} + 2 S̃_j φ(α_j, t) ] q_jᵀ,         α_j = 2σ_j + γ
        GD:   W_k  = Σ_j [ W̃0_j ρ_j^k + 2 S̃_j (1 − ρ_j^k)/α_j ] q_jᵀ,       ρ_j = 1 − η α_j

    i.e. W* + (W0 − W*) expm(−(2Σ11 + γI) t) with W* = 2Σ31(2Σ11 + γI)⁻¹ where that inverse exists, and the
    exact limit (linear growth 2 S̃_j t, or 2η S̃_j k) along null directions of 2Σ11 + γI — no matrix inverse.
    Returns (terms, decay (T, n_in), drive (T, n_in)).
    """
    terms = _shallow_terms(problem, w0, weight_decay)
    if steps is not None:
        k = np.asarray(steps, dtype=np.float64)[:, None]
        decay, drive = _gd_geometric(terms.rates[None, :], float(learning_rate), k)
    else:
        t = np.asarray(times, dtype=np.float64)[:, None]
        with np.errstate(under="ignore"):
            decay = np.exp(-terms.rates[None, :] * t)
        drive = _phi(terms.rates[None, :], t)
    return terms, decay, drive


def shallow_solution(problem: Problem, w0, times=None, *, learning_rate: float | None = None, steps=None,
                     weight_decay: float = 0.0) -> np.ndarray:
    """W(t) (flow, at ``times``) or W_k (GD, at ``steps`` with ``learning_rate``), shape (T, n_out, n_in)."""
    w0 = np.asarray(w0, dtype=np.float64)
    terms, decay, drive = shallow_coefficients(problem, w0, times, learning_rate=learning_rate, steps=steps,
                                               weight_decay=weight_decay)
    with np.errstate(over="ignore", invalid="ignore"):
        wt = terms.w0q[None, :, :] * decay[:, None, :] + 2.0 * terms.s31q[None, :, :] * drive[:, None, :]
        return wt @ terms.q.T

"""Modes of the task: the SVD of Σ31 and the network's strength along each mode (docs/theory.md#modes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import network
from .problem import Problem, least_squares
from .trajectory import Optimum


@dataclass(frozen=True)
class ModeBasis:
    """Σ31 = U diag(s) Vᵀ (thin SVD, s descending): ``u`` is n_out × k, ``v`` is n_in × k, k = min(n_out, n_in).

    Within a degenerate singular value (e.g. the hierarchy's repeated splits) the basis is the one
    LAPACK returns; strengths of random inits along such modes depend on that choice, aligned inits do not.
    """

    u: np.ndarray
    s: np.ndarray
    v: np.ndarray


def mode_basis(problem: Problem) -> ModeBasis:
    """The SVD of Σ31 (cached on the problem, so every caller sees the same signs)."""
    if "basis" not in problem._cache:
        u, s, vt = np.linalg.svd(problem.sigma31, full_matrices=False)
        problem._cache["basis"] = ModeBasis(u, s, vt.T)
    return problem._cache["basis"]


def mode_strengths(product: np.ndarray, basis: ModeBasis) -> np.ndarray:
    """u_α = u_αᵀ W v_α for each mode α: shape (k,) for one W, (T, k) for a stack of T maps."""
    # (UᵀW)_{αj} V_{jα} summed over j, without forming the k×k matrix UᵀWV. One matmul then a plain
    # einsum: faster on small stacks than a three-operand einsum(optimize=True), whose path search is most
    # of its cost at these sizes (sweep post-processing calls this per point; docs/performance.md#records).
    return np.einsum("...ai,ia->...a", basis.u.T @ product, basis.v)


# ------------------------------------------------------------------------------------------------
# the optimum and learning times

# Eigenvalues of Σ11 at or below this fraction of the largest are treated as exact zeros when forming
# Σ11^{-1/2}. Same order as problem.PSD_RTOL: a covariance computed from data carries round-off
# eigenvalues ~ n·eps·λ_max in its null space, and 1/sqrt of those would amplify noise by ~1e8.
SIGMA11_RCOND = 1e-10


def sigma11_inverse_sqrt(problem: Problem) -> np.ndarray:
    """(Σ11^{+})^{1/2}: the inverse square root on the range of Σ11, 0 on its null space (cached).

    Σ11 = E diag(e) Eᵀ; eigenvalues e_i ≤ SIGMA11_RCOND · e_max count as 0.
    """
    if "s11_mhalf" not in problem._cache:
        e, vecs = np.linalg.eigh(problem.sigma11)
        e_max = float(e[-1]) if e.size else 0.0
        keep = e > SIGMA11_RCOND * e_max if e_max > 0 else np.zeros(e.shape, dtype=bool)
        vk = vecs[:, keep]
        problem._cache["s11_mhalf"] = (vk / np.sqrt(e[keep])) @ vk.T
    return problem._cache["s11_mhalf"]


def bottleneck(problem: Problem, hidden) -> int:
    """r = min(n_in, n_out, min(hidden)): the largest rank the network map W = W_D⋯W_1 can have."""
    return min(problem.n_in, problem.n_out, *[int(h) for h in hidden])


def optimum(problem: Problem, hidden) -> Optimum:
    """Reduced-rank regression optimum for the network's bottleneck r (docs/theory.md#optimum, Baldi & Hornik):

        M = Σ31 Σ11^{-1/2} = U_M S_M V_Mᵀ,   W* = [M]_r Σ11^{-1/2} = U_r U_rᵀ Σ31 Σ11⁻¹
        L* = tr Σ33 − Σ_{i≤r} σ_i(M)²         (None when Σ33 is unknown)

    with r = min(n_in, n_out, min(hidden)) (r = min(n_in, n_out) for hidden = [], linear regression).
    ``loss_without_sigma33`` = L* − tr Σ33 = −Σ_{i≤r} σ_i(M)² is always returned.

    Singular Σ11: Σ11^{-1/2} is the pseudo-inverse square root (see ``sigma11_inverse_sqrt``), and W*
    is then the minimum-norm optimum: any W* + Z with Z Σ11 = 0 has the same loss, and W* is the one
    with rows in the range of Σ11 (for real data Σ31 = YXᵀ/N lies in that range). When σ_r(M) =
    σ_{r+1}(M) the optimum is not unique; W* is then the one LAPACK's SVD picks, L* is unaffected.
    """
    r = bottleneck(problem, hidden)
    # cached per rank on the problem (like its mode basis): a sweep's points share a problem, and every
    # trajectory's post-processing and theory overlay ask for it
    key = ("optimum", r)
    if key not in problem._cache:
        problem._cache[key] = _optimum(problem, r)
    return problem._cache[key]


def _optimum(problem: Problem, r: int) -> Optimum:
    s11_mhalf = sigma11_inverse_sqrt(problem)
    m = problem.sigma31 @ s11_mhalf
    u_m, s_m, vt_m = np.linalg.svd(m, full_matrices=False)
    w_star = ((u_m[:, :r] * s_m[:r]) @ vt_m[:r]) @ s11_mhalf
    w_star.flags.writeable = False  # shared through the cache
    # L* = L_ls + ‖W* F − G‖² (= tr Σ33 − Σ_{i≤r} σ_i(M)², without subtracting numbers of size tr Σ33)
    gap = network.fit_gap(problem, w_star)
    loss_star = network.loss(problem, w_star)
    return Optimum(product=w_star, loss=loss_star, loss_without_sigma33=gap - least_squares(problem).g_norm2, rank=r,
                   fit_gap=gap)


def excess_loss(fit_gaps, opt: Optimum) -> np.ndarray:
    """L − L* = ‖W F − G‖² − ‖W* F − G‖² ≥ 0 from the fit gaps of maps W (``network.fit_gap``): known even when
    Σ33 is not (L_ls cancels exactly).

    At full rank (r = rank Σ31, the usual case) ‖W* F − G‖² is round-off and L − L* is a sum of squares. Below it,
    the difference of two fit gaps is ≥ 0 by Eckart–Young (W has rank ≤ r) and exact to eps·L* absolute; values
    below 0 are that round-off and are reported as 0.
    """
    return np.maximum(np.asarray(fit_gaps, dtype=np.float64) - opt.fit_gap, 0.0)

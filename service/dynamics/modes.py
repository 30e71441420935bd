"""Modes of the task: the SVD of Σ31 and the network's strength along each mode (reference §1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .problem import Problem


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
    # einsum over the stack: (UᵀW)_{αj} V_{jα}, without forming the k×k matrix.
    return np.einsum("oa,...oi,ia->...a", basis.u, product, basis.v, optimize=True)

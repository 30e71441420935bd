"""Hidden-layer representational similarity of the items (PNAS 2019 Fig. 4; Neuromatch W1D2 ``net_rsm``).

The items are the input basis vectors e_1 … e_{n_in}: for one-hot datasets (the ``hierarchy`` and
``branching_diffusion`` presets) these are exactly the items, as in the PNAS 2019 paper and the teaching
notebooks. Item i's hidden representation is h_i = W21 e_i (the i-th column of W21), H = [h_1 … h_{n_in}]ᵀ
is n_in × N_h and

    RSM(t) = H Hᵀ = W21(t)ᵀ W21(t)          (n_in × n_in,  RSM_ij = h_i · h_j)

which is Neuromatch's ``net_rsm(h) = h @ h.T`` with h = model.in_hid(one-hot items), unnormalised. It is the
input-side Gram block P[:n_in, :n_in] of the Riccati solution (docs/theory.md#similarity), so the exact two-layer
solution gives it exactly even though it does not determine W21 itself. For inputs that are not one-hot,
the similarity of two inputs x, x' is xᵀ RSM x', so this one matrix determines every sample RSM (X RSM Xᵀ
over a dataset) and the Σ11-weighted item similarity Σ11^{1/2} RSM Σ11^{1/2} (for one-hot items, Σ11 = I/P
and that is RSM/P).

The hidden layer is the first one (the output of W21); a network without hidden layers has none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidParameterError

SIMILARITY_FIELD = ("record", "similarity")


def item_similarity(w21: np.ndarray) -> np.ndarray:
    """RSM = W21ᵀ W21 for one W21 (N_h × n_in) or a stack (T, N_h, n_in) -> (n_in, n_in) or (T, n_in, n_in).

    Symmetrised, so that round-off never makes RSM_ij ≠ RSM_ji.
    """
    w = np.asarray(w21, dtype=np.float64)
    return symmetric(np.swapaxes(w, -1, -2) @ w)


def symmetric(a: np.ndarray) -> np.ndarray:
    """(A + Aᵀ)/2 over the last two axes: a Gram matrix without the round-off asymmetry of its product."""
    return 0.5 * (a + np.swapaxes(a, -1, -2))


def check_similarity(weights0: Sequence[np.ndarray]) -> None:
    """record.similarity needs a hidden layer: D ≥ 2 weight matrices (weights input→output)."""
    if len(weights0) < 2:
        raise InvalidParameterError(
            "the hidden-layer similarity needs a hidden layer, and this network has none (network.hidden is [])",
            field=SIMILARITY_FIELD,
            fix="add a hidden layer (e.g. network.hidden [16]) or set record.similarity to false")

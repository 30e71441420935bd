"""The neural tangent kernel of a deep linear network over a run, and how far it moves (lazy vs rich learning;
Braun et al. 2022, Dominé et al. 2024; docs/theory.md#ntk).

For f(x) = W_D ⋯ W_1 x the Jacobian of f with respect to layer l is Δ ↦ A_l Δ B_l x with A_l = W_D ⋯ W_{l+1}
(n_out × n_l, A_D = I) and B_l = W_{l−1} ⋯ W_1 (n_{l−1} × n_in, B_1 = I), so the NTK Θ(x, x') = Σ_l J_l(x) J_l(x')ᵀ is

    Θ(x, x') = Σ_{l=1}^{D} (xᵀ B_lᵀB_l x') A_l A_lᵀ        (n_out × n_out)

and on the input basis (x = e_a, x' = e_b), ordered output-major (row i·n_in + a), the matrix

    K = Σ_{l=1}^{D} (A_l A_lᵀ) ⊗ (B_lᵀ B_l)        ((n_out·n_in) × (n_out·n_in))

It is held by the Grams of the hidden layers h = 1 … D−1: the input-side P_h = (W_h⋯W_1)ᵀ(W_h⋯W_1) (n_in × n_in,
the representational similarity of layer h; P_1 = W21ᵀW21 is ``similarity.item_similarity``) and the output-side
Q_h = (W_D⋯W_{h+1})(W_D⋯W_{h+1})ᵀ (n_out × n_out), with P_0 = I_in and Q_D = I_out:

    K = Σ_{l=1}^{D} Q_l ⊗ P_{l−1}           (two layers: K = W32W32ᵀ ⊗ I_in + I_out ⊗ W21ᵀW21)

The lazy/rich measure is the kernel distance from the initial kernel (Fort et al. 2020; Dominé et al. 2024),

    d(t) = 1 − ⟨K(0), K(t)⟩_F / (‖K(0)‖_F ‖K(t)‖_F)  ∈ [0, 1],

computed from the Grams without forming K: ⟨A ⊗ B, C ⊗ D⟩_F = ⟨A, C⟩_F ⟨B, D⟩_F (and ⟨I, X⟩ = tr X). For two layers
the Riccati solution's P(t) holds both Grams exactly (its diagonal blocks), so the exact method records the kernel
too. Linear regression (D = 1) has the constant kernel I_out ⊗ I_in: there is nothing to record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidParameterError
from .similarity import symmetric

KERNEL_FIELD = ("record", "kernel")


@dataclass
class KernelRecord:
    """Per hidden layer h = 1 … D−1, the Grams P_h (T, n_in, n_in) and Q_h (T, n_out, n_out) at each record, and
    the kernel distance d(t) (T,) from the first record."""

    input_grams: list[np.ndarray]
    output_grams: list[np.ndarray]
    distance: np.ndarray


def check_kernel(weights0: Sequence[np.ndarray]) -> None:
    """record.kernel needs a hidden layer: with D = 1 the NTK is the constant I_out ⊗ I_in."""
    if len(weights0) < 2:
        raise InvalidParameterError(
            "the NTK of a network without hidden layers is the constant I_out ⊗ I_in: there is nothing to record",
            field=KERNEL_FIELD, fix="add a hidden layer (e.g. network.hidden [16]) or set record.kernel to false")


def _gram(m: np.ndarray, left: bool) -> np.ndarray:
    """mᵀm (``left``) or m mᵀ for one matrix or a stack, exactly symmetric: a contiguous transpose makes the
    product one plain GEMM per record (a transposed view costs numpy twice as much), then (G + Gᵀ)/2 in place."""
    mt = np.ascontiguousarray(np.swapaxes(m, -1, -2))
    g = mt @ m if left else m @ mt
    g += np.swapaxes(g, -1, -2)  # numpy buffers the overlapping operand
    g *= 0.5
    return g


def hidden_grams(weights: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(P_1 … P_{D−1}, Q_1 … Q_{D−1}) of one set of weights or of stacks (T, rows, cols), input→output (module
    docstring): P_h = (W_h⋯W_1)ᵀ(W_h⋯W_1), Q_h = (W_D⋯W_{h+1})(W_D⋯W_{h+1})ᵀ, symmetric."""
    d = len(weights)
    ws = [np.asarray(w, dtype=np.float64) for w in weights]
    inputs, prefix = [], None
    for h in range(1, d):
        prefix = ws[0] if prefix is None else ws[h - 1] @ prefix      # W_h ⋯ W_1
        inputs.append(_gram(prefix, left=True))
    outputs, suffix = [None] * (d - 1), None
    for h in range(d - 1, 0, -1):
        suffix = ws[h] if suffix is None else suffix @ ws[h]           # W_D ⋯ W_{h+1}
        outputs[h - 1] = _gram(suffix, left=False)
    return inputs, outputs


def _terms(inputs: list[np.ndarray], outputs: list[np.ndarray]):
    """The D Kronecker terms (Q_l, P_{l−1}) of K, None standing for the identity."""
    return list(zip([*outputs, None], [None, *inputs]))


def _side_inners(grams: list[np.ndarray], n: int, identity_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """For one side's D terms (the D − 1 Gram stacks (T, n, n) and the identity, last for Q, first for P), the
    (T, D, D) arrays ⟨X_l(0), X_m(t)⟩ and ⟨X_l(t), X_m(t)⟩, by batched GEMMs on the flattened Grams."""
    t, k = grams[0].shape[0], len(grams)
    flat = grams[0].reshape(t, 1, n * n) if k == 1 else np.stack([g.reshape(t, n * n) for g in grams], axis=1)
    traces = np.stack([np.trace(g, axis1=-2, axis2=-1) for g in grams], axis=1)            # (T, k)
    self_inner = flat @ np.swapaxes(flat, -1, -2)                                          # (T, k, k)
    cross_inner = np.swapaxes(flat @ flat[0].T, -1, -2)                                    # (T, k0, k)
    d = k + 1
    g_idx = slice(0, k) if identity_last else slice(1, d)
    i_idx = k if identity_last else 0
    cross, same = np.empty((t, d, d)), np.empty((t, d, d))
    for out, inner, first_tr in ((cross, cross_inner, np.broadcast_to(traces[0], (t, k))), (same, self_inner, traces)):
        out[:, g_idx, g_idx] = inner
        out[:, i_idx, g_idx] = traces          # ⟨I, X_m(t)⟩
        out[:, g_idx, i_idx] = first_tr        # ⟨X_l(0 or t), I⟩
        out[:, i_idx, i_idx] = n
    return cross, same


def kernel_distance(inputs: list[np.ndarray], outputs: list[np.ndarray], n_in: int, n_out: int) -> np.ndarray:
    """d(t) = 1 − ⟨K(0), K(t)⟩ / (‖K(0)‖ ‖K(t)‖) per record, from stacked Grams (T, …) (module docstring):
    ⟨K, K'⟩ = Σ_{l,m} ⟨Q_l, Q'_m⟩ ⟨P_{l−1}, P'_{m−1}⟩, the D × D inner products of each side by batched GEMMs."""
    q_cross, q_same = _side_inners(outputs, n_out, identity_last=True)
    p_cross, p_same = _side_inners(inputs, n_in, identity_last=False)
    cross = np.einsum("tlm,tlm->t", q_cross, p_cross)
    norms = np.sqrt(np.abs(np.einsum("tlm,tlm->t", q_same, p_same)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(1.0 - cross / (norms[0] * norms), 0.0, 2.0)


def ntk_matrix(inputs: list[np.ndarray], outputs: list[np.ndarray], n_in: int, n_out: int) -> np.ndarray:
    """K = Σ_l Q_l ⊗ P_{l−1} at one record, (n_out·n_in) × (n_out·n_in), output-major (row i·n_in + a): for small
    problems (plots, tests)."""
    eye_in, eye_out = np.eye(n_in), np.eye(n_out)
    return sum(np.kron(eye_out if q is None else q, eye_in if p is None else p)
               for q, p in _terms(inputs, outputs))


def kernel_record(weights: Sequence[np.ndarray] | None, n_in: int, n_out: int, *,
                  w21_gram: np.ndarray | None = None, w32_gram: np.ndarray | None = None) -> KernelRecord:
    """The kernel over a run from its per-layer weight stacks (T, rows, cols), or, for the two-layer Riccati
    solution (no weights), from its Gram blocks W21ᵀW21 and W32W32ᵀ (P(t)'s diagonal blocks)."""
    if weights is not None:
        inputs, outputs = hidden_grams(weights)
    else:
        inputs, outputs = [symmetric(w21_gram)], [symmetric(w32_gram)]
    return KernelRecord(inputs, outputs, kernel_distance(inputs, outputs, n_in, n_out))

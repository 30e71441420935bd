"""What several closed forms share: the acceptance tolerances, ``_FIX_FLOW`` and the small numerical helpers."""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------------------------------------
# tolerances

# Σ11 = c·I: max |Σ11 − c I| ≤ WHITENING_RTOL · c. Exactly whitened or one-hot data gives ~1e-16; data whitened
# in float64 ~1e-15. A real deviation δ changes the solution by O(δ·t), so anything above round-off is refused.
WHITENING_RTOL = 1e-9
# Aligned (decoupled) init: off-diagonal Gram / cross entries ≤ ALIGN_RTOL × the layer norms (Frobenius). An
# init built as R A Vᵀ in float64 is aligned to ~1e-15; the misaligned part grows at most like the modes do,
# so 1e-8 keeps the closed form within ~1e-8 relative of the true flow while accepting round-off.
ALIGN_RTOL = 1e-8
# λ-balanced init: max |W32ᵀW32 − W21W21ᵀ − λ I| ≤ BALANCE_RTOL · (‖W21‖²_F + ‖W32‖²_F). Same reasoning.
BALANCE_RTOL = 1e-8
# A layer's image W_l r of a unit vector with norm ≤ ROUNDOFF_RTOL · ‖W_l‖_F is round-off, not a direction.
ROUNDOFF_RTOL = 1e-13
# Singular values of Σ31 at or below S_ZERO_RTOL · s_max are zeros (round-off of a rank-deficient Σ31).
S_ZERO_RTOL = 1e-12
# Singular values closer than DEGENERATE_RTOL · s_max form one degenerate block (the hierarchy's repeated splits).
DEGENERATE_RTOL = 1e-10
# Two-layer modes with |a0² − b0²|/2 ≤ NEAR_BALANCED_RTOL · |a0 b0| use the balanced formula: the
# unbalanced correction to du/dt is O((c0/u)²) ≤ 1e-16, below round-off.
NEAR_BALANCED_RTOL = 1e-8

_FIX_FLOW = 'use method "flow" (numerical gradient flow), which has no such condition'


# ------------------------------------------------------------------------------------------------
# small numerical helpers


def _phi(r, t):
    """(1 − e^{−r t}) / r, with its limit t at r = 0 (any sign of r; overflows to inf for r t ≪ 0)."""
    r, t = np.broadcast_arrays(np.asarray(r, dtype=np.float64), np.asarray(t, dtype=np.float64))
    out = np.array(t, dtype=np.float64, copy=True)
    nz = r != 0
    with np.errstate(over="ignore", invalid="ignore"):
        out[nz] = -np.expm1(-r[nz] * t[nz]) / r[nz]
    return out


def _as_float_arrays(*values):
    return np.broadcast_arrays(*[np.asarray(v, dtype=np.float64) for v in values])

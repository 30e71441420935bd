"""The loss by its definition, sample by sample: an independent check of the correlation identities the service
uses (L = tr Σ33 − 2 tr(W Σ31ᵀ) + tr(W Σ11 Wᵀ))."""

from __future__ import annotations

import numpy as np


def per_sample_mse(x: np.ndarray, y: np.ndarray, weights: list[np.ndarray]) -> float:
    """(1/N) Σ_i ‖y_i − W_D ⋯ W_1 x_i‖², one sample (row of x, y) at a time, layer by layer."""
    total = 0.0
    for xi, yi in zip(x, y, strict=True):
        h = xi
        for w in weights:
            h = w @ h
        total += float(np.sum((yi - h) ** 2))
    return total / len(x)

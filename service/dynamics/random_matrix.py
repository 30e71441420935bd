"""Lampinen & Ganguli's sample-free theory of generalization dynamics (model "random_matrix"): train and test loss of a
noisy low-rank teacher's student predicted from the teacher, the noise and the sizes alone, without the sample.

Lampinen & Ganguli, "An analytic theory of generalization dynamics and transfer learning in deep linear networks",
ICLR 2019, arXiv:1809.10374. The equations below are the paper's as its authors state them in their repository
(lampinen/transfer-theory: writing/poster/generalization_transfer_poster.tex, whose commented-out source carries the
paper's section on the theory, and theory_data_calculation.py / theory_functions.py, the code of the paper's figures,
including the one varying the number of examples P); the paper's own PDF text was not reachable through the search
tool, only its abstract.

The random-matrix facts (their eqs. "shatsbar", "ovlap", "mp"). A training target T = (teacher of singular values
s̄_α, rank r̄) + (noise with i.i.d. entries of variance σ_e²/M), T of size m × M or M × m (m ≤ M), aspect ratio
A = m/M ∈ (0, 1]. In the limit m, M → ∞ at fixed A (noise units σ_e = 1, x = s̄/σ_e):

    empirical singular value  t̂(x) = √((1 + x²)(A + x²)) / x     if x > A^{1/4},   1 + √A otherwise
    overlap  |û·ū| |v̂·v̄| = O(x) = [1 − A(1 + x²)/(x²(A + x²))]^{1/2} [1 − (A + x²)/(x²(1 + x²))]^{1/2}   if x > A^{1/4},
                                   0 otherwise
    the other m − r̄ singular values: Marchenko–Pastur, p(y) = √(4A − (y² − (1 + A))²) / (π A y) on [1 − √A, 1 + √A]

so a teacher mode weaker than the phase transition x = A^{1/4} leaves no trace in the data (it sits at the bulk's
edge with overlap 0: the paper's below-threshold case), and a stronger one is imprinted with an inflated singular
value and an overlap that tends to 1 as x grows.

The learning dynamics (their "training aligned" student, eq. "s_soln"): every mode of the data, of singular value ŝ,
is learned from the same initial strength ε along its own scalar curve u(t; ŝ): Saxe's sigmoid for two layers, the
deep balanced mode for D ≥ 3, the exponential of linear regression for D = 1 (exact.balanced_mode,
deep_balanced_mode; the exact per-mode GD maps for GD, exact.gd_mode_map). A student of rank r learns the r̄ teacher
modes (strongest first) and the r − r̄ strongest noise modes (the top of the MP sea); the rest stay at 0. Then
(their train and test error formulas, here unnormalised, in our loss L = (1/N)Σ‖y − Wx‖², no ½):

    L(t)      = E[L_ls] + c Σ_{α ≤ r̄} (u_α − t̂_α)² + (m − r̄) c ∫ p(y) [(u(t; y) − y)² on the learned region, y² beyond]
    L_test(t) = n_out σ² + Σ_α s̄_α² + Σ_{α ≤ r̄} (u_α² − 2 u_α √D s̄_α O_α) + (m − r̄) ∫_{learned} p(y) u(t; y)² dy

(σ_e units inside the integrals; the learned noise region is the top (r − r̄)/(m − r̄) of p's mass.)

The noisy teacher's data in these terms (presets.noisy_teacher, which attaches its ``NoisyTeacher`` to the problem):

* N ≥ n_in samples: whitened inputs, Σ11 = I (c = 1); T = Σ31 = W̄ + noise of variance σ²/N per entry (n_out × n_in):
  M = max(n_out, n_in), σ_e² = M σ²/N, signal s̄ (D = 1), E[L_ls] = σ² n_out (N − n_in)/N (χ² with n_out(N − n_in)
  degrees of freedom);
* N < n_in (the paper's P < N1 case, "data density" D = P/N1): the inputs cannot be whitened; the paper's are N
  orthonormal directions, here of norm √n_in like the test inputs, so Σ11 = (n_in/N)·Π = c·Π with Π the projection on
  their span; T = Σ31/c restricted to that span is n_out × N: the teacher seen through an N-dimensional random
  subspace, of singular values √D s̄ (D = N/n_in), plus noise of variance σ²/n_in per entry: M = max(n_out, N),
  σ_e² = M σ²/n_in, E[L_ls] = 0 (N ≤ n_in points are fitted exactly). Σ31's singular values are c·t̂.

This is their theory, with their simplifications: an infinite-size limit applied to finite matrices (errors
O(M^{−1/2}) in t̂ and O, fluctuating from sample to sample), a student that learns each data mode on its own from ε
(exact for an aligned init, approximate from a small random one), the noise modes' cross terms with the teacher
dropped (zero on average). ε is the init's own scale, ‖W(0)‖_F/√r (= the strength of an aligned init of strength ε).
Measured against simulations: tests/dynamics/test_random_matrix.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from . import exact as ex
from .methods import Exact, GradientDescent, GradientFlow
from .modes import bottleneck
from .problem import Problem
from .trajectory import LossTheory

MODEL = "random_matrix"
# Gauss–Legendre nodes per region of the Marchenko–Pastur integrals (in the angle θ of y² = 1 + A + 2√A cos θ, where
# the density is smooth): the integrands are Saxe sigmoids in y, resolved to ~1e-10 at 400 nodes.
MP_NODES = 400
# GD runs get the exact per-mode GD map while steps × modes (teacher modes + the bulk's nodes) stays below this (a
# compiled loop, ~0.1 s); longer runs get the flow's curves at t = η·step, O(η) from GD, as theory.py's small-init
# overlay does (the theory itself is O(1/√n) from a finite sample anyway).
GD_MAP_MAX_UPDATES = 2e7


@dataclass(frozen=True)
class NoisyTeacher:
    """A low-rank teacher W̄ (its singular values ``singular_values``), Gaussian output noise of std ``noise`` and the
    sizes of its training sample: what the sample-free theory needs (presets.noisy_teacher)."""

    singular_values: tuple[float, ...]
    noise: float
    n_in: int
    n_out: int
    n_samples: int


# ------------------------------------------------------------------------------------------------
# the random-matrix facts


def spike_singular_value(x, aspect: float) -> np.ndarray:
    """t̂(x) = √((1 + x²)(A + x²))/x above the transition x > A^{1/4}, the bulk edge 1 + √A at and below (noise units)."""
    x = np.asarray(x, dtype=np.float64)
    above = x > aspect ** 0.25
    safe = np.where(above, x, 1.0)
    return np.where(above, np.sqrt((1.0 + safe ** 2) * (aspect + safe ** 2)) / safe, 1.0 + np.sqrt(aspect))


def spike_overlap(x, aspect: float) -> np.ndarray:
    """O(x) = |û·ū||v̂·v̄| = √(1 − A(1 + x²)/(x²(A + x²))) √(1 − (A + x²)/(x²(1 + x²))) above the transition, 0 below."""
    x = np.asarray(x, dtype=np.float64)
    above = x > aspect ** 0.25
    x2 = np.where(above, x, 1.0) ** 2
    left = 1.0 - aspect * (1.0 + x2) / (x2 * (aspect + x2))
    right = 1.0 - (aspect + x2) / (x2 * (1.0 + x2))
    return np.where(above, np.sqrt(np.clip(left, 0.0, None) * np.clip(right, 0.0, None)), 0.0)


def mp_density(y, aspect: float) -> np.ndarray:
    """Marchenko–Pastur density of the noise singular values: √(4A − (y² − (1 + A))²)/(π A y) on [1 − √A, 1 + √A]."""
    y = np.asarray(y, dtype=np.float64)
    inside = (y > 1.0 - np.sqrt(aspect)) & (y < 1.0 + np.sqrt(aspect))
    arg = 4.0 * aspect - (y ** 2 - (1.0 + aspect)) ** 2
    return np.where(inside, np.sqrt(np.clip(arg, 0.0, None)) / (np.pi * aspect * np.where(inside, y, 1.0)), 0.0)


@cache
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [−1, 1] (numpy's leggauss costs ~70 ms at 400 nodes: computed once)."""
    g, w = np.polynomial.legendre.leggauss(n)
    g.flags.writeable = False
    w.flags.writeable = False
    return g, w


def _mp_angle_nodes(aspect: float, lo: float, hi: float, n: int = MP_NODES) -> tuple[np.ndarray, np.ndarray]:
    """Nodes y and weights for ∫ p(y) g(y) dy over the part of the bulk with angle θ ∈ [lo, hi], y² = 1 + A + 2√A cos θ
    (θ = 0 the top edge): there p(y) dy = (2 sin²θ / (π y²)) dθ, smooth, integrated by Gauss–Legendre."""
    if hi <= lo:
        return np.zeros(0), np.zeros(0)
    g, w = _legendre(n)
    theta = 0.5 * (hi - lo) * g + 0.5 * (hi + lo)
    y2 = 1.0 + aspect + 2.0 * np.sqrt(aspect) * np.cos(theta)
    weight = 0.5 * (hi - lo) * w * 2.0 * np.sin(theta) ** 2 / (np.pi * y2)
    return np.sqrt(np.maximum(y2, 0.0)), weight


def mp_top_angle(aspect: float, fraction: float) -> float:
    """The angle θ_q whose bulk [0, θ_q] (from the top edge) holds ``fraction`` of the MP mass (bisection)."""
    if fraction <= 0.0:
        return 0.0
    if fraction >= 1.0:
        return np.pi
    lo, hi = 0.0, np.pi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        _, w = _mp_angle_nodes(aspect, 0.0, mid, 64)
        lo, hi = (mid, hi) if w.sum() < fraction else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class PredictedSpectrum:
    """What the theory predicts for the training data of a ``NoisyTeacher`` (module docstring): per teacher mode the
    empirical singular value of Σ31 (``s_hat``, c·t̂), its overlap with the teacher mode (``overlap``), whether it is
    above the transition; the bulk of the other ``n_bulk`` modes (edges of Σ31's noise singular values), the aspect
    ratio, the noise scale σ_e, the input scale c (Σ11 = c·I or c·Π) and the signal factor √D."""

    teacher: np.ndarray
    s_hat: np.ndarray
    overlap: np.ndarray
    detectable: np.ndarray
    aspect: float
    noise_scale: float
    c: float
    signal_factor: float
    n_modes: int
    n_bulk: int
    bulk_edges: tuple[float, float]
    residual: float


def predicted_spectrum(teacher: NoisyTeacher) -> PredictedSpectrum:
    """The spike and bulk of Σ31 the theory predicts for ``teacher``'s sample (module docstring), strongest first."""
    s_bar = np.sort(np.asarray(teacher.singular_values, dtype=np.float64))[::-1]
    n, ni, no, sigma = teacher.n_samples, teacher.n_in, teacher.n_out, float(teacher.noise)
    k = min(n, ni)                                    # the dimension of the inputs' span
    big, m = max(no, k), min(no, k)
    aspect = m / big
    var = sigma ** 2 / max(n, ni)                     # noise variance per entry of T
    sigma_e = np.sqrt(var * big)
    density = min(1.0, n / ni)
    c = max(1.0, ni / n)
    signal = np.sqrt(density) * s_bar
    if sigma_e > 0:
        x = signal / sigma_e
        t_hat = sigma_e * spike_singular_value(x, aspect)
        overlap = spike_overlap(x, aspect)
        detectable = x > aspect ** 0.25
    else:                                             # no noise: the data carry the teacher (through the span) as is
        t_hat, overlap, detectable = signal, np.ones_like(signal), signal > 0
    edges = (c * sigma_e * (1.0 - np.sqrt(aspect)), c * sigma_e * (1.0 + np.sqrt(aspect)))
    residual = sigma ** 2 * no * max(0, n - ni) / n
    return PredictedSpectrum(s_bar, c * t_hat, overlap, detectable, aspect, sigma_e, c, float(np.sqrt(density)), m,
                             m - s_bar.size, edges, residual)


# ------------------------------------------------------------------------------------------------
# the learning curves


def _mode_curves(s_hat: np.ndarray, u0: float, depth: int, c: float, gamma: float, times,
                 gd: tuple[float, np.ndarray] | None = None) -> np.ndarray | None:
    """u(t; ŝ) (T, K) for Σ31 singular values ``s_hat`` (K,), every mode from u0 (module docstring): the exact per-mode
    GD map at the steps when ``gd`` = (η, steps), else the flow at ``times``; None where no per-mode solution exists
    (depth ≥ 3 with weight decay)."""
    t = np.asarray(times, dtype=np.float64)
    if gd is not None:
        eta, k = gd
        if depth == 1:
            rate = 1.0 - eta * (2.0 * c + gamma)
            limit = 2.0 * s_hat / (2.0 * c + gamma)
            with np.errstate(over="ignore", invalid="ignore"):
                return limit[None] + (u0 - limit[None]) * np.power(rate, k.astype(np.float64))[:, None]
        if gamma and depth >= 3:
            return None
        a = np.full((s_hat.size, depth), u0 ** (1.0 / depth))
        return np.prod(ex.gd_mode_map(a, s_hat, eta, k, c, gamma), axis=2)
    tt = t[:, None]
    if depth == 1:
        rate = 2.0 * c + gamma
        limit = 2.0 * s_hat / rate
        return limit[None] + (u0 - limit[None]) * np.exp(-rate * tt)
    if depth == 2:
        return ex.balanced_mode(tt, s_hat[None], u0, c, gamma)
    if gamma:
        return None
    return ex.deep_balanced_mode(tt, s_hat[None], u0, depth, c)


def random_matrix_loss_theory(problem: Problem, weights0: Sequence[np.ndarray],
                              method: GradientDescent | GradientFlow | Exact, times: np.ndarray,
                              steps: np.ndarray | None = None) -> LossTheory | None:
    """Train and test loss at the records predicted by the sample-free theory (module docstring) for a problem that
    carries its ``NoisyTeacher`` (``problem.teacher``); None without one, for an init of zero scale, for a teacher of
    rank ≥ min(n_out, min(N, n_in)) (no bulk left to be a sea) or depth ≥ 3 with weight decay."""
    teacher = getattr(problem, "teacher", None)
    if not isinstance(teacher, NoisyTeacher):
        return None
    ws = [np.asarray(w, dtype=np.float64) for w in weights0]
    depth = len(ws)
    hidden = [w.shape[0] for w in ws[:-1]]
    spec = predicted_spectrum(teacher)
    r_bar = spec.teacher.size
    if r_bar >= spec.n_modes:
        return None
    w0 = ws[0]
    for wl in ws[1:]:
        w0 = wl @ w0
    rank = min(bottleneck(problem, hidden), spec.n_modes)
    eps = float(np.linalg.norm(w0)) / np.sqrt(rank)
    if not eps > 0:
        return None
    c, sig_e, aspect = spec.c, spec.noise_scale, spec.aspect
    gamma = float(method.weight_decay)
    times = np.asarray(times, dtype=np.float64)
    gd, how = None, "flow"
    if isinstance(method, GradientDescent):
        k = np.asarray(steps if steps is not None else np.rint(times / method.learning_rate), dtype=np.int64)
        if depth == 1 or float(np.max(k, initial=0)) * (r_bar + 2 * MP_NODES) <= GD_MAP_MAX_UPDATES:
            gd, how = (float(method.learning_rate), k), "exact per-mode GD maps"
        else:
            how = f"flow at t = η·step, O(η) from GD (η = {method.learning_rate:g})"
    learned_spikes = min(rank, r_bar)
    spikes = _mode_curves(spec.s_hat, eps, depth, c, gamma, times, gd)
    if spikes is None:
        return None
    spikes = spikes.copy()
    spikes[:, learned_spikes:] = 0.0
    t_hat = spec.s_hat / c
    train = spec.residual + c * np.sum((spikes - t_hat[None]) ** 2, axis=1)
    test = (teacher.n_out * teacher.noise ** 2 + float(np.sum(spec.teacher ** 2))
            + np.sum(spikes ** 2 - 2.0 * spikes * (spec.signal_factor * spec.teacher * spec.overlap)[None], axis=1))
    if spec.n_bulk > 0 and sig_e > 0:
        learned_bulk = max(0, rank - r_bar)
        theta_q = mp_top_angle(aspect, learned_bulk / spec.n_bulk)
        y_in, w_in = _mp_angle_nodes(aspect, 0.0, theta_q)
        y_out, w_out = _mp_angle_nodes(aspect, theta_q, np.pi)
        t_in = sig_e * y_in                                       # the noise modes' targets, T's singular values
        if t_in.size:
            u = _mode_curves(c * t_in, eps, depth, c, gamma, times, gd)
            if u is None:
                return None
            train = train + spec.n_bulk * c * ((u - t_in[None]) ** 2) @ w_in
            test = test + spec.n_bulk * (u ** 2) @ w_in
        if y_out.size:
            train = train + spec.n_bulk * c * float(np.sum(w_out * (sig_e * y_out) ** 2))
    assumptions = (
        f"Lampinen & Ganguli 2019 (arXiv:1809.10374): sample-free random-matrix theory. Teacher singular values "
        f"{np.array2string(spec.teacher, precision=4)}, noise σ = {teacher.noise:g}, N = {teacher.n_samples}, "
        f"n_in = {teacher.n_in}, n_out = {teacher.n_out}: aspect ratio A = {aspect:.4g}, noise scale σ_e = {sig_e:.4g}, "
        f"phase transition at s̄√D = σ_e·A^(1/4) = {sig_e * aspect ** 0.25:.4g} (D = {spec.signal_factor ** 2:.4g}); "
        f"predicted Σ31 singular values {np.array2string(spec.s_hat, precision=4)} with overlaps "
        f"{np.array2string(spec.overlap, precision=4)}, {spec.n_bulk} noise modes in [{spec.bulk_edges[0]:.4g}, "
        f"{spec.bulk_edges[1]:.4g}]; a training-aligned student of rank {rank} learns every mode from "
        f"ε = ‖W(0)‖/√r = {eps:.3g} (Saxe's per-mode solutions, depth {depth}, {how}); asymptotic in the sizes (errors "
        f"O(1/√max(n_out, min(N, n_in))) on finite ones), no use of the sample")
    return LossTheory(train, test, MODEL, False, assumptions)

"""Initial conditions: seeded, reproducible weight lists in input→output order (docs/theory.md#init).

Every function takes the layer shapes from ``network.layer_shapes(n_in, hidden, n_out)`` and returns
float64 matrices ``[W_1, …, W_D]`` (``W_1`` = W21 is hidden[0] × n_in). Random draws come from
``numpy.random.default_rng(seed)`` in a fixed order, so one seed gives the same bits on every machine
numpy supports.

Schemes and what their ``scale``/``strength`` mean:

* ``gaussian``: i.i.d. entries N(0, scale²).
* ``orthogonal``: scale × a (semi-)orthogonal matrix per layer (all singular values = scale).
* ``balanced``: W_l = R_{l+1} (scale·I_r) R_lᵀ with shared orthonormal factors, r = min(widths):
  every layer has r singular values equal to ``scale`` and W_{l+1}ᵀW_{l+1} = W_lW_lᵀ exactly.
* ``lambda_balanced``: two layers with W2ᵀW2 − W1W1ᵀ = λ I_h (docs/theory.md#riccati); ``scale`` is the σ of a
  Gaussian init whose product it reproduces.
* ``aligned``: Saxe's decoupled init on the SVD of Σ31 with initial mode strengths ``strength``.
* ``given``: user weights, shape-checked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import network
from .errors import InvalidParameterError
from .modes import mode_basis
from .problem import Problem

Shapes = Sequence[tuple[int, int]]

SCHEMES = ("gaussian", "orthogonal", "balanced", "lambda_balanced", "aligned", "given")

# Defaults the HTTP layer may mirror. A small init (Saxe's regime) is the interesting default: the
# sigmoidal, stage-like mode learning only shows when the initial strengths are ≪ the singular values.
DEFAULTS: dict[str, object] = {"scale": 1e-2, "seed": 0, "lam": 0.0, "strength": 1e-3}

# Which parameters each scheme reads (seed is optional for aligned: None = identity embedding).
SCHEME_PARAMS: dict[str, tuple[str, ...]] = {
    "gaussian": ("scale", "seed"),
    "orthogonal": ("scale", "seed"),
    "balanced": ("scale", "seed"),
    "lambda_balanced": ("lam", "scale", "seed"),
    "aligned": ("strength", "seed"),
    "given": ("weights",),
}


# ------------------------------------------------------------------------------------------------
# building blocks


def _orthonormal_columns(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n × k (k ≤ n) with orthonormal columns, Haar-distributed: QR of a Gaussian with the sign fix.

    Without fixing the signs of diag(R), Q is not Haar (LAPACK's sign convention biases it).
    """
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs


def _semi_orthogonal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """rows × cols with orthonormal rows or columns, whichever are fewer (all singular values 1)."""
    if rows >= cols:
        return _orthonormal_columns(rng, rows, cols)
    return _orthonormal_columns(rng, cols, rows).T


def _widths(shapes: Shapes) -> list[int]:
    """[n_in, h_1, …, n_out] from the layer shapes (checking that consecutive layers chain)."""
    widths = [int(shapes[0][1])]
    for l, (rows, cols) in enumerate(shapes):
        if int(cols) != widths[-1]:
            raise InvalidParameterError(f"layer {l + 1} has {cols} inputs but layer {l} has {widths[-1]} outputs",
                                        field=("network", "hidden"), fix="build shapes with network.layer_shapes")
        widths.append(int(rows))
    return widths


# ------------------------------------------------------------------------------------------------
# schemes


def gaussian(shapes: Shapes, scale: float, seed: int) -> list[np.ndarray]:
    """W_l with i.i.d. entries N(0, scale²), drawn layer by layer from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    return [scale * rng.standard_normal(tuple(s)) for s in shapes]


def orthogonal(shapes: Shapes, scale: float, seed: int) -> list[np.ndarray]:
    """W_l = scale · Q_l with Q_l Haar (semi-)orthogonal: Q_lQ_lᵀ = I (wide) or Q_lᵀQ_l = I (tall).

    A product of such layers has all its (min-width many) singular values equal to scale^D when the
    widths do not shrink and grow again (dynamical isometry, docs/theory.md#init).
    """
    rng = np.random.default_rng(seed)
    return [scale * _semi_orthogonal(rng, int(r), int(c)) for r, c in shapes]


def balanced(shapes: Shapes, scale: float, seed: int) -> list[np.ndarray]:
    """Exactly balanced: W_l = R_{l+1} diag(a) R_lᵀ with a = scale·1_r, so W_{l+1}ᵀW_{l+1} = W_lW_lᵀ.

    R_l (width_l × r) have orthonormal columns (random, seeded), r = min(n_in, hidden…, n_out):
    balancedness forces every layer to have the same rank, so the bottleneck sets it. Then
    W_lW_lᵀ = R_{l+1} diag(a²) R_{l+1}ᵀ = W_{l+1}ᵀW_{l+1}. ``scale`` is each layer's nonzero singular
    value; the network map W = R_{D+1} diag(scale^D) R_1ᵀ has r singular values scale^D.
    """
    widths = _widths(shapes)
    r = min(widths)
    rng = np.random.default_rng(seed)
    frames = [_orthonormal_columns(rng, n, r) for n in widths]
    return [scale * (frames[l + 1] @ frames[l].T) for l in range(len(shapes))]


def _lambda_balanced_factors(s: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(s2, s1) with s2·s1 = s and s2² − s1² = λ: S2 = sqrt((√(λ²+4s²)+λ)/2), S1 = …−λ…
    (docs/theory.md#init).

    The larger factor is computed from the root and the smaller one as s / larger, which avoids the
    cancellation √(λ²+4s²) − |λ| when |λ| ≫ s.
    """
    root = np.hypot(lam, 2.0 * s)
    if lam >= 0:
        s2 = np.sqrt(0.5 * (root + lam))
        s1 = np.divide(s, s2, out=np.zeros_like(s), where=s2 > 0)
    else:
        s1 = np.sqrt(0.5 * (root - lam))
        s2 = np.divide(s, s1, out=np.zeros_like(s), where=s1 > 0)
    return s2, s1


def lambda_balanced(shapes: Shapes, lam: float, scale: float, seed: int) -> list[np.ndarray]:
    """Two layers with W2ᵀW2 − W1W1ᵀ = λ I_h exactly (Dominé et al. 2024; docs/theory.md#init).

    Draw G1 (h × n_in), G2 (n_out × h) with N(0, scale²) entries and take G2G1 = U diag(s) Vᵀ; then

        W2 = U S2 Rᵀ,  W1 = R S1 Vᵀ,  S2 = sqrt((√(λ²+4s²)+λ)/2),  S1 = sqrt((√(λ²+4s²)−λ)/2)

    with R a random h × h orthogonal matrix, so W2W1 = G2G1 (the Gaussian init's network map,
    redistributed between the layers) and W2ᵀW2 − W1W1ᵀ = R(S2ᵀS2 − S1S1ᵀ)Rᵀ = λ I_h.
    Needs n_out ≥ h for λ > 0 (W2ᵀW2 ⪰ λI has rank h) and n_in ≥ h for λ < 0; any widths for λ = 0.
    """
    if len(shapes) != 2:
        raise InvalidParameterError(
            f"the lambda_balanced init needs exactly one hidden layer, the network has {len(shapes) - 1}",
            field=("network", "hidden"), fix="use one hidden layer, or the balanced init for deeper networks")
    if not math.isfinite(lam):
        raise InvalidParameterError("lambda must be finite", field=("init", "lambda"), fix="give a finite number")
    (h, n_in), (n_out, h2) = shapes
    h, n_in, n_out = int(h), int(n_in), int(n_out)
    if h2 != h:
        raise InvalidParameterError("the two layer shapes do not chain", field=("network", "hidden"),
                                    fix="build shapes with network.layer_shapes")
    if lam > 0 and n_out < h:
        raise InvalidParameterError(
            f"lambda > 0 needs n_out ≥ hidden width (W2ᵀW2 = λI + W1W1ᵀ has full rank {h}), "
            f"but n_out = {n_out} < {h}",
            field=("init", "lambda"), fix=f"use lambda ≤ 0, or a hidden width of at most {n_out}")
    if lam < 0 and n_in < h:
        raise InvalidParameterError(
            f"lambda < 0 needs n_in ≥ hidden width (W1W1ᵀ = |λ|I + W2ᵀW2 has full rank {h}), "
            f"but n_in = {n_in} < {h}",
            field=("init", "lambda"), fix=f"use lambda ≥ 0, or a hidden width of at most {n_in}")
    rng = np.random.default_rng(seed)
    g1 = scale * rng.standard_normal((h, n_in))
    g2 = scale * rng.standard_normal((n_out, h))
    rot = _orthonormal_columns(rng, h, h)
    # Thin SVD (a full one forms an n_out × n_out U: 800 MB at 10,000 outputs), completed below only by the
    # few columns the S2/S1 diagonals need beyond min(n_out, n_in).
    u, s_prod, vt = np.linalg.svd(g2 @ g1, full_matrices=False)
    # s_i for i < h: the product's singular values, 0 beyond its rank min(n_out, n_in, h).
    s = np.zeros(h)
    m = min(n_out, n_in, h)
    s[:m] = s_prod[:m]
    s2, s1 = _lambda_balanced_factors(s, lam)
    k2, k1 = min(n_out, h), min(h, n_in)  # the diagonals of S2 (n_out × h) and S1 (h × n_in)
    u = _complete_orthonormal(u, k2, rng)
    vt = _complete_orthonormal(vt.T, k1, rng).T
    # The dimension checks above make s2 = 0 for i ≥ n_out and s1 = 0 for i ≥ n_in (where s = 0).
    w2 = (u[:, :k2] * s2[:k2]) @ rot[:, :k2].T
    w1 = (rot[:, :k1] * s1[:k1]) @ vt[:k1]
    return [w1, w2]


def _complete_orthonormal(q: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The first k columns of an orthonormal basis that starts with q's columns (n × m, orthonormal).

    Extra columns, when k > m, come from the QR of [q, Gaussian]; signs are fixed so q's columns are kept.
    """
    if q.shape[1] >= k:
        return q[:, :k]
    qr, r = np.linalg.qr(np.hstack([q, rng.standard_normal((q.shape[0], k - q.shape[1]))]))
    return qr * np.where(np.diag(r) < 0, -1.0, 1.0)


def _strength_vector(strength, r: int, k: int) -> np.ndarray:
    """Per-mode strengths for the r bottleneck modes from a scalar or a list of length r or k."""
    try:
        a = np.asarray(strength, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"strength must be a number or a list of numbers, got {strength!r}",
                                    field=("init", "strength"), fix="give e.g. 0.001 or [0.001, 0.002]") from exc
    if a.ndim == 0:
        a = np.full(r, float(a))
    elif a.ndim != 1 or a.size not in (r, k):
        raise InvalidParameterError(
            f"strength has {a.size} entries; the network can hold {r} modes of the task's {k}",
            field=("init", "strength"),
            fix=f"give one number, or a list of {r} (bottleneck modes) or {k} (all modes) numbers")
    if not np.all(np.isfinite(a)):
        i = int(np.argwhere(~np.isfinite(a))[0][0])
        raise InvalidParameterError("strength must be finite", field=("init", "strength", i),
                                    fix="give finite numbers")
    return a[:r].copy()


def aligned(problem: Problem, shapes: Shapes, strength, seed: int | None = None) -> list[np.ndarray]:
    """Saxe's decoupled init on Σ31 = U S Vᵀ, any depth (docs/theory.md#saxe-two-layer, docs/theory.md#saxe-deep):

        W_l = R_{l+1} diag(a_l) R_lᵀ,  R_1 = V_r,  R_{D+1} = U_r,  a_l = |u0|^{1/D}

    so every mode α < r = min(widths) starts at mode strength u_αᵀ W v_α = u0_α exactly, and modes
    beyond the bottleneck at 0 (the network cannot represent them; list entries for them are
    ignored). Hidden frames R_l (h_l × r, orthonormal columns) are a seeded random rotation, or the
    first r columns of the identity when ``seed`` is None.

    ``strength`` (u0) is a number or one per mode. A negative u0 puts its sign on the last layer
    (a_D = −|u0|^{1/D}): the init stays balanced (W_{l+1}ᵀW_{l+1} = W_lW_lᵀ) and for D = 2 it is the
    anti-balanced case a0 = −b0 (docs/theory.md#saxe-anti-balanced), a mode that decays to the saddle u = 0 instead of
    being learned. u0 = 0 starts the mode at that saddle, where it stays.
    """
    widths = _widths(shapes)
    if widths[0] != problem.n_in or widths[-1] != problem.n_out:
        raise InvalidParameterError(
            f"the network is {widths[0]} → {widths[-1]} but the task is {problem.n_in} → {problem.n_out}",
            field=("network",), fix="build shapes from the problem's n_in and n_out")
    basis = mode_basis(problem)
    depth = len(shapes)
    r = min(widths)
    u0 = _strength_vector(strength, r, basis.s.size)
    mag = np.abs(u0) ** (1.0 / depth)
    rng = np.random.default_rng(seed) if seed is not None else None
    frames = [basis.v[:, :r]]
    for h in widths[1:-1]:
        frames.append(_orthonormal_columns(rng, h, r) if rng is not None else np.eye(h, r))
    frames.append(basis.u[:, :r])
    weights = []
    for l in range(depth):
        a = mag if l < depth - 1 else np.where(u0 < 0, -mag, mag)
        weights.append((frames[l + 1] * a) @ frames[l].T)
    return weights


def given(weights, shapes: Shapes) -> list[np.ndarray]:
    """User-supplied weights, checked against the shapes (network.check_weights)."""
    return network.check_weights(weights, shapes)


# ------------------------------------------------------------------------------------------------
# dispatcher


def _check_scale(value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if isinstance(value, bool) or not math.isfinite(x) or x <= 0:
        raise InvalidParameterError(f"scale must be a finite number > 0, got {value!r}", field=("init", "scale"),
                                    fix="give a positive scale, e.g. 0.01 for a small init")
    return x


def _check_seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidParameterError(f"seed must be a non-negative integer, got {value!r}", field=("init", "seed"),
                                    fix="give an integer ≥ 0")
    return int(value)


def _check_lambda(value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if isinstance(value, bool) or not math.isfinite(x):
        raise InvalidParameterError(f"lambda must be a finite number, got {value!r}", field=("init", "lambda"),
                                    fix="give a finite number (0 = zero-balanced)")
    return x


def initial_weights(problem: Problem, hidden: Sequence[int], scheme: str, **params) -> list[np.ndarray]:
    """W_1 … W_D for ``scheme`` ∈ SCHEMES on the network n_in → hidden… → n_out of ``problem``.

    ``params`` may hold scale, seed, lam (or ``lambda``), strength, weights; parameters given as None
    take the DEFAULTS, a parameter the scheme does not read is an error (so a request never silently
    ignores a setting). Errors name the field as ("init", name).
    """
    if "lambda" in params:
        if params.get("lam") is not None and params["lambda"] is not None:
            raise InvalidParameterError("give lambda once (lam and lambda are the same setting)",
                                        field=("init", "lambda"), fix="drop one of them")
        lam_value = params.pop("lambda")
        if params.get("lam") is None:
            params["lam"] = lam_value
    if scheme not in SCHEME_PARAMS:
        raise InvalidParameterError(f"unknown init scheme {scheme!r}", field=("init", "scheme"),
                                    fix=f"use one of {', '.join(SCHEMES)}")
    allowed = SCHEME_PARAMS[scheme]
    given_params = {k: v for k, v in params.items() if v is not None}
    for name in given_params:
        if name not in allowed:
            shown = "lambda" if name == "lam" else name
            raise InvalidParameterError(
                f"the {scheme} init does not use {shown!r}", field=("init", shown),
                fix=f"{scheme} reads {', '.join('lambda' if a == 'lam' else a for a in allowed)}; drop {shown!r}")
    shapes = network.layer_shapes(problem.n_in, hidden, problem.n_out)
    if scheme == "given":
        if "weights" not in given_params:
            raise InvalidParameterError("the given init needs weights", field=("init", "weights"),
                                        fix="give one matrix per layer, input→output")
        return given(given_params["weights"], shapes)
    if scheme == "aligned":
        strength = given_params.get("strength", DEFAULTS["strength"])
        seed = _check_seed(given_params["seed"]) if "seed" in given_params else None
        return aligned(problem, shapes, strength, seed)
    scale = _check_scale(given_params.get("scale", DEFAULTS["scale"]))
    seed = _check_seed(given_params.get("seed", DEFAULTS["seed"]))
    if scheme == "gaussian":
        return gaussian(shapes, scale, seed)
    if scheme == "orthogonal":
        return orthogonal(shapes, scale, seed)
    if scheme == "balanced":
        return balanced(shapes, scale, seed)
    lam = _check_lambda(given_params.get("lam", DEFAULTS["lam"]))
    return lambda_balanced(shapes, lam, scale, seed)

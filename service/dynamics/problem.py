"""The learning problem: input–output correlations Σ11, Σ31 and (optionally) Σ33.

Conventions (docs/theory.md#conventions): samples are rows here, X is N × n_in and Y is N × n_out, so

    Σ11 = (1/N) Xᵀ X   (n_in × n_in)      Σ31 = (1/N) Yᵀ X   (n_out × n_in)
    Σ33 = (1/N) Yᵀ Y   (n_out × n_out)

These are means, not sums. The dynamics depend on the data only through them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .errors import (
    FieldPath,
    InvalidParameterError,
    NonFiniteError,
    NotPositiveSemidefiniteError,
    NotSymmetricError,
    ShapeError,
)

# Relative tolerances for the covariance checks: a matrix computed as (1/N) XᵀX in floating point
# is symmetric to ~N·eps·‖X‖², so 1e-10·‖Σ‖ admits honest round-off and rejects real asymmetry.
SYMMETRY_RTOL = 1e-10
PSD_RTOL = 1e-10

# Rows per chunk when accumulating correlations from data: 4096 rows × 1000 columns × 8 B = 32 MB.
DEFAULT_CHUNK_ROWS = 4096

# Past this many outputs a dense Σ33 (n_out² floats: 32 MB at 2048) is not formed from data; its
# trace, all the loss needs, is accumulated instead.
MAX_DENSE_SIGMA33 = 2048

# Σ31 must lie in the row space of Σ11 (it does for any dataset: YᵀX/N ⊂ range XᵀX). A component
# outside it makes the loss unbounded below; relative tolerance as for the PSD check.
RANGE_RTOL = 1e-8


@dataclass(frozen=True, eq=False)
class Samples:
    """The dataset a problem was built from, kept for stochastic gradient descent: x (N × n_in), y (N × n_out),
    one sample per row, as read-only views of the arrays the correlations were computed from (no copy).

    SGD's mini-batch b has the correlations Σ11_b = X_bᵀX_b/|b|, Σ31_b = Y_bᵀX_b/|b| (means over the batch), which
    only the samples determine; full-batch methods never read them.
    """

    x: np.ndarray
    y: np.ndarray

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def read_only_samples(x: np.ndarray, y: np.ndarray) -> Samples:
    """``Samples`` of x and y as read-only views (the caller's arrays stay writeable; nothing is copied)."""
    xv, yv = x.view(), y.view()
    xv.flags.writeable = False
    yv.flags.writeable = False
    return Samples(xv, yv)


@dataclass(frozen=True, eq=False)
class Problem:
    """Correlation matrices of a regression task, validated.

    ``sigma33`` is None when the output covariance is unknown (correlations given without it) or too
    large to hold (n_out > MAX_DENSE_SIGMA33 from data). The loss needs only ``sigma33_trace`` = tr Σ33,
    which is kept whenever it is known; without it the loss is known only up to that constant.

    ``residual_loss`` is min_W L(W), the least-squares residual, when it is known exactly (computed from the
    data's own residual, or given by a preset); None: it is derived from tr Σ33 (``least_squares``).
    """

    sigma11: np.ndarray
    sigma31: np.ndarray
    sigma33: np.ndarray | None = None
    n_samples: int | None = None
    sigma33_trace: float | None = None
    test: Problem | None = None  # held-out statistics (``with_test``): test loss along a run
    residual_loss: float | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    # the dataset itself when the problem was built from one (``problem_from_data``, presets built from data):
    # what SGD samples its mini-batches from; None when only the correlations are known
    samples: Samples | None = field(default=None, repr=False, compare=False)
    # the description of a teacher that generated the data, for theories that predict without the sample
    # (random_matrix.NoisyTeacher, set by presets.noisy_teacher); None for any other problem
    teacher: object | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sigma33_trace is None and self.sigma33 is not None:
            object.__setattr__(self, "sigma33_trace", float(np.trace(self.sigma33)))

    @property
    def n_in(self) -> int:
        return self.sigma31.shape[1]

    @property
    def n_out(self) -> int:
        return self.sigma31.shape[0]

    @property
    def sigma11_eigenvalues(self) -> np.ndarray:
        """Eigenvalues of Σ11 in ascending order (cached; used for stability bounds and checks)."""
        if "eig11" not in self._cache:
            self._cache["eig11"] = np.linalg.eigvalsh(self.sigma11)
        return self._cache["eig11"]

    def whitening_deviation(self) -> tuple[float, float]:
        """(c, max |Σ11 − c I|) with c = mean of diag Σ11: how far Σ11 is from a scaled identity (cached)."""
        if "whitening" not in self._cache:
            c = float(np.mean(np.diag(self.sigma11)))
            self._cache["whitening"] = (c, float(np.max(np.abs(self.sigma11 - c * np.eye(self.n_in)))))
        return self._cache["whitening"]


def with_test(problem: Problem, test: Problem, *, field_prefix: FieldPath = ("data", "test")) -> Problem:
    """``problem`` with the statistics of a test distribution, Σ11ᵗ, Σ31ᵗ, Σ33ᵗ (``test``): a run then reports
    L_test(W) = tr Σ33ᵗ − 2 tr(W Σ31ᵗᵀ) + tr(W Σ11ᵗ Wᵀ) at every record (``generalization.test_loss``).

    The test data must have the training data's n_in and n_out, and tr Σ33ᵗ (the test loss is an MSE, not known
    up to a constant). Errors name fields under ``field_prefix``.
    """
    if test.n_in != problem.n_in or test.n_out != problem.n_out:
        which = "n_in" if test.n_in != problem.n_in else "n_out"
        raise ShapeError(
            f"the test data has n_in = {test.n_in}, n_out = {test.n_out}, the training data n_in = {problem.n_in}, "
            f"n_out = {problem.n_out}", field=(*field_prefix, "sigma31" if test.n_out != problem.n_out else "sigma11"),
            fix=f"give test data of the same shape: the same {which} as the training data")
    if test.sigma33_trace is None:
        raise InvalidParameterError("the test data has no sigma33: the test loss is an MSE and needs tr Σ33",
                                    field=(*field_prefix, "sigma33"),
                                    fix="give sigma33 of the test distribution, or the test dataset itself")
    return Problem(problem.sigma11, problem.sigma31, problem.sigma33, problem.n_samples, problem.sigma33_trace, test,
                   problem.residual_loss, samples=problem.samples, teacher=problem.teacher)


@dataclass(frozen=True)
class LeastSquares:
    """The loss as a sum of squares, which cannot cancel (docs/theory.md, "The loss without cancellation").

    With Σ11 = E diag(e) Eᵀ, F = E diag(√e) and G = Σ31 E diag(1/√e) (columns where e is round-off: 0),

        L(W) = L_ls + ‖W F − G‖²_F,      L_ls = min_W L(W) = tr Σ33 − ‖G‖²_F ≥ 0

    because tr(W Σ11 Wᵀ) = ‖W F‖², tr(W Σ31ᵀ) = ⟨W F, G⟩ and ‖G‖² = tr(Σ31 Σ11⁺ Σ31ᵀ). The textbook form
    tr Σ33 − 2 tr(W Σ31ᵀ) + tr(W Σ11 Wᵀ) subtracts numbers of size tr Σ33 and goes negative near a perfect fit;
    here both terms are ≥ 0. ``w_ls`` = G diag(1/√e) Eᵀ = Σ31 Σ11⁺ is the minimum-norm least-squares map.
    """

    f: np.ndarray        # n_in × n_in
    g: np.ndarray        # n_out × n_in
    g_norm2: float       # ‖G‖²_F = tr(Σ31 Σ11⁺ Σ31ᵀ), the variance a linear map can explain
    w_ls: np.ndarray     # n_out × n_in
    residual: float | None  # L_ls, None when tr Σ33 is unknown


def least_squares(problem: Problem) -> LeastSquares:
    """F, G, ‖G‖², the least-squares map and residual L_ls of ``problem`` (``LeastSquares``; cached).

    Eigenvalues of Σ11 at or below n_in·eps·e_max are round-off of a zero and count as 0 (G's column 0): for data
    there Σ31's component is round-off too, so dropping it changes L by round-off only. L_ls is the problem's
    ``residual_loss`` when known exactly, else tr Σ33 − ‖G‖² clipped at 0 (it is a Schur complement's trace, ≥ 0).
    """
    if "least_squares" not in problem._cache:
        e, vecs = np.linalg.eigh(problem.sigma11)
        e = np.maximum(e, 0.0)
        keep = e > problem.n_in * np.finfo(np.float64).eps * (float(e[-1]) if e.size else 0.0)
        root = np.sqrt(e)
        inv_root = np.divide(1.0, root, out=np.zeros_like(root), where=keep)
        g = (problem.sigma31 @ vecs) * inv_root
        g_norm2 = float(np.sum(g * g))
        if problem.residual_loss is not None:
            residual = problem.residual_loss
        elif problem.sigma33_trace is not None:
            residual = max(problem.sigma33_trace - g_norm2, 0.0)
        else:
            residual = None
        problem._cache["least_squares"] = LeastSquares(vecs * root, g, g_norm2, (g * inv_root) @ vecs.T, residual)
    return problem._cache["least_squares"]


def _as_matrix(value, name: str, field_path: FieldPath) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ShapeError(
            f"{name} is not a rectangular matrix of numbers",
            field=field_path,
            fix="give a list of rows of equal length, each a list of numbers",
        ) from exc
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ShapeError(
            f"{name} must be a non-empty 2-D matrix, got shape {a.shape}",
            field=field_path,
            fix="give a list of rows of equal length",
        )
    if not np.all(np.isfinite(a)):
        i, j = np.argwhere(~np.isfinite(a))[0]
        raise NonFiniteError(
            f"{name} has a non-finite entry at [{i}][{j}]",
            field=(*field_path, int(i), int(j)),
            fix="replace NaN/Infinity with finite numbers",
        )
    return a


def check_covariance(a: np.ndarray, name: str, field_path: FieldPath) -> np.ndarray:
    """Check that ``a`` is square, symmetric and positive semi-definite; return its symmetric part.

    Symmetry: max |a − aᵀ| ≤ SYMMETRY_RTOL · max(1, max |a|). PSD: λ_min ≥ −PSD_RTOL · max(1, λ_max).
    """
    if a.shape[0] != a.shape[1]:
        raise ShapeError(f"{name} must be square, got {a.shape[0]}×{a.shape[1]}", field=field_path,
                         fix=f"{name} is a covariance: give a d×d matrix")
    scale = max(1.0, float(np.max(np.abs(a))))
    asym = float(np.max(np.abs(a - a.T)))
    if asym > SYMMETRY_RTOL * scale:
        raise NotSymmetricError(
            f"{name} is not symmetric: max |{name} − {name}ᵀ| = {asym:.3g}",
            field=field_path,
            fix=f"give a symmetric matrix, e.g. ({name} + {name}ᵀ)/2",
        )
    sym = 0.5 * a + 0.5 * a.T  # = (a + aᵀ)/2 exactly, without overflowing for entries near 1.8e308
    eig = np.linalg.eigvalsh(sym)
    if eig[0] < -PSD_RTOL * max(1.0, float(eig[-1])):
        raise NotPositiveSemidefiniteError(
            f"{name} is not positive semi-definite: smallest eigenvalue {eig[0]:.3g}",
            field=field_path,
            fix=f"{name} must be a covariance (1/N)·ZᵀZ; compute it from data or give the dataset itself",
        )
    return sym


def problem_from_correlations(sigma11, sigma31, sigma33=None, *, n_samples: int | None = None,
                              field_prefix: FieldPath = ("data",), residual_loss: float | None = None) -> Problem:
    """Validate Σ11 (n_in × n_in), Σ31 (n_out × n_in) and optional Σ33 (n_out × n_out).

    Raises a ``DynamicsError`` subclass naming the field for shapes that disagree, non-finite
    entries, and Σ11/Σ33 that are not symmetric or not positive semi-definite. A joint check that
    [[Σ11, Σ31ᵀ], [Σ31, Σ33]] is PSD (true for any real data) is applied when Σ33 is given. ``residual_loss`` is
    min_W L(W) when the caller knows it exactly (a preset's noise-free teacher: 0).
    """
    s11 = _as_matrix(sigma11, "sigma11", (*field_prefix, "sigma11"))
    s31 = _as_matrix(sigma31, "sigma31", (*field_prefix, "sigma31"))
    s11 = check_covariance(s11, "sigma11", (*field_prefix, "sigma11"))
    if s31.shape[1] != s11.shape[0]:
        raise ShapeError(
            f"sigma31 is {s31.shape[0]}×{s31.shape[1]} but sigma11 is {s11.shape[0]}×{s11.shape[0]}: "
            "their input dimensions differ",
            field=(*field_prefix, "sigma31"),
            fix="sigma31 must be n_out × n_in with n_in the size of sigma11",
        )
    _check_sigma31_in_range(s11, s31, (*field_prefix, "sigma31"))
    s33 = None
    if sigma33 is not None:
        s33 = _as_matrix(sigma33, "sigma33", (*field_prefix, "sigma33"))
        s33 = check_covariance(s33, "sigma33", (*field_prefix, "sigma33"))
        if s33.shape[0] != s31.shape[0]:
            raise ShapeError(
                f"sigma33 is {s33.shape[0]}×{s33.shape[0]} but sigma31 has {s31.shape[0]} rows",
                field=(*field_prefix, "sigma33"),
                fix="sigma33 must be n_out × n_out with n_out the number of rows of sigma31",
            )
        joint = np.block([[s11, s31.T], [s31, s33]])
        eig = np.linalg.eigvalsh(joint)
        if eig[0] < -PSD_RTOL * max(1.0, float(eig[-1])) * joint.shape[0]:
            raise NotPositiveSemidefiniteError(
                f"[[sigma11, sigma31ᵀ], [sigma31, sigma33]] is not positive semi-definite "
                f"(smallest eigenvalue {eig[0]:.3g}): no dataset has these correlations",
                field=(*field_prefix, "sigma33"),
                fix="compute all three from the same data, or omit sigma33",
            )
    if n_samples is not None and n_samples < 1:
        raise InvalidParameterError("n_samples must be at least 1", field=(*field_prefix, "n_samples"),
                                    fix="give at least one sample")
    return Problem(s11, s31, s33, n_samples, residual_loss=residual_loss)


def _check_sigma31_in_range(s11: np.ndarray, s31: np.ndarray, field_path: FieldPath) -> None:
    """Reject Σ31 with a component in the null space of Σ11: no data has it, and L has no minimum."""
    eig, vec = np.linalg.eigh(s11)
    null = vec[:, eig <= PSD_RTOL * max(1.0, float(eig[-1]))]
    if null.shape[1] == 0:
        return
    outside = float(np.linalg.norm(s31 @ null))
    if outside > RANGE_RTOL * max(1.0, float(np.linalg.norm(s31))):
        raise NotPositiveSemidefiniteError(
            f"sigma31 has a component of norm {outside:.3g} along input directions where sigma11 is zero: "
            "no dataset has these correlations and the loss would have no minimum",
            field=field_path,
            fix="compute sigma11 and sigma31 from the same data, or give the dataset itself")


def problem_from_data(x, y, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                      field_prefix: FieldPath = ("data",)) -> Problem:
    """Σ11, Σ31, Σ33 from a dataset in one pass over row chunks (memory O(d²) beyond the input).

    ``x`` is N × n_in and ``y`` is N × n_out, one sample per row. Accepts arrays or sequences of
    rows; an iterable of (x_chunk, y_chunk) pairs is accepted by ``correlations_from_chunks``.

    The problem keeps the samples (``Problem.samples``, for SGD) as read-only views of the float64 arrays read
    here: of ``x`` and ``y`` themselves when they are float64 arrays, so the caller must not modify them afterwards.
    """
    xa = _as_matrix(x, "x", (*field_prefix, "x"))
    ya = _as_matrix(y, "y", (*field_prefix, "y"))
    if xa.shape[0] != ya.shape[0]:
        raise ShapeError(
            f"x has {xa.shape[0]} samples (rows) but y has {ya.shape[0]}",
            field=(*field_prefix, "y"),
            fix="x and y need one row per sample, the same number of rows",
        )
    n = xa.shape[0]
    if chunk_rows < 1:
        raise InvalidParameterError(f"chunk_rows must be at least 1, got {chunk_rows}", field=("chunk_rows",),
                                    fix="give a positive number of rows per chunk")
    chunks = ((xa[i:i + chunk_rows], ya[i:i + chunk_rows]) for i in range(0, n, chunk_rows))
    moments = correlations_from_chunks(chunks, field_prefix=field_prefix)
    residual = least_squares_residual(moments, xa, ya, chunk_rows)
    problem = Problem(moments.sigma11, moments.sigma31, moments.sigma33, moments.n_samples, moments.sigma33_trace,
                      residual_loss=residual, samples=read_only_samples(xa, ya))
    problem._cache["least_squares"] = replace(least_squares(moments), residual=residual)
    return problem


def least_squares_residual(problem: Problem, x: np.ndarray, y: np.ndarray, chunk_rows: int = DEFAULT_CHUNK_ROWS
                           ) -> float:
    """L_ls = (1/N) Σ_i ‖y_i − W_ls x_i‖², the least-squares fit's own residual on the data (W_ls = Σ31 Σ11⁺).

    Exact to the round-off of the fit (≈ eps² · ‖Y‖² when the data are fitted exactly), where tr Σ33 − ‖G‖²
    would carry eps · tr Σ33; one more pass over the rows, n_in·n_out multiply-adds each.
    """
    w_ls = least_squares(problem).w_ls
    total = 0.0
    for i in range(0, x.shape[0], chunk_rows):
        r = y[i:i + chunk_rows] - x[i:i + chunk_rows] @ w_ls.T
        total += float(np.einsum("ij,ij->", r, r))
    return total / x.shape[0]


def correlations_from_chunks(chunks, *, field_prefix: FieldPath = ("data",)) -> Problem:
    """Accumulate Σ11 = (1/N) Σ xxᵀ, Σ31 = (1/N) Σ yxᵀ and Σ33 = (1/N) Σ yyᵀ over (x, y) row chunks.

    Memory is O(n_in² + n_out·n_in + n_out²) whatever N; past MAX_DENSE_SIGMA33 outputs only tr Σ33
    = (1/N) Σ ‖y‖² is accumulated.
    """
    s11 = s31 = s33 = None
    trace33 = 0.0
    n = 0
    # Entries beyond ~1e154 overflow when multiplied: checked below, so no warning on the way.
    with np.errstate(over="ignore", invalid="ignore"):
        for xc, yc in chunks:
            xc = np.asarray(xc, dtype=np.float64)
            yc = np.asarray(yc, dtype=np.float64)
            if s11 is None:
                s11 = np.zeros((xc.shape[1], xc.shape[1]))
                s31 = np.zeros((yc.shape[1], xc.shape[1]))
                if yc.shape[1] <= MAX_DENSE_SIGMA33:
                    s33 = np.zeros((yc.shape[1], yc.shape[1]))
            s11 += xc.T @ xc
            s31 += yc.T @ xc
            if s33 is not None:
                s33 += yc.T @ yc
            trace33 += float(np.einsum("ij,ij->", yc, yc))
            n += xc.shape[0]
    if n < 1:
        raise InvalidParameterError("the dataset has no samples", field=(*field_prefix, "x"),
                                    fix="give at least one sample (row)")
    _check_sums_finite(s11, s31, s33, trace33, field_prefix)
    # Symmetrise explicitly: XᵀX is symmetric mathematically, and downstream code relies on it.
    s11 = (0.5 * s11 + 0.5 * s11.T) / n
    if s33 is not None:
        s33 = (0.5 * s33 + 0.5 * s33.T) / n
    return Problem(s11, s31 / n, s33, n, trace33 / n)


def _check_sums_finite(s11: np.ndarray, s31: np.ndarray, s33: np.ndarray | None, trace33: float,
                       field_prefix: FieldPath) -> None:
    """Σ xxᵀ, Σ yxᵀ, Σ yyᵀ must be finite: products of entries beyond ~1e154 overflow float64."""
    if np.all(np.isfinite(s11)) and np.all(np.isfinite(s31)) and np.isfinite(trace33) and (
            s33 is None or np.all(np.isfinite(s33))):
        return
    name = "x" if not np.all(np.isfinite(s11)) else "y"
    raise NonFiniteError(
        f"the entries of {name} are too large: the correlations (1/N) Σ products of entries overflow float64",
        field=(*field_prefix, name),
        fix="rescale the data (e.g. divide x and y by their largest magnitude): entries must stay well "
            "below 1e154 so that their products are finite")

"""Sharpness: the top eigenvalues of the Hessian of the training loss L w.r.t. all weights (flattened), and the
edge-of-stability threshold they are compared with (Cohen et al. 2021, arXiv:2103.00065).

The Hessian-vector product is exact. With P_l = W_l⋯W_1 (P_0 = I), S_l = W_D⋯W_{l+1} (S_D = I), W = P_D and
E = Σ31 − W Σ11, the gradient is ∂L/∂W_l = −2 S_lᵀ E P_{l−1}ᵀ. Its directional derivative along V = (V_1…V_D),
d/dε ∇_{W_l} L(W + εV) at ε = 0, is by the product rule

    (H V)_l = −2 [ Ṡ_lᵀ E P_{l−1}ᵀ  −  S_lᵀ (Ẇ Σ11) P_{l−1}ᵀ  +  S_lᵀ E Ṗ_{l−1}ᵀ ]

with the tangents Ṗ_0 = 0, Ṗ_l = V_l P_{l−1} + W_l Ṗ_{l−1};  Ṡ_D = 0, Ṡ_l = Ṡ_{l+1} W_{l+1} + S_{l+1} V_{l+1};
Ẇ = Ṗ_D (so Ė = −Ẇ Σ11). Per point, P_l, S_l, E P_{l−1}ᵀ and S_lᵀ E are formed once; a product then costs the
tangents and three products per layer. Weight decay is not part of L: the objective L + (γ/2)‖W‖² has the
Hessian H + γI, which the threshold accounts for instead.

Eigenvalues, from a fixed start vector (standard normal, ``numpy.random.default_rng(SHARPNESS_SEED)``), so the
value at a record depends on the weights there only, bit for bit for a BLAS:

* k = 1: Lanczos on the compiled product (``hessian_loop.lanczos_top``), stopped when the top Ritz pair's residual
  ‖H y − θ y‖ ≤ SHARPNESS_RTOL·‖T_m‖₂ (‖T_m‖₂ = max |Ritz value| ≤ ‖H‖₂). No Python per product: ARPACK's reverse
  communication costs more per product than the product itself for small nets, so ARPACK on the same compiled
  product is several times slower there (``python -m bench.recording``; docs/performance.md#sharpness).
* k ≥ 2, and any record whose Lanczos has not converged within LANCZOS_MAX_ITER products: ARPACK
  (``scipy.sparse.linalg.eigsh``, which="LA", tol=SHARPNESS_RTOL, i.e. ‖H y − θ y‖ ≤ SHARPNESS_RTOL·|θ| for each
  Ritz pair) on a ``LinearOperator`` of the compiled product. (Lanczos without reorthogonalisation would report
  copies of the top eigenvalue as the next ones; ARPACK reorthogonalises.)
* at most DENSE_MAX_PARAMETERS weights: the Hessian column by column from ``HessianOperator`` and
  ``numpy.linalg.eigvalsh`` (exact to round-off; ARPACK needs k < n).

Either way each reported θ lies within the residual of an eigenvalue of the symmetric H, and Ritz values converge
quadratically (error ≈ residual²/gap). The "top k" are the k largest (algebraic), descending; at a saddle some
eigenvalues are negative, the top ones are what stability is about.

Cost: a product is 7 GEMMs for two layers, against GD's ~4 GEMM-equivalents per step, and Lanczos needs ~50 of
them per record from a fixed start (48 at (32,32,32), 92 at (100,100,100)). So k = 1 at 200 records costs about
200·50·7/4 = 17,500 GD steps of work, ~1.7 10,000-step runs, however it is organised; measured, it is more than
the run itself (``python -m bench.recording``; docs/performance.md#sharpness). Less needs fewer records (the cost
is linear in them) or a looser tolerance (1e-6: 40 products); it is not a few per cent of a run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh

from . import hessian_loop
from .errors import ExactNotApplicableError, InvalidParameterError
from .gd import Layout
from .methods import Exact, GradientDescent, GradientFlow, StochasticGradientDescent
from .problem import Problem

SHARPNESS_SEED = 0
# Residual of the Ritz pairs relative to ‖H‖ (Lanczos) or to |θ| (ARPACK): every reported θ lies within that of an
# eigenvalue of the symmetric H, and Ritz values converge quadratically in it (error ≈ residual²/gap): measured
# against a dense eigvalsh, 1e-8 gave the top eigenvalue to ≤ 5e-15 relative at 48 products for a 2048-weight net,
# where 1e-6 gave 1e-12 at 40 and 1e-10 took 56 (bench/stepping.make_problem(32, 32, 32)).
SHARPNESS_RTOL = 1e-8
# Lanczos steps before ARPACK takes over (each step is one product; O(n) memory whatever the count).
LANCZOS_MAX_ITER = 500
# Dense eigvalsh below this many weights: n products and an n³ eigensolver beat the iteration there.
DENSE_MAX_PARAMETERS = 64


def parameter_count(weights: Sequence[np.ndarray]) -> int:
    """Σ_l rows_l · cols_l: the Hessian's size (weights of one record)."""
    return int(sum(np.shape(w)[-1] * np.shape(w)[-2] for w in weights))


def check_sharpness(k, weights0: Sequence[np.ndarray]) -> int:
    """``record.sharpness_k``: an integer between 1 and the number of weights."""
    n = parameter_count(weights0)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise InvalidParameterError(f"sharpness_k must be an integer between 1 and the {n} weights, got {k!r}",
                                    field=("record", "sharpness_k"), fix="ask for e.g. 1 (the top eigenvalue)")
    return int(k)


def refuse_without_weights() -> ExactNotApplicableError:
    """The error for ``record.sharpness`` on an exact run that has no weights (Riccati)."""
    return ExactNotApplicableError(
        "the Riccati solution determines W = W32·W21 and the Gram blocks W21ᵀW21, W32W32ᵀ, not the individual "
        "weights the Hessian is taken with respect to", field=("record", "sharpness"),
        fix='set record.sharpness to false, or use method "flow" (or gd) to record the sharpness')


class HessianOperator:
    """The Hessian of L at one point (``weights``, float64), as the exact product ``matvec`` (module docstring)."""

    def __init__(self, problem: Problem, weights: Sequence[np.ndarray]):
        ws = [np.asarray(w, dtype=np.float64) for w in weights]
        d = len(ws)
        self.ws, self.d = ws, d
        self.shapes = [w.shape for w in ws]
        self.sizes = [w.size for w in ws]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        self.s11 = np.asarray(problem.sigma11, dtype=np.float64)
        # prefixes P_l (l = 1…D; P_0 = I is never formed) and suffixes S_l (l = 0…D−1; S_D = I)
        self.p = [None] * (d + 1)
        for l in range(1, d + 1):
            self.p[l] = ws[0] if l == 1 else ws[l - 1] @ self.p[l - 1]
        self.s = [None] * (d + 1)
        for l in range(d - 1, -1, -1):
            self.s[l] = ws[l] if l == d - 1 else self.s[l + 1] @ ws[l]
        e = problem.sigma31 - self.p[d] @ self.s11
        # E P_{l−1}ᵀ (n_out × n_{l−1}; l = 1: E itself) and S_lᵀ E (n_l × n_in; l = D: E itself), 1-based l
        self.ep = [None] + [e if l == 1 else e @ self.p[l - 1].T for l in range(1, d + 1)]
        self.se = [None] + [e if l == d else self.s[l].T @ e for l in range(1, d + 1)]

    def matvec(self, flat: np.ndarray) -> np.ndarray:
        """H v for the flattened direction v = (V_1…V_D) (layer l's block row-major, input→output order)."""
        v = np.asarray(flat, dtype=np.float64).reshape(-1)
        vs = [v[self.offsets[l]:self.offsets[l + 1]].reshape(self.shapes[l]) for l in range(self.d)]
        return np.concatenate([h.ravel() for h in self.product(vs)])

    def product(self, vs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(H V)_l for every layer l (input→output), V given per layer (module docstring's formula)."""
        d, ws, p, s = self.d, self.ws, self.p, self.s
        # tangents of the prefixes: pd[l] = Ṗ_l (l = 1…D), Ṗ_0 = 0
        pd = [None] * (d + 1)
        for l in range(1, d + 1):
            pd[l] = vs[0] if l == 1 else vs[l - 1] @ p[l - 1] + ws[l - 1] @ pd[l - 1]
        f = pd[d] @ self.s11                            # Ẇ Σ11 = −Ė
        # tangents of the suffixes: sd[l] = Ṡ_l (l = 0…D−1), Ṡ_D = 0
        sd = [None] * (d + 1)
        for l in range(d - 1, 0, -1):
            sd[l] = vs[l] if l == d - 1 else sd[l + 1] @ ws[l] + s[l + 1] @ vs[l]
        out = [None] * d
        g = f                                           # S_lᵀ (Ẇ Σ11), from l = D down
        for l in range(d, 0, -1):
            term = g if l == 1 else g @ p[l - 1].T      # S_lᵀ Ẇ Σ11 P_{l−1}ᵀ
            h = -term
            if l < d:
                h = h + sd[l].T @ self.ep[l]            # Ṡ_lᵀ E P_{l−1}ᵀ
            if l > 1:
                h = h + self.se[l] @ pd[l - 1].T        # S_lᵀ E Ṗ_{l−1}ᵀ
            out[l - 1] = -2.0 * h
            if l > 1:
                g = ws[l - 1].T @ g
        return out

    def dense(self) -> np.ndarray:
        """The n × n Hessian, column j = H e_j (symmetrised: (H + Hᵀ)/2 removes the products' round-off)."""
        cols = np.empty((self.n, self.n))
        unit = np.zeros(self.n)
        for j in range(self.n):
            unit[j] = 1.0
            cols[:, j] = self.matvec(unit)
            unit[j] = 0.0
        return 0.5 * (cols + cols.T)


def hessian_vector_product(problem: Problem, weights: Sequence[np.ndarray], vectors: Sequence[np.ndarray]
                           ) -> list[np.ndarray]:
    """(H V)_l = d/dε ∇_{W_l} L(W + εV) at ε = 0, exactly (module docstring), per layer input→output."""
    return HessianOperator(problem, weights).product([np.asarray(v, dtype=np.float64) for v in vectors])


class CompiledHessian:
    """The same product as ``HessianOperator``, compiled (``hessian_loop``): ``matvec`` for eigsh, and the
    Lanczos of every record of a run (``top_lanczos``)."""

    def __init__(self, problem: Problem, widths: Sequence[int]):
        self.layout = Layout.of_widths(widths)
        self.s11 = np.ascontiguousarray(problem.sigma11, dtype=np.float64)
        self.s31 = np.ascontiguousarray(problem.sigma31, dtype=np.float64)
        self.starts, size = hessian_loop.hvp_plan(self.layout.dims)
        self.buf = np.empty(size)
        self.n = self.layout.size
        self.w = None

    def at(self, flat: np.ndarray) -> CompiledHessian:
        """Prepare the products of the point ``flat`` (weights, ``gd.Layout``'s order); returns self."""
        self.w = np.ascontiguousarray(flat, dtype=np.float64)
        hessian_loop.hvp_setup(self.w, self.layout.dims, self.layout.offs, self.s11, self.s31, self.buf, self.starts)
        return self

    def matvec(self, v: np.ndarray) -> np.ndarray:
        out = np.empty(self.n)
        hessian_loop.hvp(self.w, self.layout.dims, self.layout.offs, self.s11, self.buf, self.starts,
                         np.ascontiguousarray(v, dtype=np.float64).reshape(-1), out)
        return out

    def top_lanczos(self, flat: np.ndarray, v0: np.ndarray, tol: float, max_iter: int,
                    between: Callable[[], None] | None = None):
        """(θ, residual, iterations, converged) per row of ``flat`` (T × weights): ``hessian_loop.lanczos_top``,
        one compiled call per record with ``between()`` after each (worker hooks: it may raise StopRequested)."""
        flat = np.ascontiguousarray(flat, dtype=np.float64)
        t, n = flat.shape[0], self.n
        theta, resid = np.empty(t), np.empty(t)
        iters, ok = np.empty(t, dtype=np.int64), np.empty(t, dtype=np.bool_)
        m = min(max_iter, n)
        vectors, tridiagonal = [np.empty(n) for _ in range(3)], [np.empty(m) for _ in range(5)]
        for i in range(t):
            hessian_loop.top_sharpness(flat[i:i + 1], self.layout.dims, self.layout.offs, self.s11, self.s31, v0, tol,
                                       m, theta[i:i + 1], resid[i:i + 1], iters[i:i + 1], ok[i:i + 1], self.buf,
                                       self.starts, *vectors, *tridiagonal)
            if between is not None:
                between()
        return theta, resid, iters, ok


def start_vector(n: int) -> np.ndarray:
    """The fixed Lanczos start: n standard normal numbers from ``numpy.random.default_rng(SHARPNESS_SEED)``."""
    return np.random.default_rng(SHARPNESS_SEED).standard_normal(n)


def _arpack_top(op: CompiledHessian, k: int, v0: np.ndarray) -> np.ndarray:
    linear = LinearOperator((op.n, op.n), matvec=op.matvec, dtype=np.float64)
    values = eigsh(linear, k=k, which="LA", v0=v0, tol=SHARPNESS_RTOL, return_eigenvectors=False)
    return np.sort(values)[::-1]


SOLVERS = ("auto", "lanczos", "arpack", "dense")


def sharpness_record(problem: Problem, weights: Sequence[np.ndarray], k: int = 1, *, solver: str = "auto",
                     between: Callable[[], None] | None = None) -> np.ndarray:
    """(T, k): the k largest Hessian eigenvalues of L at every record, descending, from per-layer stacks (T, rows,
    cols) of float64 weights.

    ``solver`` "auto" (module docstring): dense below DENSE_MAX_PARAMETERS weights, else the compiled Lanczos for
    k = 1 and ARPACK for k ≥ 2 and for any record whose Lanczos did not converge within LANCZOS_MAX_ITER products.
    "lanczos" (k = 1 only), "arpack" and "dense" force one (for tests and benchmarks). ``between()`` is called
    after each record (a record can take seconds on a large net: the worker's stop check goes there).
    """
    if solver not in SOLVERS or (solver == "lanczos" and k != 1):
        raise InvalidParameterError(f"unknown solver {solver!r} for k = {k}", field=("solver",),
                                    fix="use auto, lanczos (k = 1), arpack or dense")
    t = len(weights[0])
    widths = [weights[0].shape[2], *(w.shape[1] for w in weights)]
    flat = np.concatenate([np.asarray(w, dtype=np.float64).reshape(t, -1) for w in weights], axis=1)
    n = flat.shape[1]
    out = np.empty((t, k))
    if solver == "dense" or (solver == "auto" and n <= max(DENSE_MAX_PARAMETERS, k + 1)):
        for i in range(t):
            dense = HessianOperator(problem, [w[i] for w in weights]).dense()
            out[i] = np.linalg.eigvalsh(dense)[::-1][:k]
            if between is not None:
                between()
        return out
    op = CompiledHessian(problem, widths)
    v0 = start_vector(n)
    todo = np.arange(t)
    if k == 1 and solver in ("auto", "lanczos"):
        theta, _, _, ok = op.top_lanczos(flat, v0, SHARPNESS_RTOL, LANCZOS_MAX_ITER, between)
        out[:, 0] = theta
        todo = np.flatnonzero(~ok)
        if solver == "lanczos" and todo.size:
            raise RuntimeError(f"Lanczos did not converge within {LANCZOS_MAX_ITER} products at records {todo}")
    for i in todo:
        out[i] = _arpack_top(op.at(flat[i]), k, v0)
        if between is not None:
            between()
    return out


def top_eigenvalues(problem: Problem, weights: Sequence[np.ndarray], k: int = 1, *, solver: str = "auto"
                    ) -> np.ndarray:
    """The k largest eigenvalues of the Hessian of L at one point ``weights`` (per layer), descending:
    ``sharpness_record`` on a single record."""
    return sharpness_record(problem, [np.asarray(w, dtype=np.float64)[None] for w in weights], k, solver=solver)[0]


def sharpness_threshold(method) -> float | None:
    """The largest sharpness (top Hessian eigenvalue of L) at which the method's iteration is stable near a minimum:

        gd, sgd:     (2 c(μ) / η) − γ,   c = 1 (no momentum), 1 + μ (heavy ball), (1 + μ)/(1 + 2μ) (Nesterov)
        flow, exact: None (no step size)

    so 2/η for plain GD and SGD (Cohen et al. 2021's edge of stability), and 2(1 + μ)/η with heavy-ball momentum
    (their appendix). Weight decay γ adds γ to every eigenvalue of the objective's Hessian, hence the − γ.
    """
    if isinstance(method, (GradientFlow, Exact)):
        return None
    if not isinstance(method, (GradientDescent, StochasticGradientDescent)):
        raise TypeError(f"unknown method {type(method).__name__}")
    from .sgd import stability_factor

    return 2.0 * stability_factor(method.momentum, method.nesterov) / float(method.learning_rate) \
        - float(method.weight_decay)


def warm_up() -> None:
    """Compile (or load from numba's cache) the Hessian product and the Lanczos (``hessian_loop``), for a worker's
    warm-up (service/jobs/warmup.py)."""
    rng = np.random.default_rng(0)
    problem = Problem(np.eye(6), rng.standard_normal((5, 6)))
    for widths in ([6, 5], [6, 7, 5], [6, 4, 7, 5]):
        weights = [rng.standard_normal((1, widths[l + 1], widths[l])) for l in range(len(widths) - 1)]
        sharpness_record(problem, weights, 1, solver="lanczos")

"""The lazy limit as theory: the loss of the network linearised at its initialisation (NTK frozen at K(0)), at a run's
records (``record.linearized``; Trajectory.linearized_loss). Jacot et al. 2018, Lee et al. 2019; for deep linear
networks the lazy regime of Braun et al. 2022 and Dominé et al. 2024 (docs/theory.md#linearized).

The linearised model. With A_l = W_D ⋯ W_{l+1} and B_l = W_{l−1} ⋯ W_1 (ntk.py), the network map is multilinear in
the layers, so its first-order expansion at θ0 = (W_1(0), …, W_D(0)) is

    f_lin(θ) = W(θ0) + Σ_l A_l(0) (θ_l − θ_l(0)) B_l(0),

a linear function of θ. Its loss L(f_lin(θ)) has ∂L/∂θ_l = A_l(0)ᵀ (∂L/∂W) B_l(0)ᵀ = −2 A_l(0)ᵀ E B_l(0)ᵀ with
E = Σ31 − W_lin Σ11, and gradient flow on θ with weight decay γ, dθ_l/dt = 2 A_lᵀ E B_lᵀ − γ θ_l, moves the map by

    dW_lin/dt = Σ_l A_l(0) (dθ_l/dt) B_l(0) = 2 Σ_l Q_l(0) E P_{l−1}(0) − γ (W_lin + (D − 1) W(0)),

Q_l = A_l A_lᵀ, P_{l−1} = B_lᵀ B_l (ntk.py's Grams, Q_D = I, P_0 = I), because Σ_l A_l θ_l(0) B_l = D·W(0) and
Σ_l A_l (θ_l − θ_l(0)) B_l = W_lin − W(0). So the linearised map obeys a closed linear ODE, driven by the frozen
kernel K(0) = Σ_l Q_l(0) ⊗ P_{l−1}(0) (vec(Q E P) = (Q ⊗ P) vec E, row-major, P symmetric). GD on θ with the same η
is the Euler map of the same field: W_{k+1} = W_k + η [2 Σ_l Q_l E_k P_{l−1} − γ (W_k + (D − 1) W(0))].

Closed form. In the loss's sum-of-squares coordinates (problem.least_squares: Σ11 = F Fᵀ, Σ31 = G Fᵀ, L = L_ls +
‖W F − G‖²) the residual Z = W F − G has E = −Z Fᵀ, hence

    dZ/dt = −(2H + γ)[Z] − γ C,   H[Z] = Σ_l Q_l Z P̃_{l−1},   P̃ = Fᵀ P F,   C = G + (D − 1) W(0) F,

H symmetric positive semi-definite on n_out × n_in matrices. On an orthonormal eigenbasis H = Σ h_n e_n e_nᵀ with
coefficients a_n = ⟨e_n, Z⟩, c_n = ⟨e_n, C⟩ and ρ_n = 2h_n + γ:

    flow: a_n(t) = e^{−ρ_n t} a_n(0) − γ c_n (1 − e^{−ρ_n t}) / ρ_n        (−γ c_n t where ρ_n = 0)
    GD:   a_n(k) = (1 − η ρ_n)^k a_n(0) − γ c_n (1 − (1 − ηρ_n)^k) / ρ_n  (−γ c_n η k where ρ_n = 0)

and L_lin = L_ls + Σ_n a_n². The eigenbasis, by cost:

* "kronecker": D ≤ 2 and Σ11 = c·I to round-off: H[Z] = c Q_1 Z + Z P̃_1 (D = 2; D = 1: c·Z) is a Kronecker sum,
  h = c q_i + p_j from the eigendecompositions of Q_1 = W32W32ᵀ (n_out²) and P̃_1 (n_in²);
* "rows": D ≤ 2, any Σ11: F's columns are Σ11's eigenvectors scaled, so FᵀF = Λ = diag(eig Σ11) and
  H[Z] = Q_1 Z Λ + Z P̃_1: in the eigenbasis U of Q_1 (Q_1 = U diag(q) Uᵀ) each row i of UᵀZ evolves alone under the
  n_in × n_in matrix q_i Λ + P̃_1: n_out problems of n_in × n_in, not one of (n_out·n_in)². With γ = 0 the loss needs
  only each row's spectral measure (Σ_n a_n² δ_{h_n}), which a tridiagonalisation anchored at the row gives without
  eigenvectors (``_row_measures``, 5× cheaper at 32 × 32); with γ > 0 the eigenvectors (numpy eigh, batched);
* "dense": D ≥ 3 (the D terms Q_l ⊗ P̃_{l−1} do not share eigenvectors): the (n_out·n_in)² matrix H, up to
  DENSE_MAX_DIM;
* "stepped": beyond those sizes, the linear map itself: GD stepped exactly (one Σ_l Q_l E P_{l−1} per step, about the
  cost of a GD step), flow integrated by DOP853 at rtol 1e-12 (the only route not exact to round-off).

Measured (bench/recording.py, python -m bench.recording): at (32, 32, 32), Σ11 not whitened, 201 records, "rows" costs
1.9 ms, 3.1 % of a 10,000-step GD run (62.7 ms); (100, 100, 100) 2.6 %; "dense" at (16, 16, 16, 16) 5.9 ms (27 % of
that short run: one 256² eigendecomposition).

D = 1: f is linear, the linearised model is the model itself (H[Z] = ZΛ): linearized_loss equals loss.
The linearised model is not bound by the bottleneck rank (W_lin − W(0) = Σ_l A_l Δ_l B_l can have rank up to D·r),
so its excess loss L_lin − L* can be negative: it is reported as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.integrate import solve_ivp
from scipy.linalg.lapack import dsytrd

from . import kernel_cache, network
from .methods import Exact, GradientDescent, GradientFlow
from .modes import optimum
from .ntk import hidden_grams
from .problem import Problem, least_squares

kernel_cache.install()  # several processes may compile into one cache (kernel_cache.py)

# "dense" eigendecomposes the (n_out·n_in)² matrix H: up to this n_out·n_in (≈ 10·N³ = 1.3e9 FLOPs, ~0.1 s at 512).
DENSE_MAX_DIM = 512
# "rows" does n_out eigendecompositions of n_in × n_in, ≈ 10·n_out·n_in³ FLOPs: up to this many (~1 s).
ROWS_MAX_FLOPS = 2e10
# Σ11 = c·I "to round-off" for the Kronecker route: max |eig Σ11 − c| ≤ this × n_in × eps × c.
KRONECKER_ULPS = 64.0
# Records × modes evaluated per block (memory: 8 bytes each, 2 arrays).
BLOCK_ENTRIES = 2_000_000
# The "stepped" flow route: DOP853 tolerances on the linear ODE.
STEPPED_RTOL, STEPPED_ATOL = 1e-12, 1e-14


@dataclass(frozen=True)
class LinearizedLoss:
    """L(W_lin) at the records (None without tr Σ33), L(W_lin) − L* (always), and the route used (module docstring)."""

    loss: np.ndarray | None
    excess_loss: np.ndarray
    route: str


@dataclass(frozen=True)
class _Spectrum:
    """H's eigenvalues h (N,), the coefficients a0 of Z(0) and c of C on its eigenbasis (N,), N = n_out·n_in."""

    h: np.ndarray
    a0: np.ndarray
    c: np.ndarray | None
    route: str


def _kernel_factors(weights0: Sequence[np.ndarray]) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """[Q_1 … Q_D] and [P_0 … P_{D−1}] at the init, None for the identities Q_D and P_0 (ntk.hidden_grams)."""
    inputs, outputs = hidden_grams(weights0) if len(weights0) > 1 else ([], [])
    return [*outputs, None], [None, *inputs]


def spectrum(problem: Problem, weights0: Sequence[np.ndarray], weight_decay: float = 0.0,
             route: str | None = None) -> _Spectrum | None:
    """H's eigen-decomposition on the cheapest exact route (module docstring), or None where only "stepped" fits.

    ``route`` forces one ("kronecker" only where it applies); for checks.
    """
    ws = [np.asarray(w, dtype=np.float64) for w in weights0]
    d = len(ws)
    ls = least_squares(problem)
    f = ls.f
    lam = np.einsum("ij,ij->j", f, f)                         # FᵀF = diag(eig Σ11), clipped at 0
    w0 = network.network_map(ws)
    z0 = w0 @ f - ls.g
    cc = ls.g + (d - 1) * (w0 @ f) if weight_decay else None
    n_out, n_in = z0.shape
    qs, ps = _kernel_factors(ws)
    c_mean = float(np.mean(lam))
    eps = np.finfo(np.float64).eps
    kron_ok = d <= 2 and float(np.max(np.abs(lam - c_mean), initial=0.0)) <= KRONECKER_ULPS * n_in * eps * c_mean
    if route is None:
        if d <= 2:
            route = "kronecker" if kron_ok else ("rows" if 10.0 * n_out * n_in ** 3 <= ROWS_MAX_FLOPS else None)
        else:
            route = "dense" if n_out * n_in <= DENSE_MAX_DIM else None
    if route is None:
        return None
    if route == "kronecker":
        if not kron_ok:
            raise ValueError("the Kronecker route needs D ≤ 2 and Σ11 = c·I")
        if d == 1:
            return _Spectrum(np.full(n_out * n_in, c_mean), z0.ravel(), None if cc is None else cc.ravel(), route)
        q, u = np.linalg.eigh(qs[0])
        p, v = np.linalg.eigh(f.T @ ps[1] @ f)
        h = (c_mean * q[:, None] + p[None, :]).ravel()
        return _Spectrum(h, (u.T @ z0 @ v).ravel(), None if cc is None else (u.T @ cc @ v).ravel(), route)
    if route == "rows":
        if d > 2:
            raise ValueError("the row route needs D ≤ 2")
        if d == 1:                                             # H[Z] = ZΛ: diagonal already
            return _Spectrum(np.tile(lam, n_out), z0.ravel(), None if cc is None else cc.ravel(), route)
        q, u = np.linalg.eigh(qs[0])
        mats = q[:, None, None] * np.diag(lam)[None] + (f.T @ ps[1] @ f)[None]
        zr = u.T @ z0
        if cc is None:                                         # γ = 0: only Z(0)'s spectral measure is needed
            h, a0 = _row_measures(mats, zr)
            return _Spectrum(h, a0, None, route)
        h, v = np.linalg.eigh(mats)                            # (n_out, n_in), (n_out, n_in, n_in)
        a0 = np.einsum("ij,ijk->ik", zr, v).ravel()
        c = np.einsum("ij,ijk->ik", u.T @ cc, v).ravel()
        return _Spectrum(h.ravel(), a0, c, route)
    if route == "dense":
        big = sum(np.kron(np.eye(n_out) if q is None else q, np.diag(lam) if p is None else f.T @ p @ f)
                  for q, p in zip(qs, ps))
        h, v = np.linalg.eigh(0.5 * (big + big.T))
        return _Spectrum(h, v.T @ z0.ravel(), None if cc is None else v.T @ cc.ravel(), route)
    raise ValueError(f"unknown route {route!r}")


@njit(cache=True, nogil=True, inline="always")
def _hypot(a, b):
    """√(a² + b²): directly where the squares cannot overflow or underflow, else scaled by the larger magnitude
    (libm's hypot always scales, and costs ~3× as much here)."""
    x, y = abs(a), abs(b)
    if x < y:
        x, y = y, x
    if 1e-150 < x < 1e150:
        return np.sqrt(x * x + y * y)
    if x == 0.0:
        return 0.0
    y /= x
    return x * np.sqrt(1.0 + y * y)


@njit(cache=True, nogil=True)
def _first_components(d, e, z):
    """Eigenvalues of the symmetric tridiagonal matrix (diagonal ``d``, subdiagonal ``e[:-1]``, ``e[-1]`` = 0) into ``d``
    and the first components of its eigenvectors into ``z`` (in: e1), in place: the implicit QL iteration with
    Wilkinson shifts (EISPACK imtql2) applying its rotations to the first row of the eigenvector matrix only (the
    Golub–Welsch way to Gauss quadrature weights). False if an eigenvalue took more than 60 iterations."""
    n = d.size
    eps = 2.220446049250313e-16
    for l in range(n):
        it = 0
        while True:
            m = l
            while m < n - 1:
                if abs(e[m]) <= eps * (abs(d[m]) + abs(d[m + 1])):
                    break
                m += 1
            if m == l:
                break
            it += 1
            if it > 60:
                return False
            g = (d[l + 1] - d[l]) / (2.0 * e[l])
            r = np.sqrt(g * g + 1.0) if abs(g) < 1e150 else abs(g)
            g = d[m] - d[l] + e[l] / (g + (r if g >= 0 else -r))
            s = 1.0
            c = 1.0
            p = 0.0
            i = m - 1
            split = False
            while i >= l:
                f = s * e[i]
                b = c * e[i]
                r = _hypot(f, g)
                e[i + 1] = r
                if r == 0.0:                 # the matrix splits here: deflate and start over
                    d[i + 1] -= p
                    e[m] = 0.0
                    split = True
                    break
                inv = 1.0 / r
                s = f * inv
                c = g * inv
                g = d[i + 1] - p
                r = (d[i] - g) * s + 2.0 * c * b
                p = s * r
                d[i + 1] = g + p
                g = c * r - b
                f = z[i + 1]
                z[i + 1] = s * z[i] + c * f
                z[i] = c * z[i] - s * f
                i -= 1
            if split:
                continue
            d[l] -= p
            e[l] = g
            e[m] = 0.0
    return True


def _row_measures(mats: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each i the spectral measure of the symmetric ``mats[i]`` at the vector ``rows[i]``: nodes θ_ik and
    √weights (Σ_k w_ik g(θ_ik) = rows[i]ᵀ g(mats[i]) rows[i] for every function g), flattened.

    Exact, without eigenvectors: a Householder reflection H maps rows[i] to ‖rows[i]‖e1, LAPACK's dsytrd (lower, whose
    Q = H(1)⋯H(n−1) fixes e1) reduces H·mats[i]·H to tridiagonal T, so the measure is ‖rows[i]‖² times T's at e1: T's
    eigenvalues with the squared first components of its eigenvectors (``_first_components``). Measured at 32 × 32:
    ~15 µs per row against ~75 µs for a full eigendecomposition (numpy eigh), the cost of this route.
    """
    n_rows, n = rows.shape
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    v = rows.copy()
    v[:, 0] += np.where(rows[:, 0] >= 0, norms, -norms)
    vn = np.sqrt(np.einsum("ij,ij->i", v, v))
    v /= np.where(vn > 0, vn, 1.0)[:, None]
    m = mats - 2.0 * v[:, :, None] * np.einsum("ij,ijk->ik", v, mats)[:, None, :]      # H M
    m = m - 2.0 * np.einsum("ijk,ik->ij", m, v)[:, :, None] * v[:, None, :]            # (H M) H
    nodes = np.zeros((n_rows, n))
    weights = np.zeros((n_rows, n))
    for i in range(n_rows):
        if norms[i] == 0.0:
            continue
        _, d, e, _, info = dsytrd(m[i], lower=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"dsytrd failed (info {info})")
        e = np.append(e, 0.0)
        z = np.zeros(n)
        z[0] = 1.0
        if not _first_components(d, e, z):
            raise np.linalg.LinAlgError("the tridiagonal QL iteration did not converge")
        nodes[i] = d
        weights[i] = norms[i] * np.abs(z)
    return nodes.ravel(), weights.ravel()


def _evaluate(sp: _Spectrum, gamma: float, *, times: np.ndarray | None = None, steps: np.ndarray | None = None,
              learning_rate: float | None = None) -> np.ndarray:
    """Σ_n a_n² at each time (flow) or step (GD), from the closed form (module docstring), in blocks of modes."""
    rho = 2.0 * np.maximum(sp.h, 0.0) + gamma                  # H ⪰ 0: negative round-off eigenvalues are zeros
    if steps is not None:
        x = np.asarray(steps, dtype=np.float64)
    else:
        x = np.asarray(times, dtype=np.float64)
    out = np.zeros(x.size)
    n = rho.size
    block = max(1, BLOCK_ENTRIES // max(x.size, 1))
    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        if sp.c is None or not gamma:
            # Σ_n a_n(0)² |decay_n|², one exp per record and mode: GD's |1 − ηρ|^{2k} = e^{2k ln|1 − ηρ|} (a zero base
            # gets ln = −1e3: e^0 = 1 at k = 0, 0 after), flow's e^{−2ρt}
            if steps is not None:
                rate = 2.0 * np.log(np.abs(1.0 - learning_rate * rho))
                rate = np.where(np.isfinite(rate), rate, -1e3)
            else:
                rate = -2.0 * rho
            weight = sp.a0 * sp.a0
            for lo in range(0, n, block):
                out += np.exp(np.outer(x, rate[lo:lo + block])) @ weight[lo:lo + block]
            return out
        for lo in range(0, n, block):
            r = rho[lo:lo + block]
            a0 = sp.a0[lo:lo + block]
            if steps is not None:
                decay = np.power((1.0 - learning_rate * r)[None, :], x[:, None])
                elapsed = learning_rate * x[:, None]
            else:
                decay = np.exp(-np.outer(x, r))
                elapsed = x[:, None]
            c = sp.c[lo:lo + block]
            frac = np.where(r > 0, (1.0 - decay) / np.where(r > 0, r, 1.0), elapsed)
            a = decay * a0[None, :] - gamma * c[None, :] * frac
            out += np.einsum("tn,tn->t", a, a)
    return out


def _stepped(problem: Problem, weights0: Sequence[np.ndarray], gamma: float, *, times=None, steps=None,
             learning_rate=None) -> np.ndarray:
    """‖W_lin F − G‖² at the records by stepping the linear map (GD: exactly; flow: DOP853 on the linear ODE)."""
    ws = [np.asarray(w, dtype=np.float64) for w in weights0]
    d = len(ws)
    qs, ps = _kernel_factors(ws)
    w0 = network.network_map(ws)
    s11, s31 = problem.sigma11, problem.sigma31

    def field(w):
        e = s31 - w @ s11
        out = np.zeros_like(w)
        for q, p in zip(qs, ps):
            qe = e if q is None else q @ e
            out += qe if p is None else qe @ p
        out *= 2.0
        if gamma:
            out -= gamma * (w + (d - 1) * w0)
        return out

    if steps is not None:
        rec = np.asarray(steps, dtype=np.int64)
        order = np.argsort(rec, kind="stable")
        gaps = np.empty(rec.size)
        w, k = w0.copy(), 0
        for j in order:
            while k < rec[j]:
                w = w + learning_rate * field(w)
                k += 1
            gaps[j] = network.fit_gap(problem, w)
        return gaps
    t = np.asarray(times, dtype=np.float64)
    if t.size == 0 or t[-1] == 0.0:
        return np.full(t.size, network.fit_gap(problem, w0))
    shape = w0.shape
    sol = solve_ivp(lambda _, y: field(y.reshape(shape)).ravel(), (0.0, float(t[-1])), w0.ravel(), t_eval=t,
                    method="DOP853", rtol=STEPPED_RTOL, atol=STEPPED_ATOL)
    return network.fit_gap(problem, sol.y.T.reshape(t.size, *shape))


def linearized_loss(problem: Problem, weights0: Sequence[np.ndarray], method: GradientDescent | GradientFlow | Exact,
                    times: np.ndarray, steps: np.ndarray | None = None, *, route: str | None = None) -> LinearizedLoss:
    """L(W_lin) of the model linearised at ``weights0`` (input→output) under ``method``: for GD at the record
    ``steps`` with the run's η, for flow and exact at the record ``times`` (module docstring); γ is the method's."""
    gamma = float(method.weight_decay)
    is_gd = isinstance(method, GradientDescent)
    if is_gd and steps is None:
        steps = np.rint(np.asarray(times) / method.learning_rate).astype(np.int64)
    kw = {"steps": steps, "learning_rate": float(method.learning_rate)} if is_gd else {"times": times}
    sp = spectrum(problem, weights0, gamma, route) if route != "stepped" else None
    if sp is None:
        gaps, used = _stepped(problem, weights0, gamma, **kw), "stepped"
    else:
        gaps, used = _evaluate(sp, gamma, **kw), sp.route
    hidden = [w.shape[0] for w in weights0[:-1]]
    residual = least_squares(problem).residual
    excess = gaps - optimum(problem, hidden).fit_gap
    return LinearizedLoss(None if residual is None else residual + gaps, excess, used)

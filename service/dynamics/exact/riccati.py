"""Matrix Riccati solution for λ-balanced two-layer networks (docs/theory.md#riccati).

With x = 2t, F = [[−(λ̃/2) I, Σ31ᵀ], [Σ31, (λ̃/2) I]] and P̃ = c·QQᵀ, Q = [W21ᵀ; W32], λ̃ = c·λ:

    dP̃/dx = F P̃ + P̃ F − P̃²,      P̃(x) = e^{Fx} P̃0 [I + K(x) P̃0]⁻¹ e^{Fx}

evaluated in chunks by the semigroup law in an F-invariant subspace of dimension ≤ 2·rank Σ31 + 2·hidden
(not Ni + No), refused past RICCATI_MAX_DIM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg

from ..errors import ExactNotApplicableError, InvalidParameterError
from ..modes import ModeBasis
from ..problem import Problem
from ._common import _FIX_FLOW, BALANCE_RTOL, S_ZERO_RTOL

# Riccati: largest chunk Δx (x = 2t) and the cap on (μ_max − μ_min)·Δx that keeps one chunk well conditioned
# (docs/theory.md#riccati-evaluation: Δx = 0.5 for spectra of width ~4.4 is exact to 1e-14).
RICCATI_MAX_CHUNK = 0.5
RICCATI_SPREAD_CHUNK = 2.0
# Riccati convergence: one full chunk changes P (apart from the slow block) by ≤ RICCATI_CONV_ULPS·n·eps·max|P|
# (the round-off of forming P = QQᵀ, n = the dimension r of the reduced Riccati space, see RiccatiSubspace), and by no more than the chunk before (a growing change is an
# escape from a saddle, not convergence). A component still decaying at rate r is then within
# ~tol/(r·Δx) of its limit, which is what freezing it costs.
RICCATI_CONV_ULPS = 16.0
# Eigen-directions of F with |μ| ≤ RICCATI_SLOW_RTOL · max|μ| form the "slow block" that keeps evolving on its
# own (in large chunks) after the rest has converged: e.g. μ = 0 for λ = 0 with Ni ≠ No, where P decays like 1/x.
RICCATI_SLOW_RTOL = 1e-3


@dataclass
class RiccatiSolution:
    """P(t) = Q Qᵀ with Q = [W21ᵀ; W32] at each time (original scale), kept in the reduced eigen-coordinates of
    ``RiccatiEvaluator``: P = O P' Oᵀ / c with O = ``o`` ((Ni + No) × r, orthonormal columns). The blocks
    W32W21 (``product``), W21ᵀW21 (``w21_gram``) and W32W32ᵀ (``w32_gram``, No × No: only for small No) are formed
    on request; ``p`` is the full (Ni + No)² matrix (small problems only).

    ``chunk_evaluations`` counts applications of the chunk map Φ_h (the cost); ``converged_time`` is the time
    after which only the slow block still moves (None if not reached before the last time)."""

    times: np.ndarray
    states: np.ndarray          # (T, r, r) symmetric P' (eigen-coordinates of F restricted, c-scaled)
    o: np.ndarray               # (Ni + No, r)
    c: float
    n_in: int
    lam: float
    chunk_evaluations: int
    converged_time: float | None

    @property
    def o_in(self) -> np.ndarray:
        return self.o[:self.n_in]

    @property
    def o_out(self) -> np.ndarray:
        return self.o[self.n_in:]

    @cached_property
    def product(self) -> np.ndarray:
        """W32W21 (T, No, Ni) = O_out (P' O_inᵀ) / c: one (No × r)·(r × T·Ni) product."""
        return _left_apply(self.o_out, self.states @ self.o_in.T) / self.c

    @cached_property
    def w21_gram(self) -> np.ndarray:
        return _left_apply(self.o_in, self.states @ self.o_in.T) / self.c

    @property
    def w32_gram(self) -> np.ndarray:
        return _left_apply(self.o_out, self.states @ self.o_out.T) / self.c

    @property
    def p(self) -> np.ndarray:
        return _left_apply(self.o, self.states @ self.o.T) / self.c


def _left_apply(a: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """a @ stack[t] for every t as one matrix product (n × r)·(r × T·m) (a stacked matmul would loop over T)."""
    t, r, m = stack.shape
    out = a @ np.moveaxis(stack, 0, 1).reshape(r, t * m)
    return np.moveaxis(out.reshape(a.shape[0], t, m), 1, 0)


def lambda_balance(w21: np.ndarray, w32: np.ndarray) -> tuple[float, float]:
    """(λ, deviation): λ = tr(W32ᵀW32 − W21W21ᵀ)/Nh and max |W32ᵀW32 − W21W21ᵀ − λI| / (‖W21‖²_F + ‖W32‖²_F).

    λ within BALANCE_RTOL of zero (relative to the same scale) is returned as exactly 0: round-off must not
    turn a zero-balanced init into λ > 0, which would then demand No ≥ Nh.
    """
    b = w32.T @ w32 - w21 @ w21.T
    nh = b.shape[0]
    lam = float(np.trace(b)) / nh
    scale = float(np.sum(w21 * w21) + np.sum(w32 * w32))
    if scale == 0:
        return 0.0, 0.0
    dev = float(np.max(np.abs(b - lam * np.eye(nh)))) / scale
    if abs(lam) <= BALANCE_RTOL * scale:
        lam = 0.0
    return lam, dev


def _riccati_chunk(pp: np.ndarray, mu: np.ndarray, h: float) -> np.ndarray:
    """One exact step of length h (x units) in the eigenbasis of F (the push-through form of
    docs/theory.md#riccati):

        Φ_h(P) = e^{Fh} P [I + K(h) P]⁻¹ e^{Fh},   K(h) = ∫_0^h e^{2Fr} dr = diag((e^{2μh} − 1)/(2μ))

    Used for the slow block after convergence (no unstable growth there, so the P form is accurate).
    """
    e = np.exp(mu * h)
    k = _k_diag(mu, h)
    m = np.eye(mu.size) + k[:, None] * pp
    y = np.linalg.solve(m.T, pp).T             # P (I + K P)⁻¹  (P symmetric)
    out = e[:, None] * y * e[None, :]
    return _flush(0.5 * (out + out.T))


def _k_diag(mu: np.ndarray, h: float) -> np.ndarray:
    return np.where(mu != 0, np.expm1(2.0 * mu * h) / np.where(mu != 0, 2.0 * mu, 1.0), h)


def _riccati_chunk_q(qq: np.ndarray, mu: np.ndarray, h: float, ek: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> np.ndarray:
    """The same step on a square root P = Q Qᵀ (Q is n × Nh, eigenbasis of F):

        Q ← e^{Fh} Q L⁻ᵀ,   L Lᵀ = I + Qᵀ K(h) Q      (so that Q Qᵀ ← e^{Fh} Q (I + QᵀKQ)⁻¹ Qᵀ e^{Fh} = Φ_h(P))

    I + QᵀKQ ⪰ I is well conditioned, and the row scaling by e^{μh} is exact, so every row (eigen-direction)
    keeps its own relative precision: a small component sitting on a saddle is not swamped by the round-off of
    the large ones (the P form mixes rows in its solve and lost P ⪰ 0 at the 1e-9 level in such plateaus).
    """
    e, k = ek if ek is not None else (np.exp(mu * h), _k_diag(mu, h))
    g = qq.T @ (k[:, None] * qq)
    g[np.diag_indices_from(g)] += 1.0
    low = _flush(np.linalg.cholesky(g))
    out = e[:, None] * scipy.linalg.solve_triangular(low, qq.T, lower=True, check_finite=False).T
    return _flush(out)


# Entries below this fraction of the largest are set to 0 (Q and its Cholesky factor, after each chunk). The
# directions with μ < 0 shrink by e^{μΔx} per chunk without end and would otherwise sink into subnormal numbers
# (after x ≈ 700/|μ|), on which floating-point arithmetic is many times slower; products of up to three kept
# entries stay normal. Such a row only keeps shrinking relative to the others, so dropping it changes nothing.
FLUSH_RTOL = 1e-100


def _flush(a: np.ndarray) -> np.ndarray:
    if a.size:
        mag = np.abs(a)
        a[mag < FLUSH_RTOL * mag.max()] = 0.0
    return a


@dataclass(frozen=True)
class RiccatiSubspace:
    """An F-invariant subspace Z = Z_in ⊕ Z_out that contains the initial Q = [W21ᵀ; W32]
    (docs/theory.md#riccati-evaluation).

    With Σ31 = U_nz diag(s) V_nzᵀ (non-zero singular values), F = [[−(λ̃/2) I, Σ31ᵀ], [Σ31, (λ̃/2) I]] maps
    span[V_nz, W21ᵀ] ⊕ span[U_nz, W32] into itself (F[a; 0] = [−(λ̃/2)a; Σ31 a], Σ31 a ∈ span U_nz, and
    symmetrically), and dQ/dx = FQ − Q(QᵀQ)/2 keeps the columns of Q in the smallest F-invariant subspace that
    contains them. So P = QQᵀ = Z P_Z Zᵀ for all times and the Riccati equation holds for P_Z with
    F_Z = ZᵀFZ = [[−(λ̃/2) I, Mᵀ], [M, (λ̃/2) I]], M = Z_outᵀ Σ31 Z_in = [[diag(s), 0], [0, 0]]:
    dimension r = r_in + r_out ≤ 2·rank Σ31 + 2 Nh instead of Ni + No.

    Z_in = [V_nz, A], A an orthonormal basis of the part of W21ᵀ orthogonal to V_nz (numerical rank: singular
    values above max(Ni, Nh)·eps·‖Q‖₂, numpy's matrix_rank rule, so only round-off is dropped); Z_out likewise.
    """

    z_in: np.ndarray
    z_out: np.ndarray
    s: np.ndarray

    @property
    def dim(self) -> int:
        return self.z_in.shape[1] + self.z_out.shape[1]


def _span_extension(base: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
    """Orthonormal columns spanning the part of span(x) orthogonal to the orthonormal ``base`` (numerical rank)."""
    for _ in range(2):                       # projecting twice leaves eps·‖x‖ along base, not eps·‖x before‖
        x = x - base @ (base.T @ x)
    if x.size == 0:
        return np.zeros((x.shape[0], 0))
    a, sig, _ = np.linalg.svd(x, full_matrices=False)
    a = a[:, sig > max(x.shape) * np.finfo(np.float64).eps * scale]
    for _ in range(2):                       # directions of small σ carry base components of order eps·‖x‖/σ
        a = a - base @ (base.T @ a)
    return np.linalg.qr(a)[0] if a.shape[1] else a


def riccati_subspace(basis: ModeBasis, w21: np.ndarray, w32: np.ndarray) -> RiccatiSubspace:
    """The reduced Riccati space (see ``RiccatiSubspace``); cost O((Ni + No)·Nh·(k + Nh)), no (Ni + No)² matrix."""
    s_max = float(basis.s[0]) if basis.s.size else 0.0
    nz = basis.s > S_ZERO_RTOL * s_max if s_max > 0 else np.zeros(basis.s.shape, dtype=bool)
    v, u = basis.v[:, nz], basis.u[:, nz]
    scale = max(float(np.linalg.norm(w21, 2)) if w21.size else 0.0,
                float(np.linalg.norm(w32, 2)) if w32.size else 0.0)
    z_in = np.hstack([v, _span_extension(v, w21.T, scale)])
    z_out = np.hstack([u, _span_extension(u, w32, scale)])
    return RiccatiSubspace(z_in, z_out, basis.s[nz].copy())


def _full_space(sigma31: np.ndarray) -> RiccatiSubspace:
    """Z = the whole space (no reduction): F_Z = F exactly; for checks against the reduced evaluation."""
    no, ni = sigma31.shape
    return RiccatiSubspace(np.eye(ni), np.eye(no), np.zeros(0))


class RiccatiEvaluator:
    """Exact gradient flow of a λ-balanced two-layer network with Σ11 = c·I (docs/theory.md#riccati, Dominé et al.).

    With x = 2t, F = [[−(λ̃/2) I, Σ31ᵀ], [Σ31, (λ̃/2) I]] and P̃ = c·QQᵀ, λ̃ = c·λ (the exact rescaling W̃ = √c W):

        dP̃/dx = F P̃ + P̃ F − P̃²,      P̃(x) = e^{Fx} P̃0 [I + K(x) P̃0]⁻¹ e^{Fx}

    Everything runs in the F-invariant subspace Z of ``RiccatiSubspace`` (dimension r ≤ 2·rank Σ31 + 2Nh, so a
    tall or wide task costs what its rank and hidden width cost); ``reduce=False`` uses the whole space (the
    (Ni + No)² form, for checks). ``o`` ((Ni + No) × r) holds the eigenvectors of F_Z in original coordinates.

    The one-shot form is ill-conditioned at large x (docs/theory.md#riccati-evaluation), so P is advanced by the
    semigroup law in chunks Δx = min(0.5, 2/(μ_max − μ_min)), in the eigenbasis of F_Z (decomposed once), on the
    square root Q (see ``_riccati_chunk_q``). To keep the cost independent of t_max, stepping stops once a full
    chunk leaves P unchanged to RICCATI_CONV_ULPS·r·eps·max|P| (and the change is not growing): P is then at its
    limit in every direction except the slow block (|μ| ≤ RICCATI_SLOW_RTOL·max|μ|, e.g. μ = 0 for λ = 0 and
    Ni ≠ No, where P decays like 1/x), which decouples once the rest has converged and evolves on its own in chunks of
    2/(its own spread) — one closed-form step when its μ are all 0. So the number of chunks is bounded by the
    convergence time, not by t_max. Components that a chunk changes by less than that round-off level while they
    would grow later (an init within round-off of a saddle) are frozen at that point.
    Raises ExactNotApplicableError past RICCATI_MAX_DIM (reduced) dimensions.
    """

    def __init__(self, sigma31: np.ndarray, w21: np.ndarray, w32: np.ndarray, c: float = 1.0, *,
                 basis: ModeBasis | None = None, space: RiccatiSubspace | None = None, reduce: bool = True):
        sigma31 = np.asarray(sigma31, dtype=np.float64)
        w21 = np.asarray(w21, dtype=np.float64)
        w32 = np.asarray(w32, dtype=np.float64)
        self.n_in, self.n_out, self.c = w21.shape[1], w32.shape[0], float(c)
        lam, dev = lambda_balance(w21, w32)
        if dev > BALANCE_RTOL:
            raise ExactNotApplicableError(
                f"the Riccati solution needs a λ-balanced init W32ᵀW32 − W21W21ᵀ = λI; max deviation {dev:.3g} "
                f"(relative to ‖W21‖² + ‖W32‖², tolerance {BALANCE_RTOL:g})", field=("init",),
                fix='use a lambda_balanced init, or method "flow"')
        self.lam = lam
        lt = c * lam
        if not reduce:
            space = _full_space(sigma31)
            ni, no = self.n_in, self.n_out
            f = np.block([[-(lt / 2.0) * np.eye(ni), sigma31.T], [sigma31, (lt / 2.0) * np.eye(no)]])
        else:
            if space is None:
                space = riccati_subspace(basis if basis is not None else _thin_basis(sigma31), w21, w32)
            _check_riccati_dim(space)
            ni, no = space.z_in.shape[1], space.z_out.shape[1]
            m = np.zeros((no, ni))
            m[np.arange(space.s.size), np.arange(space.s.size)] = space.s
            f = np.block([[-(lt / 2.0) * np.eye(ni), m.T], [m, (lt / 2.0) * np.eye(no)]])
        self.space = space
        self.mu, o_z = np.linalg.eigh(f)
        r_in = space.z_in.shape[1]
        self.o = np.vstack([space.z_in @ o_z[:r_in], space.z_out @ o_z[r_in:]])
        self.q0 = self.o.T @ (np.sqrt(c) * np.vstack([w21.T, w32]))
        mu = self.mu
        mu_max = float(np.max(np.abs(mu))) if mu.size else 0.0
        self.slow = np.abs(mu) <= RICCATI_SLOW_RTOL * mu_max
        spread = float(mu.max() - mu.min()) if mu.size else 0.0
        self.dx = RICCATI_MAX_CHUNK if spread == 0 else min(RICCATI_MAX_CHUNK, RICCATI_SPREAD_CHUNK / spread)
        mu_s = mu[self.slow]
        spread_s = float(mu_s.max() - mu_s.min()) if mu_s.size else 0.0
        self.dx_slow = np.inf if spread_s == 0 else RICCATI_SPREAD_CHUNK / spread_s
        self.conv_rtol = RICCATI_CONV_ULPS * max(mu.size, 1) * np.finfo(np.float64).eps
        self._ek_dx = (np.exp(mu * self.dx), _k_diag(mu, self.dx))
        self.chunk_evaluations = 0
        self.converged_time: float | None = None

    def _step_q(self, qq: np.ndarray, h: float) -> np.ndarray:
        self.chunk_evaluations += 1
        return _riccati_chunk_q(qq, self.mu, h, self._ek_dx if h == self.dx else None)

    def _converged(self, pp: np.ndarray, new: np.ndarray, prev_change: float) -> tuple[bool, float]:
        """Convergence test of one full chunk (see the class docstring); returns (converged, change)."""
        pred = pp.copy()
        if self.slow.any():
            ix = np.ix_(self.slow, self.slow)
            pred[ix] = _riccati_chunk(pp[ix], self.mu[self.slow], self.dx)
        change = float(np.max(np.abs(new - pred)))
        scale = float(np.max(np.abs(new)))
        return scale == 0 or (change <= self.conv_rtol * scale and change <= prev_change), change

    def _advance_p(self, pp: np.ndarray, h: float, mask: np.ndarray | None = None) -> np.ndarray:
        """P-form advance by h (x units) of the whole P' or of its ``mask`` block, in chunks ≤ its own Δx."""
        mu = self.mu if mask is None else self.mu[mask]
        limit = self.dx if mask is None else self.dx_slow
        done = 0.0
        while done < h:
            step = min(limit, h - done)
            pp = _riccati_chunk(pp, mu, step)
            self.chunk_evaluations += 1
            done += step
        return pp

    def evaluate(self, times, project: Callable[[np.ndarray], np.ndarray] | None = None) -> list:
        """P' (eigenbasis of F, c-scaled) at each time, or ``project(P')`` of it, in the order of ``times``."""
        times = np.asarray(times, dtype=np.float64)
        if times.ndim != 1 or np.any(~np.isfinite(times)) or np.any(times < 0):
            raise InvalidParameterError("times must be finite and ≥ 0", field=("record", "times"),
                                        fix="give times between 0 and t_max")
        project = project or (lambda p: p)
        order = np.argsort(times, kind="stable")
        out: list = [None] * times.size
        slow, ix = self.slow, np.ix_(self.slow, self.slow)
        qq = self.q0
        pp = qq @ qq.T
        x_cur, converged_x, p_conv, prev_change = 0.0, None, None, np.inf
        for i in order:
            x = 2.0 * times[i]
            while converged_x is None and x_cur < x:
                h = min(self.dx, x - x_cur)
                qq = self._step_q(qq, h)
                new = qq @ qq.T
                if h == self.dx:
                    done, prev_change = self._converged(pp, new, prev_change)
                    if done:
                        converged_x, p_conv = x_cur + h, new
                pp = new
                x_cur += h
            if converged_x is not None and x > converged_x:
                res = p_conv.copy()
                if slow.any():
                    res[ix] = self._advance_p(p_conv[ix], x - converged_x, slow)
                out[i] = project(res)
            else:
                out[i] = project(pp)
        self.converged_time = None if converged_x is None else converged_x / 2.0
        return out

    def first_crossings(self, project: Callable[[np.ndarray], np.ndarray], target: np.ndarray, valid: np.ndarray,
                        t_cap: float) -> np.ndarray:
        """First time each projected value ``project(Q')`` (Q' the square root, eigenbasis) reaches ``target``.

        One pass over the chunk boundaries (every Δx, until convergence or 2·t_cap), which serve as the grid;
        within the chunk where a value first reaches its target the time is bisected to round-off, each trial
        being one exact chunk from the stored square root at the chunk's start. NaN where not reached
        (including values that only move in the slow block after convergence). "Reached" means
        value·sign(target) ≥ |target|.
        """
        sgn = np.sign(target)
        out = np.full(target.shape, np.nan)
        qq = self.q0
        cur = project(qq)
        hit = valid & (cur * sgn >= target * sgn)
        out[hit] = 0.0
        pending = valid & ~hit
        pp = qq @ qq.T
        x, prev_change = 0.0, np.inf
        while pending.any() and x < 2.0 * t_cap:
            new_q = self._step_q(qq, self.dx)
            val = project(new_q)
            crossed = pending & (val * sgn >= target * sgn)
            for a in np.flatnonzero(crossed):
                lo, hi = 0.0, self.dx
                for _ in range(60):
                    mid = 0.5 * (lo + hi)
                    v = project(self._step_q(qq, mid))[a]
                    if v * sgn[a] >= target[a] * sgn[a]:
                        hi = mid
                    else:
                        lo = mid
                    if hi - lo <= 4e-16 * (x + hi):
                        break
                out[a] = (x + hi) / 2.0
            pending &= ~crossed
            new = new_q @ new_q.T
            done, prev_change = self._converged(pp, new, prev_change)
            qq, pp, x = new_q, new, x + self.dx
            if done:
                break
        return out

def _thin_basis(sigma31: np.ndarray) -> ModeBasis:
    u, s, vt = np.linalg.svd(np.asarray(sigma31, dtype=np.float64), full_matrices=False)
    return ModeBasis(u, s, vt.T)


# Largest reduced Riccati dimension r (see RiccatiSubspace) evaluated: F_Z is decomposed once (r³) and every chunk
# forms P' = Q'Q'ᵀ (r²·Nh); at r = 1000 that is ~1 s in all, beyond it minutes. Above it the exact method is refused
# and the theory overlay falls back to the small-init approximation.
RICCATI_MAX_DIM = 1000


def _check_riccati_dim(space: RiccatiSubspace) -> None:
    if space.dim > RICCATI_MAX_DIM:
        raise ExactNotApplicableError(
            f"the Riccati solution would work in {space.dim} dimensions (2·rank Σ31 + the hidden directions of W21ᵀ "
            f"and W32: {space.z_in.shape[1]} input + {space.z_out.shape[1]} output), more than {RICCATI_MAX_DIM}",
            field=("init",), fix=f"{_FIX_FLOW}; or use a narrower hidden layer")


def riccati_flow(sigma31: np.ndarray, w21: np.ndarray, w32: np.ndarray, times, c: float = 1.0, *,
                 basis: ModeBasis | None = None, reduce: bool = True) -> RiccatiSolution:
    """P(t) of the exact Riccati solution (see ``RiccatiEvaluator``) at ``times``, original scale, kept factored."""
    ev = RiccatiEvaluator(sigma31, w21, w32, c, basis=basis, reduce=reduce)
    times = np.asarray(times, dtype=np.float64)
    states = ev.evaluate(times)
    r = ev.mu.size
    st = np.array(states) if states else np.zeros((0, r, r))
    st = 0.5 * (st + np.swapaxes(st, -1, -2))
    return RiccatiSolution(times=times, states=st, o=ev.o, c=ev.c, n_in=ev.n_in, lam=ev.lam,
                           chunk_evaluations=ev.chunk_evaluations, converged_time=ev.converged_time)


def riccati_gradient_norm(problem: Problem, sol: RiccatiSolution) -> np.ndarray:
    """sqrt(‖∂L/∂W21‖² + ‖∂L/∂W32‖²) from the blocks of P only (Σ11 = cI, E = Σ31 − c W32W21):

        ‖∂L/∂W21‖² = 4 tr(Eᵀ W32W32ᵀ E),   ‖∂L/∂W32‖² = 4 tr(W21ᵀW21 EᵀE)

    with W32W32ᵀ = O_out P' O_outᵀ/c, so the first is 4 tr(Yᵀ P' Y)/c with Y = O_outᵀE (r × Ni) and no No × No
    matrix is formed; the second uses EᵀE (Ni × Ni) when Ni ≤ r, else X = E O_in (No × r) and 4 tr(X P' Xᵀ)/c.
    """
    c = float(np.mean(np.diag(problem.sigma11)))
    e = problem.sigma31[None] - c * sol.product
    n_t, n_out, n_in = e.shape
    r = sol.states.shape[-1]
    y = np.moveaxis((sol.o_out.T @ np.moveaxis(e, 0, 1).reshape(n_out, n_t * n_in)).reshape(r, n_t, n_in), 1, 0)
    g1 = 4.0 * np.einsum("tri,tri->t", sol.states @ y, y) / sol.c
    if n_in <= r:
        g2 = 4.0 * np.einsum("tij,tij->t", sol.w21_gram, np.swapaxes(e, 1, 2) @ e)
    else:
        x = e @ sol.o_in
        g2 = 4.0 * np.einsum("tor,tor->t", x @ sol.states, x) / sol.c
    return np.sqrt(np.maximum(g1, 0.0) + np.maximum(g2, 0.0))

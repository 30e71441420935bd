"""Decoupled (aligned) initial conditions: W_l = R_{l+1} diag(a_l) R_lᵀ on a mode frame of Σ31
(docs/theory.md#saxe-two-layer, docs/theory.md#saxe-deep).

``decouple`` finds the channels of such an init and measures how far given weights are from one; an init is
"aligned" when its Gram and cross matrices in the mode frame are diagonal within ALIGN_RTOL of the layer norms.
``balance_deviation`` measures W_{l+1}ᵀW_{l+1} − W_lW_lᵀ (docs/theory.md#conservation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..modes import mode_basis
from ..problem import Problem
from ._common import ALIGN_RTOL, DEGENERATE_RTOL, ROUNDOFF_RTOL, S_ZERO_RTOL


@dataclass
class DecoupledInit:
    """An init of the form W_l = R_{l+1} diag(a_l) R_lᵀ on a (block-rotated) mode frame of Σ31
    (docs/theory.md#saxe-two-layer, docs/theory.md#saxe-deep).

    Channel ch pairs an input direction ``frames[0][:, ch]`` with an output direction ``frames[-1][:, ch]``
    (either may be a zero column: input or output directions of Σ31's null space that have no partner), with
    singular value ``s[ch]`` (0 in the null space) and per-layer amplitudes ``amps[ch, l]``. ``frames[l]``
    (n_l × m) holds the unit vectors R_l (zero columns where a channel has no direction in that layer).
    ``deviation`` is the measured misalignment (max over layers of ‖W_l − reconstruction‖_F/‖W_l‖_F, the
    amplitude-weighted non-orthogonality of the hidden frames and, for D ≥ 3, the relative imbalance).
    Channels coincide with the modes of ``mode_basis`` except inside degenerate blocks of Σ31 whose init is
    diagonal only in a rotated basis (``rotated``), and in the null space, where only directions some layer does
    not map to round-off get a channel (the others have zero amplitudes forever): m ≤ k + 3·(hidden width).
    """

    s: np.ndarray
    frames: list[np.ndarray]
    amps: np.ndarray
    deviation: float
    rotated: bool
    weights0: list[np.ndarray] = field(repr=False)

    @property
    def depth(self) -> int:
        return self.amps.shape[1]

    @property
    def u0(self) -> np.ndarray:
        return np.prod(self.amps, axis=1)

    def strength_matrix(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        """(M, resid): mode-basis strengths are u_αᵀ W v_α = Σ_ch M[α, ch] u_ch + resid_α (resid ≈ 0)."""
        b = mode_basis(problem)
        m = (b.u.T @ self.frames[-1]) * (b.v.T @ self.frames[0])
        w0 = self.weights0[0]
        for wl in self.weights0[1:]:
            w0 = wl @ w0
        resid = np.einsum("oa,oi,ia->a", b.u, w0, b.v) - m @ self.u0
        return m, resid

    def weights_at(self, amps_t: np.ndarray) -> list[np.ndarray]:
        """W_l(t) = W_l(0) + Σ_ch (a_l(t) − a_l(0)) R_{l+1}[:, ch] R_l[:, ch]ᵀ for amplitudes (T, m, D)."""
        out = []
        for l, w0 in enumerate(self.weights0):
            da = amps_t[:, :, l] - self.amps[None, :, l]
            out.append(w0[None] + (self.frames[l + 1][None] * da[:, None, :]) @ self.frames[l].T)
        return out

    def product_at(self, u_t: np.ndarray) -> np.ndarray:
        """W(t) = W(0) + Σ_ch (u_ch(t) − u_ch(0)) out_ch in_chᵀ for strengths (T, m)."""
        w0 = self.weights0[0]
        for wl in self.weights0[1:]:
            w0 = wl @ w0
        du = u_t - self.u0[None]
        return w0[None] + (self.frames[-1][None] * du[:, None, :]) @ self.frames[0].T


def _offdiag_max(a: np.ndarray) -> float:
    if a.shape[0] < 2:
        return 0.0
    return float(np.max(np.abs(a - np.diag(np.diag(a)))))


def _block_rotation(x: np.ndarray, y: np.ndarray, z: np.ndarray, scale: float) -> np.ndarray:
    """Common rotation O of a degenerate block that diagonalises the input Gram x, output Gram y and cross z.

    Identity when they are already diagonal (the usual case: the init was built on this very basis); otherwise
    the eigenvectors of a generic combination (any simultaneous diagonaliser of x, y, z diagonalises it, and
    distinct (x, y, z) triples get distinct eigenvalues). Whether it worked is checked by the caller.
    """
    if max(_offdiag_max(x), _offdiag_max(y), _offdiag_max(z)) <= ALIGN_RTOL * scale:
        return np.eye(x.shape[0])
    g = np.zeros_like(x)
    for mat, coef in ((x, 1.0), (y, np.sqrt(2.0)), (0.5 * (z + z.T), np.sqrt(3.0))):
        nrm = float(np.max(np.abs(mat)))
        if nrm > 0:
            g += coef * mat / nrm
    return np.linalg.eigh(g)[1]


def _project_out(base: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(I − base baseᵀ) x for orthonormal columns ``base``, applied twice (the second pass removes the eps·‖x‖
    left along base by the first, which matters when x is mostly in span(base))."""
    for _ in range(2):
        if base.shape[1]:
            x = x - base @ (base.T @ x)
    return x


def _reorthonormalise(base: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Columns x (orthonormal up to round-off) made exactly orthogonal to ``base`` and orthonormal again.

    Singular vectors of small singular value σ carry components of order eps·‖M‖/σ along directions the matrix M
    was projected off (round-off in M, amplified); with W_l's large images along base such a component would
    show up as a spurious misalignment of ~eps·‖W‖²/σ. QR keeps the order; signs keep columns close to x.
    """
    if x.shape[1] == 0:
        return x
    q, r = np.linalg.qr(_project_out(base, x))
    sgn = np.sign(np.diag(r))
    sgn[sgn == 0] = 1.0
    return q * sgn


def _side_channels(x: np.ndarray, floor: float, base: np.ndarray) -> np.ndarray:
    """Left singular vectors of x (x ⟂ ``base``) whose singular value exceeds ``floor``, descending."""
    if x.size == 0:
        return np.zeros((x.shape[0], 0))
    left, sig, _ = np.linalg.svd(x, full_matrices=False)
    return _reorthonormalise(base, left[:, sig > floor])


def _null_pairs(a: np.ndarray, mid: np.ndarray | None, bt: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Singular pairs (left n_out × p, right n_in × p) of a·mid·bt with singular value > ``floor``, from QR factors
    of a (n_out × h_D) and btᵀ (n_in × h_1): O((n_out + n_in)·h²), never an n_out × n_out or n_in × n_in matrix."""
    if a.size == 0 or bt.size == 0:
        return np.zeros((a.shape[0], 0)), np.zeros((bt.shape[1], 0))
    qa, ra = np.linalg.qr(a)
    qb, rb = np.linalg.qr(bt.T)
    core = ra @ (rb.T if mid is None else mid @ rb.T)
    x, sig, yt = np.linalg.svd(core, full_matrices=False)
    npair = int(np.sum(sig > floor))
    return qa @ x[:, :npair], qb @ yt[:npair].T


def decouple(problem: Problem, weights: Sequence[np.ndarray]) -> DecoupledInit:
    """Find the channels of a decoupled init (any D ≥ 2) and measure how far ``weights`` are from one.

    Frames: Σ31 = U S Vᵀ from ``mode_basis`` (thin). Non-zero singular values are grouped into degenerate
    blocks, each rotated (only if needed) so that W_1ᵀW_1, W_DW_Dᵀ and W = W_D⋯W_1 are diagonal in it. The null
    block (s = 0: everything orthogonal to the non-zero modes, never given a basis) is handled by projections:
    its part Pu W Pv of W is paired by a thin SVD (Pu = I − U_nzU_nzᵀ, Pv likewise), and what is left of
    W_1 Pv and (D = 2) Pu W_D after removing the pairs gives the unpaired input-only / output-only channels
    (their singular vectors, descending). Null directions that every layer maps to round-off
    (≤ ROUNDOFF_RTOL·‖W_l‖_F) carry no channel: their amplitudes are 0 and stay 0 (also under weight decay),
    so they change neither the weights, the strengths nor the deviation. For D ≥ 3 output-only directions have
    zero amplitudes in every layer (nothing reaches them from the input) and any W_D component along them shows
    up as a reconstruction error. Everything is thin: k + O(hidden) channels, matrices n × (k + hidden).
    Hidden directions are then propagated: for two layers from whichever of W21 v, W32ᵀ u is larger, for D ≥ 3
    forward from v. The init is decoupled iff ``deviation`` (see ``DecoupledInit``) ≤ ALIGN_RTOL.
    """
    ws = [np.asarray(w, dtype=np.float64) for w in weights]
    d = len(ws)
    b = mode_basis(problem)
    k = b.s.size
    s_max = float(b.s[0]) if k else 0.0
    nz = np.flatnonzero(b.s > S_ZERO_RTOL * s_max) if s_max > 0 else np.zeros(0, dtype=int)
    w = ws[0]
    for wl in ws[1:]:
        w = wl @ w
    n_first = float(np.linalg.norm(ws[0]))
    n_last = float(np.linalg.norm(ws[-1]))
    n_prod = float(np.linalg.norm(w))
    ins, outs, svals = [], [], []
    rotated = False
    # degenerate blocks of non-zero singular values
    start = 0
    while start < nz.size:
        stop = start + 1
        while stop < nz.size and b.s[nz[stop - 1]] - b.s[nz[stop]] <= DEGENERATE_RTOL * s_max:
            stop += 1
        g = nz[start:stop]
        vg, ug = b.v[:, g], b.u[:, g]
        if g.size > 1:
            p, q = ws[0] @ vg, ws[-1].T @ ug
            rot = _block_rotation(p.T @ p, q.T @ q, ug.T @ w @ vg, max(n_first, n_last, n_prod) ** 2)
            if not np.allclose(rot, np.eye(g.size)):
                rotated = True
            vg, ug = vg @ rot, ug @ rot
        ins.append(vg)
        outs.append(ug)
        svals.append(np.full(g.size, float(np.mean(b.s[g]))))
        start = stop
    # null block (s = 0), by projections off the non-zero modes
    v_nz, u_nz = b.v[:, nz], b.u[:, nz]
    first_null = _project_out(v_nz, ws[0].T).T            # W_1 Pv   (h_1 × n_in)
    last_null = _project_out(u_nz, ws[-1])                 # Pu W_D   (n_out × h_D)
    mid = None
    for wl in ws[1:-1]:
        mid = wl if mid is None else wl @ mid
    out_pair, in_pair = _null_pairs(last_null, mid, first_null,
                                    ALIGN_RTOL * max(n_prod, n_first * n_last, 1e-300))
    out_pair, in_pair = _reorthonormalise(u_nz, out_pair), _reorthonormalise(v_nz, in_pair)
    if in_pair.shape[1]:
        rotated = True
        ins.append(in_pair)
        outs.append(out_pair)
        svals.append(np.zeros(in_pair.shape[1]))
    # unpaired: what is left of W_1 (input side) and, for D = 2, of W_D (output side)
    rest_in = _side_channels(_project_out(in_pair, first_null.T), ROUNDOFF_RTOL * n_first, np.hstack([v_nz, in_pair]))
    ins.append(rest_in)
    outs.append(np.zeros((problem.n_out, rest_in.shape[1])))
    svals.append(np.zeros(rest_in.shape[1]))
    if d == 2:
        rest_out = _side_channels(_project_out(out_pair, last_null), ROUNDOFF_RTOL * n_last, np.hstack([u_nz, out_pair]))
        ins.append(np.zeros((problem.n_in, rest_out.shape[1])))
        outs.append(rest_out)
        svals.append(np.zeros(rest_out.shape[1]))
    inp = np.hstack(ins) if ins else np.zeros((problem.n_in, 0))
    out = np.hstack(outs) if outs else np.zeros((problem.n_out, 0))
    s = np.concatenate(svals) if svals else np.zeros(0)
    m = s.size
    amps = np.zeros((m, d))
    frames = [inp] + [np.zeros((wl.shape[0], m)) for wl in ws[:-1]] + [out]
    # images of size round-off (≤ ROUNDOFF_RTOL·‖W_l‖_F) carry no direction: normalising them would invent one
    if d == 2:
        p = ws[0] @ inp                      # W21 v per channel (n_h × m)
        q = ws[1].T @ out                    # W32ᵀ u per channel
        npn, nqn = np.linalg.norm(p, axis=0), np.linalg.norm(q, axis=0)
        npn[npn <= ROUNDOFF_RTOL * n_first] = 0.0
        nqn[nqn <= ROUNDOFF_RTOL * n_last] = 0.0
        for ch in range(m):
            if npn[ch] >= nqn[ch] and npn[ch] > 0:
                r = p[:, ch] / npn[ch]
                amps[ch] = (npn[ch], q[:, ch] @ r)
            elif nqn[ch] > 0:
                r = q[:, ch] / nqn[ch]
                amps[ch] = (p[:, ch] @ r, nqn[ch])
            else:
                continue
            frames[1][:, ch] = r
    else:
        cur = inp.copy()
        for l in range(d - 1):
            h = ws[l] @ cur
            nrm = np.linalg.norm(h, axis=0)
            nrm[nrm <= ROUNDOFF_RTOL * float(np.linalg.norm(ws[l]))] = 0.0
            amps[:, l] = nrm
            with np.errstate(invalid="ignore", divide="ignore"):
                cur = np.where(nrm > 0, h / np.where(nrm > 0, nrm, 1.0), 0.0)
            frames[l + 1] = cur
        amps[:, d - 1] = np.einsum("om,om->m", out, ws[d - 1] @ cur)
    # deviation: reconstruction of every layer, orthonormality of hidden frames, balance (D ≥ 3)
    dev = 0.0
    for l, wl in enumerate(ws):
        rec = (frames[l + 1] * amps[:, l]) @ frames[l].T
        nrm = float(np.linalg.norm(wl))
        if nrm > 0:
            dev = max(dev, float(np.linalg.norm(wl - rec)) / nrm)
    for l in range(1, d):
        r = frames[l]
        wgt = np.maximum(np.abs(amps[:, l - 1]), np.abs(amps[:, l]))
        gram = (r.T @ r) * np.outer(wgt, wgt)
        scale = max(float(np.linalg.norm(ws[l - 1])), float(np.linalg.norm(ws[l]))) ** 2
        if scale > 0:
            dev = max(dev, _offdiag_max(gram) / scale)
    if d >= 3:
        dev = max(dev, balance_deviation(ws))
    return DecoupledInit(s=s, frames=frames, amps=amps, deviation=dev, rotated=rotated, weights0=ws)


def balance_deviation(weights: Sequence[np.ndarray]) -> float:
    """max_l max |W_{l+1}ᵀW_{l+1} − W_lW_lᵀ| / max(‖W_{l+1}‖²_F, ‖W_l‖²_F): 0 for a balanced init
    (docs/theory.md#conservation)."""
    dev = 0.0
    for l in range(len(weights) - 1):
        a, b = weights[l], weights[l + 1]
        scale = max(float(np.sum(a * a)), float(np.sum(b * b)))
        if scale > 0:
            dev = max(dev, float(np.max(np.abs(b.T @ b - a @ a.T))) / scale)
    return dev

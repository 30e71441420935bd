"""Momentum and mini-batch SGD on a deep linear network: PyTorch's ``torch.optim.SGD`` (dampening 0).

One step (``sgd_loop``), with L_k the full loss (GD) or the loss of step k's mini-batch (SGD):

    g = ∂L_k/∂W + γW,   v ← μ v + g  (v = g at the first step),   d = g + μ v (nesterov) or v,   W ← W − η d

with −∂L_b/∂W_l = 2 (W_D⋯W_{l+1})ᵀ (Σ31_b − W Σ11_b) (W_{l−1}⋯W_1)ᵀ on the batch's correlations Σ11_b = X_bᵀX_b/|b|,
Σ31_b = Y_bᵀX_b/|b| (means over the batch, as ``nn.MSELoss`` with reduction "mean" summed over the outputs, i.e.
the batch's L = (1/|b|) Σ_{i∈b} ‖y_i − W x_i‖²). t = η·step. This is PyTorch's definition: weight decay γ added to
the gradient (coupled L2), the momentum buffer initialised with the first gradient, Nesterov's d = g + μv.
optax's ``sgd(learning_rate, momentum, nesterov)`` is ``chain(trace(decay=momentum, nesterov), scale(−η))`` whose
trace f_t = g_t + μ f_{t−1} starts from f_0 = 0, so its first step is f_1 = g_1 as well, and its Nesterov update is
g_t + μ f_t: the same iterates; optax.sgd has no weight decay of its own (``chain(add_decayed_weights(γ), sgd(…))``
is PyTorch's γ). Keras and Sutskever et al. put η inside the velocity instead: the same iterates for a constant η.

Sampling: as a ``DataLoader(shuffle=True, drop_last=False)``, without replacement within an epoch. With
rng = ``numpy.random.default_rng(seed)``, epoch e's order is the (e+1)-th ``rng.permutation(N)``; its ⌈N/B⌉
batches are consecutive slices of B rows, the last one the remainder (N mod B rows, when B ∤ N). A run of
``epochs`` takes epochs·⌈N/B⌉ steps; a run of ``steps`` stops inside an epoch if it must.

No convergence stop for SGD (``StochasticGradientDescent`` has no ``stop_at_convergence``): at a minimum of the
full loss the batch gradients do not vanish unless every sample is fitted exactly (L_ls = 0), so SGD does not
converge to a point but fluctuates around the minimum with a spread ∝ sqrt(η); a test on the full gradient
would need a full-batch gradient per check and would never pass with noisy data. And where every sample is
fitted (one-hot presets, noise-free teachers), a stop would make the end of a seed's run depend on when
its batches happen to fit. So an SGD run always takes all its steps ("completed", or "diverged"). Momentum GD
keeps GD's ``stop_at_convergence``, with the buffer's contribution in the test (``sgd_loop``).

The loop is compiled (``sgd_loop``): no Python per step, hooks between chunks as in GD. GD without momentum never
comes here: it keeps the compiled GD loop (``gd_loop``), bit for bit. Heavy-ball GD costs a little more per step
than GD (the gradient is formed explicitly, GD fuses it into the update); an SGD step's cost grows with the batch
(a batch of B rows costs O(B) through backprop, then O(n_in) through Σ11_b), so small batches step faster than
GD and large ones slower. Figures: ``python -m bench.sgd``, docs/performance.md#sgd.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from . import gd_loop, sgd_loop
from .errors import InvalidParameterError
from .gd import (
    BLOWUP_RATIO,
    DTYPES,
    HookClock,
    _check_method,
    _check_record_steps,
    blas_threads_for,
    blowup_cap,
    convergence_rtol,
    finish_run,
    frobenius_norm,
    layout_of,
    plan_order,
    records_so_far,
    scratch_for,
    snapshot_buffer,
    step_flops,
)
from .methods import (
    GradientDescent,
    GradientFlow,
    Hooks,
    RunResult,
    StochasticGradientDescent,
)
from .problem import Problem

# Epochs of sample order drawn at a time: at least this many row indices per draw, so that a dataset of a few
# rows (one-hot presets: P = 8) does not cost a Python call per epoch.
ORDER_BLOCK_ROWS = 1 << 14

SGD_FIX = "give a dataset (data.kind: dataset) or a preset built from one; SGD samples mini-batches"


# ------------------------------------------------------------------------------------------------
# validation


def check_momentum(momentum: float, nesterov: bool) -> None:
    """μ in [0, 1); Nesterov needs μ > 0 (PyTorch raises for nesterov with μ = 0 too)."""
    if isinstance(momentum, bool) or not (np.isfinite(momentum) and 0.0 <= momentum < 1.0):
        raise InvalidParameterError(f"momentum must be a number in [0, 1), got {momentum}",
                                    field=("training", "momentum"), fix="use e.g. 0.9, or 0 for none")
    if nesterov and momentum == 0.0:
        raise InvalidParameterError("nesterov momentum needs a momentum > 0", field=("training", "nesterov"),
                                    fix="set momentum > 0 (e.g. 0.9), or nesterov to false")


def _whole(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer ≥ {minimum}, got {value!r}",
                                    field=("training", name), fix=f"give a whole number ≥ {minimum}")
    return int(value)


def check_sgd(problem: Problem, method: StochasticGradientDescent) -> int:
    """Every parameter of an SGD run against its problem; returns the number of steps.

    The problem must carry its samples; η > 0 finite; 1 ≤ batch_size ≤ N; exactly one of steps (≥ 1) and
    epochs (≥ 1); seed an integer ≥ 0; γ ≥ 0; momentum as ``check_momentum``.
    """
    if problem.samples is None:
        raise InvalidParameterError("SGD needs the samples, and this problem has only its correlations",
                                    field=("training", "method"), fix=SGD_FIX)
    eta = method.learning_rate
    if isinstance(eta, bool) or not (np.isfinite(eta) and eta > 0):
        raise InvalidParameterError(f"learning_rate must be a positive finite number, got {eta}",
                                    field=("training", "learning_rate"), fix="give learning_rate > 0")
    n = problem.samples.n
    batch = _whole(method.batch_size, "batch_size", 1)
    if batch > n:
        raise InvalidParameterError(f"batch_size {batch} exceeds the {n} samples", field=("training", "batch_size"),
                                    fix=f"give a batch_size between 1 and {n}")
    if (method.steps is None) == (method.epochs is None):
        raise InvalidParameterError("give exactly one of steps and epochs",
                                    field=("training", "steps" if method.steps is not None else "epochs"),
                                    fix=f"either a number of steps, or of epochs (an epoch is ⌈N/batch_size⌉ = "
                                        f"{-(-n // batch)} steps)")
    if method.steps is not None:
        _whole(method.steps, "steps", 1)
    else:
        _whole(method.epochs, "epochs", 1)
    _whole(method.seed, "seed", 0)
    decay = method.weight_decay
    if isinstance(decay, bool) or not (np.isfinite(decay) and decay >= 0):
        raise InvalidParameterError(f"weight_decay must be ≥ 0, got {decay}", field=("training", "weight_decay"),
                                    fix="give weight_decay ≥ 0 (0 = none)")
    check_momentum(method.momentum, method.nesterov)
    return method.total_steps(n)


def stability_factor(momentum: float, nesterov: bool) -> float:
    """c(μ) with GD on a quadratic of curvature λ stable iff η(λ + γ) < 2c(μ) (Cohen et al. 2021, app.):

        heavy ball  x_{k+1} = (1 + μ − ηλ) x_k − μ x_{k−1}:             c = 1 + μ
        nesterov    x_{k+1} = (1 + μ)(1 − ηλ) x_k − μ(1 − ηλ) x_{k−1}:   c = (1 + μ)/(1 + 2μ)

    (Jury's conditions on the characteristic polynomials; c = 1 at μ = 0.)
    """
    mu = float(momentum)
    return (1.0 + mu) / (1.0 + 2.0 * mu) if nesterov else 1.0 + mu


# ------------------------------------------------------------------------------------------------
# the gradient source of an SGD step


def source_flops(dims: Sequence[int], batch_size: int) -> dict[int, float]:
    """FLOPs of one SGD step per gradient source (``sgd_loop``; multiply-adds count 2):

        BATCH_CORRELATIONS: Σ11_b, Σ31_b (2B·n_in·(n_in + n_out)) + the GD step's products (``gd.step_flops``)
        BATCH_SAMPLES:      forward 2B Σ_l n_l n_{l−1}, gradients 2B Σ_l n_l n_{l−1}, Δ's 2B Σ_{l≥2} n_l n_{l−1}
    """
    n = [int(x) for x in dims]
    b = int(batch_size)
    sizes = [n[l + 1] * n[l] for l in range(len(n) - 1)]
    return {sgd_loop.BATCH_CORRELATIONS: 2.0 * b * n[0] * (n[0] + n[-1]) + step_flops(n),
            sgd_loop.BATCH_SAMPLES: 2.0 * b * (2 * sum(sizes) + sum(sizes[1:]))}


def plan_source(dims: Sequence[int], batch_size: int) -> int:
    """The cheaper gradient source of an SGD step (``source_flops``); ties go to the batch correlations."""
    f = source_flops(dims, batch_size)
    return min(f, key=lambda s: (f[s], s))


# ------------------------------------------------------------------------------------------------
# the runs


class _EpochOrder:
    """The sample order, epochs drawn in blocks: epoch e is the (e+1)-th ``rng.permutation(N)``."""

    def __init__(self, seed: int, n: int):
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.per_block = max(1, -(-ORDER_BLOCK_ROWS // n))
        self.e0 = 0
        self.e1 = 0
        self.order = np.empty(0, dtype=np.int64)

    def cover(self, epoch: int) -> None:
        """Draw the next block of epochs when ``epoch`` is past the current one (epochs come in order)."""
        if epoch >= self.e1:
            self.e0 = self.e1
            self.e1 = self.e0 + self.per_block
            self.order = np.concatenate([self.rng.permutation(self.n) for _ in range(self.per_block)]).astype(np.int64)


def run_momentum_gd(problem: Problem, weights0: Sequence[np.ndarray], method: GradientDescent,
                    record_steps: np.ndarray, *, dtype=np.float64, hooks: Hooks | None = None) -> RunResult:
    """Full-batch GD with momentum (``GradientDescent.momentum`` > 0; μ = 0 works too, but ``gd.run_gd`` is the
    compiled GD loop for it): the records at ``record_steps``, outcome and times t = η·step, as ``run_gd``."""
    _check_method(method)
    check_momentum(method.momentum, method.nesterov)
    return _run(problem, weights0, method, int(method.steps), record_steps, np.dtype(dtype), hooks,
                sgd_loop.FULL, batch_size=1, stop=method.stop_at_convergence)


def run_sgd(problem: Problem, weights0: Sequence[np.ndarray], method: StochasticGradientDescent,
            record_steps: np.ndarray, *, dtype=np.float64, hooks: Hooks | None = None,
            source: int | None = None) -> RunResult:
    """Mini-batch SGD (module docstring) for ``method.total_steps(N)`` steps, recording at ``record_steps``.

    ``source`` forces a gradient source (``sgd_loop.BATCH_CORRELATIONS`` or ``BATCH_SAMPLES``; both give the same
    gradient to round-off); None picks the cheaper (``plan_source``).
    """
    n_steps = check_sgd(problem, method)
    layout = layout_of(problem, weights0)
    if source is None:
        source = plan_source(layout.dims, method.batch_size)
    if source not in (sgd_loop.BATCH_CORRELATIONS, sgd_loop.BATCH_SAMPLES):
        raise InvalidParameterError(f"unknown gradient source {source}", field=("source",),
                                    fix="use sgd_loop.BATCH_CORRELATIONS or sgd_loop.BATCH_SAMPLES")
    return _run(problem, weights0, method, n_steps, record_steps, np.dtype(dtype), hooks, source,
                batch_size=int(method.batch_size), stop=False)


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``. The kernel only reads x and y, and numba compiles one variant per
    writeability of each array: a dataset's samples are read-only views (``problem.read_only_samples``) unless a
    dtype or order conversion copied them, so without this one job kind had up to four variants of
    ``momentum_chunk`` (about 5 s of compile each); with it, one per dtype. The values are the same either way."""
    view = a.view()
    view.flags.writeable = False
    return view


def _run(problem: Problem, weights0: Sequence[np.ndarray], method, n_steps: int, record_steps: np.ndarray,
         dt: np.dtype, hooks: Hooks | None, source: int, *, batch_size: int, stop: bool) -> RunResult:
    """The shared driver: set-up as ``gd.run_gd``, then chunks of ``sgd_loop.momentum_chunk`` between hooks and
    (for SGD) draws of the sample order."""
    if dt not in DTYPES:
        raise InvalidParameterError(f"dtype {dt} is not supported", field=("dtype",), fix="use float64 or float32")
    rec = _check_record_steps(record_steps, n_steps)
    layout = layout_of(problem, weights0)
    m0, gd_flops = plan_order(layout.dims)
    flops = gd_flops if source == sgd_loop.FULL else source_flops(layout.dims, batch_size)[source]
    s31_norm = frobenius_norm(problem.sigma31)
    tol2 = (convergence_rtol(dt) * s31_norm) ** 2 if stop else -1.0

    w = layout.pack(weights0, dt)
    v = np.zeros_like(w)
    s11 = np.ascontiguousarray(problem.sigma11, dtype=dt)
    s31 = np.ascontiguousarray(problem.sigma31, dtype=dt)
    if source == sgd_loop.FULL:
        x = y = _read_only(np.zeros((1, 1), dtype=dt))
        n_samples, per_epoch, order = 1, 1, None
    else:
        # no copy for a C-ordered dataset of the run's dtype
        x = _read_only(np.ascontiguousarray(problem.samples.x, dtype=dt))
        y = _read_only(np.ascontiguousarray(problem.samples.y, dtype=dt))
        n_samples = x.shape[0]
        per_epoch = method.steps_per_epoch(n_samples)
        order = _EpochOrder(int(method.seed), n_samples)
    no_order = np.zeros(1, dtype=np.int64)
    bbuf = np.empty(sgd_loop.batch_workspace_size(layout.dims, batch_size) if source != sgd_loop.FULL else 8, dtype=dt)
    eta, decay, mu = dt.type(method.learning_rate), dt.type(method.weight_decay), dt.type(method.momentum)
    state, fstate = (a[0] for a in gd_loop.new_state(1))
    scratch = scratch_for(layout, m0, dt)

    clock = HookClock(hooks)
    chunk = max(1, int(clock.interval * 1e9 / max(flops, 1))) if clock.active else n_steps + 1
    with snapshot_buffer(rec.size + 1, layout.size, dt) as snap, blas_threads_for(flops, clock):
        clock.so_far = records_so_far(method, layout, dt, rec, snap, state)
        while state[gd_loop.STATUS] == gd_loop.RUNNING:
            k = int(state[gd_loop.K])
            k_stop = min(k + chunk, n_steps + 1)
            if order is not None and k < n_steps:
                order.cover(k // per_epoch)  # then the drawn epochs reach past step k
                k_stop = min(k_stop, order.e1 * per_epoch)  # the kernel needs no order at k = n_steps
            t0 = time.perf_counter()
            sgd_loop.momentum_chunk(w, v, layout.dims, layout.offs, m0, s11, s31, source, x, y,
                                    no_order if order is None else order.order, 0 if order is None else order.e0,
                                    n_samples, batch_size, per_epoch, eta, decay, mu, bool(method.nesterov), n_steps,
                                    rec, snap, tol2, BLOWUP_RATIO, s31_norm, blowup_cap(dt), state, fstate, k_stop,
                                    scratch, bbuf)
            if state[gd_loop.STATUS] == gd_loop.RUNNING and clock.active:
                # chunks end at the hook interval, or earlier at the end of the drawn epochs
                rate = (int(state[gd_loop.K]) - k) / max(time.perf_counter() - t0, 1e-9)
                chunk = int(min(max(1.0, rate * clock.interval), 4.0 * chunk))
                if clock.due():
                    clock.check(int(state[gd_loop.K]) / max(n_steps, 1))
        clock.done()
        return finish_run(method, layout, dt, rec, snap, w, state)


# ------------------------------------------------------------------------------------------------
# theory overlay and stability


def theory_stand_in(method, n_samples: int | None) -> tuple[GradientDescent | GradientFlow, float, bool, str]:
    """The method whose theory overlay stands in for a momentum or SGD run: (method, time factor, whether the
    overlay can stay exact, the assumption to add).

    * μ = 0, SGD: full-batch GD at the same η and steps. Exact when the batch is the whole dataset (then SGD is
      GD); otherwise the mean path for small η: the batch gradient is unbiased, its noise is not modelled.
    * μ > 0 (GD or SGD): gradient flow at time t/(1 − μ). For η → 0 the buffer tracks v ≈ g/(1 − μ) (heavy
      ball; Nesterov's d = g + μv alike), so W moves at rate η/(1 − μ) per step: an approximation, off by O(η)
      and by the buffer's transient over the first ~1/(1 − μ) steps.
    """
    mu = float(method.momentum)
    if mu == 0.0:
        steps = method.total_steps(n_samples) if isinstance(method, StochasticGradientDescent) else int(method.steps)
        gd = GradientDescent(method.learning_rate, steps, method.weight_decay)
        exact = isinstance(method, GradientDescent) or int(method.batch_size) >= int(n_samples)
        note = "" if exact else (f"; SGD (batch {method.batch_size} of {n_samples}): the full-batch GD prediction, "
                                 "the mean path for small η (the mini-batch noise is not modelled)")
        return gd, 1.0, exact, note
    factor = 1.0 / (1.0 - mu)
    kind = "Nesterov" if method.nesterov else "heavy-ball"
    note = (f"; {kind} momentum μ = {mu:g}: gradient flow at the rescaled time t/(1 − μ) (the small-η limit, the "
            f"buffer v ≈ g/(1 − μ)), off by O(η) and the buffer's transient")
    if isinstance(method, StochasticGradientDescent) and int(method.batch_size) < int(n_samples):
        note += "; mini-batch noise not modelled"
    return GradientFlow(t_max=1.0, weight_decay=method.weight_decay), factor, False, note


def theory_overlay_for(problem: Problem, weights0: Sequence[np.ndarray], method, times: np.ndarray,
                       steps: np.ndarray | None):
    """``theory.theory_overlay`` for a momentum or SGD run, through ``theory_stand_in``; times and learning times
    are the run's (t = η·step)."""
    from .theory import theory_overlay

    n = problem.samples.n if problem.samples is not None else None
    stand_in, factor, exact_ok, note = theory_stand_in(method, n)
    if factor == 1.0:
        overlay = theory_overlay(problem, weights0, stand_in, times, steps)
    else:
        overlay = theory_overlay(problem, weights0, stand_in, np.asarray(times) * factor, None)
    if overlay is None:
        return None
    overlay = replace(overlay, exact=bool(overlay.exact and exact_ok), assumptions=overlay.assumptions + note)
    if factor != 1.0:
        overlay = replace(overlay, learning_time=overlay.learning_time / factor)
    return overlay


def momentum_of(method) -> tuple[float, bool]:
    """(μ, nesterov) of a stepping method; (0, False) for flow and exact."""
    return float(getattr(method, "momentum", 0.0)), bool(getattr(method, "nesterov", False))


# ------------------------------------------------------------------------------------------------


def warm_up(dtypes: Sequence[type] = (np.float64, np.float32)) -> None:
    """Compile (or load from numba's cache) every variant of ``sgd_loop.momentum_chunk``: both dtypes (or those
    given), the three gradient sources, one and three layers. For a worker's warm-up (service/jobs/warmup.py)."""
    from .problem import problem_from_data

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3))
    problem = problem_from_data(x, x[:, :2] @ np.ones((2, 2)))
    for dtype in dtypes:
        for hidden in ([], [4, 4]):
            widths = [3, *hidden, 2]
            w0 = [0.1 * rng.standard_normal((widths[l + 1], widths[l])) for l in range(len(widths) - 1)]
            rec = np.array([0, 3])
            run_momentum_gd(problem, w0, GradientDescent(0.05, 3, momentum=0.9), rec, dtype=dtype)
            for source in (sgd_loop.BATCH_CORRELATIONS, sgd_loop.BATCH_SAMPLES):
                run_sgd(problem, w0, StochasticGradientDescent(0.05, 4, steps=3, momentum=0.5, nesterov=True), rec,
                        dtype=dtype, source=source)


"""One entry point: run a method from an initial condition and fill the trajectory.

    problem = presets.hierarchy(depth=3)
    w0 = init.initial_weights(problem, [16], "aligned", strength=1e-3)
    traj = simulate(problem, w0, GradientDescent(learning_rate=0.05, steps=4000), RecordSchedule(points=200))

The stepping methods (``gd``, ``flow``) and the closed forms (``exact``) only return the weights (or the
network map) at the record points; every derived quantity (loss, mode strengths, balance drift, gradient
norm, distance to the optimum) is computed here once, vectorised over the records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from . import gd_loop, network
from .errors import ExactNotApplicableError, InvalidParameterError, StopRequested
from .exact import ExactRun, check_exact, exact_run
from .flow import run_flow
from .gd import HookClock, Layout, plan_order, run_gd
from .generalization import early_stopping
from .learning_time import ModeWatch, measure
from .linearized import linearized_loss
from .live import RecordProducts, record_products
from .methods import Exact, GradientDescent, GradientFlow, Hooks, Method, RunResult, StochasticGradientDescent
from .modes import excess_loss, mode_basis, mode_strengths, optimum
from .ntk import check_kernel, kernel_record
from .problem import Problem, least_squares
from .random_matrix import random_matrix_loss_theory
from .record import RecordSchedule
from .sequence import TaskSequence, preflight_sequence, simulate_sequence
from .sgd import check_momentum, check_sgd, momentum_of, run_momentum_gd, run_sgd, stability_factor, theory_overlay_for
from .sharpness import check_sharpness, refuse_without_weights, sharpness_record, sharpness_threshold
from .similarity import check_similarity, item_similarity, symmetric
from .theory import loss_theory, theory_overlay
from .trajectory import ModeReport, Trajectory

DTYPES = {"float64": np.float64, "float32": np.float32}


def preflight(problem: Problem, weights0: Sequence[np.ndarray], method: Method,
              record: RecordSchedule = RecordSchedule(), *, dtype: str = "float64") -> None:
    """Every check ``simulate`` would fail on, without running anything (cheap: for the HTTP layer).

    Raises ``DynamicsError`` subclasses naming the field: the dtype, the method's parameters (for ``sgd`` against
    the problem: it needs the samples), the record schedule, and for ``exact`` whether a closed form applies. A
    ``sequence.TaskSequence`` in place of the problem gets ``sequence.preflight_sequence``.
    """
    if isinstance(problem, TaskSequence):
        preflight_sequence(problem, weights0, method, record, dtype=dtype)
        return
    if dtype not in DTYPES:
        raise InvalidParameterError(f"dtype {dtype!r} is not supported", field=("dtype",),
                                    fix='use "float64" (default) or "float32"')
    if isinstance(method, StochasticGradientDescent):
        record.gd_steps(method.learning_rate, check_sgd(problem, method))
    else:
        _check_method(method)
    if isinstance(method, GradientDescent):
        check_momentum(method.momentum, method.nesterov)
        record.gd_steps(method.learning_rate, method.steps)
    elif not isinstance(method, StochasticGradientDescent):
        record.sample_times(method.t_end)
    if record.similarity:
        check_similarity(weights0)
    if record.kernel:
        check_kernel(weights0)
    if record.sharpness:
        check_sharpness(record.sharpness_k, weights0)
    if record.linearized and (isinstance(method, StochasticGradientDescent) or momentum_of(method)[0]):
        raise InvalidParameterError(
            "the linearised loss is the model linearised at its initialisation trained by full-batch gd without "
            "momentum, gradient flow or the exact solution", field=("record", "linearized"),
            fix='set record.linearized to false, or use method "gd" without momentum, "flow" or "exact"')
    if isinstance(method, Exact):
        model = check_exact(problem, weights0, method.weight_decay)
        if record.weights and model.startswith("riccati"):
            raise ExactNotApplicableError(
                "the Riccati solution determines W = W32·W21 and the Gram blocks W21ᵀW21, W32W32ᵀ, "
                "not the individual weights", field=("record", "weights"),
                fix='set record.weights to false, or use method "flow" to record every layer')
        if record.sharpness and model.startswith("riccati"):
            raise refuse_without_weights()


def _check_method(method: Method) -> None:
    def positive(value: float, name: str) -> None:
        if not (np.isfinite(value) and value > 0):
            raise InvalidParameterError(f"{name} must be a positive finite number, got {value}",
                                        field=("training", name), fix=f"give {name} > 0")

    if isinstance(method, GradientDescent):
        positive(method.learning_rate, "learning_rate")
        if method.steps < 1:
            raise InvalidParameterError(f"steps must be at least 1, got {method.steps}", field=("training", "steps"),
                                        fix="give a positive number of GD steps")
    else:
        positive(method.t_max, "t_max")
    if isinstance(method, GradientFlow):
        positive(method.rtol, "rtol")
        positive(method.atol, "atol")
    if not (np.isfinite(method.weight_decay) and method.weight_decay >= 0):
        raise InvalidParameterError(f"weight_decay must be ≥ 0, got {method.weight_decay}",
                                    field=("training", "weight_decay"), fix="give weight_decay ≥ 0 (0 = none)")


def simulate(problem: Problem, weights0: Sequence[np.ndarray], method: Method,
             record: RecordSchedule = RecordSchedule(), *, dtype: str = "float64",
             hooks: Hooks | None = None) -> Trajectory:
    """Simulate (``gd``, ``sgd``, ``flow``) or evaluate (``exact``) the learning dynamics from ``weights0``.

    Weights are input→output (weights0[0] = W21). Time is t = η·step for GD and SGD (docs/theory.md#conventions). A
    ``sequence.TaskSequence`` in place of the problem runs its phases one after the other (``simulate_sequence``).
    """
    if isinstance(problem, TaskSequence):
        return simulate_sequence(problem, weights0, method, record, dtype=dtype, hooks=hooks)
    preflight(problem, weights0, method, record, dtype=dtype)
    weights0 = [np.asarray(w, dtype=np.float64) for w in weights0]
    try:
        run = _step(problem, weights0, method, record, dtype, hooks)
    except StopRequested as stop:
        if stop.partial is None or not stop.partial.times.size:
            raise
        # cancelled: the records so far, made into a trajectory like any other (outcome "stopped"), without the
        # sharpness, which can cost as much as the run did: a cancel must end promptly
        kept = build_trajectory(problem, weights0, method, replace(record, sharpness=False), stop.partial,
                                known=_computed(hooks))
        raise StopRequested(str(stop), partial=stop.partial, trajectory=kept) from None
    clock = HookClock(hooks)
    return build_trajectory(problem, weights0, method, record, run,
                            between=(lambda: clock.check(1.0) if clock.due() else None) if clock.active else None,
                            known=_computed(hooks))


def _computed(hooks: Hooks | None) -> RecordProducts | None:
    """The record products the hooks' live view has computed already (``Hooks.computed``), if any."""
    return hooks.computed() if hooks is not None and hooks.computed is not None else None


def _step(problem: Problem, weights0: list[np.ndarray], method: Method, record: RecordSchedule, dtype: str,
          hooks: Hooks | None) -> RunResult | ExactRun:
    """The method's run: the weights (or the exact method's network map) at the record points."""
    if isinstance(method, StochasticGradientDescent):
        run = run_sgd(problem, weights0, method,
                      record.gd_steps(method.learning_rate, method.total_steps(problem.samples.n)),
                      dtype=DTYPES[dtype], hooks=hooks)
    elif isinstance(method, GradientDescent) and method.momentum:
        run = run_momentum_gd(problem, weights0, method, record.gd_steps(method.learning_rate, method.steps),
                              dtype=DTYPES[dtype], hooks=hooks)
    elif isinstance(method, GradientDescent):
        run = run_gd(problem, weights0, method, record.gd_steps(method.learning_rate, method.steps),
                     dtype=DTYPES[dtype], hooks=hooks)
    elif isinstance(method, GradientFlow):
        hidden = [w.shape[0] for w in weights0[:-1]]
        basis = mode_basis(problem)
        watch = ModeWatch.of(basis, mode_strengths(optimum(problem, hidden).product, basis))
        run = run_flow(problem, weights0, method, record.sample_times(method.t_max),
                       dtype=DTYPES[dtype], hooks=hooks, watch=watch)
    else:
        run = exact_run(problem, weights0, record.sample_times(method.t_max), method.weight_decay,
                        w32_gram=record.kernel)
        if hooks and hooks.progress:
            hooks.progress(1.0)
    return run


def build_trajectory(problem: Problem, weights0: list[np.ndarray], method: Method, record: RecordSchedule,
                     run: RunResult | ExactRun, *, between: Callable[[], None] | None = None,
                     refine_until: float = np.inf,
                     record_tasks: tuple[np.ndarray, Sequence[Problem]] | None = None,
                     known: RecordProducts | None = None,
                     diagnostics: tuple[np.ndarray, np.ndarray] | None = None) -> Trajectory:
    """Every derived quantity of a run (GD, flow: ``RunResult``; exact: ``ExactRun``), vectorised over its
    T records: the one post-processing of ``simulate`` and ``batch.simulate_batch``.

    Loss L = L_ls + ‖W F − G‖² (never negative), excess loss, gradient norm sqrt(Σ_l ‖∂L/∂W_l + γW_l‖²), balance
    drift of W_{l+1}ᵀW_{l+1} − W_l W_lᵀ, mode strengths u_αᵀ W v_α and learning times, ‖W − W*‖_F, the
    theory overlay, the item similarity W21ᵀW21, the test loss on ``problem.test``, the NTK's Grams and the sharpness
    (top Hessian eigenvalues, ``sharpness.sharpness_record``) with its threshold; records
    from the first non-finite one on are cut (the run is then diverged). ``weights0`` are float64. The optimum
    is cached on the problem (``optimum``), so a sweep's points that share a problem compute it once.
    ``between()`` is called between the records of the sharpness (seconds each on large nets): the worker hooks'
    stop check, which may raise ``StopRequested``. Learning times (``learning_time.measure``) are found between
    records only for crossings in record intervals that end by ``refine_until`` (a sequence's first switch).
    ``record_tasks`` = (task index per record, the tasks): each record's gradient norm is its own task's (a task
    sequence; the rest is the first task's, ``problem``). ``known``: the products of the first records computed
    already (a live view's, ``live.record_products``), taken as they are. ``diagnostics``: the records' (gradient norm,
    balance drift), computed already (a sweep's SIMD lanes, ``batch._lane_diagnostics``), taken as they are.
    """
    hidden = [w.shape[0] for w in weights0[:-1]]
    if isinstance(run, ExactRun):
        times, steps, product, weights = run.times, None, run.product, run.weights
        gradient_norm, w21_gram, outcome, diverged_at_step = run.gradient_norm, run.w21_gram, "completed", None
        w32_gram = run.w32_gram
    else:
        times, steps, outcome, diverged_at_step = run.times, run.steps, run.outcome, run.diverged_at_step
        weights = [w.astype(np.float64, copy=False) for w in run.weights]
        gradient_norm, w21_gram, w32_gram = None, None, None

    basis = mode_basis(problem)
    opt = optimum(problem, hidden)
    final_strength = mode_strengths(opt.product, basis)
    # L = L_ls + ‖W F − G‖² per record: a sum of squares, never negative (problem.least_squares)
    if isinstance(run, ExactRun):
        products = RecordProducts.of(problem, basis, times, steps, product)
    else:
        products = record_products(problem, basis, times, steps, weights, known)
    product, gap, strength, test = products.product, products.gap, products.strength, products.test
    if weights is not None:
        if diagnostics is not None:
            grad_norm, drift = diagnostics
        elif record_tasks is None:
            grad_norm, drift = record_diagnostics(problem, weights, method.weight_decay)
        else:  # record by record, so each part is what the whole would give on it (the drift needs no task)
            task, tasks = record_tasks
            grad_norm, drift = np.empty(len(weights[0])), np.empty(len(weights[0]))
            for p, task_problem in enumerate(tasks):
                sel = np.flatnonzero(task[:len(weights[0])] == p)
                if sel.size:
                    grad_norm[sel], drift[sel] = record_diagnostics(task_problem, [w[sel] for w in weights],
                                                                    method.weight_decay)
        gradient_norm = grad_norm if gradient_norm is None else gradient_norm  # exact runs bring their own
    else:
        drift = np.zeros(len(times))  # exact solutions without weights conserve the balance by construction
    arrays = {
        "loss": gap,
        "gradient_norm": gradient_norm,
        "drift": drift,
        "strength": strength,
        "product": product.reshape(len(times), -1),
    }
    if test is not None:
        arrays["test_loss"] = test
    keep = _finite_prefix(arrays)
    if keep < len(times):
        outcome = "diverged"
        if diverged_at_step is None and steps is not None:
            diverged_at_step = int(steps[keep])
        times, product, strength = times[:keep], product[:keep], strength[:keep]
        gap, gradient_norm, drift = gap[:keep], gradient_norm[:keep], drift[:keep]
        steps = steps[:keep] if steps is not None else None
        weights = [w[:keep] for w in weights] if weights is not None else None
        w21_gram = w21_gram[:keep] if w21_gram is not None else None
        w32_gram = w32_gram[:keep] if w32_gram is not None else None
        test = test[:keep] if test is not None else None

    if isinstance(method, StochasticGradientDescent) or momentum_of(method)[0]:
        overlay = theory_overlay_for(problem, weights0, method, times, steps)  # a stand-in's theory (sgd.py)
    else:
        overlay = theory_overlay(problem, weights0, method, times, steps)
    modes = ModeReport(
        singular_values=basis.s,
        strength=strength,
        theory=overlay.strength if overlay else None,
        theory_model=overlay.model if overlay else None,
        theory_exact=bool(overlay and overlay.exact),
        theory_assumptions=overlay.assumptions if overlay else None,
        optimum_strength=final_strength,
        learning_time=measure(problem, method, run, times, steps, strength, final_strength, basis, overlay,
                              refine_until),
        learning_time_theory=overlay.learning_time if overlay else None,
    )
    similarity = None
    if record.similarity and weights is not None:
        similarity = item_similarity(weights[0])
    elif record.similarity:  # Riccati: no weights, but W21ᵀW21 exactly (docs/theory.md#similarity)
        similarity = symmetric(w21_gram)
    kernel = None
    if record.kernel:  # the NTK's Grams from the weights, or from the Riccati solution's P(t) blocks
        kernel = kernel_record(weights, problem.n_in, problem.n_out, w21_gram=w21_gram, w32_gram=w32_gram)
    residual = least_squares(problem).residual
    hint = None
    if outcome == "diverged" and isinstance(method, (GradientDescent, StochasticGradientDescent)):
        mu, nesterov = momentum_of(method)
        bound = network.gd_stability_bound(problem, len(weights0), method.weight_decay) * stability_factor(mu, nesterov)
        name = "SGD" if isinstance(method, StochasticGradientDescent) else "GD"
        hint = (f"{name} diverged at step {diverged_at_step} with learning_rate {method.learning_rate:g}; near the "
                f"optimum {name} is stable only for learning_rate < {bound:.6g} (docs/theory.md#gd-stability: "
                f"1/λ_max(Σ11) for D = 1, 1/(D·s_max^(2−2/D)) for whitened D ≥ 2; weight decay γ lowers it to "
                f"2/(curvature + γ)"
                + (f"; momentum μ = {mu:g} multiplies it by {'(1 + μ)/(1 + 2μ) (Nesterov)' if nesterov else '1 + μ'}"
                   if mu else "") + "): lower the learning rate")
    sharp = None
    if record.sharpness and weights is not None:  # exact runs without weights are refused by preflight
        sharp = sharpness_record(problem, weights, int(record.sharpness_k), between=between)
    return Trajectory(
        time=times,
        step=steps,
        loss=None if residual is None else residual + gap,
        excess_loss=excess_loss(gap, opt),
        product=product,
        weights=weights if record.weights else None,
        modes=modes,
        balance_drift=drift,
        gradient_norm=gradient_norm,
        distance_to_optimum=np.sqrt(np.einsum("tij->t", (product - opt.product) ** 2)),
        outcome=outcome,
        diverged_at_step=diverged_at_step,
        optimum=opt,
        method={GradientDescent: "gd", GradientFlow: "flow", Exact: "exact",
                StochasticGradientDescent: "sgd"}[type(method)],
        stability_hint=hint,
        similarity=similarity,
        test_loss=test,
        early_stopping=early_stopping(times, steps, test),
        loss_theory=loss_theory(problem, weights0, overlay, basis),
        loss_theory_random_matrix=random_matrix_loss_theory(problem, weights0, method, times, steps),
        kernel=kernel,
        sharpness=sharp,
        sharpness_threshold=sharpness_threshold(method),
        final_weights=_final_weights(run, weights),
        **_linearized(problem, weights0, method, record, times, steps),
    )


def _linearized(problem: Problem, weights0: list[np.ndarray], method: Method, record: RecordSchedule,
                times: np.ndarray, steps: np.ndarray | None) -> dict:
    """Trajectory fields of the linearised model at the records (``linearized``), when recorded."""
    if not record.linearized:
        return {}
    lin = linearized_loss(problem, weights0, method, times, steps)
    return {"linearized_loss": lin.loss, "linearized_excess_loss": lin.excess_loss}


def _final_weights(run: RunResult | ExactRun, weights: list[np.ndarray] | None) -> list[np.ndarray] | None:
    """The weights at the last record, float64: an exact run's own (for Riccati the factorisation of its state), else
    the last recorded layer of each stack (after the cut of non-finite records)."""
    if isinstance(run, ExactRun):
        return run.final_weights
    if weights is None or not len(weights[0]):
        return None
    return [np.array(w[-1], dtype=np.float64) for w in weights]


def record_diagnostics(problem: Problem, weights: list[np.ndarray], weight_decay: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(gradient norm sqrt(Σ_l ‖∂L/∂W_l + γW_l‖²), balance drift max_l |B_l(t) − B_l(0)|) per record, from
    the per-layer stacks (T, rows, cols) of float64 weights; compiled (``gd_loop.record_diagnostics``)."""
    t = len(weights[0])
    flat = np.concatenate([w.reshape(t, -1) for w in weights], axis=1)
    layout = Layout.of_widths([weights[0].shape[2], *(w.shape[1] for w in weights)])
    grad_norm, drift = np.empty(t), np.empty(t)
    gd_loop.record_diagnostics(flat, layout.dims, layout.offs, np.ascontiguousarray(problem.sigma11),
                                np.ascontiguousarray(problem.sigma31), float(weight_decay),
                                plan_order(layout.dims)[0], grad_norm, drift)
    return grad_norm, drift


def _finite_prefix(arrays: dict[str, np.ndarray]) -> int:
    """Number of leading records whose derived quantities are all finite.

    A run the engine judged finite can still overflow in a derived quantity (W ~ 1e160 squares to inf):
    such records belong to a divergence and are cut, and the run is reported as diverged.
    """
    if all(np.isfinite(a).all() for a in arrays.values()):  # the usual case, without a per-record pass
        return len(next(iter(arrays.values())))
    ok = np.ones(len(next(iter(arrays.values()))), dtype=bool)
    for a in arrays.values():
        ok &= np.all(np.isfinite(a.reshape(len(ok), -1)), axis=1)
    if not ok[0]:
        raise FloatingPointError("non-finite value in the initial record: the inputs overflow float64")
    return len(ok) if ok.all() else int(np.argmin(ok))

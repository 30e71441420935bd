"""Generalization dynamics of a noisy linear teacher (Lampinen & Ganguli 2019,
docs/theory.md#generalization).

A rank-3 teacher W̄ (singular values 4, 2, 1) labels N whitened samples with Gaussian output noise; a two-layer
network from a small aligned init learns the *empirical* modes of Σ31 = W̄ + noise, strongest first (Saxe's
sigmoids). The strong modes carry the teacher and lower the test loss; the weak and pure-noise modes, learned
later, fit the noise and raise it again. So with much noise and few samples the test loss has a minimum before
convergence (early stopping pays), and without noise it falls monotonically to the Bayes error. The theory curves
(loss_theory, model modes_generalization: the losses of W(t) = Σ_α u_α(t) û_α v̂_αᵀ) are exact here (aligned init,
Σ11 = I), and match the simulated GD run.
Run: .venv/bin/python examples/generalization.py
"""

import numpy as np

from service.dynamics import init, presets
from service.dynamics.methods import GradientDescent
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate

print(f"{'noise':>6}{'N':>5}{'min L_test':>12}{'at t':>8}{'final L_test':>14}{'Bayes error':>13}{'theory gap':>12}")
runs = {}
for noise, n in [(1.0, 16), (0.0, 16), (1.0, 256)]:
    problem = presets.noisy_teacher(n_in=16, n_out=16, n_samples=n, noise=noise, singular_values=[4.0, 2.0, 1.0])
    w0 = init.initial_weights(problem, [16], "aligned", strength=1e-4)
    traj = simulate(problem, w0, GradientDescent(learning_rate=0.02, steps=5000), RecordSchedule(points=400))
    stop, theory = traj.early_stopping, traj.loss_theory
    bayes = 16 * noise**2                     # n_out · noise²: the test loss of the teacher itself
    gap = np.max(np.abs(theory.test_loss - traj.test_loss)) / traj.test_loss[0]
    runs[(noise, n)] = (stop, traj.test_loss[-1], bayes, gap, theory.exact, traj.time[-1])
    print(f"{noise:6g}{n:5d}{stop.test_loss:12.4f}{stop.time:8.2f}{traj.test_loss[-1]:14.4f}{bayes:13.4f}{gap:12.1e}")

# Much noise, few samples (N = n_in = 16): a test-loss minimum well before the end of the run, and a final test loss
# clearly above it (the noise modes, learned last, are fitted).
stop, final, bayes, gap, exact, t_end = runs[(1.0, 16)]
assert stop.time < 0.5 * t_end and final > 1.2 * stop.test_loss
# No noise: the test loss falls monotonically to the Bayes error 0, its minimum is the last record.
stop, final, bayes, gap, exact, t_end = runs[(0.0, 16)]
assert stop.time == t_end and final < 1e-6
# Same noise, many samples (N = 256): the noise in Σ31 shrinks like 1/sqrt(N), and so does the cost of fitting it:
# the minimum is hardly below the final value (within 10 %).
stop, final, bayes, gap, exact, t_end = runs[(1.0, 256)]
assert final < 1.1 * stop.test_loss
# The mode theory of the test loss is exact for an aligned init on whitened inputs (GD's exact per-mode map).
assert all(r[4] and r[3] < 1e-9 for r in runs.values())
print("test-loss minimum before convergence with noise and few samples; none without noise; theory exact")

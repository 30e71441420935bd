"""Catastrophic forgetting in a two-layer linear network, exactly (Braun, Dominé, Fitzgerald & Saxe, NeurIPS 2022 /
J. Stat. Mech. 2023, 114004, doi:10.1088/1742-5468/ad01b8: continual learning; docs/theory.md#task-sequences).

A network learns task A, then switches to task B at t = 5. With whitened inputs and a λ-balanced init the Riccati
solution is exact, and it continues exactly through the switch from the state it reached (the exact method restarts
it there). While B is learned the loss on A rises: the forgetting curve L_A(t) − L_A(t_switch). Once B is learned
(W → Σ31ᴮ) the loss on A is L_ls,A + ‖Σ31ᴮ − Σ31ᴬ‖²: the amount forgotten depends on how different the tasks are, not
on the network's init (Braun et al.'s closed form at convergence). Below, B is A rotated by an angle φ in its output
space, so ‖Σ31ᴮ − Σ31ᴬ‖² grows with φ; a numerical gradient flow through the same switch agrees with the exact run.
Run: .venv/bin/python examples/forgetting.py
"""

import numpy as np

from service.dynamics import init, presets
from service.dynamics.methods import Exact, GradientFlow
from service.dynamics.problem import problem_from_correlations
from service.dynamics.record import RecordSchedule
from service.dynamics.sequence import Phase, TaskSequence
from service.dynamics.simulate import simulate

task_a = presets.whitened([3.0, 2.0, 1.0], n_in=4, n_out=4, seed=1)   # Σ11 = I, Σ33 = Σ31Σ31ᵀ: L_ls = 0


def rotated(problem, phi):
    """Task B: task A's targets rotated by φ in the plane of the first two output directions."""
    c, s = np.cos(phi), np.sin(phi)
    rot = np.eye(problem.n_out)
    rot[:2, :2] = [[c, -s], [s, c]]
    s31 = rot @ problem.sigma31
    return problem_from_correlations(problem.sigma11, s31, s31 @ s31.T, residual_loss=0.0)


w0 = init.initial_weights(task_a, [4], "lambda_balanced", lam=0.0, scale=0.05, seed=0)
t_switch, t_end = 5.0, 10.0
print(f"{'φ':>6}{'L_A at switch':>15}{'L_A at end':>12}{'‖Σᴮ − Σᴬ‖²':>13}{'L_B at end':>12}{'flow vs exact':>15}")
results = {}
for phi in [np.pi / 8, np.pi / 4, np.pi / 2]:
    task_b = rotated(task_a, phi)
    seq = TaskSequence([Phase(task_a, until=t_switch), Phase(task_b)])
    ex = simulate(seq, w0, Exact(t_max=t_end), RecordSchedule(points=201))
    fl = simulate(seq, w0, GradientFlow(t_max=t_end, rtol=1e-10, atol=1e-12), RecordSchedule(points=201))
    i_s = int(np.flatnonzero(ex.time == t_switch)[0])
    distance = float(np.sum((task_b.sigma31 - task_a.sigma31) ** 2))
    gap = float(np.max(np.abs(ex.task_loss - fl.task_loss)) / np.max(ex.task_loss))
    results[phi] = (ex, i_s, distance, gap)
    print(f"{phi:6.3f}{ex.task_loss[i_s, 0]:15.3e}{ex.task_loss[-1, 0]:12.4f}{distance:13.4f}{ex.task_loss[-1, 1]:12.2e}"
          f"{gap:15.1e}")

ex, i_s, distance, gap = results[np.pi / 4]
print("\nforgetting curve of task A (φ = π/4) after the switch, L_A(t) − L_A(t_switch):")
for i in [i_s, i_s + 1, i_s + 2, i_s + 3, i_s + 4, i_s + 6, i_s + 10, i_s + 20, len(ex.time) - 1]:
    print(f"  t = {ex.time[i]:5.2f}   phase {ex.phase[i]}   {ex.task_loss[i, 0] - ex.task_loss[i_s, 0]:9.4f}")

for phi, (ex, i_s, distance, gap) in results.items():
    assert np.all(ex.phase[:i_s] == 0) and np.all(ex.phase[i_s:] == 1) and ex.phase_starts[1] == t_switch
    assert ex.task_loss[i_s, 0] < 1e-6                                     # A learned before the switch
    assert abs(ex.task_loss[-1, 0] - distance) < 1e-6 * distance           # Braun et al.: forgetting = ‖Σᴮ − Σᴬ‖²
    assert ex.task_loss[-1, 1] < 1e-6                                      # B learned
    assert gap < 1e-8                                                      # flow through the same switch agrees
forgotten = [results[phi][0].task_loss[-1, 0] for phi in sorted(results)]
assert forgotten == sorted(forgotten)                                      # more different tasks, more forgetting
# the network at the end is a factorisation of the exact state: a later run can start from it (init "given")
w_end = results[np.pi / 2][0].final_weights
assert np.allclose(w_end[1] @ w_end[0], results[np.pi / 2][0].product[-1], rtol=0, atol=1e-12)
print("\nforgetting at convergence = ‖Σ31ᴮ − Σ31ᴬ‖² for every φ; exact and flow agree through the switch")

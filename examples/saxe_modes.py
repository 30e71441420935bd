"""Saxe, McClelland & Ganguli (ICLR 2014): every mode of a two-layer linear network is learned along a sigmoid.

Whitened inputs (Σ11 = I) and Σ31 = U diag(s) Vᵀ. From a small init aligned with that SVD, gradient flow keeps
the modes decoupled and the strength u(t) = u_αᵀ W(t) v_α of a mode with singular value s obeys
(docs/theory.md#saxe-balanced, docs/theory.md#saxe-learning-time; our units have τ = 1/2 because
L = (1/N) Σ ‖y − W x‖² has no ½ and its gradient keeps the factor 2: docs/theory.md#time-units)

    u(t) = s e^{4st} / (e^{4st} − 1 + s/u0),        half-way at  t½ = ln(s/u0 − 1) / (4s).

We integrate gradient flow numerically (DOP853) and compare with this formula, typed in by hand below.
Run: .venv/bin/python examples/saxe_modes.py
"""

import numpy as np

from service.dynamics import init, presets
from service.dynamics.methods import GradientFlow
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate

s = np.array([3.0, 2.0, 1.0])   # singular values of Σ31
u0 = 1e-3                        # every mode starts at this strength

problem = presets.whitened(s.tolist(), n_in=3, n_out=3)
w0 = init.initial_weights(problem, [8], "aligned", strength=u0)          # hidden width 8
traj = simulate(problem, w0, GradientFlow(t_max=4.0, rtol=1e-10, atol=1e-12), RecordSchedule(points=200))

t = traj.time[:, None]
saxe = s * np.exp(4 * s * t) / (np.exp(4 * s * t) - 1 + s / u0)
deviation = np.max(np.abs(traj.modes.strength - saxe))
t_half = np.log(s / u0 - 1) / (4 * s)

print(f"theory overlay of the core: {traj.modes.theory_model}")
print(f"{'t':>5}" + "".join(f"{f'u(t), s = {v:g}: sim, Saxe':>28}" for v in s))
for i in range(0, len(t), 25):
    print(f"{t[i, 0]:5.2f}" + "".join(f"{a:16.4f}{b:12.4f}" for a, b in zip(traj.modes.strength[i], saxe[i])))
print(f"max |u_sim − u_Saxe| = {deviation:.2e}")
print("learning time t½ (measured on the records / Saxe):",
      ", ".join(f"s={v:g}: {a:.4f} / {b:.4f}" for v, a, b in zip(s, traj.modes.learning_time, t_half)))

# Integrator tolerance rtol 1e-10, amplified by the e^{4st} growth out of the saddle: measured 3.5e-9.
assert deviation < 1e-6, deviation
# The core's overlay is the same closed form.
assert np.max(np.abs(traj.modes.theory - saxe)) < 1e-9
# Measured t½ interpolates linearly between records 0.02 apart, at the sigmoid's inflection point where a
# line fits well: measured 1.4e-5 relative.
assert np.allclose(traj.modes.learning_time, t_half, rtol=1e-3), traj.modes.learning_time
# Stronger modes are learned first: t½ ∝ 1/s up to the logarithm.
assert np.all(np.diff(traj.modes.learning_time) > 0)

"""Progressive sharpening and the edge of stability (Cohen, Kaur, Li, Kolter & Talwalkar, ICLR 2021, "Gradient descent
on neural networks typically occurs at the edge of stability"; docs/theory.md#sharpness) in a two-layer linear net.

Full-batch GD is stable near a minimum only where the sharpness (the top Hessian eigenvalue of the loss) is below 2/η.
Cohen et al. observed that GD drives the sharpness up (progressive sharpening) until it reaches 2/η, and then stays
there (the edge of stability) while the loss keeps falling, not monotonically. Here (the setting of
tests/dynamics/test_sharpness.py): a loud input feature (variance 400) that the target ignores and a quiet one (variance
1) it depends on weakly. Learning the quiet feature grows the second layer, and with it the curvature of the loud
direction: the sharpness rises slowly from far below 2/η. Gradient flow from the same init ends at a minimum sharper
than 2/η; GD cannot, overshoots the edge, is thrown out (catapults), hovers at 2/η and settles at a minimum just on the
stable side of it. record.sharpness records the sharpness at every record, with sharpness_threshold = 2/η beside it
(the same request over HTTP: {"record": {"sharpness": true}}, and trajectory.sharpness, trajectory.sharpness_threshold).
Run: .venv/bin/python examples/progressive_sharpening.py
"""

import numpy as np

from service.dynamics.methods import GradientDescent, GradientFlow
from service.dynamics.problem import problem_from_correlations
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate

s11 = np.array([[400.0, 1.0], [1.0, 1.0]])
s31 = np.array([[0.0, 0.02]])
w_star = s31 @ np.linalg.inv(s11)
problem = problem_from_correlations(s11, s31, w_star @ s11 @ w_star.T)     # L* = 0
rng = np.random.default_rng(0)
w0 = [0.01 * rng.standard_normal((1, 2)), 0.01 * rng.standard_normal((1, 1))]
eta, steps = 0.16, 5000

gd = simulate(problem, w0, GradientDescent(eta, steps, stop_at_convergence=False),
              RecordSchedule(points=steps + 1, sharpness=True))
edge = gd.sharpness_threshold
sharp, loss = gd.sharpness[:, 0] / edge, gd.loss
cross = int(np.argmax(sharp >= 1.0))
flow = simulate(problem, w0, GradientFlow(eta * steps, stop_at_convergence=False),
                RecordSchedule(points=2, sharpness=True))

print(f"2/η = {edge:g}; the sharpness S(t) as a fraction of it, and the loss:")
for k in [0, cross // 4, cross // 2, 3 * cross // 4, cross, cross + 50, cross + 500, cross + 1500, steps]:
    print(f"  step {k:5d}   S·η/2 = {sharp[k]:7.4f}   L = {loss[k]:.3e}")
rises = int(np.sum(np.diff(loss[cross:]) > 0))
print(f"progressive sharpening: S reaches 2/η at step {cross} (from {sharp[0]:.4f}·2/η), peaks at {sharp.max():.3f}·2/η")
print(f"edge of stability: from step {cross + 1500} on |S·η/2 − 1| ≤ {np.max(np.abs(sharp[cross + 1500:] - 1)):.2e}; "
      f"the loss rose at {rises} steps after the crossing and ends at {loss[-1]:.1e}")
print(f"gradient flow from the same init ends at S·η/2 = {flow.sharpness[-1, 0] / edge:.3f} (beyond GD's edge)")

assert sharp[0] < 0.01 and cross > 500                        # sharpening from far below the edge, slowly
assert np.min(np.diff(sharp[:cross])) > -1e-4                 # ... without falling back (measured dip ≥ −8e-6)
assert 1.0 < sharp.max() < 1.25                               # overshoot of the edge (measured 1.23)
assert np.max(np.abs(sharp[cross + 1500:] - 1.0)) < 5e-3      # then at the edge (measured within 0.27 %)
assert rises > 100                                            # the loss falls, not monotonically (measured 685)
assert loss[-1] < 1e-8 * np.max(loss[cross:])                 # ... but falls (measured 1.5e-10 of its peak)
assert 0.99 < sharp[-1] <= 1.0                                # GD's minimum: on the stable side of 2/η
assert flow.sharpness[-1, 0] / edge > 1.25                    # the flow's minimum: beyond it
print("GD sharpens progressively to 2/η and trains at the edge of stability; gradient flow does not stop there")

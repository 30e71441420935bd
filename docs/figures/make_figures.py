"""Renders the README's figure with the service's own code: the core runs the simulation, the codec turns the
trajectory into the JSON document the API serves, and service/plots/ draws it, as GET .../plot.png?kind=modes&dpi=130
would.

    .venv/bin/python docs/figures/make_figures.py        # writes docs/figures/hierarchy_modes.png

The run: the PNAS 2019 hierarchy (depth 3: 8 items, 15 features) learned by a two-layer network (16 hidden units)
with full-batch GD from a small random init. The modes of Σ31 are learned broadest distinction first; the dashed
curves are Saxe's balanced-mode formula from each mode's effective initial strength (docs/theory.md#small-init).
"""

from pathlib import Path

from service import codec
from service.dynamics import init, presets
from service.dynamics.methods import GradientDescent
from service.dynamics.record import RecordSchedule
from service.dynamics.simulate import simulate
from service.plots import render_plot

HERE = Path(__file__).resolve().parent


def hierarchy_modes() -> bytes:
    problem = presets.hierarchy(depth=3)
    w0 = init.initial_weights(problem, [16], "gaussian", scale=0.02, seed=3)
    traj = simulate(problem, w0, GradientDescent(learning_rate=0.05, steps=600), RecordSchedule(points=300, spacing="linear"))
    document = codec.document(codec.arrays_of(traj), codec.MEMBERS)
    return render_plot(document, "modes", fmt="png", dpi=130)   # sharp at README width


if __name__ == "__main__":
    out = HERE / "hierarchy_modes.png"
    out.write_bytes(hierarchy_modes())
    print(f"wrote {out}")

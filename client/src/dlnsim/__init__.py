"""dlnsim: learning dynamics of deep linear networks from Python, through the dlnsim service.

    import dlnsim
    c = dlnsim.Client("http://127.0.0.1:8000")
    sim = c.simulate({"data": {"kind": "preset", "name": "hierarchy", "depth": 3}, "network": {"hidden": [16]},
                      "training": {"method": "gd", "learning_rate": 0.05, "steps": 1000}})
    sim.to_pandas()          # loss, strength_1 … strength_k, … by time

See client/README.md for the whole surface.
"""

from dlnsim.client import Client, Gradients, __version__
from dlnsim.errors import FieldError, NotSupportedError, ProblemError
from dlnsim.events import Event
from dlnsim.jobs import Simulation, Sweep, SweepPoint
from dlnsim.plot import Figure

__all__ = ["Client", "Event", "FieldError", "Figure", "Gradients", "NotSupportedError", "ProblemError", "Simulation",
           "Sweep", "SweepPoint", "__version__"]

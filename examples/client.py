"""dlnsim from Python through the client generated from our OpenAPI document: typed requests and results.

Generate the client once (openapi-python-client is pinned in the test extras, `pip install -e '.[test]'`):

    .venv/bin/openapi-python-client generate --path openapi/openapi.json \
        --config openapi/openapi-python-client.yml --output-path dlnsim_client --meta none

then, with the service running (`make run`):

    PYTHONPATH=. .venv/bin/python examples/client.py     # DLNSIM_URL=http://host:port for another server

It runs the PNAS 2019 hierarchy from a small random init and prints each mode's learning time next to Saxe's.
"""

import itertools
import os
import time

from dlnsim_client import Client
from dlnsim_client.api.simulations import create_simulation, get_simulation, get_trajectory
from dlnsim_client.models import (
    GaussianInit,
    GradientDescentTraining,
    HierarchyPreset,
    Network,
    Record,
    Simulation,
    SimulationRequest,
    SimulationStatus,
)

client = Client(base_url=os.environ.get("DLNSIM_URL", "http://127.0.0.1:8000"), raise_on_unexpected_status=True)

request = SimulationRequest(
    data=HierarchyPreset(kind="preset", name="hierarchy", depth=3),
    network=Network(hidden=[32]),
    init=GaussianInit(scheme="gaussian", scale=1e-3, seed=0),
    training=GradientDescentTraining(method="gd", learning_rate=0.05, steps=1000),   # t = η·step up to 50
    record=Record(points=200),
)
sim = create_simulation.sync(client=client, body=request)
assert isinstance(sim, Simulation), sim        # else a ProblemDetails: sim.errors name each field and its fix
print(f"created {sim.id}: {sim.status}")

while sim.status in (SimulationStatus.QUEUED, SimulationStatus.RUNNING):
    time.sleep(0.2)
    sim = get_simulation.sync(job_id=sim.id, client=client)
assert sim.status == SimulationStatus.SUCCEEDED, sim.error

traj = get_trajectory.sync(job_id=sim.id, client=client)
modes = traj.modes
print(f"outcome {traj.outcome}, {len(traj.time)} records, excess loss {traj.excess_loss[0]:.3g} → "
      f"{traj.excess_loss[-1]:.3g}, theory: {modes.theory_model}")
print(f"{'s':>8}{'t½ measured':>13}{'t½ Saxe':>10}")
for s, t, t_theory in zip(modes.singular_values, modes.learning_time, modes.learning_time_theory):
    print(f"{s:8.4f}{t:13.2f}{t_theory:10.2f}")
# Broader distinctions (larger s) are learned first; the modes come sorted by s, largest first.
pairs = zip(modes.singular_values, modes.learning_time)
for (s_a, t_a), (s_b, t_b) in itertools.pairwise(pairs):
    assert s_a - s_b < 1e-9 or t_a < t_b, f"the mode with s = {s_a:.4f} was learned after the one with s = {s_b:.4f}"

"""``init: {"scheme": "from_simulation", "id": …}``: a run that continues from where a finished simulation ended.

    request = resolve_init(request, job_store, owner)     # at admission, before build.admit_simulation

Decided here: the final weights are copied into the request at admission (``init.weights`` of the
from_simulation init), and the copy is what is stored, returned by GET and run. Why:

* Workers cannot read the job store. It belongs to the API process (README, "Embedded default vs cluster"); a worker
  on a Dask cluster elsewhere has no path to it. The request that crosses the wire must carry the numbers.
* The stored request says exactly what ran, and stays true: the source simulation may be deleted (by its owner, or
  by retention) while this one waits in the queue or long after it ran; a rerun after a crash, or after a corrupt
  result, starts from the same weights.
* Admission can check everything before anything is queued (the source exists, is the caller's, has succeeded, has
  the widths), as for every other field, and the worker's checks (``build.build_weights0``) are the same as for
  ``init: given``.

The Idempotency-Key digest is that of the request as sent (the id, without the copied weights): a retry of the same
body is recognised. A request read back from GET (with the weights) can be sent again: weights that are given must
equal the source's final weights, exactly (JSON round-trips float64 exactly).

The source is resolved for the caller's API key only: another key's simulation is "no such simulation", as for GET.
"""

from __future__ import annotations

import math
from typing import Any

from service.problems import ProblemError, field_error, one_field_problem
from service.schemas import FromSimulationInit, SimulationRequest
from service.status import CANCELLED, FAILED, SUCCEEDED

from .database import CorruptResultError
from .store import JobStore

FieldPath = tuple[str | int, ...]


def visible(viewer: str | None, owner: str | None) -> bool:
    """Whether a caller with key id ``viewer`` may see a row owned by ``owner`` (everything when keys are off)."""
    return viewer is None or owner == viewer


def final_weights(store: JobStore, job_id: str, where: FieldPath) -> list[list[list[float]]] | None:
    """The final weights (input→output) stored with job ``job_id``'s trajectory, as lists; None when it has none
    (stored by a version that did not keep them). ``where`` names the field in a corrupt-result problem."""
    try:
        with store.open_result(job_id) as stored:
            if stored is None:
                return None
            layers, l = [], 0
            while f"final_weights_{l}" in stored:
                layers.append(stored.get(f"final_weights_{l}").tolist())
                l += 1
            return layers or None
    except CorruptResultError as exc:
        raise ProblemError(
            500, "corrupt-result", f"{'.'.join(map(str, where))}: the stored trajectory of simulation {job_id} is "
            f"corrupt ({exc.reason})",
            errors=[field_error(list(where), "corrupt_result", f"the stored trajectory of simulation {job_id} is "
                                f"corrupt ({exc.reason})",
                                f"GET /v1/simulations/{job_id}/trajectory (it then runs again: runs are seeded), "
                                "and send this request once it has succeeded")]) from None


def resolve_init(request: SimulationRequest, store: JobStore, owner: str | None,
                 prefix: FieldPath = ()) -> SimulationRequest:
    """``request`` with the final weights of the simulation its from_simulation init names copied into
    ``init.weights`` (module docstring); any other request unchanged. Refusals name ``(*prefix, "init", "id")``:
    422 invalid-simulation for an unknown id (or another key's), for a source without stored final weights and for
    given weights that differ; 409 not-finished for a source that has not succeeded (with Retry-After while it is
    queued or running)."""
    init = request.init
    if not isinstance(init, FromSimulationInit):
        return request
    field = (*prefix, "init", "id")
    row = store.get(init.id)
    if row is None or not visible(owner, row.owner):
        raise one_field_problem(422, "invalid-simulation", list(field), "unknown_simulation",
                                f"there is no simulation {init.id} (of this API key) to continue from",
                                "give the id of one of your succeeded simulations (GET /v1/simulations?status="
                                "succeeded lists them)")
    if row.status != SUCCEEDED:
        ended = row.status in (FAILED, CANCELLED)
        raise one_field_problem(
            409, "not-finished", list(field), "simulation_not_succeeded",
            f"simulation {init.id} is {row.status}: " + ("it has no final weights to continue from" if ended else
                                                         "its final weights exist once it has succeeded"),
            "continue from a succeeded simulation (run it again if it failed)" if ended else
            f"wait until simulation {init.id} has succeeded (poll GET /v1/simulations/{init.id}), then send this "
            "request again", headers={} if ended else {"Retry-After": "1"})
    weights = final_weights(store, init.id, field)
    if weights is None:
        raise one_field_problem(422, "invalid-simulation", list(field), "no_final_weights",
                                f"simulation {init.id} was stored without its final weights (by an earlier version "
                                "of the service)",
                                f"run its request again (GET /v1/simulations/{init.id}) and continue from the new "
                                "simulation")
    if not all(math.isfinite(v) for layer in weights for row in layer for v in row):
        # a diverged run's records are cut at its last finite state, so this is a guard, not an expected case
        raise one_field_problem(422, "invalid-simulation", list(field), "non_finite_weights",
                                f"simulation {init.id} ended with non-finite weights: there is nothing to continue",
                                "continue from a simulation that did not diverge")
    if init.weights is not None and init.weights != weights:
        raise one_field_problem(422, "invalid-simulation", [*prefix, "init", "weights"], "weights_differ",
                                f"init.weights differ from the final weights of simulation {init.id}",
                                "leave init.weights out: the service copies them from the simulation init.id names")
    return request.model_copy(update={"init": init.model_copy(update={"weights": weights})})


def from_simulation_id(request: dict[str, Any]) -> str | None:
    """The id a request (as a JSON dict) continues from, or None."""
    init = request.get("init")
    return init.get("id") if isinstance(init, dict) and init.get("scheme") == "from_simulation" else None

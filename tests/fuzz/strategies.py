"""Hypothesis strategies for requests the service ACCEPTS (consistent shapes, finite, within the fuzz limits).

A schema-driven generator almost never draws a simulation whose matrices fit together (x and y with the
same N, Σ31 with n_in columns, given weights that chain...), so on its own it only reaches the 422 paths.
Mixed into the positive bodies, these make jobs exist: the worker runs them, and the stateful phase then
reads, plots, downloads, cancels and deletes real simulations and sweeps. Sizes stay within
tests/fuzz/profiles.LIMITS, so every run takes milliseconds on the worker.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

SMALL = st.floats(min_value=-2.0, max_value=2.0, allow_nan=False, allow_infinity=False)
POSITIVE = st.floats(min_value=0.05, max_value=2.0, allow_nan=False)
SEED = st.integers(min_value=0, max_value=2**31)


def matrix(rows: int, cols: int, entries: st.SearchStrategy = SMALL) -> st.SearchStrategy:
    return st.lists(st.lists(entries, min_size=cols, max_size=cols), min_size=rows, max_size=rows)


@st.composite
def data_member(draw: Any) -> tuple[dict, int, int]:
    """(data, n_in, n_out) of a dataset, correlations or preset problem."""
    kind = draw(st.sampled_from(["dataset", "correlations", "preset"]))
    if kind == "dataset":
        n_in, n_out, n = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 8))
        return {"kind": "dataset", "x": draw(matrix(n, n_in)), "y": draw(matrix(n, n_out))}, n_in, n_out
    if kind == "correlations":
        n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        # Σ11 diagonal positive definite: symmetric PSD by construction, and every Σ31 lies in its range.
        diag = draw(st.lists(POSITIVE, min_size=n_in, max_size=n_in))
        sigma11 = [[diag[i] if i == j else 0.0 for j in range(n_in)] for i in range(n_in)]
        data = {"kind": "correlations", "sigma11": sigma11, "sigma31": draw(matrix(n_out, n_in))}
        return data, n_in, n_out
    name = draw(st.sampled_from(["hierarchy", "whitened", "random_teacher"]))
    if name == "hierarchy":
        depth = draw(st.integers(1, 2))
        return {"kind": "preset", "name": name, "depth": depth}, 2**depth, 2 ** (depth + 1) - 1
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if name == "whitened":
        values = draw(st.lists(POSITIVE, min_size=1, max_size=min(n_in, n_out)))
        return {"kind": "preset", "name": name, "n_in": n_in, "n_out": n_out, "singular_values": values,
                "seed": draw(SEED)}, n_in, n_out
    return {"kind": "preset", "name": name, "n_in": n_in, "n_out": n_out, "n_samples": draw(st.integers(1, 10)),
            "noise": draw(st.sampled_from([0.0, 0.1])), "seed": draw(SEED)}, n_in, n_out


@st.composite
def init_member(draw: Any, n_in: int, n_out: int, hidden: list[int]) -> dict:
    schemes = ["gaussian", "orthogonal", "balanced", "aligned", "given"]
    if len(hidden) == 1:
        schemes.append("lambda_balanced")
    scheme = draw(st.sampled_from(schemes))
    if scheme == "aligned":
        return {"scheme": scheme, "strength": draw(st.sampled_from([0.001, 0.01, 0.1]))}
    if scheme == "given":
        widths = [n_in, *hidden, n_out]
        entries = st.sampled_from([-0.1, 0.0, 0.05, 0.1])
        return {"scheme": scheme,
                "weights": [draw(matrix(widths[k + 1], widths[k], entries)) for k in range(len(widths) - 1)]}
    init = {"scheme": scheme, "scale": draw(st.sampled_from([0.001, 0.01, 0.1, 0.5])), "seed": draw(SEED)}
    if scheme == "lambda_balanced":
        init["lambda"] = draw(st.sampled_from([-0.5, 0.0, 0.5]))
    return init


def training_member() -> st.SearchStrategy:
    gd = st.fixed_dictionaries(
        {"method": st.just("gd"), "learning_rate": st.sampled_from([0.001, 0.01, 0.05]), "steps": st.integers(1, 200)},
        optional={"allow_unstable": st.booleans(), "weight_decay": st.sampled_from([0.0, 0.01])})
    flow = st.fixed_dictionaries({"method": st.just("flow"), "t_max": st.sampled_from([0.5, 2.0, 10.0])},
                                 optional={"weight_decay": st.sampled_from([0.0, 0.01])})
    exact = st.fixed_dictionaries({"method": st.just("exact"), "t_max": st.sampled_from([0.5, 2.0, 10.0])})
    return st.one_of(gd, flow, exact)


@st.composite
def simulation_request(draw: Any) -> dict:
    """A SimulationRequest the fuzz service accepts in most draws (exact-method conditions may not hold:
    those are 422 invalid-simulation, also a documented answer)."""
    data, n_in, n_out = draw(data_member())
    hidden = draw(st.lists(st.integers(1, 4), max_size=2))
    request = {"data": data, "network": {"hidden": hidden}, "init": draw(init_member(n_in, n_out, hidden)),
               "training": draw(training_member())}
    if draw(st.booleans()):
        record: dict[str, Any] = {"points": draw(st.integers(2, 12)),
                                  "spacing": draw(st.sampled_from(["linear", "log"]))}
        if draw(st.booleans()):
            record["weights"] = True
        if hidden and draw(st.booleans()):
            record["similarity"] = True
        request["record"] = record
    if draw(st.booleans()):
        request["dtype"] = draw(st.sampled_from(["float64", "float32"]))
    return request


@st.composite
def sweep_request(draw: Any) -> dict:
    """A SweepRequest of 1-4 points over seeds, scales or the record count of a valid base."""
    base = draw(simulation_request())
    keep = draw(st.sampled_from(["summary", "trajectories"]))
    axis = draw(st.sampled_from(["training.steps", "record.points", "init.seed"]))
    values = {"training.steps": [5, 10], "record.points": [3, 4], "init.seed": [0, 1]}[axis]
    if draw(st.booleans()):
        return {"base": base, "grid": {axis: values}, "keep": keep}
    return {"base": base, "points": [{axis: v} for v in values], "keep": keep}

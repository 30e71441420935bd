"""Every figure kind for representative runs, as PNG files to look at (issue 18: look at a figure as a person would;
issue 20's tasks, sharpness and the linearised loss).

    python -m bench.gallery [out_dir] [--only NAME ...] [--format png|svg|pdf] [--dpi 110]

Runs in-process (the core and the plot package, no server), in about a minute: the runs of the issue —

    hierarchy         Saxe's aligned two-layer net on the PNAS depth-3 hierarchy, exact (similarity, kernel)
    hierarchy_gd      the same task from a small random init, GD
    noisy_teacher     Lampinen & Ganguli's noisy teacher, GD from a small init, with its test data
    lazy, rich        λ-balanced inits at λ = −25 and λ = 0 on a whitened task, exact (kernel)
    deep3             a three-layer net on a six-sample dataset, flow to t = 2000 (learning ends by t ≈ 40)
    branching         the 10,000-feature branching_diffusion preset (a product too large to draw whole)
    sequence          task A then task B (a task sequence) by GD: forgetting curves (tasks)
    sharpening        GD's sharpness rising to 2/η, the edge of stability (Cohen et al. 2021; sharpness)
    lazy_linearized   a lazy λ = −25 run by GD with the loss of its linearisation at init (loss)

— three sweeps (the README's init.scale × learning rate × seed sweep, a λ sweep with seeds, a noisy-teacher noise
sweep with seeds) and three comparisons (lazy vs rich; GD at three learning rates against the exact solution).
Files are named <run>_<kind>.<format>, sweep_<name>_<kind>.<format>, compare_<name>_<kind>.<format>.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import orjson

from service import codec
from service.build import build_run
from service.dynamics.simulate import simulate
from service.grid import apply_params, expand_grid, point_summary
from service.plots import (
    COMPARE_KINDS,
    KINDS,
    PlotError,
    render_compare,
    render_plot,
    render_sweep_plot,
    sweep_axes,
)
from service.plots.context import context_of
from service.schemas import SimulationRequest

WHITENED = {"kind": "preset", "name": "whitened", "singular_values": [3.0, 2.0, 1.0], "n_in": 4, "n_out": 4}
DATASET = {"kind": "dataset",
           "x": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 1]],
           "y": [[1, 0.5, 0], [0, 1, 0.2], [0.3, 0, 1], [1, 1, 1], [1, 1.5, 0.2], [0.3, 1, 1.2]]}

RUNS: dict[str, dict[str, Any]] = {
    "hierarchy": {"data": {"kind": "preset", "name": "hierarchy", "depth": 3}, "network": {"hidden": [16]},
                  "init": {"scheme": "aligned", "strength": 0.001}, "training": {"method": "exact", "t_max": 40.0},
                  "record": {"points": 200, "similarity": True, "kernel": True}},
    "hierarchy_gd": {"data": {"kind": "preset", "name": "hierarchy", "depth": 3}, "network": {"hidden": [16]},
                     "init": {"scheme": "gaussian", "scale": 0.01, "seed": 1},
                     "training": {"method": "gd", "learning_rate": 0.05, "steps": 800},
                     "record": {"points": 100, "similarity": True, "kernel": True}},
    "noisy_teacher": {"data": {"kind": "preset", "name": "noisy_teacher"}, "network": {"hidden": [16]},
                      "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
                      "training": {"method": "gd", "learning_rate": 0.02, "steps": 3000}, "record": {"points": 200}},
    "lazy": {"data": WHITENED, "network": {"hidden": [4]},
             "init": {"scheme": "lambda_balanced", "lambda": -25.0, "scale": 0.1, "seed": 0},
             "training": {"method": "exact", "t_max": 4.0}, "record": {"points": 200, "kernel": True}},
    "rich": {"data": WHITENED, "network": {"hidden": [4]},
             "init": {"scheme": "lambda_balanced", "lambda": 0.0, "scale": 0.1, "seed": 0},
             "training": {"method": "exact", "t_max": 4.0}, "record": {"points": 200, "kernel": True}},
    "deep3": {"data": DATASET, "network": {"hidden": [8, 8]}, "init": {"scheme": "gaussian", "scale": 0.05, "seed": 0},
              "training": {"method": "flow", "t_max": 2000.0, "stop_at_convergence": False},
              "record": {"points": 200, "similarity": True, "kernel": True}},
    "branching": {"data": {"kind": "preset", "name": "branching_diffusion"}, "network": {"hidden": [16]},
                  "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
                  "training": {"method": "gd", "learning_rate": 0.002, "steps": 3000}, "record": {"points": 40}},
    "sequence": {"data": {"kind": "sequence", "phases": [{"data": WHITENED | {"seed": 1}, "until": 5.0},
                                                         {"data": WHITENED | {"seed": 2}}]},
                 "network": {"hidden": [4]},
                 "init": {"scheme": "lambda_balanced", "lambda": 0.0, "scale": 0.05, "seed": 0},
                 "training": {"method": "gd", "learning_rate": 0.01, "steps": 1000, "stop_at_convergence": False},
                 "record": {"points": 201}},
    "sharpening": {"data": {"kind": "correlations", "sigma11": [[400.0, 1.0], [1.0, 1.0]], "sigma31": [[0.0, 0.02]]},
                   "network": {"hidden": [1]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
                   "training": {"method": "gd", "learning_rate": 0.16, "steps": 5000, "stop_at_convergence": False},
                   "record": {"points": 500, "sharpness": True, "sharpness_k": 2}},
    "lazy_linearized": {"data": WHITENED, "network": {"hidden": [4]},
                        "init": {"scheme": "lambda_balanced", "lambda": -25.0, "scale": 0.05, "seed": 0},
                        "training": {"method": "gd", "learning_rate": 0.0005, "steps": 8000},
                        "record": {"points": 201, "linearized": True}},
}

SWEEPS: dict[str, dict[str, Any]] = {
    "readme": {"base": RUNS["hierarchy_gd"] | {"record": {"points": 100}},
               "grid": {"init.scale": [0.001, 0.01, 0.1, 1.0], "training.learning_rate": [0.02, 0.05],
                        "init.seed": [0, 1]},
               "kinds": ["learning_time", "final_loss", "convergence_time"], "x": ["init.scale",
                                                                                   "training.learning_rate"]},
    "lambda": {"base": RUNS["rich"],
               "grid": {"init.lambda": [-25.0, -10.0, -3.0, 0.0, 3.0, 10.0, 25.0], "init.seed": [0, 1, 2]},
               "kinds": ["learning_time", "kernel_distance"], "x": ["init.lambda"]},
    "noise": {"base": RUNS["noisy_teacher"] | {"training": {"method": "gd", "learning_rate": 0.02, "steps": 2000}},
              "grid": {"data.noise": [0.0, 0.25, 0.5, 1.0, 2.0], "init.seed": [0, 1]},
              "kinds": ["min_test_loss", "early_stopping_time", "final_loss"], "x": ["data.noise"]},
}

COMPARISONS = {
    "lazy_rich": [("lazy λ = −25", RUNS["lazy"]), ("rich λ = 0", RUNS["rich"])],
    "gd_eta": [(f"GD η = {eta}", RUNS["rich"] | {"training": {"method": "gd", "learning_rate": eta,
                                                            "steps": round(4.0 / eta)}})
               for eta in (0.1, 0.05, 0.01)] + [("exact", RUNS["rich"])],
    # Cohen et al.'s figure: each η sharpens to its own 2/η (t = η·step: below its edge GD follows the flow)
    "edge_of_stability": [(f"GD η = {eta}", RUNS["sharpening"] | {
        "training": {"method": "gd", "learning_rate": eta, "steps": round(240 / eta), "stop_at_convergence": False},
        "record": {"points": 201, "sharpness": True}}) for eta in (0.08, 0.12, 0.16)] + [
        ("gradient flow", RUNS["sharpening"] | {"training": {"method": "flow", "t_max": 240.0,
                                                             "stop_at_convergence": False},
                                                "record": {"points": 201, "sharpness": True}})],
}


def _document(request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trajectory document as the service stores it, validated request with defaults)."""
    validated = SimulationRequest.model_validate(request)
    spec = build_run(validated)
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    doc = orjson.loads(codec.to_json(codec.arrays_of(traj), codec.MEMBERS))  # as GET …/trajectory serves it
    return doc, validated.model_dump(mode="json", by_alias=True)


def _sweep_rows(sweep: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    request = {"base": sweep["base"], "grid": sweep["grid"]}
    rows = []
    for params, _ in expand_grid(sweep["grid"]):
        validated = SimulationRequest.model_validate(apply_params(copy.deepcopy(sweep["base"]), params))
        spec = build_run(validated)
        traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
        rows.append({"parameters": params, "status": "succeeded", "outcome": traj.outcome,
                     **orjson.loads(orjson.dumps(point_summary(traj)))})
    return rows, sweep_axes(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="build/gallery")
    parser.add_argument("--only", nargs="*", default=None, help="run, sweep or comparison names")
    parser.add_argument("--format", default="png", choices=["png", "svg", "pdf"])
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only) if args.only else None
    start = time.perf_counter()

    def write(name: str, data: bytes) -> None:
        (out / f"{name}.{args.format}").write_bytes(data)
        print(f"  {name}.{args.format}  {len(data) / 1024:.0f} kB")

    for name, request in RUNS.items():
        if wanted and name not in wanted:
            continue
        doc, validated = _document(request)
        context = context_of(validated)
        print(f"{name}: {doc['method']}, {len(doc['time'])} records, outcome {doc['outcome']}")
        for kind in KINDS:
            try:
                write(f"{name}_{kind}", render_plot(doc, kind, context=context, fmt=args.format, dpi=args.dpi))
            except PlotError as exc:
                print(f"  {name}_{kind}: not drawn ({exc.message})")
    for name, sweep in SWEEPS.items():
        if wanted and name not in wanted:
            continue
        rows, axes = _sweep_rows(sweep)
        print(f"sweep {name}: {len(rows)} points")
        for kind in sweep["kinds"]:
            for x in sweep["x"]:
                suffix = "" if x == sweep["x"][0] else "_by_" + x.rsplit(".", 1)[-1]
                write(f"sweep_{name}_{kind}{suffix}",
                      render_sweep_plot(rows, axes, kind, x, fmt=args.format, dpi=args.dpi))
    for name, runs in COMPARISONS.items():
        if wanted and name not in wanted:
            continue
        docs = []
        for label, request in runs:
            doc, validated = _document(request)
            docs.append((label, doc, context_of(validated)))
        print(f"comparison {name}: {len(docs)} runs")
        for kind in COMPARE_KINDS:
            try:
                write(f"compare_{name}_{kind}", render_compare(docs, kind, fmt=args.format, dpi=args.dpi))
            except PlotError as exc:
                print(f"  compare_{name}_{kind}: not drawn ({exc.message})")
    print(f"done in {time.perf_counter() - start:.0f} s: {out}")


if __name__ == "__main__":
    main()

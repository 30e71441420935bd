"""Runs to draw and ways to read a figure: the requests the plot tests use (their documents computed once), the
texts of a matplotlib Figure's legends and of an SVG."""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET

import orjson
from matplotlib.legend import Legend

from service.plots import Context
from service.plots.context import context_of
from tests.support.real_runs import CORRELATIONS_EXACT, HIERARCHY_GD, TEACHER_FLOW, run_document

SVG_NS = "{http://www.w3.org/2000/svg}"
WHITENED = {"kind": "preset", "name": "whitened", "singular_values": [3.0, 2.0, 1.0], "n_in": 4, "n_out": 4}
LAZY = {"data": WHITENED, "network": {"hidden": [4]},
        "init": {"scheme": "lambda_balanced", "lambda": -25.0, "scale": 0.1, "seed": 0},
        "training": {"method": "exact", "t_max": 4.0}, "record": {"points": 200, "kernel": True}}
RICH = {**LAZY, "init": {**LAZY["init"], "lambda": 0.0}}
HIERARCHY_EXACT = {"data": {"kind": "preset", "name": "hierarchy", "depth": 3}, "network": {"hidden": [16]},
                   "init": {"scheme": "aligned", "strength": 0.001}, "training": {"method": "exact", "t_max": 40.0},
                   "record": {"points": 100, "similarity": True}}
FLOW_TO_THE_END = {"data": WHITENED, "network": {"hidden": [4]}, "init": {"scheme": "aligned", "strength": [0.01, 0.01, 0.01, 0.0]},
                   "training": {"method": "flow", "t_max": 40.0, "stop_at_convergence": False},
                   "record": {"points": 100}}
NOISY_TEACHER = {"data": {"kind": "preset", "name": "noisy_teacher", "n_in": 8, "n_out": 8, "n_samples": 8,
                          "noise": 1.0, "singular_values": [4.0, 2.0, 1.0]},
                 "network": {"hidden": [8]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
                 "training": {"method": "gd", "learning_rate": 0.05, "steps": 3000}, "record": {"points": 120}}
SEQUENCE_GD = {"data": {"kind": "sequence", "phases": [{"data": {**WHITENED, "seed": 1}, "until": 2.0},
                                                      {"data": {**WHITENED, "seed": 2}}]},
               "network": {"hidden": [4]}, "init": {"scheme": "lambda_balanced", "lambda": 0.0, "scale": 0.1, "seed": 0},
               "training": {"method": "gd", "learning_rate": 0.02, "steps": 200, "stop_at_convergence": False},
               "record": {"points": 41}}
SHARPENING_GD = {  # GD's sharpness rises to 2/η = 12.5 (examples/progressive_sharpening.py, shorter)
    "data": {"kind": "correlations", "sigma11": [[400.0, 1.0], [1.0, 1.0]], "sigma31": [[0.0, 0.02]]},
    "network": {"hidden": [1]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
    "training": {"method": "gd", "learning_rate": 0.16, "steps": 1500, "stop_at_convergence": False},
    "record": {"points": 101, "sharpness": True, "sharpness_k": 2}}
SHARPNESS_FLOW = {"data": WHITENED, "network": {"hidden": [4]}, "init": {"scheme": "gaussian", "scale": 0.05, "seed": 0},
                  "training": {"method": "flow", "t_max": 4.0}, "record": {"points": 30, "sharpness": True}}
LINEARIZED_GD = {"data": WHITENED, "network": {"hidden": [4]},
                 "init": {"scheme": "lambda_balanced", "lambda": -25.0, "scale": 0.05, "seed": 0},
                 "training": {"method": "gd", "learning_rate": 0.005, "steps": 400},
                 "record": {"points": 50, "linearized": True}}
RUNS = {"gd": HIERARCHY_GD, "exact": CORRELATIONS_EXACT, "teacher": TEACHER_FLOW, "lazy": LAZY, "rich": RICH,
        "hierarchy": HIERARCHY_EXACT, "flow_end": FLOW_TO_THE_END, "noisy": NOISY_TEACHER, "sequence": SEQUENCE_GD,
        "sharpening": SHARPENING_GD, "sharpness_flow": SHARPNESS_FLOW, "linearized": LINEARIZED_GD}


@functools.cache
def _doc(name: str) -> bytes:
    return orjson.dumps(run_document(RUNS[name]))


def doc(name: str) -> dict:
    return orjson.loads(_doc(name))


def context(name: str) -> Context:
    from service.schemas import SimulationRequest

    return context_of(SimulationRequest.model_validate(RUNS[name]).model_dump(mode="json", by_alias=True))


def lines_by_gid(fig, prefix: str) -> list:
    """The figure's lines whose gid starts with ``prefix``, sorted by gid."""
    return sorted((ln for ax in fig.axes for ln in ax.get_lines() if (ln.get_gid() or "").startswith(prefix)),
                  key=lambda ln: ln.get_gid())


def legend_texts(fig) -> list[str]:
    return [t.get_text().replace("\n  ", " ") for lg in legends(fig) for t in lg.get_texts()]


def legends(fig) -> list[Legend]:
    out = [a for a in fig.legends]
    for ax in fig.axes:
        out += [c for c in ax.get_children() if isinstance(c, Legend)]
    return out


def all_text(fig) -> str:
    """Every text of the figure: titles, labels, ticks, legends."""
    return " ".join(t.get_text().replace("\n  ", " ") for t in fig.findobj(lambda a: hasattr(a, "get_text"))
                    if t.get_text())


def texts(svg: bytes) -> list[str]:
    """Every text element's content of an SVG (text stays text: svg.fonttype none)."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    return ["".join(t.itertext()) for t in root.iter(f"{SVG_NS}text")]

"""What every figure reads: the plot error, the options and context a figure is drawn with, and small helpers on the
trajectory document (the JSON the API serves, with numpy arrays or lists inside)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Scale = Literal["auto", "linear", "log"]
SCALES: tuple[str, ...] = ("auto", "linear", "log")
MAX_TIMES = 8                 # snapshot panels of a product / similarity plot asked for with ``times``


class PlotError(ValueError):
    """A plot that cannot be drawn as asked. ``code``: "not_recorded" (the data is not in this trajectory, the caller
    should rerun the simulation) or "invalid" (a query parameter out of its domain)."""

    def __init__(self, message: str, *, field: str, fix: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message, self.field, self.fix, self.code = message, field, fix, code


@dataclass(frozen=True)
class Options:
    """How to draw: ``time_scale`` and ``y_scale`` ("auto" lets the figure decide, see ``timing``), the snapshot
    ``times`` of heatmap panels (None: the stage times)."""

    time_scale: Scale = "auto"
    y_scale: Scale = "auto"
    times: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("time_scale", "y_scale"):
            if getattr(self, name) not in SCALES:
                raise PlotError(f"{name} {getattr(self, name)!r} is not one of {', '.join(SCALES)}", field=name,
                                fix=f"use {name}=auto, linear or log")
        if self.times is not None:
            if len(self.times) > MAX_TIMES:
                raise PlotError(f"{len(self.times)} times asked for, at most {MAX_TIMES} panels fit", field="time",
                                fix=f"give at most {MAX_TIMES} time values")
            if any(not (np.isfinite(t) and t >= 0) for t in self.times):
                raise PlotError("times must be finite and ≥ 0", field="time", fix="give times t ≥ 0 within the run")


@dataclass(frozen=True)
class Context:
    """What the trajectory does not hold but a figure can use, from the simulation's request: the item and feature
    names of a preset (``labels``: {"items": [...], "features": [...]}), the teacher map W̄ of a noisy-teacher preset,
    the relative precision of the recorded maps (``precision``, see ``precision_of``), the run's name and its
    ``training`` section (learning rate, momentum, weight decay: what the sharpness plot's threshold is made of)."""

    labels: Mapping[str, Any] | None = None
    teacher: np.ndarray | None = None
    precision: float | None = None
    name: str | None = None
    training: Mapping[str, Any] | None = None


def array(value: Any) -> np.ndarray:
    """JSON lists or arrays -> float64 array; null (a non-finite value in the run) -> NaN."""
    return np.array(value, dtype=np.float64)


def precision_of(method: str | None, request: Mapping[str, Any] | None = None) -> float:
    """The relative precision ε of a run's recorded network maps: what its round-off floor is made of.

    GD and SGD step in their dtype: 10 ulps (2.2e-15 in float64, 1.2e-6 in float32); the flow's error control keeps
    the state within about its rtol (10·rtol: the stiff components jitter at ~rtol·‖W‖ near a minimum); the exact
    closed forms are evaluated to ~1e-13 (the Riccati chunks' convergence test, 16·r·eps).
    """
    request = request or {}
    training = request.get("training") or {}
    if method == "flow":
        return 10.0 * float(training.get("rtol", 1e-8))
    if method == "exact":
        return 1e-13
    dtype = np.float32 if request.get("dtype") == "float32" else np.float64
    return 10.0 * float(np.finfo(dtype).eps)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def fmt(v: float, digits: int = 4) -> str:
    """A number for a label: 4 significant digits, no trailing noise."""
    return f"{v:.{digits}g}"


def method_name(doc: Mapping[str, Any]) -> str:
    return {"gd": "gradient descent", "flow": "gradient flow", "exact": "exact solution",
            "sgd": "stochastic gradient descent"}.get(str(doc.get("method")), str(doc.get("method")))


def outcome_note(doc: Mapping[str, Any]) -> str:
    if doc.get("outcome") == "diverged":
        step = doc.get("diverged_at_step")
        return "diverged" + (f" at step {step}" if step is not None else "") + "; recorded until then"
    return str(doc.get("outcome", ""))


def nearest_records(time: Sequence[float], wanted: Sequence[float]) -> list[int]:
    """Index of the record nearest each wanted time (ties: the earlier record), duplicates removed, sorted."""
    t = np.asarray(time, dtype=np.float64)
    return sorted({int(np.argmin(np.abs(t - w))) for w in wanted})

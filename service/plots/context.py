"""A figure's context from the simulation's request (what the trajectory does not hold): preset item and feature
names, the noisy teacher's W̄, the precision of the recorded maps, and a run's legend label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.dynamics.errors import DynamicsError
from service.dynamics.presets import PRESETS, build_preset, preset_labels

from .common import Context, precision_of

# The teacher is rebuilt from its preset (seeded: the same W̄) up to this many entries of its sample.
MAX_TEACHER_REBUILD = 4_000_000


def context_of(request: Mapping[str, Any] | None, name: str | None = None) -> Context:
    """The Context of a simulation with this (validated, defaults filled) request document. Labels and the teacher
    are a nicety: any surprise leaves them out, the figure is still right."""
    request = request or {}
    data = request.get("data") or {}
    training = request.get("training") or {}
    labels = teacher = None
    if data.get("kind") == "preset" and data.get("name") in PRESETS:
        params = {k: v for k, v in data.items() if k not in ("kind", "name", "test")}
        try:
            labels = preset_labels(data["name"], params)
            if PRESETS[data["name"]].builtin_test:
                n = int(params.get("n_samples", 16)) * (int(params.get("n_in", 16)) + int(params.get("n_out", 16)))
                if n <= MAX_TEACHER_REBUILD:
                    problem = build_preset(data["name"], params)
                    teacher = None if problem.test is None else np.array(problem.test.sigma31)
        except (DynamicsError, TypeError, ValueError, KeyError):
            labels = labels if isinstance(labels, Mapping) else None
    return Context(labels=labels, teacher=teacher, precision=precision_of(training.get("method"), request), name=name,
                   training=training or None)


def run_label(run_id: str, name: str | None = None, tags: Sequence[str] | None = None) -> str:
    """A run's legend label: its name and tags when it has them, else its id."""
    label = name or run_id
    if tags:
        label += " [" + ", ".join(str(t) for t in tags) + "]"
    return label

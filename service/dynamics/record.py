"""The record schedule: at which times (and, for GD, which steps) the trajectory is sampled."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import InvalidParameterError


@dataclass(frozen=True)
class RecordSchedule:
    """``points`` samples spaced ``linear``ly or ``log``arithmically over [0, t_end], or explicit ``times``.

    Time is t = η·step (docs/theory.md#conventions). Log spacing starts at t = 0 and then spaces points
    geometrically from t_end·10⁻⁴ (or one GD step, if larger) to t_end, which is what sigmoidal
    mode curves need on a log axis. ``weights`` asks for every layer at every record, ``similarity`` for
    the hidden-layer item similarity W21ᵀW21 (see ``similarity.item_similarity``), ``kernel`` for the NTK's
    Grams and the kernel distance (see ``kernel``), ``sharpness`` for the ``sharpness_k`` largest eigenvalues of
    the Hessian of L w.r.t. all weights (see ``sharpness``), ``linearized`` for the loss of the network linearised at
    its initialisation at the same records (see ``linearized``).
    """

    points: int = 200
    spacing: Literal["linear", "log"] = "linear"
    times: tuple[float, ...] | None = None
    weights: bool = False
    similarity: bool = False
    kernel: bool = False
    sharpness: bool = False
    sharpness_k: int = 1
    linearized: bool = False

    def sample_times(self, t_end: float, t_min: float | None = None) -> np.ndarray:
        """Sorted unique record times in [0, t_end]; 0 is always included."""
        if self.times is not None:
            t = np.asarray(self.times, dtype=np.float64)
            if t.size == 0 or np.any(~np.isfinite(t)) or np.any(t < 0) or np.any(t > t_end * (1 + 1e-12)):
                raise InvalidParameterError(
                    f"record times must be finite and within [0, {t_end:g}]", field=("record", "times"),
                    fix="give times between 0 and the run's end time (t = learning_rate·steps or t_max)")
            return np.unique(np.concatenate([[0.0], np.minimum(t, t_end)]))
        if self.points < 2:
            raise InvalidParameterError("record.points must be at least 2", field=("record", "points"),
                                        fix="ask for 2 or more points")
        if self.spacing == "linear":
            return np.linspace(0.0, t_end, self.points)
        start = max(t_end * 1e-4, t_min or 0.0)
        if start >= t_end:
            return np.linspace(0.0, t_end, self.points)
        return np.concatenate([[0.0], np.geomspace(start, t_end, self.points - 1)])

    def gd_steps(self, learning_rate: float, steps: int) -> np.ndarray:
        """For GD: the step nearest each record time, as sorted unique ints in [0, steps] (read-only: the schedules
        of recent runs are kept, since validation and the run both ask for one, and a sweep's points often share it)."""
        try:
            return _gd_steps(self, float(learning_rate), int(steps))
        except TypeError:  # unhashable times (a list where a tuple belongs): computed, not kept
            return _gd_steps.__wrapped__(self, float(learning_rate), int(steps))


@functools.lru_cache(maxsize=256)
def _gd_steps(record: RecordSchedule, learning_rate: float, steps: int) -> np.ndarray:
    t = record.sample_times(learning_rate * steps, t_min=learning_rate)
    # t is sorted and rounding and clipping keep its order, so the steps are sorted: unique = drop repeats
    k = np.clip(np.rint(t / learning_rate), 0, steps).astype(np.int64)
    k = np.concatenate([[0], k, [steps]]) if record.times is None else np.concatenate([[0], k])
    k = k[np.concatenate([[True], k[1:] != k[:-1]])]
    k.flags.writeable = False
    return k

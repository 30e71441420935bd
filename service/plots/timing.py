"""Where the dynamics are: when a run settles, the time axis that shows it, and the stage times snapshots default to.

**Settling.** A run has settled at the first record after which every mode strength stays within SETTLE_RTOL of the
largest distance any strength travels from its final value (modes without a learning time included: a decaying
mode is dynamics too).

**time_scale=auto** is log when the dynamics end early: the run settles within the first EARLY_FRACTION of [0, t_end]
and at least MIN_LOG_RECORDS records with t > 0 lie before that (a log axis drops t = 0 and starts at the first of
them); when the modes are learned on very different time scales (their learning times span more than a factor
STAGE_SPREAD, as a noisy teacher's signal and noise modes do); and when the records themselves are log-spaced
(``record.spacing: log``: geometric times over two decades or more). Otherwise linear, with a note when the dynamics
end early but within too few records to be seen on any axis.

**Stage times** are the measured learning times of the modes (the time a mode's strength first reaches half its
strength at the optimum), modes whose learning times fall on one record counted as one stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .common import array, fmt
from .style import log_axis

SETTLE_RTOL = 0.02
EARLY_FRACTION = 0.2
MIN_LOG_RECORDS = 2
STAGE_SPREAD = 20.0
STAGE_SLACK = 0.05          # a snapshot this much (relative) after the learning time it stands for says so


def learning_times(doc: Mapping[str, Any]) -> np.ndarray:
    """The modes' measured learning times (NaN where none)."""
    lt = doc["modes"].get("learning_time")
    if lt is None:
        return np.zeros(0)
    return np.array([np.nan if v is None else v for v in np.ravel(np.asarray(lt, dtype=object))], dtype=np.float64)


def auto_scale(doc: Mapping[str, Any], requested: str, time=None) -> tuple[str, str | None]:
    """The time axis of a trajectory's figure: ``choose_time_scale`` with its settling time and stage times."""
    t = array(doc["time"]) if time is None else time
    return choose_time_scale(requested, t, settle_time(t, mode_strengths(doc)), learning_times(doc))


def mode_strengths(doc: Mapping[str, Any]) -> np.ndarray:
    """The (T, k) mode strengths of a trajectory document."""
    time = array(doc["time"])
    return array(doc["modes"]["strength"]).reshape(len(time), -1)


def settle_time(time, curves) -> float | None:
    """The time of the first record after which every curve stays within SETTLE_RTOL of the largest excursion from
    its final value (None: nothing moves, or no record)."""
    t = np.asarray(time, dtype=np.float64)
    c = np.asarray(curves, dtype=np.float64).reshape(len(t), -1)
    if not t.size:
        return None
    c = np.where(np.isfinite(c), c, np.nan)
    dev = np.abs(c - c[-1])
    worst = np.nanmax(dev, axis=1) if np.isfinite(dev).any() else np.zeros(len(t))
    worst = np.nan_to_num(worst, nan=np.inf)
    scale = float(np.max(worst[np.isfinite(worst)], initial=0.0))
    if scale <= 0:
        return None
    moving = np.flatnonzero(worst > SETTLE_RTOL * scale)
    return float(t[min(int(moving[-1]) + 1, len(t) - 1)]) if moving.size else float(t[0])


def log_spaced(time) -> bool:
    """Records spaced geometrically (a log record schedule) over two decades or more."""
    t = np.asarray(time, dtype=np.float64)
    t = t[t > 0]
    if t.size < 4 or t[-1] < 100 * t[0]:
        return False
    r = t[1:] / t[:-1]
    return bool(np.all(r > 1.0) and np.max(r) <= 1.5 * np.min(r))


def choose_time_scale(requested: str, time, settle: float | None,
                      stages=None) -> tuple[str, str | None]:
    """("linear" or "log", a note for the figure or None) for the time axis (module docstring); ``stages``: the
    modes' measured learning times, if any."""
    t = np.asarray(time, dtype=np.float64)
    positive = t[t > 0]
    if requested == "log":
        if positive.size == 0:
            return "linear", "linear time axis: no record with t > 0 to put on a log axis"
        return "log", None
    if requested == "linear" or positive.size < MIN_LOG_RECORDS:
        return "linear", None
    if log_spaced(t):
        return "log", None
    t_end = float(t[-1])
    lt = np.asarray([] if stages is None else stages, dtype=np.float64)
    lt = lt[np.isfinite(lt) & (lt > 0)]
    if lt.size >= 2 and lt.max() > STAGE_SPREAD * lt.min():
        return "log", (f"log time axis: the modes are learned on time scales from t ≈ {fmt(lt.min(), 3)} to "
                       f"{fmt(lt.max(), 3)}")
    if settle is None or settle > EARLY_FRACTION * t_end:
        return "linear", None
    if int(np.sum(positive <= settle)) >= MIN_LOG_RECORDS:
        return "log", f"log time axis: settled by t ≈ {fmt(settle, 3)}, {settle / t_end:.0%} of the span"
    first = int(np.sum(t <= settle))
    return "linear", (f"the run settles by t ≈ {fmt(settle, 3)}, within its first {first} record"
                      f"{'s' if first > 1 else ''}: record more points or use record.spacing = log to see it")


def time_label(doc: Mapping[str, Any], scale: str) -> str:
    method = doc.get("method")
    label = ("time t = η·step  (η: learning rate)" if method in ("gd", "sgd") else
             "time t  (gradient-flow time; t = η·step for GD)")
    return label + ("  [log scale; t = 0 not shown]" if scale == "log" else "")


def shown(time, scale: str) -> np.ndarray:
    """The records a time axis of this scale can show (t > 0 on a log axis)."""
    t = np.asarray(time, dtype=np.float64)
    return (t > 0) if scale == "log" else np.ones(t.shape, dtype=bool)


def apply_time_axis(ax, doc: Mapping[str, Any], scale: str, time) -> None:
    """Label and scale the time axis; on a log axis start it at the first record with t > 0."""
    t = np.asarray(time, dtype=np.float64)
    if scale == "log":
        ax.set_xscale("log")
        pos = t[t > 0]
        if pos.size:
            ax.set_xlim(pos[0], pos[-1])
            log_axis(ax.xaxis, pos)
    elif t.size:
        ax.set_xlim(float(t[0]), float(t[-1]) if t[-1] > t[0] else float(t[0]) + 1.0)
    ax.set_xlabel(time_label(doc, scale))


def stage_times(doc: Mapping[str, Any], limit: int = 4) -> list[tuple[int, str]]:
    """(record index, label) of up to ``limit`` stages: the first record at or after each mode's measured learning
    time, modes falling on one record counted together, spread over the stages when there are more. The label says
    when the record lies visibly after the learning time (records far apart)."""
    time = array(doc["time"])
    lt = learning_times(doc)
    if not lt.size or not time.size:
        return []
    stages: dict[int, list[int]] = {}
    for a in np.argsort(lt, kind="stable"):
        if np.isfinite(lt[a]) and lt[a] >= 0:
            i = min(int(np.searchsorted(time, lt[a] * (1 - 1e-12), side="left")), len(time) - 1)
            stages.setdefault(i, []).append(int(a))
    keys = sorted(stages)
    if len(keys) > limit:
        keys = [keys[round(j)] for j in np.linspace(0, len(keys) - 1, limit)]
    out = []
    for i in keys:
        modes = stages[i]
        t_half = max(lt[a] for a in modes)
        late = float(time[i] - t_half) > STAGE_SLACK * t_half
        label = f"t½ of {mode_list(modes)}"
        out.append((i, f"first record after {label} = {fmt(min(lt[a] for a in modes), 3)}" if late else label))
    return out


def mode_list(modes: list[int]) -> str:
    """"mode 3", "modes 3–4", "modes 1, 3": 1-based, ranges joined."""
    m = sorted(a + 1 for a in modes)
    if len(m) == 1:
        return f"mode {m[0]}"
    if m == list(range(m[0], m[-1] + 1)):
        return f"modes {m[0]}–{m[-1]}"
    return "modes " + ", ".join(map(str, m))

"""Trajectory downloads: content negotiation (JSON or .npz), field selection and record thinning.

Pure functions on the stored trajectory document (service.schemas.Trajectory as JSON bytes or a dict);
no web framework. The API calls ``encode_trajectory`` in a worker thread: decoding a large document and
encoding it again is CPU work the event loop must not do.

    negotiate("application/x-npz, application/json;q=0.5")   # -> "application/x-npz"
    body = encode_trajectory(stored_json, NPZ, fields=["time", "modes"], every=10)
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson

JSON = "application/json"
NPZ = "application/x-npz"
MEDIA_TYPES = (JSON, NPZ)  # in order of preference when the Accept header ranks them equally

# Top-level members of the Trajectory document (service.schemas.Trajectory), in its order.
FIELDS = ("time", "step", "loss", "excess_loss", "product", "weights", "modes", "balance_drift", "gradient_norm",
          "distance_to_optimum", "outcome", "diverged_at_step", "optimum", "method", "stability_hint", "test_loss",
          "early_stopping", "loss_theory", "kernel", "kernel_distance", "similarity")
# Members with one entry per record (``every`` thins them); inside the objects below, the members listed.
PER_RECORD = ("time", "step", "loss", "excess_loss", "product", "weights", "balance_drift", "gradient_norm",
              "distance_to_optimum", "test_loss", "kernel_distance", "similarity")
PER_RECORD_MODES = ("strength", "theory")
PER_RECORD_NESTED = {"modes": PER_RECORD_MODES, "loss_theory": ("loss", "test_loss"),
                     "kernel": ("input_grams", "output_grams")}
# Objects whose members become ``<object>_<member>`` arrays of the .npz.
NESTED = ("modes", "optimum", "early_stopping", "loss_theory")

NPZ_LAYOUT = """\
`Accept: application/x-npz` returns the trajectory as a NumPy `.npz` archive (uncompressed; read it with
`numpy.load(io.BytesIO(body))`, no pickle needed). T is the number of records (after `every`), k = min(n_in, n_out):

| array | shape | dtype |
|---|---|---|
| `time` | (T,) | float64 |
| `step` | (T,) | int64 (GD only) |
| `loss` | (T,) | float64 (absent when Σ33 is unknown) |
| `excess_loss`, `balance_drift`, `gradient_norm`, `distance_to_optimum` | (T,) | float64 |
| `product` | (T, n_out, n_in) | float64 |
| `weights_0` … `weights_{D-1}` | (T, rows_l, cols_l), input→output | float64 (when record.weights) |
| `similarity` | (T, n_in, n_in) | float64 (when record.similarity) |
| `test_loss` | (T,) | float64 (with data.test) |
| `early_stopping_time`, `early_stopping_test_loss` | () | float64 (with data.test) |
| `early_stopping_step` | () | int64 (with data.test, GD only) |
| `loss_theory_loss`, `loss_theory_test_loss` | (T,) | float64 (where the loss theory applies) |
| `loss_theory_model`, `loss_theory_assumptions` | () | str |
| `loss_theory_exact` | () | bool |
| `kernel_input_grams_0` … `kernel_input_grams_{D-2}` | (T, n_in, n_in) per hidden layer | float64 (record.kernel) |
| `kernel_output_grams_0` … `_{D-2}` | (T, n_out, n_out) per hidden layer | float64 (record.kernel) |
| `kernel_distance` | (T,) | float64 (when record.kernel) |
| `modes_singular_values`, `modes_learning_time`, `modes_learning_time_theory` | (k,) | float64 |
| `modes_strength`, `modes_theory` | (T, k) | float64 |
| `modes_theory_model`, `modes_theory_assumptions` | () | str |
| `modes_theory_exact` | () | bool |
| `optimum_product` | (n_out, n_in) | float64 |
| `optimum_loss`, `optimum_loss_without_sigma33` | () | float64 |
| `optimum_rank` | () | int64 |
| `outcome`, `method`, `stability_hint` | () | str |
| `diverged_at_step` | () | int64 |

A JSON null inside an array (a non-finite value) is NaN; a member that is null as a whole is left out, and so
is every member not named by `fields`.
"""


class DownloadError(ValueError):
    """A bad ``fields`` or ``every`` value; ``field`` names the query parameter."""

    def __init__(self, message: str, *, field: str, fix: str) -> None:
        super().__init__(message)
        self.message, self.field, self.fix = message, field, fix


# ------------------------------------------------------------------------------------------------
# content negotiation (RFC 9110 §12.5.1)


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    """(media range, q) per entry of an Accept header; a malformed q counts as 1 (be lenient)."""
    out = []
    for entry in accept.split(","):
        parts = [p.strip() for p in entry.split(";")]
        media = parts[0].lower()
        if not media:
            continue
        if "/" not in media:
            media = media + "/*" if media == "*" else media
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 1.0
        out.append((media, q))
    return out


def _match(media_range: str, media: str) -> int:
    """Specificity of the match: 3 exact, 2 type/*, 1 */*, 0 no match."""
    if media_range == media:
        return 3
    kind, _, sub = media_range.partition("/")
    if sub == "*" and kind == "*":
        return 1
    if sub == "*" and media.startswith(kind + "/"):
        return 2
    return 0


def negotiate(accept: str | None, offered: Sequence[str] = MEDIA_TYPES) -> str | None:
    """The offered media type the Accept header ranks highest (None: nothing acceptable; no header: the first).

    Each offered type takes the q of the most specific range that matches it; ties go to the more specific
    match, then to the order of ``offered``.
    """
    if accept is None or not accept.strip():
        return offered[0]
    ranges = _media_ranges(accept)
    best, best_key = None, (0.0, 0, 0)
    for order, media in enumerate(offered):
        matches = [(_match(r, media), q) for r, q in ranges]
        specificity, q = max(matches, default=(0, 0.0))
        if specificity == 0 or q <= 0:
            continue
        key = (q, specificity, -order)
        if best is None or key > best_key:
            best, best_key = media, key
    return best


# ------------------------------------------------------------------------------------------------
# selection


def parse_fields(values: Iterable[str] | None) -> list[str] | None:
    """``?fields=time,loss&fields=modes`` -> ["time", "loss", "modes"] (validated, order kept, no repeats)."""
    if values is None:
        return None
    out: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in FIELDS:
                raise DownloadError(f"the trajectory has no field {name!r}", field="fields",
                                    fix=f"use a comma-separated list of {', '.join(FIELDS)}")
            if name not in out:
                out.append(name)
    if not out:
        raise DownloadError("fields is empty", field="fields", fix="name at least one field, e.g. fields=time,loss")
    return out


def record_indices(count: int, every: int) -> list[int]:
    """Records 0, every, 2·every, … and always the last one (so the final state is never thinned away)."""
    if every < 1:
        raise DownloadError(f"every must be ≥ 1, got {every}", field="every", fix="give a positive integer")
    idx = list(range(0, count, every))
    if count and idx[-1] != count - 1:
        idx.append(count - 1)
    return idx


def select(doc: Mapping[str, Any], fields: Sequence[str] | None = None, every: int | None = None) -> dict[str, Any]:
    """The document restricted to ``fields`` (all when None) and to every ``every``-th record."""
    out = {name: doc[name] for name in (fields or FIELDS) if name in doc}
    if every is None or every == 1:
        return out
    idx = record_indices(len(doc["time"]), every)
    for name in PER_RECORD:
        if out.get(name) is not None:
            out[name] = [out[name][i] for i in idx]
    for member, names in PER_RECORD_NESTED.items():
        if out.get(member) is not None:
            nested = dict(out[member])
            for name in names:
                if nested.get(name) is not None:
                    nested[name] = [nested[name][i] for i in idx]
            out[member] = nested
    return out


# ------------------------------------------------------------------------------------------------
# npz


def _array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, bool):
        return np.array(value)
    if isinstance(value, str):
        return np.array(value, dtype=np.str_)
    if isinstance(value, int):
        return np.array(value, dtype=np.int64)
    if name == "step":
        return np.array(value, dtype=np.int64)
    return np.array(value, dtype=np.float64)  # nested lists; None -> NaN


def npz_arrays(doc: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of the .npz layout (NPZ_LAYOUT) for a (selected) trajectory document."""
    out: dict[str, np.ndarray] = {}
    for name, value in doc.items():
        if value is None:
            continue
        if name == "weights":
            layers = len(value[0]) if value else 0
            for layer in range(layers):
                out[f"weights_{layer}"] = np.array([per_time[layer] for per_time in value], dtype=np.float64)
        elif name == "kernel":
            for sub in ("input_grams", "output_grams"):
                layers = len(value[sub][0]) if value[sub] else 0
                for layer in range(layers):
                    out[f"kernel_{sub}_{layer}"] = np.array([per_time[layer] for per_time in value[sub]],
                                                            dtype=np.float64)
        elif name in NESTED:
            for sub, v in value.items():
                if v is not None:
                    out[f"{name}_{sub}"] = _array(sub, v)
        else:
            out[name] = _array(name, value)
    return out


def to_npz(doc: Mapping[str, Any]) -> bytes:
    return save_npz(npz_arrays(doc))


def save_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed .npz archive (the arrays are float text's 2.5× smaller already; zlib would cost seconds)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def trajectory_arrays(traj: Any) -> dict[str, np.ndarray]:
    """The NPZ_LAYOUT arrays straight from a core Trajectory (service.dynamics.trajectory), without JSON.

    Equal, array for array, to ``npz_arrays`` of its ``convert.trajectory_document`` (tests check it): for a
    worker that wants to store the .npz next to the JSON, so the API serves it without parsing float text.
    """
    def f64(a: Any) -> np.ndarray:
        return np.asarray(a, dtype=np.float64)

    modes, opt = traj.modes, traj.optimum
    out: dict[str, np.ndarray] = {"time": f64(traj.time)}
    if traj.step is not None:
        out["step"] = np.asarray(traj.step, dtype=np.int64)
    if traj.loss is not None:
        out["loss"] = f64(traj.loss)
    out["excess_loss"] = f64(traj.excess_loss)
    out["product"] = f64(traj.product)
    for layer, w in enumerate(traj.weights or []):
        out[f"weights_{layer}"] = f64(w)
    out["modes_singular_values"] = f64(modes.singular_values)
    out["modes_strength"] = f64(modes.strength)
    if modes.theory is not None:
        out["modes_theory"] = f64(modes.theory)
    if modes.theory_model is not None:
        out["modes_theory_model"] = np.array(modes.theory_model, dtype=np.str_)
    out["modes_theory_exact"] = np.array(bool(modes.theory_exact))
    if modes.theory_assumptions is not None:
        out["modes_theory_assumptions"] = np.array(modes.theory_assumptions, dtype=np.str_)
    out["modes_learning_time"] = f64(modes.learning_time)
    if modes.learning_time_theory is not None:
        out["modes_learning_time_theory"] = f64(modes.learning_time_theory)
    for name in ("balance_drift", "gradient_norm", "distance_to_optimum"):
        out[name] = f64(getattr(traj, name))
    out["outcome"] = np.array(str(traj.outcome), dtype=np.str_)
    if traj.diverged_at_step is not None:
        out["diverged_at_step"] = np.array(int(traj.diverged_at_step), dtype=np.int64)
    out["optimum_product"] = f64(opt.product)
    if opt.loss is not None and np.isfinite(opt.loss):
        out["optimum_loss"] = f64(opt.loss)
    if opt.loss_without_sigma33 is not None and np.isfinite(opt.loss_without_sigma33):
        out["optimum_loss_without_sigma33"] = f64(opt.loss_without_sigma33)
    out["optimum_rank"] = np.array(int(opt.rank), dtype=np.int64)
    out["method"] = np.array(str(traj.method), dtype=np.str_)
    if traj.stability_hint is not None:
        out["stability_hint"] = np.array(traj.stability_hint, dtype=np.str_)
    if getattr(traj, "test_loss", None) is not None:
        out["test_loss"] = f64(traj.test_loss)
    stop = getattr(traj, "early_stopping", None)
    if stop is not None:
        out["early_stopping_time"] = f64(stop.time)
        if stop.step is not None:
            out["early_stopping_step"] = np.array(int(stop.step), dtype=np.int64)
        out["early_stopping_test_loss"] = f64(stop.test_loss)
    theory = getattr(traj, "loss_theory", None)
    if theory is not None:
        if theory.loss is not None:
            out["loss_theory_loss"] = f64(theory.loss)
        if theory.test_loss is not None:
            out["loss_theory_test_loss"] = f64(theory.test_loss)
        out["loss_theory_model"] = np.array(theory.model, dtype=np.str_)
        out["loss_theory_exact"] = np.array(bool(theory.exact))
        out["loss_theory_assumptions"] = np.array(theory.assumptions, dtype=np.str_)
    kernel = getattr(traj, "kernel", None)
    if kernel is not None:
        for layer, gram in enumerate(kernel.input_grams):
            out[f"kernel_input_grams_{layer}"] = f64(gram)
        for layer, gram in enumerate(kernel.output_grams):
            out[f"kernel_output_grams_{layer}"] = f64(gram)
        out["kernel_distance"] = f64(kernel.distance)
    if getattr(traj, "similarity", None) is not None:
        out["similarity"] = f64(traj.similarity)
    return out


def encode_trajectory(stored: bytes, media_type: str, fields: Sequence[str] | None = None,
                      every: int | None = None) -> bytes:
    """The stored trajectory JSON as ``media_type`` bytes, restricted to ``fields`` and thinned by ``every``."""
    if media_type == JSON and fields is None and every in (None, 1):
        return stored
    doc = select(orjson.loads(stored), fields, every)
    if media_type == JSON:
        return orjson.dumps(doc)
    if media_type == NPZ:
        return to_npz(doc)
    raise ValueError(f"unsupported media type {media_type!r}")

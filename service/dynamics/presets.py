"""Built-in learning problems, each a validated ``Problem``, plus a registry for the API (the theory of each:
docs/theory.md#hierarchy, docs/theory.md#modes, docs/theory.md#noisy-teacher).

    problem = build_preset("hierarchy", {"depth": 3})

``PRESETS`` maps a name to a ``Preset``: the builder, its parameters (type, default, bounds,
description) and, where the items and features have names, a labeller. The HTTP request puts a
preset's parameters beside its name ({"kind": "preset", "name": "hierarchy", "depth": 3}), so errors
name the field as ("data", param) and ("data", "name") for an unknown preset (``build_preset`` takes
another prefix than "data").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .errors import DynamicsError, FieldPath, InvalidParameterError
from .problem import Problem, problem_from_correlations, problem_from_data, read_only_samples, with_test
from .random_matrix import NoisyTeacher

PARAMS_FIELD: FieldPath = ("data",)

# Σ33 is n_out × n_out; past this many outputs the dense matrix (8·n_out² bytes: 32 MB at 2048) is
# not built and the preset's Σ33 is None (the loss is then reported up to tr Σ33, see network.loss).
MAX_DENSE_SIGMA33_OUTPUTS = 2048

# Size guards: the tree presets' largest arrays are (items × features) floats.
MAX_TREE_ITEMS = 1024
MAX_SAMPLED_ENTRIES = 20_000_000          # n_features × items for branching_diffusion (160 MB)
MAX_TEACHER_ENTRIES = 20_000_000          # n_samples × (n_in + n_out) for random_teacher


def _bad(name: str, message: str, fix: str) -> InvalidParameterError:
    return InvalidParameterError(message, field=(*PARAMS_FIELD, name), fix=fix)


def _int_in(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi is not None and value > hi):
        span = f"between {lo} and {hi}" if hi is not None else f"≥ {lo}"
        raise _bad(name, f"{name} must be an integer {span}, got {value!r}", f"give an integer {span}")
    return int(value)


def _float_in(name: str, value, lo: float, hi: float, *, lo_open: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if isinstance(value, bool) or not math.isfinite(x) or x < lo or x > hi or (lo_open and x == lo):
        span = f"in ({lo:g}, {hi:g}]" if lo_open else f"in [{lo:g}, {hi:g}]"
        raise _bad(name, f"{name} must be a finite number {span}, got {value!r}", f"give a number {span}")
    return x


def _seed(value) -> int:
    return _int_in("seed", value, 0)


def _random_orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n × k with orthonormal columns (QR of a Gaussian, signs fixed so the draw is Haar)."""
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs


def _one_hot_problem(y_items: np.ndarray, *, dense_sigma33: bool = True) -> Problem:
    """One-hot items as inputs, ``y_items`` (n_features × P) as targets, mean statistics over the P items:

        Σ11 = I/P,  Σ31 = Y/P,  Σ33 = YYᵀ/P  (None past MAX_DENSE_SIGMA33_OUTPUTS features; tr Σ33 = ‖Y‖²_F/P is
    always kept, so the loss stays known)

    Built directly: these are exact moments of a dataset, so symmetric and jointly PSD by construction. The dataset
    itself, P samples x_i = e_i (the rows of I_P) with targets y_i = column i of ``y_items``, is kept for SGD
    (``Problem.samples``; y is a read-only transposed view of ``y_items``, not a copy, so the problem keeps
    ``y_items`` alive: as many numbers as Σ31, 160 MB at MAX_SAMPLED_ENTRIES; x is I_P, 8 MB at P = 1024).
    """
    n_features, p = y_items.shape
    sigma33 = (y_items @ y_items.T) / p if dense_sigma33 and n_features <= MAX_DENSE_SIGMA33_OUTPUTS else None
    # one-hot inputs: W = Y fits every item, so min_W L = 0 exactly
    return Problem(np.eye(p) / p, y_items / p, sigma33, p, float(np.sum(y_items * y_items)) / p, residual_loss=0.0,
                   samples=read_only_samples(np.eye(p), y_items.T))


# ------------------------------------------------------------------------------------------------
# hierarchy (PNAS 2019)


def hierarchy_targets(depth: int) -> np.ndarray:
    """Y (features × items) of the binary tree of docs/theory.md#hierarchy-tree: y_f(item) = 1 iff node f is an
    ancestor-or-self of the item's leaf. Nodes in breadth-first order (root first), items left→right."""
    p = 2 ** depth
    rows = []
    for level in range(depth + 1):
        size = 2 ** (depth - level)
        for b in range(2 ** level):
            row = np.zeros(p)
            row[b * size:(b + 1) * size] = 1.0
            rows.append(row)
    return np.array(rows)


def hierarchy(depth: int = 3) -> Problem:
    """Saxe, McClelland & Ganguli (PNAS 2019) deterministic binary tree (docs/theory.md#hierarchy-tree).

    P = 2^depth items (leaves), one-hot inputs; 2^{depth+1} − 1 features, one per tree node, with
    y_f(item) = 1 iff node f is an ancestor-or-self of the item. Σ11 = I/P (not I: mean statistics,
    see docs/theory.md#whitening), Σ31 = Y/P, Σ33 = YYᵀ/P. The singular values of Σ31 are
    sqrt(2^{depth−k} − 1)/P for the level-k splits (multiplicity 2^k) and sqrt(2^{depth+1} − 1)/P for the
    uniform mode.
    """
    depth = _int_in("depth", depth, 1, int(math.log2(MAX_TREE_ITEMS)))
    return _one_hot_problem(hierarchy_targets(depth))


def _tree_node_names(levels: int, branches: int) -> list[str]:
    """Node names in breadth-first order: "root", then the path of child indices ("0", "01", …)."""
    names = ["root"]
    frontier = [""]
    for _ in range(levels):
        frontier = [f"{p}{c}" for p in frontier for c in range(branches)]
        names.extend(frontier)
    return names


def hierarchy_labels(depth: int = 3) -> dict[str, list[str]]:
    """Names for the hierarchy's items (leaf paths, e.g. "010") and features (node paths, "root" first)."""
    depth = _int_in("depth", depth, 1, int(math.log2(MAX_TREE_ITEMS)))
    nodes = _tree_node_names(depth, 2)
    return {"items": nodes[-(2 ** depth):], "features": nodes}


# ------------------------------------------------------------------------------------------------
# branching diffusion (Neuromatch W1D2 Tutorial 3, generate_hsd)


def branching_diffusion_targets(levels: int, branches: int, flip_prob: float, n_features: int,
                                seed: int) -> np.ndarray:
    """Y (n_features × items) in {±1}: for each feature, every tree node draws a sign, −1 with
    probability ``flip_prob`` (0.5 at the root), and an item's value is the product of the signs on
    its leaf→root path (docs/theory.md#branching-diffusion). Items are the branches^levels leaves, left→right."""
    rng = np.random.default_rng(seed)
    values = np.where(rng.random((n_features, 1)) < 0.5, -1.0, 1.0)   # the root
    for level in range(1, levels + 1):
        signs = np.where(rng.random((n_features, branches ** level)) < flip_prob, -1.0, 1.0)
        values = np.repeat(values, branches, axis=1) * signs
    return values


def branching_diffusion(levels: int = 3, branches: int = 2, flip_prob: float = 0.15,
                        n_features: int = 10000, seed: int = 0) -> Problem:
    """Hierarchical data by branching diffusion (Neuromatch ``generate_hsd``, docs/theory.md#branching-diffusion),
    seeded.

    One-hot items (the branches^levels leaves) as inputs, n_features sampled ±1 features as outputs;
    Σ11 = I/P, Σ31 = Y/P, Σ33 = YYᵀ/P (None when n_features > MAX_DENSE_SIGMA33_OUTPUTS: the
    tutorial's 10 000 features would make it an 800 MB matrix). In expectation over features,
    E[y_i y_j] = (1 − 2p)^{2(levels − d_LCA(i, j))}, an ultrametric item Gram (docs/theory.md#ultrametric).
    """
    levels = _int_in("levels", levels, 1)
    branches = _int_in("branches", branches, 2)
    # Compare logarithms: branches ** levels for an absurd request (levels = 10**12) would never finish.
    if levels * math.log(branches) > math.log(MAX_TREE_ITEMS) + 1e-9:
        raise _bad("levels", f"{branches}^{levels} items is more than {MAX_TREE_ITEMS}",
                   f"use fewer levels or branches (at most {MAX_TREE_ITEMS} items)")
    flip_prob = _float_in("flip_prob", flip_prob, 0.0, 0.5)
    n_features = _int_in("n_features", n_features, 1)
    if n_features * branches ** levels > MAX_SAMPLED_ENTRIES:
        raise _bad("n_features", f"{n_features} features × {branches ** levels} items is too large",
                   f"keep n_features × items at most {MAX_SAMPLED_ENTRIES}")
    seed = _seed(seed)
    return _one_hot_problem(branching_diffusion_targets(levels, branches, flip_prob, n_features, seed))


def branching_diffusion_labels(levels: int = 3, branches: int = 2, **_ignored) -> dict[str, list[str] | None]:
    """Item names are the leaf paths ("010"); the sampled features are anonymous."""
    levels = _int_in("levels", levels, 1)
    branches = _int_in("branches", branches, 2)
    return {"items": _tree_node_names(levels, branches)[-(branches ** levels):], "features": None}


# ------------------------------------------------------------------------------------------------
# whitened teacher and random teacher


def whitened(singular_values: Sequence[float], n_in: int, n_out: int, seed: int = 0) -> Problem:
    """Whitened inputs and a given spectrum: Σ11 = I, Σ31 = U diag(s) Vᵀ with U (n_out × k), V (n_in × k)
    random orthonormal columns (seeded), k = len(singular_values) ≤ min(n_in, n_out).

    Σ33 = Σ31Σ31ᵀ: the noise-free teacher y = Σ31 x with whitened x (then Σ33 = Σ31 Σ11 Σ31ᵀ), so
    the global minimum of a network wide enough is L* = 0. This is Saxe et al. 2014's setting (docs/theory.md#modes).
    """
    n_in = _int_in("n_in", n_in, 1)
    n_out = _int_in("n_out", n_out, 1)
    try:
        s = np.asarray(singular_values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _bad("singular_values", "singular_values must be a list of numbers", "give e.g. [3, 2, 1]") from exc
    if s.ndim != 1 or s.size == 0 or s.size > min(n_in, n_out):
        raise _bad("singular_values", f"give between 1 and min(n_in, n_out) = {min(n_in, n_out)} singular values",
                   "shorten the list or widen n_in/n_out")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise _bad("singular_values", "singular values must be finite and ≥ 0", "give non-negative numbers")
    rng = np.random.default_rng(_seed(seed))
    u = _random_orthonormal(rng, n_out, s.size)
    v = _random_orthonormal(rng, n_in, s.size)
    sigma31 = (u * s) @ v.T
    return problem_from_correlations(np.eye(n_in), sigma31, sigma31 @ sigma31.T, residual_loss=0.0)


def random_teacher(n_in: int = 8, n_out: int = 8, n_samples: int = 100, noise: float = 0.1, seed: int = 0,
                   rank: int | None = None) -> Problem:
    """A dataset from a random linear teacher, correlations by ``problem_from_data``:

        X ~ N(0, 1) (n_samples × n_in),  T = G_out G_in / sqrt(rank · n_in)  (n_out × n_in, rank ``rank``),
        Y = X Tᵀ + noise · N(0, 1)

    G_out (n_out × rank) and G_in (rank × n_in) are standard Gaussian, so T has entries of variance
    1/n_in and the clean outputs have unit variance; rank=None means a full Gaussian T/sqrt(n_in).
    Σ11 is the sample covariance (not I), so this exercises the non-whitened paths.
    """
    n_in = _int_in("n_in", n_in, 1)
    n_out = _int_in("n_out", n_out, 1)
    n_samples = _int_in("n_samples", n_samples, 1)
    noise = _float_in("noise", noise, 0.0, 1e6)
    seed = _seed(seed)
    if rank is not None:
        rank = _int_in("rank", rank, 1, min(n_in, n_out))
    if n_samples * (n_in + n_out) > MAX_TEACHER_ENTRIES:
        raise _bad("n_samples", "the dataset would be too large",
                   f"keep n_samples × (n_in + n_out) at most {MAX_TEACHER_ENTRIES}")
    rng = np.random.default_rng(seed)
    if rank is None:
        teacher = rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)
    else:
        teacher = rng.standard_normal((n_out, rank)) @ rng.standard_normal((rank, n_in)) / math.sqrt(rank * n_in)
    x = rng.standard_normal((n_samples, n_in))
    y = x @ teacher.T
    if noise > 0:
        y = y + noise * rng.standard_normal((n_samples, n_out))
    return problem_from_data(x, y)


# ------------------------------------------------------------------------------------------------
# noisy teacher (Lampinen & Ganguli 2019)


def noisy_teacher(n_in: int = 16, n_out: int = 16, n_samples: int = 16, noise: float = 1.0,
                  singular_values: Sequence[float] = (4.0, 2.0, 1.0), rank: int | None = None,
                  seed: int = 0) -> Problem:
    """A low-rank linear teacher with output noise, its training sample and its exact test distribution
    (Lampinen & Ganguli 2019, docs/theory.md#noisy-teacher):

        teacher  W̄ = U diag(s_1 … s_r) Vᵀ   (U: n_out × r, V: n_in × r, random orthonormal columns, seeded; the first
                                              ``rank`` of ``singular_values``, all when rank is null)
        training N ≥ n_in: X = sqrt(N) Q  (N × n_in, Q with orthonormal columns: whitened exactly, Σ11 = XᵀX/N = I)
                 N < n_in: X = sqrt(n_in) R  (N × n_in, R with orthonormal rows: N orthogonal inputs of norm √n_in,
                           the test inputs' typical norm; they cannot be whitened: Σ11 = (n_in/N)·RᵀR, a multiple of
                           the projection on their span — the paper's P < N1 case of P orthonormal inputs)
                 Y = X W̄ᵀ + noise · Z,  Z ~ N(0, 1)  (N × n_out)
        test     x ~ N(0, I), y = W̄ x + noise · z:  Σ11ᵗ = I,  Σ31ᵗ = W̄,  Σ33ᵗ = W̄W̄ᵀ + noise² I   (exact, not sampled)

    So for N ≥ n_in, Σ31 = W̄ + ZᵀX/N is the teacher plus a noise matrix with i.i.d. N(0, noise²/N) entries (the spiked
    model, docs/theory.md#noisy-teacher); for N < n_in, Σ31/(n_in/N) is the teacher seen through the inputs' N-dimensional span
    plus noise of variance noise²/n_in per entry in that span, and the sample is fitted exactly (L_ls = 0). Either
    way L_test(W) = ‖W − W̄‖²_F + n_out · noise². The problem carries its ``random_matrix.NoisyTeacher``, from which
    runs report the sample-free prediction of train and test loss (Trajectory.loss_theory_random_matrix).
    """
    n_in = _int_in("n_in", n_in, 1)
    n_out = _int_in("n_out", n_out, 1)
    n_samples = _int_in("n_samples", n_samples, 1)
    noise = _float_in("noise", noise, 0.0, 1e6)
    seed = _seed(seed)
    if n_samples * (n_in + n_out) > MAX_TEACHER_ENTRIES:
        raise _bad("n_samples", "the dataset would be too large",
                   f"keep n_samples × (n_in + n_out) at most {MAX_TEACHER_ENTRIES}")
    try:
        s = np.asarray(singular_values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _bad("singular_values", "singular_values must be a list of numbers", "give e.g. [4, 2, 1]") from exc
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s < 0):
        raise _bad("singular_values", "singular_values must be a non-empty list of finite numbers ≥ 0",
                   "give e.g. [4, 2, 1]")
    if rank is not None:
        s = s[:_int_in("rank", rank, 1, s.size)]
    if s.size > min(n_in, n_out):
        raise _bad("singular_values", f"a teacher of rank {s.size} does not fit n_in = {n_in}, n_out = {n_out}",
                   f"give at most min(n_in, n_out) = {min(n_in, n_out)} singular values, or set rank")
    rng = np.random.default_rng(seed)
    teacher = (_random_orthonormal(rng, n_out, s.size) * s) @ _random_orthonormal(rng, n_in, s.size).T
    if n_samples >= n_in:
        x = math.sqrt(n_samples) * _random_orthonormal(rng, n_samples, n_in)
    else:
        x = math.sqrt(n_in) * _random_orthonormal(rng, n_in, n_samples).T
    y = x @ teacher.T
    if noise > 0:
        y = y + noise * rng.standard_normal((n_samples, n_out))
    train = problem_from_data(x, y)
    test = Problem(np.eye(n_in), teacher, teacher @ teacher.T + noise ** 2 * np.eye(n_out), None,
                   float(np.sum(teacher * teacher)) + n_out * noise ** 2, residual_loss=n_out * noise ** 2)
    spec = NoisyTeacher(tuple(float(v) for v in s), noise, n_in, n_out, n_samples)
    return replace(with_test(train, test), teacher=spec)


# ------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class PresetParam:
    """One parameter of a preset: ``kind`` is "int", "float", "float_list" or "int_or_null"."""

    name: str
    kind: str
    default: object
    description: str
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    build: Callable[..., Problem]
    params: tuple[PresetParam, ...]
    description: str
    labels: Callable[..., dict] | None = None
    builtin_test: bool = False  # the built problem carries its own test distribution (Problem.test)


PRESETS: dict[str, Preset] = {
    "hierarchy": Preset(
        "hierarchy", hierarchy,
        (PresetParam("depth", "int", 3, "depth of the binary tree: 2^depth items, 2^(depth+1) − 1 features",
                     1, int(math.log2(MAX_TREE_ITEMS))),),
        "Saxe, McClelland & Ganguli (PNAS 2019) deterministic hierarchy: one-hot items, one feature per tree "
        "node (1 iff the node is an ancestor-or-self of the item). Σ11 = I/P.",
        hierarchy_labels),
    "branching_diffusion": Preset(
        "branching_diffusion", branching_diffusion,
        (PresetParam("levels", "int", 3, "levels of the tree below the root", 1),
         PresetParam("branches", "int", 2, "children per node", 2),
         PresetParam("flip_prob", "float", 0.15, "probability that a node flips its parent's sign", 0.0, 0.5),
         PresetParam("n_features", "int", 10000, "number of sampled features (outputs)", 1),
         PresetParam("seed", "int", 0, "random seed", 0)),
        "Neuromatch W1D2 tutorial 3 hierarchical data (generate_hsd): ±1 features diffusing down a tree. "
        f"Σ33 is omitted (None) above {MAX_DENSE_SIGMA33_OUTPUTS} features.",
        branching_diffusion_labels),
    "whitened": Preset(
        "whitened", whitened,
        (PresetParam("singular_values", "float_list", [3.0, 2.0, 1.0], "singular values of Σ31 (≥ 0)", 0.0),
         PresetParam("n_in", "int", 4, "input dimension", 1),
         PresetParam("n_out", "int", 4, "output dimension", 1),
         PresetParam("seed", "int", 0, "random seed for the singular vectors", 0)),
        "Whitened inputs (Σ11 = I) and Σ31 = U diag(s) Vᵀ with random U, V; noise-free teacher, "
        "Σ33 = Σ31Σ31ᵀ (Saxe et al. 2014 setting)."),
    "random_teacher": Preset(
        "random_teacher", random_teacher,
        (PresetParam("n_in", "int", 8, "input dimension", 1),
         PresetParam("n_out", "int", 8, "output dimension", 1),
         PresetParam("n_samples", "int", 100, "number of samples N", 1),
         PresetParam("noise", "float", 0.1, "standard deviation of the output noise", 0.0),
         PresetParam("seed", "int", 0, "random seed", 0),
         PresetParam("rank", "int_or_null", None, "rank of the teacher (null = full rank)", 1)),
        "Gaussian inputs, a random linear teacher plus Gaussian noise; correlations from the sampled data."),
    "noisy_teacher": Preset(
        "noisy_teacher", noisy_teacher,
        (PresetParam("n_in", "int", 16, "input dimension", 1),
         PresetParam("n_out", "int", 16, "output dimension", 1),
         # the registry's texts are part of the HTTP contract (openapi/openapi.json): N < n_in is described in
         # noisy_teacher's docstring; the HTTP layer updates these texts when it exposes it
         PresetParam("n_samples", "int", 16, "number of training samples N (≥ n_in: the inputs are whitened)", 1),
         PresetParam("noise", "float", 1.0, "standard deviation of the output noise", 0.0),
         PresetParam("singular_values", "float_list", [4.0, 2.0, 1.0], "the teacher's singular values (≥ 0)", 0.0),
         PresetParam("rank", "int_or_null", None, "the teacher's rank: its first `rank` singular values "
                                                  "(null = all of them)", 1),
         PresetParam("seed", "int", 0, "random seed (teacher, samples, noise)", 0)),
        "Lampinen & Ganguli (2019) noisy teacher: a low-rank teacher W̄ = U diag(s) Vᵀ, N whitened training samples "
        "(Σ11 = I) with Gaussian output noise, and the teacher's exact test distribution (Σ11ᵗ = I, Σ31ᵗ = W̄, "
        "Σ33ᵗ = W̄W̄ᵀ + noise²·I) as data.test: runs record the test loss ‖W − W̄‖² + n_out·noise² and the "
        "early-stopping point.",
        builtin_test=True),
}


def _prefixed(exc: DynamicsError, field_prefix: FieldPath) -> DynamicsError:
    if tuple(field_prefix) != ("data",) and exc.field[:1] == ("data",):
        exc.field = (*field_prefix, *exc.field[1:])
    return exc


def build_preset(name: str, params: Mapping[str, object] | None = None, *,
                 field_prefix: FieldPath = ("data",)) -> Problem:
    """The problem of preset ``name`` with ``params`` (missing ones take their defaults).

    Unknown names and parameters are errors at (*field_prefix, "name") and (*field_prefix, key).
    """
    params = dict(params or {})
    try:
        if name not in PRESETS:
            raise InvalidParameterError(f"unknown preset {name!r}", field=("data", "name"),
                                        fix=f"use one of {', '.join(PRESETS)}")
        preset = PRESETS[name]
        known = {p.name for p in preset.params}
        for key in params:
            if key not in known:
                raise InvalidParameterError(f"preset {name!r} has no parameter {key!r}", field=(*PARAMS_FIELD, key),
                                            fix=f"its parameters are {', '.join(sorted(known))}")
        kwargs = {p.name: params.get(p.name, p.default) for p in preset.params}
        return preset.build(**kwargs)
    except DynamicsError as exc:
        raise _prefixed(exc, field_prefix) from None


def preset_labels(name: str, params: Mapping[str, object] | None = None) -> dict | None:
    """{"items": [...], "features": [...] or None} for presets whose items have names, else None."""
    preset = PRESETS.get(name)
    if preset is None or preset.labels is None:
        return None
    params = dict(params or {})
    kwargs = {p.name: params.get(p.name, p.default) for p in preset.params}
    return preset.labels(**kwargs)

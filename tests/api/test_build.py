"""The border between HTTP and the core: request -> SimulationSpec, Trajectory -> JSON document."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.build import UnstableLearningRateError, admit_simulation, build_run
from service.dynamics.errors import DynamicsError
from service.dynamics.methods import Exact, GradientDescent, GradientFlow
from service.dynamics.trajectory import ModeReport, Optimum, Trajectory
from service.limits import LimitExceededError, Limits
from service.schemas import SimulationRequest
from service.schemas import Trajectory as TrajectorySchema
from service.settings import Settings
from tests.api.conftest import small_request
from tests.support.trajectories import trajectory_document


def _trajectory(dtype=np.float64, weights=True) -> Trajectory:
    t = np.array([0.0, 0.5, 1.0], dtype=dtype)
    w1 = np.arange(3 * 2 * 2, dtype=dtype).reshape(3, 2, 2) / 7  # layer 1 at 3 times (hidden 2 × n_in 2)
    w2 = np.arange(3 * 1 * 2, dtype=dtype).reshape(3, 1, 2) / 3  # layer 2 (n_out 1 × hidden 2)
    product = np.einsum("tij,tjk->tik", w2, w1)
    return Trajectory(
        time=t, step=np.array([0, 5, 10]), loss=None,
        excess_loss=np.array([1.0, np.nan, np.inf], dtype=dtype), product=product,
        weights=[w1, w2] if weights else None,
        modes=ModeReport(singular_values=np.array([2.0]), strength=np.array([[0.0], [1.0], [2.0]]),
                         theory=None, theory_model=None, theory_exact=False, theory_assumptions=None,
                         learning_time=np.array([np.nan]), learning_time_theory=None),
        balance_drift=np.zeros(3, dtype=dtype), gradient_norm=np.array([1.0, 0.5, -np.inf]),
        distance_to_optimum=np.ones(3), outcome="diverged", diverged_at_step=np.int64(10),
        optimum=Optimum(product=np.array([[1.0, 0.0]]), loss=None, loss_without_sigma33=-4.0, rank=1, fit_gap=0.0),
        method="gd", stability_hint="η < 0.25")


def test_document_matches_the_trajectory_schema():
    document = trajectory_document(_trajectory())
    TrajectorySchema.model_validate(document)
    assert set(document) == set(TrajectorySchema.model_fields)


def test_non_finite_values_become_null():
    document = trajectory_document(_trajectory())
    assert document["excess_loss"] == [1.0, None, None]
    assert document["gradient_norm"] == [1.0, 0.5, None]
    assert document["modes"]["learning_time"] == [None]
    assert b"NaN" not in orjson.dumps(document) and b"Infinity" not in orjson.dumps(document)


def test_weights_are_per_time_then_per_layer():
    traj = _trajectory()
    document = trajectory_document(traj)
    assert len(document["weights"]) == 3 and len(document["weights"][0]) == 2
    for t in range(3):
        assert document["weights"][t][0] == traj.weights[0][t].tolist()
        assert document["weights"][t][1] == traj.weights[1][t].tolist()
    assert trajectory_document(_trajectory(weights=False))["weights"] is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_values_survive_json_bit_for_bit(dtype):
    traj = _trajectory(dtype)
    decoded = orjson.loads(orjson.dumps(trajectory_document(traj)))
    np.testing.assert_array_equal(np.array(decoded["product"], dtype=dtype), traj.product)
    assert np.array(decoded["product"], dtype=dtype).tobytes() == traj.product.tobytes()


def test_integers_are_plain_json_integers():
    document = trajectory_document(_trajectory())
    assert document["step"] == [0, 5, 10] and all(type(s) is int for s in document["step"])
    assert type(document["diverged_at_step"]) is int
    assert document["outcome"] == "diverged"


def _spec(**changes):
    return build_run(SimulationRequest.model_validate(small_request(**changes)))


def test_build_maps_each_training_method():
    gd = _spec().method
    assert gd == GradientDescent(learning_rate=0.05, steps=100, weight_decay=0.0)
    flow = _spec(training={"method": "flow", "t_max": 3.0, "rtol": 1e-9, "atol": 1e-12, "weight_decay": 0.1}).method
    assert flow == GradientFlow(t_max=3.0, rtol=1e-9, atol=1e-12, weight_decay=0.1)
    exact = _spec(init={"scheme": "aligned", "strength": 0.01}, training={"method": "exact", "t_max": 2.0})
    assert exact.method == Exact(t_max=2.0)


def test_build_maps_stop_at_convergence_for_gd_and_flow():
    gd = _spec(training={"method": "gd", "learning_rate": 0.05, "steps": 100, "stop_at_convergence": False}).method
    assert gd == GradientDescent(learning_rate=0.05, steps=100, stop_at_convergence=False)
    flow = _spec(training={"method": "flow", "t_max": 3.0, "stop_at_convergence": False}).method
    assert flow == GradientFlow(t_max=3.0, stop_at_convergence=False)


def test_build_maps_record_and_dtype():
    spec = _spec(record={"points": 7, "spacing": "log", "weights": True}, dtype="float32")
    assert (spec.record.points, spec.record.spacing, spec.record.weights) == (7, "log", True)
    assert spec.dtype == "float32"
    assert _spec(record={"times": [0.5, 1.0]}).record.times == (0.5, 1.0)


def test_build_gives_the_initial_weights_of_the_requested_init():
    spec = _spec(init={"scheme": "given", "weights": [[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[1.0, 0.0, 0.0],
                                                                                        [0.0, 1.0, 0.0]]]})
    assert [w.shape for w in spec.weights0] == [(3, 2), (2, 3)]
    assert spec.weights0[0][2, 1] == 6.0


def test_build_checks_the_learning_rate_only_without_allow_unstable():
    with pytest.raises(UnstableLearningRateError) as info:
        _spec(training={"method": "gd", "learning_rate": 0.3, "steps": 10})
    assert info.value.field == ("training", "learning_rate")
    _spec(training={"method": "gd", "learning_rate": 0.3, "steps": 10, "allow_unstable": True})


def test_build_without_limits_checks_none():
    request = SimulationRequest.model_validate(small_request(training={"method": "gd", "learning_rate": 0.05,
                                                                       "steps": 10**6}))
    build_run(request)  # the worker's call: no limits
    with pytest.raises(LimitExceededError):
        admit_simulation(request, Limits(max_steps=1000))


def test_preset_errors_from_the_core_name_the_inline_field():
    with pytest.raises(DynamicsError) as info:
        _spec(data={"kind": "preset", "name": "random_teacher", "n_in": 3, "n_out": 2, "rank": 3})
    assert info.value.field == ("data", "rank")


def test_limits_come_from_the_settings():
    settings = Settings(max_steps=7, max_dimension=9, max_trajectory_values=11)
    limits = Limits.from_settings(settings)
    assert (limits.max_steps, limits.max_dimension, limits.max_trajectory_values) == (7, 9, 11)
    assert Limits.from_settings(Settings()) == Limits()

"""The client's pure pieces, without a service: problems as text, the dims table, selection and thinning, the
sweep results table, the optional extras, waiting, and the event stream's reconnection.

The event stream is tested against a small scripted Server-Sent Events server on loopback that follows the
events contract (client/src/dlnsim/events.py) and drops or closes connections on cue: the service has no
events route yet, and how the client resumes must be right before it has.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dlnsim
import httpx
import numpy as np
import pandas as pd
import pytest
from dlnsim import _wait
from dlnsim._http import encode_json, query_value
from dlnsim.errors import ProblemError, field_path, parse_retry_after
from dlnsim.events import stream_events
from dlnsim.fields import array_dims, record_indices, select_arrays
from dlnsim.tables import sweep_frame, trajectory_dataset, trajectory_frame

PROBLEM = {"type": "/problems/validation-error", "title": "Invalid request", "status": 422,
           "detail": "2 fields are invalid",
           "errors": [{"field": ["data", "sigma11", 2], "pointer": "/data/sigma11/2", "in": "body",
                       "code": "ragged_matrix", "message": "row 2 has 3 entries, not 2", "fix": "give 2 entries"},
                      {"field": ["network", "hidden", 0], "pointer": "/network/hidden/0", "in": "body",
                       "code": "greater_than_equal", "message": "must be ≥ 1, got 0", "fix": "give a value ≥ 1"}]}


# ------------------------------------------------------------------------------------------------
# problems


def test_problem_error_str_is_title_detail_and_one_line_per_field():
    assert str(ProblemError(PROBLEM)).splitlines() == [
        "Invalid request (422)",
        "2 fields are invalid",
        "  data.sigma11[2] → row 2 has 3 entries, not 2; give 2 entries",
        "  network.hidden[0] → must be ≥ 1, got 0; give a value ≥ 1",
    ]


def test_problem_error_keeps_the_document_members():
    problem = ProblemError(PROBLEM, retry_after=2.0)
    assert (problem.status, problem.type, problem.title, problem.detail) == (
        422, "/problems/validation-error", "Invalid request", "2 fields are invalid")
    assert problem.errors[1].field == ("network", "hidden", 0) and problem.errors[1].location == "body"
    assert problem.problem == PROBLEM and problem.retry_after == 2.0


def test_a_response_that_is_not_a_problem_becomes_one_from_its_status_line():
    request = httpx.Request("GET", "http://proxy.invalid/v1/simulations")
    response = httpx.Response(502, text="<html>Bad Gateway</html>", request=request,
                              headers={"Content-Type": "text/html", "Retry-After": "3"})
    problem = ProblemError.from_response(response)
    assert (problem.status, problem.title, problem.detail) == (502, "Bad Gateway", "<html>Bad Gateway</html>")
    assert problem.retry_after == 3.0


def test_field_paths_read_as_python_access():
    assert field_path(["data", "sigma11", 2, 0]) == "data.sigma11[2][0]"
    assert field_path([]) == "(request)"


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0   # in the past: now
    assert parse_retry_after("soon") is None


def test_a_failed_simulations_error_is_its_problem_as_problem_error():
    failed = dlnsim.Simulation(http=None, document={"id": "x", "status": "failed", "error": PROBLEM})
    assert isinstance(failed.error, ProblemError) and failed.error.errors[0].path == "data.sigma11[2]"
    assert dlnsim.Simulation(http=None, document={"id": "y", "status": "succeeded", "error": None}).error is None


# ------------------------------------------------------------------------------------------------
# requests


def test_request_bodies_take_numpy_arrays_and_scalars():
    body = {"weights": [np.eye(2)], "weight_decay": np.float32(0.5), "seed": np.int64(3)}
    assert json.loads(encode_json(body)) == {"weights": [[[1.0, 0.0], [0.0, 1.0]]], "weight_decay": 0.5, "seed": 3}


def test_request_bodies_refuse_nan_before_sending():
    with pytest.raises(ValueError, match="Out of range float values"):
        encode_json({"x": [[float("nan")]]})


def test_query_values_are_spelled_as_the_service_reads_them():
    assert query_value(True) == "true" and query_value(np.bool_(False)) == "false"
    assert query_value(np.array([0.0, 10.0])) == [0.0, 10.0]


# ------------------------------------------------------------------------------------------------
# the dims table, selection, thinning


def test_layer_units_resolve_to_input_and_output_at_the_ends():
    assert array_dims("weights_0", 3, depth=3) == ("time", "unit_1", "input")
    assert array_dims("weights_1", 3, depth=3) == ("time", "unit_2", "unit_1")
    assert array_dims("weights_2", 3, depth=3) == ("time", "output", "unit_2")
    assert array_dims("weights_0", 3, depth=1) == ("time", "output", "input")


def test_an_array_the_table_does_not_know_gets_numbered_dims():
    assert array_dims("hessian_spectrum", 2) == ("hessian_spectrum_0", "hessian_spectrum_1")


def test_every_keeps_every_kth_record_and_the_last():
    assert record_indices(10, 4) == [0, 4, 8, 9]
    assert record_indices(9, 4) == [0, 4, 8]


def test_select_keeps_the_named_members_and_thins_only_per_record_arrays():
    arrays = {"time": np.arange(5.0), "modes_strength": np.ones((5, 2)), "modes_singular_values": np.ones(2),
              "loss": np.arange(5.0), "optimum_rank": np.array(2)}
    selected = select_arrays(arrays, ["time,modes"], every=3)
    assert sorted(selected) == ["modes_singular_values", "modes_strength", "time"]
    assert selected["time"].tolist() == [0.0, 3.0, 4.0]
    assert selected["modes_strength"].shape == (3, 2) and selected["modes_singular_values"].shape == (2,)


def test_select_takes_fields_as_one_comma_separated_string():
    arrays = {"time": np.arange(3.0), "loss": np.arange(3.0), "excess_loss": np.arange(3.0)}
    assert sorted(select_arrays(arrays, "time,loss")) == ["loss", "time"]


def test_to_pandas_without_pandas_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install './client\[pandas\]'"):
        trajectory_frame({"time": np.arange(3.0)})


def test_to_xarray_without_xarray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r"pip install './client\[xarray\]'"):
        trajectory_dataset({"time": np.arange(3.0)})


def test_dataset_attributes_hold_strings_flags_and_nested_values_as_json():
    ds = trajectory_dataset({"time": np.arange(2.0), "method": np.array("gd"), "modes_theory_exact": np.array(True)},
                            {"request": {"network": {"hidden": [4]}}, "provenance": None})
    assert ds.attrs == {"method": "gd", "modes_theory_exact": 1, "request": '{"network": {"hidden": [4]}}'}


# ------------------------------------------------------------------------------------------------
# sweep results


# a results CSV as the service writes it (service/results_table.py), three points, one failed
RESULTS_CSV = (
    "point,init.scale,network.hidden,status,finished_at,outcome,final_loss,learning_time_1,learning_time_2,"
    "learning_time_3,steps_to_convergence,theory_model,error_type,error_detail\r\n"
    "0,0.1,[8],succeeded,2026-01-01T00:00:00Z,converged,0.5,1.0,2.0,,40,saxe,,\r\n"
    '1,1.0,"[8, 8]",failed,2026-01-01T00:00:01Z,,,,,,,,/problems/internal,worker died\r\n'
    "2,0.5,[8],succeeded,2026-01-01T00:00:02Z,completed,0.1234567890123456789,1.5,,3.5,,None,,\r\n")


def test_sweep_frame_is_indexed_by_point():
    frame = sweep_frame(RESULTS_CSV)
    assert frame.index.name == "point" and frame.index.tolist() == [0, 1, 2]


def test_sweep_frame_fixes_the_dtypes():
    frame = sweep_frame(RESULTS_CSV)
    assert str(frame["steps_to_convergence"].dtype) == "Int64"
    assert frame["learning_time_2"].dtype == np.float64 and np.isnan(frame.loc[2, "learning_time_2"])
    assert str(frame["status"].dtype) == "string"
    assert frame.loc[0, "finished_at"] == pd.Timestamp("2026-01-01T00:00:00Z")


def test_sweep_frame_reads_floats_exactly_and_keeps_none_as_text():
    frame = sweep_frame(RESULTS_CSV)
    assert frame.loc[2, "final_loss"] == 0.1234567890123456789
    assert frame.loc[2, "theory_model"] == "None" and pd.isna(frame.loc[1, "theory_model"])


def test_sweep_frame_keeps_list_parameters_as_json_text():
    frame = sweep_frame(RESULTS_CSV)
    assert frame["network.hidden"].tolist() == ["[8]", "[8, 8]", "[8]"]
    assert frame.loc[1, "error_detail"] == "worker died"


# ------------------------------------------------------------------------------------------------
# waiting


def test_a_progress_bar_is_nothing_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with _wait.ProgressBar(True, "simulation") as bar:
        bar.update(0.5, "running")
        assert not bar.shown


def test_poll_waits_the_retry_after_of_a_503(monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr(_wait.time, "sleep", pauses.append)
    answers = iter([ProblemError({"status": 503, "title": "Unavailable"}, retry_after=7.0), 1.0])
    state = {"done": False}

    def refresh() -> float | None:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        state["done"] = True
        return answer

    _wait.poll(refresh, lambda: state["done"], timeout=None, what="job")
    assert pauses == [_wait.FIRST_DELAY, 7.0]


def test_poll_raises_other_problems(monkeypatch):
    monkeypatch.setattr(_wait.time, "sleep", lambda s: None)

    def refresh() -> float | None:
        raise ProblemError({"status": 404, "title": "Not found"})

    with pytest.raises(ProblemError):
        _wait.poll(refresh, lambda: False, timeout=None, what="job")


def test_a_busy_service_is_retried_after_its_retry_after(monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr(_wait.time, "sleep", pauses.append)
    answers = iter([ProblemError({"status": 429, "title": "Queue full"}, retry_after=5.0), "created"])

    def send() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert _wait.retry_busy(send, timeout=None) == "created" and pauses == [5.0]


# ------------------------------------------------------------------------------------------------
# the event stream: a scripted SSE server on loopback


class ScriptedEvents(ThreadingHTTPServer):
    """Serves ``scripts[n]`` to the n-th connection: (events, ending), ending "drop" (the connection breaks
    mid-body), "close" (the body ends before an end event) or "end"; records each Last-Event-ID received."""

    daemon_threads = True

    def __init__(self, scripts: list[tuple[list[tuple[str, str, dict]], str]]) -> None:
        super().__init__(("127.0.0.1", 0), _EventsHandler)
        self.scripts = scripts
        self.last_event_ids: list[str | None] = []


class _EventsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedEvents

    def log_message(self, *args: object) -> None:
        pass

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        self.server.last_event_ids.append(self.headers.get("Last-Event-ID"))
        events, ending = self.server.scripts[len(self.server.last_event_ids) - 1]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk("retry: 10\n\n")
        for kind, event_id, data in events:
            self._chunk(f"event: {kind}\nid: {event_id}\ndata: {json.dumps(data)}\n\n")
        self.close_connection = True
        if ending == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def scripted() -> Iterator[Callable]:
    servers: list[ScriptedEvents] = []

    def start(scripts):
        server = ScriptedEvents(scripts)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, httpx.Client(base_url=f"http://127.0.0.1:{server.server_address[1]}", timeout=10)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


PROGRESS = {"step": 10, "time": 0.5, "progress": 0.1, "loss": 1.0, "test_loss": None, "eta_seconds": 3.0}
END = {"status": "succeeded", "outcome": "completed", "error": None}


def test_events_resume_after_a_dropped_connection_with_last_event_id(scripted):
    server, client = scripted([([("progress", "1", PROGRESS), ("progress", "2", PROGRESS)], "drop"),
                               ([("end", "3", END)], "end")])
    events = list(stream_events(client, "/events"))
    assert [(e.event, e.id) for e in events] == [("progress", "1"), ("progress", "2"), ("end", "3")]
    assert server.last_event_ids == [None, "2"]


def test_events_resume_when_the_stream_closes_before_its_end(scripted):
    server, client = scripted([([("record", "1", {"index": 0})], "close"), ([("end", "2", END)], "end")])
    assert [e.id for e in stream_events(client, "/events")] == ["1", "2"]
    assert server.last_event_ids == [None, "1"]


def test_events_stop_at_the_end_event_with_its_data(scripted):
    server, client = scripted([([("progress", "1", PROGRESS), ("end", "2", END)], "end")])
    events = list(stream_events(client, "/events"))
    assert events[-1] == dlnsim.Event("end", "2", END)
    assert events[0].data == PROGRESS and len(server.last_event_ids) == 1


def test_events_start_after_a_given_last_event_id(scripted):
    server, client = scripted([([("end", "9", END)], "end")])
    list(stream_events(client, "/events", last_event_id="8"))
    assert server.last_event_ids == ["8"]


def test_events_give_up_after_repeated_drops(scripted):
    server, client = scripted([([], "drop")] * 3)
    with pytest.raises(httpx.TransportError):
        list(stream_events(client, "/events", max_reconnects=2))
    assert len(server.last_event_ids) == 3

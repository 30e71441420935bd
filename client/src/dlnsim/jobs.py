"""Simulations, sweeps and sweep points: handles on the service's jobs and their results."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from dlnsim import _wait
from dlnsim._http import CSV, JSON, NPZ, SVG, Http
from dlnsim.errors import ProblemError, parse_retry_after
from dlnsim.events import Event, stream_events
from dlnsim.fields import FRAME_MEMBERS, arrays_from_json, select_arrays
from dlnsim.plot import Figure
from dlnsim.tables import sweep_frame, trajectory_dataset, trajectory_frame

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["Simulation", "Sweep", "SweepPoint", "TERMINAL"]

TERMINAL = ("succeeded", "failed", "cancelled")


def _fields_param(fields: Sequence[str] | str | None) -> str | None:
    if fields is None:
        return None
    return fields if isinstance(fields, str) else ",".join(fields)


def load_arrays(response: httpx.Response) -> dict[str, np.ndarray]:
    """A trajectory response's arrays: the .npz as served, or a JSON trajectory in the same layout."""
    media = response.headers.get("content-type", "").partition(";")[0].strip()
    if media == NPZ:
        with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    return arrays_from_json(response.json())


class _Trajectory(ABC):
    """What a simulation and a kept sweep point share: the trajectory as arrays, a DataFrame and a Dataset."""

    @abstractmethod
    def trajectory(self, fields: Sequence[str] | str | None = None,
                   every: int | None = None) -> dict[str, np.ndarray]:
        """The trajectory's arrays."""

    @abstractmethod
    def _attrs(self) -> dict[str, Any]:
        """What to_xarray puts into the Dataset's attributes."""

    def to_pandas(self, every: int | None = None) -> pd.DataFrame:
        """The per-record scalars, one row per record indexed by ``time``: loss, excess_loss, test_loss,
        gradient_norm, balance_drift, distance_to_optimum, kernel_distance, loss_theory, test_loss_theory (the
        ones recorded), ``step`` for GD, the mode strengths as ``strength_1 … strength_k`` and their theory as
        ``strength_theory_1 …``. Needs pandas (``pip install './client[pandas]'``)."""
        return trajectory_frame(self.trajectory(fields=FRAME_MEMBERS, every=every))

    def to_xarray(self, every: int | None = None) -> xr.Dataset:
        """The whole trajectory as an xarray Dataset with named dimensions (``dlnsim.fields`` lists them):
        time, mode (1..k), output, input, the layer units, item; request and provenance in the attributes.
        Needs xarray (``pip install './client[xarray]'``)."""
        return trajectory_dataset(self.trajectory(every=every), self._attrs())


class Simulation(_Trajectory):
    """One simulation of the service. Its members mirror ``GET /v1/simulations/{id}`` as last read
    (``refresh`` reads it again); ``document`` is that JSON."""

    def __init__(self, http: Http, document: Mapping[str, Any]) -> None:
        self._http = http
        self.document: dict[str, Any] = dict(document)

    # -- the document -------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self.document["id"])

    @property
    def status(self) -> str:
        """queued, running, succeeded, failed or cancelled."""
        return str(self.document["status"])

    @property
    def progress(self) -> float:
        return float(self.document.get("progress") or 0.0)

    @property
    def request(self) -> dict[str, Any]:
        """The request as the service validated it, defaults filled in."""
        return dict(self.document.get("request") or {})

    @property
    def outcome(self) -> str | None:
        """completed, converged or diverged once succeeded; None before."""
        return self.document.get("outcome")

    @property
    def error(self) -> ProblemError | None:
        """Why a failed simulation failed (the problem, as a ProblemError you may raise), else None."""
        problem = self.document.get("error")
        return ProblemError(problem) if problem else None

    @property
    def provenance(self) -> dict[str, Any] | None:
        """What produced the result (versions, BLAS, threads, dtype), where the service records it; else None."""
        return self.document.get("provenance")

    @property
    def name(self) -> str | None:
        """The name given with the request (not part of the computation)."""
        return self.document.get("name")

    @property
    def tags(self) -> list[str]:
        """The tags given with the request (not part of the computation)."""
        return list(self.document.get("tags") or [])

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def __repr__(self) -> str:
        tail = f", {self.outcome}" if self.outcome else ""
        return f"<Simulation {self.id}: {self.status}{tail}>"

    # -- the job ------------------------------------------------------------------------------------

    @property
    def _path(self) -> str:
        return f"/v1/simulations/{self.id}"

    def _update(self, response: httpx.Response) -> float | None:
        """Take the simulation from an answer; return the answer's Retry-After."""
        self.document = response.json()
        return parse_retry_after(response.headers.get("retry-after"))

    def refresh(self) -> Simulation:
        """Read the simulation again."""
        self._update(self._http.request("GET", self._path))
        return self

    def wait(self, timeout: float | None = None, progress: bool = False) -> Simulation:
        """Poll until the simulation has finished (succeeded, failed or cancelled; check ``status``), with a
        progress bar when ``progress`` and tqdm is installed. TimeoutError after ``timeout`` seconds."""
        with _wait.ProgressBar(progress and not self.done, f"simulation {self.id[:8]}") as bar:
            _wait.poll(lambda: self._update(self._http.request("GET", self._path)), lambda: self.done, timeout,
                       f"simulation {self.id}", lambda: bar.update(self.progress, self.status))
        return self

    def cancel(self) -> Simulation:
        """Stop it (a running simulation stops within about a second); a finished one is left as it is."""
        self._update(self._http.request("POST", f"{self._path}/cancel"))
        return self

    def delete(self) -> None:
        """Delete it and its trajectory (cancelling it first if it runs)."""
        self._http.request("DELETE", self._path)

    # -- results ------------------------------------------------------------------------------------

    def trajectory(self, fields: Sequence[str] | str | None = None,
                   every: int | None = None) -> dict[str, np.ndarray]:
        """The trajectory as NumPy arrays (the ``.npz`` download): ``time``, ``loss``, ``product`` (T, n_out,
        n_in), ``modes_strength`` (T, k), … (``dlnsim.fields.ARRAYS`` lists them). ``fields`` keeps only those
        trajectory members (e.g. ``["time", "loss", "modes"]``), ``every=k`` every k-th record and the last.
        While the simulation runs: its records so far (``partial`` True: time, step, loss, excess_loss, test_loss,
        modes_strength); after a cancel: the records up to it. ProblemError 409 while it has no record, or failed."""
        response = self._http.request("GET", f"{self._path}/trajectory", accept=NPZ,
                                      params={"fields": _fields_param(fields), "every": every})
        return load_arrays(response)

    def _attrs(self) -> dict[str, Any]:
        return {"simulation_id": self.id, "request": self.request, "provenance": self.provenance}

    def plot(self, kind: str = "modes", **params: Any) -> Figure:
        """The service's figure of the trajectory: ``modes`` (theory dashed), ``loss``, ``product``,
        ``similarity``, ``kernel``, ``tasks`` (a task sequence), ``sharpness``; other query parameters as keywords
        (``log_time=True``, ``time=[0, 10]``)."""
        response = self._http.request("GET", f"{self._path}/plot.svg", accept=SVG, params={"kind": kind, **params})
        return Figure(response.text, f"{kind} of simulation {self.id}")

    def events(self, last_event_id: str | None = None) -> Iterator[Event]:
        """The simulation's live events (Server-Sent Events): ``progress``, ``record``, and ``end``, after which
        the iteration stops; a dropped connection resumes where it left off (``Last-Event-ID``). Needs a server
        with ``GET /v1/simulations/{id}/events``: older ones answer ProblemError 404."""
        return stream_events(self._http.client, f"{self._path}/events", last_event_id)


class SweepPoint(_Trajectory):
    """Point ``index`` of a sweep (its trajectory is kept by sweeps with ``"keep": "trajectories"``)."""

    def __init__(self, sweep: Sweep, index: int) -> None:
        self.sweep = sweep
        self.index = index

    def __repr__(self) -> str:
        return f"<SweepPoint {self.index} of sweep {self.sweep.id}>"

    def trajectory(self, fields: Sequence[str] | str | None = None,
                   every: int | None = None) -> dict[str, np.ndarray]:
        """The point's trajectory as NumPy arrays, in the layout of ``Simulation.trajectory`` (``fields`` and
        ``every`` as there). ProblemError 409 ``not-recorded`` for a sweep with ``"keep": "summary"``."""
        response = self.sweep._http.request("GET", f"{self.sweep._path}/points/{self.index}/trajectory",
                                            accept=f"{NPZ}, {JSON};q=0.5")
        return select_arrays(load_arrays(response), fields, every)

    def _attrs(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep.id, "point": self.index}


class Sweep:
    """One parameter sweep of the service; members mirror ``GET /v1/sweeps/{id}`` as last read."""

    def __init__(self, http: Http, document: Mapping[str, Any]) -> None:
        self._http = http
        self.document: dict[str, Any] = dict(document)

    @property
    def id(self) -> str:
        return str(self.document["id"])

    @property
    def status(self) -> str:
        return str(self.document["status"])

    @property
    def progress(self) -> float:
        return float(self.document.get("progress") or 0.0)

    @property
    def size(self) -> int:
        """The number of points."""
        return int(self.document.get("size") or 0)

    @property
    def counts(self) -> dict[str, int]:
        """Points per status."""
        return dict(self.document.get("counts") or {})

    @property
    def request(self) -> dict[str, Any]:
        return dict(self.document.get("request") or {})

    @property
    def error(self) -> ProblemError | None:
        problem = self.document.get("error")
        return ProblemError(problem) if problem else None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def __repr__(self) -> str:
        return f"<Sweep {self.id}: {self.status}, {self.size} points>"

    @property
    def _path(self) -> str:
        return f"/v1/sweeps/{self.id}"

    def _update(self, response: httpx.Response) -> float | None:
        self.document = response.json()
        return parse_retry_after(response.headers.get("retry-after"))

    def refresh(self) -> Sweep:
        self._update(self._http.request("GET", self._path))
        return self

    def wait(self, timeout: float | None = None, progress: bool = False) -> Sweep:
        """Poll until every point has finished, with a progress bar when ``progress`` (and tqdm)."""
        with _wait.ProgressBar(progress and not self.done, f"sweep {self.id[:8]}") as bar:
            _wait.poll(lambda: self._update(self._http.request("GET", self._path)), lambda: self.done, timeout,
                       f"sweep {self.id}", lambda: bar.update(self.progress, self.status))
        return self

    def cancel(self) -> Sweep:
        self._update(self._http.request("POST", f"{self._path}/cancel"))
        return self

    def delete(self) -> None:
        self._http.request("DELETE", self._path)

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        """The results rows as the service sends them (all pages), in point order."""
        rows: list[dict[str, Any]] = []
        token = None
        while True:
            page = self._http.json("GET", f"{self._path}/results",
                                   params={"status": status, "page_size": 1000, "page_token": token})
            rows.extend(page["items"])
            token = page.get("next_page_token")
            if not token:
                return rows

    def results(self, status: str | None = None) -> pd.DataFrame:
        """One row per point, indexed by ``point``, flat columns: each swept parameter by its path
        (``init.scale``), each scalar result, per-mode vectors as ``learning_time_1 … learning_time_k``, and
        ``error_type``/``error_detail`` for failed points: the service's CSV (``Accept: text/csv``; its layout is
        the service's), typed. Needs pandas (``pip install './client[pandas]'``)."""
        response = self._http.request("GET", f"{self._path}/results", accept=CSV, params={"status": status})
        return sweep_frame(response.text)

    def point(self, k: int) -> SweepPoint:
        """Point k (its row in ``results()``)."""
        return SweepPoint(self, k)

    def plot(self, kind: str = "learning_time", **params: Any) -> Figure:
        """The service's figure of the results: ``learning_time`` or ``final_loss`` against a swept parameter
        (``x="init.scale"``)."""
        response = self._http.request("GET", f"{self._path}/plot.svg", accept=SVG, params={"kind": kind, **params})
        return Figure(response.text, f"{kind} of sweep {self.id}")

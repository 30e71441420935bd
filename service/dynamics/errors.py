"""One exception family for the numerical core.

Every error carries the path of the offending input field (as the HTTP layer names it, e.g.
``("data", "sigma11")``) and a sentence saying how to fix it, so that callers can map it to an
RFC 9457 problem without parsing messages.
"""

from __future__ import annotations

FieldPath = tuple[str | int, ...]


class DynamicsError(ValueError):
    """Base class: a request the core cannot honour as given."""

    code = "invalid"

    def __init__(self, message: str, *, field: FieldPath = (), fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = tuple(field)
        self.fix = fix

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.field)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text} ({self.fix})" if self.fix else text


class ShapeError(DynamicsError):
    """Matrix shapes that disagree with each other or with the network."""

    code = "shape"


class NonFiniteError(DynamicsError):
    """NaN or infinite entries in an input."""

    code = "non_finite"


class NotSymmetricError(DynamicsError):
    """A covariance (Σ11 or Σ33) that is not symmetric within tolerance."""

    code = "not_symmetric"


class NotPositiveSemidefiniteError(DynamicsError):
    """A covariance with an eigenvalue below −tolerance."""

    code = "not_psd"


class InvalidParameterError(DynamicsError):
    """A scalar setting out of its domain (rate ≤ 0, width < 1, N < 1, ...)."""

    code = "invalid_parameter"


class ExactNotApplicableError(DynamicsError):
    """The ``exact`` method was asked for where no closed form holds; the message names the condition."""

    code = "exact_not_applicable"


class WorkLimitError(DynamicsError):
    """A run that needs more steps than its cap allows (e.g. gradient flow on a stiff problem over a long
    t_max: an explicit integrator's step is bounded by 1/λ_max of the Hessian whatever the accuracy)."""

    code = "limit_exceeded"


class StopRequested(Exception):
    """Raised inside a run when the caller's cooperative stop check returned True.

    ``partial``: the records the run had made by then (a ``methods.RunResult`` with outcome "stopped"), where the
    stepping method keeps them; ``trajectory``: those records made into a ``Trajectory`` (set by
    ``simulate.simulate``), so that a cancelled run keeps its curve so far.
    """

    def __init__(self, message: str = "stop requested", *, partial=None, trajectory=None) -> None:
        super().__init__(message)
        self.partial = partial
        self.trajectory = trajectory

"""The HTTP contract, one module per resource (re-exported here):

    common       strict models, matrices, nullable numbers
    requests     SimulationRequest: data, network, init, training, record
    simulation   the Simulation resource and its list
    trajectory   the Trajectory document (its field table: which arrays, dims, descriptions)
    sweeps       SweepRequest, the Sweep resource, its points' results
    gradients    POST /v1/gradients
    presets      GET /v1/presets
    problems     RFC 9457 problem details
    health       /healthz, /readyz
"""

from service.status import Status

from .common import MAX_SEED, STRICT, Matrix, Num, NumMatrix, Provenance, StrictModel
from .gradients import (
    GRADIENTS_EXAMPLE,
    GRADIENTS_EXAMPLES,
    Gradients,
    GradientsRequest,
)
from .health import Health, Readiness, ServiceInfo
from .presets import PresetDetail, PresetInfo, PresetList, PresetParameter
from .problems import FieldError, ProblemDetails
from .requests import (
    CORRELATIONS_EXAMPLE,
    DATASET_EXAMPLE,
    GD_HIERARCHY_EXAMPLE,
    PRESET_MODELS,
    REQUEST_EXAMPLES,
    SAXE_HIERARCHY_EXAMPLE,
    SEQUENCE_EXAMPLE,
    SGD_EXAMPLE,
    SHARPNESS_EXAMPLE,
    AlignedInit,
    BalancedInit,
    CorrelationsData,
    Data,
    DatasetData,
    ExactTraining,
    FromSimulationInit,
    GaussianInit,
    GivenInit,
    GradientDescentTraining,
    GradientFlowTraining,
    HeldOutCorrelations,
    HeldOutData,
    HeldOutDataset,
    Init,
    LambdaBalancedInit,
    Network,
    OrthogonalInit,
    Record,
    SequenceData,
    SequencePhase,
    SimulationRequest,
    StochasticGradientDescentTraining,
    TaskData,
    Training,
    strip_union_tags,
)
from .simulation import Simulation, SimulationLinks, SimulationList
from .sweeps import (
    SWEEP_EXAMPLE,
    SWEEP_POINTS_EXAMPLE,
    SWEEP_REQUEST_EXAMPLES,
    ParamPath,
    Sweep,
    SweepCounts,
    SweepKeep,
    SweepLinks,
    SweepList,
    SweepPointLinks,
    SweepPointResult,
    SweepRequest,
    SweepResults,
)
from .trajectory import (
    EarlyStoppingReport,
    KernelReport,
    LossTheoryReport,
    Modes,
    OptimumReport,
    Trajectory,
)

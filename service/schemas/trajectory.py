"""The Trajectory document: what a run recorded (documented here; served from the stored arrays by ``service.codec``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.dynamics.methods import Outcome

from .common import Num, NumMatrix


class Modes(BaseModel):
    """Mode strengths u_α(t) = u_αᵀ W(t) v_α on Σ31 = U S Vᵀ, with the analytic prediction where one exists."""

    singular_values: list[Num]
    strength: list[list[Num]] = Field(description="Per record time, per mode.")
    theory: list[list[Num]] | None = Field(None, description="Prediction at the same times, null without a formula.")
    theory_model: str | None = None
    theory_exact: bool = False
    theory_assumptions: str | None = None
    learning_time: list[Num] = Field(description="Time a mode first reaches half its final strength (null: never).")
    learning_time_theory: list[Num] | None = None


class OptimumReport(BaseModel):
    """The best network map for the network's rank r (reduced-rank regression)."""

    product: NumMatrix
    loss: Num = None
    loss_without_sigma33: Num
    rank: int


class EarlyStoppingReport(BaseModel):
    """Where to stop: the record with the smallest test loss."""

    time: Num = Field(description="t of that record (t = η·step for GD).")
    step: int | None = Field(None, description="Its GD step (null for flow and exact).")
    test_loss: Num = Field(description="The smallest recorded test loss.")


class LossTheoryReport(BaseModel):
    """Train and test loss predicted from the mode theory (modes.theory): W(t) = Σ_α u_α(t) û_α v̂_αᵀ on the
    training SVD with Σ11 = c·I (Lampinen & Ganguli 2019). Offered where a mode theory applies with Σ11 ≈ c·I."""

    loss: list[Num] | None = Field(None, description="Predicted L at each time; null when Σ33 is unknown.")
    test_loss: list[Num] | None = Field(None, description="Predicted L_test at each time; null without test data.")
    model: str = Field(description="The model's name (modes_generalization).")
    exact: bool = Field(description="Whether its assumptions hold exactly (an exact mode theory, Σ11 = c·I, an "
                                    "init in the span of the mode pairs) or only approximately.")
    assumptions: str


class KernelReport(BaseModel):
    """The neural tangent kernel on the input basis, held by the hidden layers' Grams: with P_0 = I_in, Q_D = I_out,
    K = Σ_(l=1..D) Q_l ⊗ P_(l−1), (n_out·n_in)², row i·n_in + a ↔ output i of input e_a; Θ(x, x') =
    Σ_l (xᵀP_(l−1)x') Q_l. Two layers: K = W32W32ᵀ ⊗ I_in + I_out ⊗ W21ᵀW21."""

    input_grams: list[list[NumMatrix]] = Field(
        description="Per time, per hidden layer h = 1 … D−1: P_h = (W_h⋯W_1)ᵀ(W_h⋯W_1), n_in × n_in (P_1 = W21ᵀW21).")
    output_grams: list[list[NumMatrix]] = Field(
        description="Per time, per hidden layer h = 1 … D−1: Q_h = (W_D⋯W_(h+1))(W_D⋯W_(h+1))ᵀ, n_out × n_out "
                    "(two layers: Q_1 = W32W32ᵀ).")


class Trajectory(BaseModel):
    """The recorded run. Times are t = η·step for GD."""

    time: list[Num]
    step: list[int] | None = None
    loss: list[Num] | None = Field(None, description="L at each time; null when Σ33 is unknown.")
    excess_loss: list[Num] = Field(description="L − L*, always computable.")
    product: list[NumMatrix] = Field(description="W = W_D⋯W_1 at each time (n_out × n_in).")
    weights: list[list[NumMatrix]] | None = Field(None, description="Per time, per layer (input→output).")
    modes: Modes
    balance_drift: list[Num]
    gradient_norm: list[Num]
    distance_to_optimum: list[Num]
    outcome: Outcome
    diverged_at_step: int | None = None
    optimum: OptimumReport
    method: str
    stability_hint: str | None = None
    test_loss: list[Num] | None = Field(
        None, description="L_test at each time: tr Σ33ᵗ − 2 tr(W Σ31ᵗᵀ) + tr(W Σ11ᵗ Wᵀ), the MSE of the recorded "
                          "network map on data.test (no ½); null without test data.")
    early_stopping: EarlyStoppingReport | None = Field(
        None, description="The record of least test loss (the first, if tied); null without test data.")
    loss_theory: LossTheoryReport | None = None
    kernel: KernelReport | None = Field(None, description="The NTK's Grams per record; null unless record.kernel.")
    kernel_distance: list[Num] | None = Field(
        None, description="1 − ⟨K(0), K(t)⟩_F/(‖K(0)‖_F ‖K(t)‖_F) at each time: 0 while the kernel keeps its "
                          "direction (lazy), towards 1 as it is rebuilt (rich); null unless record.kernel.")
    similarity: list[NumMatrix] | None = Field(
        None, description="Per time, the hidden-layer item similarity RSM = W21ᵀW21 (n_in × n_in: "
                          "RSM_ij = h_i·h_j with h_i = W21 e_i the hidden representation of input basis vector "
                          "(one-hot item) i; Neuromatch's net_rsm). Null unless record.similarity.")

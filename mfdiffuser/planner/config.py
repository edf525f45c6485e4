"""Configuration of the MF-Diffuser planner (METHOD.md §1–§5): one object, validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PlannerConfig(BaseModel):
    """Every knob of the planner. Dimensions of the game (d_s, A, C) are not here: they come from
    the game itself, so one config serves every benchmark."""

    model_config = ConfigDict(extra="forbid")

    # §1 trajectory windows and particle sets
    window: int = Field(4, ge=1, description="H: planning window, number of steps per particle.")
    n_particles: int = Field(32, ge=1, description="M: particles per training sample.")
    max_particles: int = Field(
        64, ge=1, description="M_max: particle cap when acting; M = min(N, M_max)."
    )

    # §2 denoiser
    diffusion_steps: int = Field(20, ge=2, description="K: number of denoising steps.")
    hidden: int = Field(64, ge=1, description="Channels of the per-particle temporal trunk.")
    n_blocks: int = Field(2, ge=1, description="Residual temporal blocks (one interaction each).")
    kernel_size: int = Field(3, ge=1, description="Temporal convolution kernel (odd, 'same').")
    interaction: bool = Field(
        True,
        description="Mean-field pooling after every block. False = per-agent Diffuser ablation.",
    )
    clip_denoised: bool = Field(
        True,
        description="Clip the clean estimate x̂_0 to [-1, 1] while sampling (features and "
        "one-hot actions are scaled to that box).",
    )

    # §3 value-weighted objective (slot: beta = 0 is unweighted trajectory modelling)
    beta: float = Field(0.0, ge=0.0, description="β: inverse temperature of the advantage tilt.")
    weight_clip: float = Field(20.0, gt=0.0, description="w_max: clip of normalised weights.")

    # §5 acting
    smoothing: float = Field(
        0.1, ge=0.0, description="Additive smoothing of per-state first-action counts."
    )
    draws: int = Field(4, ge=1, description="Seeded draws averaged into the expected policy table.")

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        # An odd kernel with padding k // 2 keeps the window length H unchanged.
        if value % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {value}")
        return value

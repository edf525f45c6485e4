"""Configuration of the MF-Diffuser planner (METHOD.md §1–§5): one object, validated."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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

    # §4 hierarchical coarse-to-fine denoising
    stages: int = Field(
        1,
        ge=1,
        description="L: denoising stages with growing particle counts; 1 = the flat sampler.",
    )
    growth: int = Field(
        4,
        ge=2,
        description="b: particle growth per stage, M_l = ceil(M_L / b^(L-l)) (at least 1).",
    )
    stage_steps: list[int] | None = Field(
        None,
        description="K_l: denoising steps per stage (coarsest first), summing to diffusion_steps. "
        "None = the K steps apportioned ∝ 2^(L-l) (a halving geometric series, coarse stages "
        "get more: L = 3, K = 20 gives [11, 6, 3]), largest remainder, at least 1 per stage.",
    )

    # §3 value-weighted objective (slot: beta = 0 is unweighted trajectory modelling)
    beta: float = Field(0.0, ge=0.0, description="β: inverse temperature of the advantage tilt.")
    weight_clip: float = Field(20.0, gt=0.0, description="w_max: clip of normalised weights.")

    # §5 acting
    smoothing: float = Field(
        0.1, ge=0.0, description="Additive smoothing of per-state first-action counts."
    )
    draws: int = Field(4, ge=1, description="Seeded draws averaged into the expected policy table.")

    @model_validator(mode="after")
    def _check_stages(self) -> Self:
        if self.stages > self.diffusion_steps:
            raise ValueError(
                f"stages ({self.stages}) must be <= diffusion_steps ({self.diffusion_steps}): "
                "every stage needs at least one denoising step"
            )
        if self.stage_steps is not None:
            steps = self.stage_steps
            if len(steps) != self.stages:
                raise ValueError(
                    f"stage_steps must have one entry per stage (stages={self.stages}), "
                    f"got {len(steps)}: {steps}"
                )
            if any(k < 1 for k in steps):
                raise ValueError(f"stage_steps entries must be >= 1, got {steps}")
            if sum(steps) != self.diffusion_steps:
                raise ValueError(
                    f"stage_steps must sum to diffusion_steps ({self.diffusion_steps}), "
                    f"got sum({steps}) = {sum(steps)}"
                )
        return self

    def resolved_stage_steps(self) -> list[int]:
        """K_l per stage, coarsest first: `stage_steps`, or the default documented there."""
        if self.stage_steps is not None:
            return list(self.stage_steps)
        n, k = self.stages, self.diffusion_steps
        # One step per stage first, the rest ∝ 2^(L-l) by largest remainder (ties to coarse).
        weights = [2.0 ** (n - 1 - i) for i in range(n)]
        quota = [(k - n) * w / sum(weights) for w in weights]
        steps = [1 + int(q) for q in quota]
        order = sorted(range(n), key=lambda i: (-(quota[i] - int(quota[i])), i))
        for i in order[: k - sum(steps)]:
            steps[i] += 1
        return steps

    def stage_particles(self, m_final: int) -> list[int]:
        """M_l = max(1, ceil(M_L / b^(L-l))) for l = 1..L, ending at M_L = m_final.

        Non-decreasing; strictly increasing unless M_L is small (then some are equal, and the
        sampler merges stages of equal count, see `MFDiffuser.plan_stages`).
        """
        if m_final < 1:
            raise ValueError(f"m_final must be >= 1, got {m_final}")
        n, b = self.stages, self.growth
        # Integer ceil division: exact for any size (no float rounding).
        return [max(1, -(-m_final // b ** (n - 1 - i))) for i in range(n)]

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        # An odd kernel with padding k // 2 keeps the window length H unchanged.
        if value % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {value}")
        return value

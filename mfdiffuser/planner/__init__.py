"""MF-Diffuser planner: mean-field denoiser, particle-set diffusion and acting (METHOD.md §1–§5)."""

from mfdiffuser.planner.acting import FiniteGame, FiniteStatePlannerPolicy, allocate
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.denoiser import MeanFieldDenoiser
from mfdiffuser.planner.diffusion import (
    MFDiffuser,
    NoiseSchedule,
    decode_actions,
    encode_actions,
    value_weights,
)

__all__ = [
    "FiniteGame",
    "FiniteStatePlannerPolicy",
    "MFDiffuser",
    "MeanFieldDenoiser",
    "NoiseSchedule",
    "PlannerConfig",
    "allocate",
    "decode_actions",
    "encode_actions",
    "value_weights",
]

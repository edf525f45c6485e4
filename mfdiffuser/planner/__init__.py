"""MF-Diffuser planner: denoiser, objective, sampler and acting, tied together by `MFDiffuser`.

Names are loaded on first use, so that reading a config (`planner.config`, pure pydantic) does
not import torch: the CLI validates input before paying for heavy imports.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FiniteGame": "acting",
    "FiniteStatePlannerPolicy": "acting",
    "MatchingPlannerPolicy": "acting",
    "PlannerPolicy": "acting",
    "balanced_assignment": "acting",
    "allocate": "acting",
    "PlannerConfig": "config",
    "MeanFieldDenoiser": "denoiser",
    "InverseDynamics": "denoiser",
    "MFDiffuser": "diffusion",
    "DenoisingObjective": "objective",
    "decode_actions": "objective",
    "encode_actions": "objective",
    "value_weights": "objective",
    "DDIMScheduler": "sampling",
    "DDPMScheduler": "sampling",
    "NoiseSchedule": "sampling",
    "Sampler": "sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""MF-Diffuser's training batches (`to_batch`), and its bare-planner entry to the one loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mfdiffuser.data.windows import WindowSampler
from mfdiffuser.planner.diffusion import MFDiffuser, returns_to_go


def to_batch(
    raw: dict[str, np.ndarray],
    device: torch.device | str,
    beta: float = 0.0,
    weight_clip: float = 20.0,
    returns: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors x, ctx (and valid[B, H] when the raw batch has it) for `MFDiffuser.loss`, plus
    §3 weights[B, M] when the raw batch has
    advantages[B, M] and beta > 0 (beta == 0 adds no weights: exactly the unweighted loss).

    returns[E, T]: normalised population returns-to-go of the sampler's episodes; with it the
    batch gets ret[B] = returns[episode, t0] for classifier-free return guidance."""
    batch: dict[str, torch.Tensor] = {
        k: torch.as_tensor(raw[k], device=device) for k in ("x", "ctx", "valid") if k in raw
    }
    if returns is not None:
        ret = np.asarray(returns)[np.asarray(raw["episode"]), np.asarray(raw["t0"])]
        batch["ret"] = torch.as_tensor(ret, dtype=torch.float32, device=device)
    if beta > 0.0 and "advantages" in raw:
        from mfdiffuser.planner.diffusion import value_weights

        advantages = torch.as_tensor(raw["advantages"], device=device)
        batch["weights"] = value_weights(advantages, beta, weight_clip)
    return batch


def train_epochs(planner: MFDiffuser, sampler: WindowSampler, **kwargs: Any) -> None:
    """Fit a bare planner on `sampler` with the platform's one loop (for code that uses the
    planner without a config, e.g. tests and benchmarks); keyword arguments as
    `mfdiffuser.methods.training.train_epochs`. With return guidance the return normaliser is
    fitted on the sampler's episodes unless the planner already has one."""
    from mfdiffuser.methods.mf_diffuser import MFDiffuserMethod
    from mfdiffuser.methods.training import train_epochs as fit

    method = MFDiffuserMethod.of(planner)
    if planner.cfg.return_guidance:
        rtg = returns_to_go(sampler.arrays.rewards)  # [E, T] of these episodes
        if planner.return_stats is None:
            planner.set_return_stats(rtg)
        method.returns = planner.normalise_returns(rtg)
    fit(method, sampler, **kwargs)

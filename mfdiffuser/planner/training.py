"""The training loop as a plain function: Ray Train calls it per worker, tests call it directly.

Ray appears only at the edges (`mfdiffuser.workers.trainer`): the DDP-wrapped model is passed in
as `model`, and `on_epoch` is where a worker reports and checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mfdiffuser.data.windows import WindowSampler
from mfdiffuser.planner.diffusion import MFDiffuser

EpochCallback = Callable[[int, dict[str, float], torch.optim.Optimizer], None]


def to_batch(
    raw: dict[str, np.ndarray],
    device: torch.device | str,
    beta: float = 0.0,
    weight_clip: float = 20.0,
) -> dict[str, torch.Tensor]:
    """Tensors x, ctx for `MFDiffuser.loss`, plus §3 weights[B, M] when the raw batch has
    advantages[B, M] and beta > 0 (beta == 0 adds no weights: exactly the unweighted loss)."""
    batch = {k: torch.as_tensor(raw[k], device=device) for k in ("x", "ctx")}
    if beta > 0.0 and "advantages" in raw:
        from mfdiffuser.planner.diffusion import value_weights

        advantages = torch.as_tensor(raw["advantages"], device=device)
        batch["weights"] = value_weights(advantages, beta, weight_clip)
    return batch


def train_epochs(
    planner: MFDiffuser,
    sampler: WindowSampler,
    *,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    lr: float,
    on_epoch: EpochCallback,
    model: nn.Module | None = None,
    optimizer_state: dict[str, Any] | None = None,
    start_epoch: int = 0,
    device: torch.device | str = "cpu",
    reduce_mean: Callable[[float], float] = lambda x: x,
) -> None:
    """Fit `planner` on windows from `sampler`; `reduce_mean` averages a metric across ranks."""
    model = model if model is not None else planner.model
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    model.train()
    for epoch in range(start_epoch, epochs):
        losses, unweighted, weight_max = [], [], 0.0
        for _ in range(steps_per_epoch):
            batch = to_batch(
                sampler.sample(batch_size),
                device,
                beta=planner.cfg.beta,
                weight_clip=planner.cfg.weight_clip,
            )
            loss, info = planner.loss(batch, model=model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            unweighted.append(info.get("loss_unweighted", losses[-1]))
            weight_max = max(weight_max, info.get("weight_max", 1.0))
        metrics = {
            "train/loss": reduce_mean(float(np.mean(losses))),
            "train/loss_last": reduce_mean(float(np.mean(losses[-max(1, len(losses) // 10) :]))),
            "train/loss_unweighted": reduce_mean(float(np.mean(unweighted))),
            # The largest value weight seen (1.0 when beta = 0; at most planner.weight_clip).
            "train/weight_max": weight_max,
            "train/epoch": float(epoch + 1),
        }
        on_epoch(epoch, metrics, optimizer)

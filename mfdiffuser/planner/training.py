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
from mfdiffuser.planner.diffusion import MFDiffuser, returns_to_go

EpochCallback = Callable[[int, dict[str, float], torch.optim.Optimizer], None]


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
    """Fit `planner` on windows from `sampler`; `reduce_mean` averages a metric across ranks.

    `model` (e.g. a DDP wrapper) must wrap `planner.train_module()`. With return guidance the
    return normaliser is fitted on the sampler's episodes unless the planner already has one
    (a distributed trainer fits it on the whole dataset first). With ema_decay > 0 the EMA
    weights are updated after every optimizer step.
    """
    model = model if model is not None else planner.train_module()
    returns = None
    if planner.cfg.return_guidance:
        rtg = returns_to_go(sampler.arrays.rewards)  # [E, T] of this worker's episodes
        if planner.return_stats is None:
            planner.set_return_stats(rtg)
        returns = planner.normalise_returns(rtg)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    model.train()
    for epoch in range(start_epoch, epochs):
        losses, unweighted, inverse, weight_max = [], [], [], 0.0
        for _ in range(steps_per_epoch):
            batch = to_batch(
                sampler.sample(batch_size),
                device,
                beta=planner.cfg.beta,
                weight_clip=planner.cfg.weight_clip,
                returns=returns,
            )
            loss, info = planner.loss(batch, model=model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            planner.update_ema()
            losses.append(float(loss.detach()))
            unweighted.append(info.get("loss_unweighted", losses[-1]))
            weight_max = max(weight_max, info.get("weight_max", 1.0))
            if "loss_inverse" in info:
                inverse.append(info["loss_inverse"])
        metrics = {
            "train/loss": reduce_mean(float(np.mean(losses))),
            "train/loss_last": reduce_mean(float(np.mean(losses[-max(1, len(losses) // 10) :]))),
            "train/loss_unweighted": reduce_mean(float(np.mean(unweighted))),
            # The largest value weight seen (1.0 when beta = 0; at most planner.weight_clip).
            "train/weight_max": weight_max,
            "train/epoch": float(epoch + 1),
        }
        if inverse:  # cross-entropy of the inverse-dynamics head (part of train/loss)
            metrics["train/loss_inverse"] = reduce_mean(float(np.mean(inverse)))
        on_epoch(epoch, metrics, optimizer)

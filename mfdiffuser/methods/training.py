"""The one training loop of every trained method, as a plain function.

Ray Train calls it per worker (`mfdiffuser.workers.trainer`), tests call it directly. Ray appears
only at the edges: the DDP-wrapped module comes in as `model`, and `on_epoch` is where a worker
reports and checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mfdiffuser.methods.base import Batches, TrainedMethod

EpochCallback = Callable[[int, dict[str, float], torch.optim.Optimizer], None]
LR_SCHEDULES = ("constant", "cosine")


def learning_rate(step: int, total: int, lr: float, schedule: str, lr_min: float = 0.0) -> float:
    """The rate of global step `step` (0-based) of `total`: `lr` (constant), or half a cosine
    from `lr` at step 0 toward `lr_min` at step `total` (cosine)."""
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"lr_schedule = {schedule!r}; allowed: {', '.join(LR_SCHEDULES)}")
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def train_epochs(
    method: TrainedMethod,
    batches: Batches,
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
    lr_schedule: str = "constant",
    lr_min: float = 0.0,
) -> None:
    """Fit `method` with Adam on batches; `reduce_mean` averages a figure across ranks.

    `model` (e.g. a DDP wrapper) must wrap `method.train_module()`. Per epoch `on_epoch` gets
    train/loss (mean), train/loss_last (mean of the last tenth of the steps), train/epoch,
    train/lr (the rate of the epoch's last step) and the method's own figures as train/<name>
    (averaged; names ending in _max: the maximum). The rate of each step is
    `learning_rate(step, ...)` of its global step (`lr_schedule`), so a fit resumed at
    `start_epoch` continues on the same curve.
    """
    model = model if model is not None else method.train_module()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    model.train()
    total = epochs * steps_per_epoch
    rate = lr
    for epoch in range(start_epoch, epochs):
        losses: list[float] = []
        figures: dict[str, list[float]] = {}
        for step in range(steps_per_epoch):
            rate = learning_rate(epoch * steps_per_epoch + step, total, lr, lr_schedule, lr_min)
            for group in optimizer.param_groups:
                group["lr"] = rate
            batch = method.to_batch(batches.sample(batch_size), device)
            loss, info = method.loss(batch, model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.after_step()
            losses.append(float(loss.detach()))
            for name, value in info.items():
                figures.setdefault(name, []).append(float(value))
        metrics = {
            "train/loss": reduce_mean(float(np.mean(losses))),
            "train/loss_last": reduce_mean(float(np.mean(losses[-max(1, len(losses) // 10) :]))),
            "train/epoch": float(epoch + 1),
            "train/lr": rate,
        }
        for name, values in figures.items():
            # a maximum is this rank's (ranks see different batches; rank 0 logs)
            metrics[f"train/{name}"] = (
                max(values) if name.endswith("_max") else reduce_mean(float(np.mean(values)))
            )
        on_epoch(epoch, metrics, optimizer)

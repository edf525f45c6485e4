"""Behaviour cloning: a mean-field policy π(a | s, t, μ) fitted to the data's actions.

One MLP of (an agent's state features, the context c(t, μ_t)) gives the action logits; it is
trained with cross-entropy on the (state, context, action) of M agents of one episode and time
per sample (`WindowSampler` with window 1), so it learns the behaviour policy's action
frequencies in each (s, t, μ) it saw. It reproduces the data, good or bad: the reference point of
every offline method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mfdiffuser.baselines.baseline_params import NetworkParams
from mfdiffuser.methods.base import Batches, Dims, Policy, TrainedMethod

if TYPE_CHECKING:
    import torch
    from torch import nn


class Params(NetworkParams):
    """bc's parameters: the network and the agents per sample."""


class BehaviourCloning(TrainedMethod):
    params: Params

    def __init__(self, params: Params, dims: Dims) -> None:
        from mfdiffuser.baselines.networks import MeanFieldMLP, Networks

        super().__init__(params, dims)
        policy = MeanFieldMLP(dims, params.hidden, params.layers, dims.n_actions)
        self.nets = Networks({"policy": policy})

    def batches(self, arrays: Any, game: Any, seed: int) -> Batches:
        from mfdiffuser.data.windows import WindowSampler

        return WindowSampler(arrays, game, 1, self.params.n_particles, seed=seed)

    def train_module(self) -> nn.Module:
        return self.nets

    def to_batch(self, raw: dict[str, np.ndarray], device: Any) -> dict[str, Any]:
        from mfdiffuser.baselines.networks import state_batch

        return state_batch(raw, device, self.dims)

    def loss(self, batch: dict[str, Any], model: nn.Module) -> tuple[Any, dict[str, float]]:
        import torch

        logits = model(batch["feats"], batch["ctx"])["policy"]  # [B, M, A]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["actions"].flatten())
        return loss, {}

    def state_dict(self) -> dict[str, Any]:
        return {"nets": self.nets.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state["nets"])

    def to(self, device: torch.device | str) -> BehaviourCloning:
        self.nets.to(device)
        return self

    def policy(self, game: Any, prior: np.ndarray, seed: int) -> Policy:
        from mfdiffuser.baselines.networks import device_of, network_policy

        return network_policy(game, self.nets["policy"], device_of(self.nets))


def build(params: Params, dims: Dims) -> BehaviourCloning:
    return BehaviourCloning(params, dims)

"""What the two mean-field Q-learning baselines (`mf_iql`, `mf_cql`) share.

Twin critics Q1, Q2(s, a, t, μ) (one output per action) with target copies that follow them by
Polyak averaging, learned from mean-field transitions (s, a, r, s', c(t, μ_t), c(t + 1, μ_{t+1}),
done): `WindowSampler` windows of 2 steps give s' (the window's second state) and, with
`next_context`, the context of the next epoch. There is no reward after the last epoch, so there
a target is r alone (done = 1). On a team game (`TeamWindowSampler`) done is per agent: also 1
at an agent's last living step.

Values are learned in units of `value_scale`, the data's largest |population return-to-go|
divided by the horizon (a typical reward per step), so the methods' parameters (awr_beta,
cql_alpha, temperature) mean about the same on every benchmark; `q_values` (and mf_iql's
`v_values`) give them back in reward units. On a team game no return statistics are gathered
(`prepare` is not called), so there value_scale is 1: rewards per step are already O(0.1..5).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from mfdiffuser.baselines.baseline_params import QParams
from mfdiffuser.methods.base import Batches, DataStats, Dims, TrainedMethod

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class QLearning(TrainedMethod):
    """Twin critics, their targets and the transition batches; a subclass adds its networks
    (`extra`: name -> outputs per state), its loss and its policy."""

    params: QParams

    def __init__(self, params: QParams, dims: Dims, extra: dict[str, int]) -> None:
        from mfdiffuser.baselines.networks import MeanFieldMLP, Networks

        super().__init__(params, dims)
        outputs = {"q1": dims.n_actions, "q2": dims.n_actions, **extra}
        self.nets = Networks(
            {k: MeanFieldMLP(dims, params.hidden, params.layers, n) for k, n in outputs.items()}
        )
        self.targets = Networks({k: copy.deepcopy(self.nets[k]) for k in ("q1", "q2")})
        self.targets.requires_grad_(False)
        self.value_scale = 1.0

    def prepare(self, stats: DataStats) -> None:
        largest = float(np.abs(stats.returns_to_go).max()) / self.dims.horizon
        self.value_scale = largest if largest > 0 else 1.0

    def batches(self, arrays: Any, game: Any, seed: int) -> Batches:
        from mfdiffuser.data.windows import WindowSampler

        # Two steps give s'; an episode of one step has no s' (every sample is done).
        window = min(2, arrays.horizon)
        return WindowSampler(
            arrays, game, window, self.params.n_particles, seed=seed, next_context=True
        )

    def train_module(self) -> nn.Module:
        return self.nets  # the targets have no gradient: not optimised, not in DDP

    def to_batch(self, raw: dict[str, np.ndarray], device: Any) -> dict[str, Any]:
        import torch

        from mfdiffuser.baselines.networks import state_batch

        batch = state_batch(raw, device, self.dims)
        batch["next_feats"] = torch.as_tensor(
            raw["x"][:, :, -1, : self.dims.feature_dim], device=device
        )
        batch["ctx_next"] = torch.as_tensor(raw["ctx_next"], device=device)
        batch["rewards"] = torch.as_tensor(
            raw["rewards"][:, :, 0] / self.value_scale, device=device
        )
        # done[B] (a crowd: every agent of a sample) or done[B, M] (a team game: per agent)
        done = raw["done"].reshape(len(raw["done"]), -1)
        batch["not_done"] = torch.as_tensor(1.0 - done, device=device)  # [B, 1] or [B, M]
        return batch

    def target_q(self, feats: Tensor, ctx: Tensor) -> Tensor:
        """min(Q1, Q2) of the target critics: [B, M, A] (scaled units)."""
        import torch

        out = self.targets(feats, ctx)
        return torch.minimum(out["q1"], out["q2"])

    def td_loss(self, out: dict[str, Tensor], batch: dict[str, Any], next_value: Tensor) -> Tensor:
        """Squared TD errors of both critics at the data's actions, target r + γ V(s')."""
        target = batch["rewards"] + self.params.discount * batch["not_done"] * next_value
        a = batch["actions"][..., None]
        q1, q2 = (out[q].gather(-1, a)[..., 0] for q in ("q1", "q2"))
        return ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()

    def after_step(self) -> None:
        import torch

        with torch.no_grad():
            for name, target in self.targets.items():
                for t, s in zip(target.parameters(), self.nets[name].parameters(), strict=True):
                    t.lerp_(s, self.params.polyak)

    def q_values(self, feats: Tensor, ctx: Tensor) -> Tensor:
        """min(Q1, Q2)(s, ·, t, μ) of the trained critics in reward units: [B, M, A]."""
        import torch

        with torch.no_grad():
            out = self.nets(feats, ctx)
        return torch.minimum(out["q1"], out["q2"]) * self.value_scale

    def state_dict(self) -> dict[str, Any]:
        import torch

        return {
            "nets": self.nets.state_dict(),
            "targets": self.targets.state_dict(),
            "value_scale": torch.tensor(self.value_scale, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state["nets"])
        self.targets.load_state_dict(state["targets"])
        self.value_scale = float(state["value_scale"])

    def to(self, device: torch.device | str) -> QLearning:
        self.nets.to(device)
        self.targets.to(device)
        return self

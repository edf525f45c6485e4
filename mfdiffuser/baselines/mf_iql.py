"""Implicit Q-Learning (Kostrikov et al., 2022) on mean-field transitions.

Every network sees (an agent's state, the context c(t, μ_t)):
- V(s, t, μ) by expectile regression on the target critics at the data's actions: the loss
  |τ − 1(u < 0)|·u², u = min Q_target(s, a) − V(s), so for τ > 1/2 V leans toward the better
  actions the data took, without ever evaluating an action the data did not take;
- Q1, Q2(s, a, t, μ) toward r + γ·V(s', t + 1, μ_{t+1}) (r alone after the last epoch);
- the policy by advantage-weighted regression: cross-entropy on the data's actions weighted by
  exp(β·(Q − V)), clipped at awr_clip.
It acts with that extracted policy (never argmax Q), so it stays on the data's actions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from mfdiffuser.baselines.baseline_params import QParams
from mfdiffuser.baselines.q_learning import QLearning
from mfdiffuser.methods.base import Dims, Policy

if TYPE_CHECKING:
    from torch import Tensor, nn


class Params(QParams):
    """mf_iql's parameters."""

    expectile: float = Field(
        0.7,
        ge=0.5,
        lt=1.0,
        description="τ of V's expectile regression, [0.5, 1); 0.5 = the data policy's mean "
        "value, toward 1 = the best action the data took.",
    )
    awr_beta: float = Field(
        1.0,
        ge=0.0,
        le=1000.0,
        description="β: inverse temperature of the policy's weights exp(β·(Q − V)) (advantages "
        "in value-scale units), 0..1000; 0 = behaviour cloning. The weights improve on the data "
        "against the data's own mean field, a step toward its best response, which in a game "
        "overshoots the equilibrium: on left_right expert data (left 0.658 of the time, the "
        "equilibrium 2/3) the exact Q(L) − Q(R) is 0.07 value-scale units, and β = 3 tilts "
        "the policy to 0.71 left (exploitability 0.083), β = 1 to 0.67 (0.010).",
    )
    awr_clip: float = Field(
        100.0, gt=0.0, le=1e6, description="Largest weight exp(β·(Q − V)), (0, 1e6]."
    )


class MeanFieldIQL(QLearning):
    params: Params

    def __init__(self, params: Params, dims: Dims) -> None:
        super().__init__(params, dims, extra={"v": 1, "policy": dims.n_actions})

    def loss(self, batch: dict[str, Any], model: nn.Module) -> tuple[Any, dict[str, float]]:
        import torch

        p, a = self.params, batch["actions"][..., None]
        out = model(batch["feats"], batch["ctx"])
        with torch.no_grad():
            q_data = self.target_q(batch["feats"], batch["ctx"]).gather(-1, a)[..., 0]  # [B, M]
            v_next = self.nets["v"](batch["next_feats"], batch["ctx_next"])[..., 0]
        v = out["v"][..., 0]
        u = q_data - v
        v_loss = (torch.abs(p.expectile - (u < 0).float()) * u**2).mean()
        q_loss = self.td_loss(out, batch, v_next)
        weights = torch.exp(p.awr_beta * u.detach()).clamp(max=p.awr_clip)
        log_pi = torch.log_softmax(out["policy"], dim=-1).gather(-1, a)[..., 0]
        policy_loss = -(weights * log_pi).mean()
        info = {
            "v_loss": float(v_loss.detach()),
            "q_loss": float(q_loss.detach()),
            "policy_loss": float(policy_loss.detach()),
            "awr_weight_max": float(weights.max()),
        }
        return v_loss + q_loss + policy_loss, info

    def v_values(self, feats: Tensor, ctx: Tensor) -> Tensor:
        """V(s, t, μ) in reward units: [B, M]."""
        import torch

        with torch.no_grad():
            return self.nets["v"](feats, ctx)[..., 0] * self.value_scale

    def policy(self, game: Any, prior: np.ndarray, seed: int) -> Policy:
        from mfdiffuser.baselines.networks import device_of, network_policy

        return network_policy(game, self.nets["policy"], device_of(self.nets))


def build(params: Params, dims: Dims) -> MeanFieldIQL:
    return MeanFieldIQL(params, dims)

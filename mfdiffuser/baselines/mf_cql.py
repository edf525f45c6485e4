"""Conservative Q-Learning (Kumar et al., 2020) on mean-field transitions, discrete actions.

Twin critics Q1, Q2(s, a, t, μ) (of an agent's state and the context c(t, μ_t)) learn the TD
target r + γ·max_a' min Q_target(s', a', t + 1, μ_{t+1}) (r alone after the last epoch), plus
the CQL penalty α·(logsumexp_a Q(s, a) − Q(s, a_data)): it pushes down the actions the data did
not take in a state and up the ones it did, so the max of the target cannot chase values the
data never backed. It acts with softmax(Q / temperature) of min(Q1, Q2).
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
    """mf_cql's parameters."""

    cql_alpha: float = Field(
        1.0,
        ge=0.0,
        le=1e6,
        description="α: weight of the conservative penalty, 0..1e6; 0 = plain double Q-learning.",
    )
    temperature: float = Field(
        0.1,
        gt=0.0,
        le=1e6,
        description="Acting: softmax(Q / temperature) (Q in value-scale units), (0, 1e6]; "
        "small = near greedy.",
    )


class MeanFieldCQL(QLearning):
    params: Params

    def __init__(self, params: Params, dims: Dims) -> None:
        super().__init__(params, dims, extra={})

    def loss(self, batch: dict[str, Any], model: nn.Module) -> tuple[Any, dict[str, float]]:
        import torch

        a = batch["actions"][..., None]
        out = model(batch["feats"], batch["ctx"])
        with torch.no_grad():
            next_value = self.target_q(batch["next_feats"], batch["ctx_next"]).amax(dim=-1)
        td = self.td_loss(out, batch, next_value)
        q1, q2 = (
            (torch.logsumexp(out[q], dim=-1) - out[q].gather(-1, a)[..., 0]).mean()
            for q in ("q1", "q2")
        )
        penalty = q1 + q2
        info = {"td_loss": float(td.detach()), "cql_penalty": float(penalty.detach())}
        return td + self.params.cql_alpha * penalty, info

    def policy(self, game: Any, prior: np.ndarray, seed: int) -> Policy:
        import torch

        from mfdiffuser.baselines.networks import device_of, network_policy

        def logits(feats: Tensor, ctx: Tensor) -> Tensor:
            out = self.nets(feats, ctx)
            return torch.minimum(out["q1"], out["q2"]) / self.params.temperature

        return network_policy(game, logits, device_of(self.nets))


def build(params: Params, dims: Dims) -> MeanFieldCQL:
    return MeanFieldCQL(params, dims)

"""What the mean-field baselines (`bc`, `mf_iql`, `mf_cql`) share: a network of one agent's state
and the population's context, f(s, c(t, μ)), and the policy such networks define.

Every network sees (per-agent state features, context c(t, μ_t)), so the policy it defines is a
mean-field policy π(a | s, t, μ): acting evaluates it once per (t, μ) on all S states
(`network_policy`), whatever N is.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mfdiffuser.envs.finite import FiniteMeanFieldGame
from mfdiffuser.methods.base import Dims
from mfdiffuser.methods.policies import ConditionalPolicy


class MeanFieldMLP(nn.Module):
    """f(s, t, μ) -> [out]: an MLP (`layers` hidden layers of width `hidden`, SiLU) on the state
    features ⊕ the context; the context is shared by every agent of a sample."""

    def __init__(self, dims: Dims, hidden: int, layers: int, out: int) -> None:
        super().__init__()
        widths = [dims.feature_dim + dims.context_dim, *[hidden] * layers]
        blocks: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(widths[-1], out))

    def forward(self, feats: Tensor, ctx: Tensor) -> Tensor:
        """feats[B, M, d_s], ctx[B, C] -> [B, M, out]."""
        ctx = ctx[:, None, :].expand(*feats.shape[:-1], ctx.shape[-1])
        return self.net(torch.cat([feats, ctx], dim=-1))


class Networks(nn.ModuleDict):
    """A method's trained networks as one module (what DDP wraps): every network is evaluated on
    the same (state, context), so each one's gradients are synchronised."""

    def forward(self, feats: Tensor, ctx: Tensor) -> dict[str, Tensor]:
        return {name: net(feats, ctx) for name, net in self.items()}


LogitsFn = Callable[[Tensor, Tensor], Tensor]  # feats[1, S, d_s], ctx[1, C] -> logits[1, S, A]


def network_policy(
    game: FiniteMeanFieldGame, logits: LogitsFn, device: torch.device
) -> ConditionalPolicy:
    """The policy π_t(· | s, μ) = softmax(logits(s, c(t, μ))), the S states in one batch per
    (t, μ); the softmax is taken in float64, so every row sums to 1 as the draws need."""
    feats = torch.as_tensor(game.features(np.arange(game.n_states)), device=device)[None]

    def rows(t: int, mu: np.ndarray) -> np.ndarray:
        ctx = torch.as_tensor(game.context(t, mu), device=device)[None]
        with torch.no_grad():
            return torch.softmax(logits(feats, ctx)[0].double(), dim=-1).cpu().numpy()

    return ConditionalPolicy(game, rows)


def state_batch(raw: dict[str, np.ndarray], device: Any, dims: Dims) -> dict[str, Tensor]:
    """feats[B, M, d_s] and actions[B, M] of the first step, ctx[B, C], from a window batch."""
    return {
        "feats": torch.as_tensor(raw["x"][:, :, 0, : dims.feature_dim], device=device),
        "ctx": torch.as_tensor(raw["ctx"], device=device),
        "actions": torch.as_tensor(raw["first_actions"], dtype=torch.long, device=device),
    }


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device

"""Diffuser (Janner et al. 2022) per agent, with its value guidance, on the Method interface.

The MF-Diffuser planner with no interaction between particles and the flat sampler (each
agent's window diffused alone), and no value weighting or return conditioning; instead a value
network J_φ(x_k, k, c) (`ValueNet`) is trained jointly with the denoiser, on the same noisy
windows, to predict each particle's return, and every reverse step's mean is shifted by
guide_scale·Σ_k·∇_x Σ_j J_φ (classifier guidance; Σ_k the step's posterior variance).

The return J_φ learns is the particle's own return in the window, Σ_h r_{t0+h}(s_h, a_h, μ_{t0+h})
over the window's steps inside the episode, with the game's reward and the episode's empirical
mean field, divided by `value_scale` (H times the largest per-step population reward of the
dataset, the same on every rank). Per agent, not the population return-to-go: a per-agent
trajectory model can only steer its own particle, and the population's return barely depends on
one particle (a value of it has almost no gradient in x). It is also exactly computable on a
sampled window, so plans can be scored with the game's own rewards (`window_returns`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from mfdiffuser.methods.base import Batches, DataStats, Dims
from mfdiffuser.methods.mf_diffuser import MFDiffuserMethod
from mfdiffuser.planner.config import PlannerConfig


class Params(PlannerConfig):
    """The planner's parameters (the registry pins interaction, stages, beta, return guidance
    and the action head to Diffuser's) plus those of the value guide."""

    guide_scale: float = Field(
        100.0,
        ge=0.0,
        le=1e5,
        description="s: each reverse step's mean is shifted by s·Σ_k·∇_x J, 0..1e5; 0 = no "
        "guidance (the unguided per-agent sampler). J is a return scaled to about [-1, 1] and "
        "Σ_k is small at the late steps, so useful scales are large (10..1000).",
    )
    value_hidden: int = Field(
        64, ge=1, le=4096, description="Width of the value network J_φ's MLP, 1..4096."
    )


def window_returns(
    game: Any, mu: np.ndarray, t0: np.ndarray, states: np.ndarray, actions: np.ndarray
) -> np.ndarray:
    """Each particle's return in its window: states, actions[B, M, H] (steps past the episode
    end excluded), mu[B, H, S] the mean field at t0 + h -> returns[B, M].

    A state-action mean-field game's rewards take L[S, A]; the windows hold only the episode's
    state histogram mu, so L is estimated as mu(s)·π̂(a | s), π̂ the particles' own action
    frequencies in state s at that step (uniform in a state no particle is in)."""
    b, m, h = states.shape
    out = np.zeros((b, m))
    lifted = getattr(game, "state_action_mean_field", False)
    for i in range(b):
        for j in range(min(h, game.horizon - int(t0[i]))):
            field = _state_action_estimate(game, mu[i, j], states[i, :, j], actions[i, :, j])
            reward = game.reward(int(t0[i]) + j, field if lifted else mu[i, j])  # [S, A]
            out[i] += reward[states[i, :, j], actions[i, :, j]]
    return out


def _state_action_estimate(
    game: Any, mu: np.ndarray, states: np.ndarray, actions: np.ndarray
) -> np.ndarray | None:
    """L̂[S, A] = mu(s)·π̂(a | s) from particles' states[M] and actions[M] (None for a game whose
    rewards take mu only)."""
    if not getattr(game, "state_action_mean_field", False):
        return None
    n_s, n_a = game.n_states, game.n_actions
    counts = np.bincount(states * n_a + actions, minlength=n_s * n_a).reshape(n_s, n_a)
    seen = counts.sum(axis=1, keepdims=True)
    pi_hat = np.where(seen > 0, counts / np.maximum(seen, 1), 1.0 / n_a)
    return np.asarray(mu, dtype=np.float64)[:, None] * pi_hat


class _WithValues:
    """Window batches plus value[B, M], each particle's scaled window return."""

    def __init__(self, windows: Any, game: Any, scale: float) -> None:
        self.windows, self.game, self.scale = windows, game, scale

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        from mfdiffuser.planner.acting import nearest_states

        raw = self.windows.sample(batch_size)
        d_s = self.game.feature_dim
        states = nearest_states(self.game, raw["x"][..., :d_s])
        actions = raw["x"][..., d_s:].argmax(axis=-1)
        horizon = self.windows.mu.shape[1]
        ts = np.minimum(raw["t0"][:, None] + np.arange(raw["x"].shape[2]), horizon - 1)
        mu = self.windows.mu[raw["episode"][:, None], ts]  # [B, H, S]
        returns = window_returns(self.game, mu, raw["t0"], states, actions)
        return {**raw, "value": (returns / self.scale).astype(np.float32)}


class ValueGuide:
    """guide(x_k, k, ctx) = s·∇_x Σ_{b, j} J_φ(x_k, k, c): the sampler's shift direction."""

    def __init__(self, value: Any, scale: float) -> None:
        self.value, self.scale = value, scale

    def __call__(self, x: Any, k: int, ctx: Any) -> Any:
        import torch

        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            kk = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
            (grad,) = torch.autograd.grad(self.value(xg, kk, ctx).sum(), xg)
        return grad.mul_(self.scale)


class DiffuserMethod(MFDiffuserMethod):
    params: Params

    def __init__(self, params: Params, dims: Dims) -> None:
        import dataclasses

        import torch

        from mfdiffuser.planner.denoiser import ValueGuidedNet, ValueNet

        super().__init__(params, dims)
        planner = self.planner
        self.value = ValueNet(
            params.window, planner.transition_dim, dims.context_dim, params.value_hidden
        )
        self.net = ValueGuidedNet(planner.model, self.value)
        self.value_scale = torch.tensor(1.0, dtype=torch.float64)
        planner.objective = dataclasses.replace(planner.objective, value_head=True)
        planner.guide = ValueGuide(self.value, params.guide_scale) if params.guide_scale else None

    def prepare(self, stats: DataStats) -> None:
        import torch

        # Population returns-to-go are gathered from every rank: the scale is the same on all.
        rtg = np.asarray(stats.returns_to_go)
        per_step = float(np.abs(rtg).max()) / rtg.shape[1]
        self.value_scale = torch.tensor(
            max(per_step, 1e-8) * self.params.window, dtype=torch.float64
        )

    def batches(self, arrays: Any, game: Any, seed: int) -> Batches:
        return _WithValues(super().batches(arrays, game, seed), game, float(self.value_scale))

    def to_batch(self, raw: dict[str, np.ndarray], device: Any) -> dict[str, Any]:
        import torch

        value = torch.as_tensor(raw["value"], device=device)
        return {**super().to_batch(raw, device), "value": value}

    def train_module(self) -> Any:
        return self.net  # its loss adds the value MSE: figures loss_diffusion and loss_value

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        return {**state, "value": self.value.state_dict(), "value_scale": self.value_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.value.load_state_dict(state["value"])
        self.value_scale = state["value_scale"]

    def to(self, device: Any) -> DiffuserMethod:
        super().to(device)
        self.value.to(device)
        return self


def build(params: Params, dims: Dims) -> DiffuserMethod:
    return DiffuserMethod(params, dims)

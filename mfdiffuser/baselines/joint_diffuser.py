"""MADiff-style joint diffuser (METHOD.md §7): one denoiser over the joint N-agent window.

The baseline MF-Diffuser is measured against. Where MF-Diffuser samples a set of M ≪ N particles
that interact only through their empirical measure (O(M) per layer), this model denoises the
joint tensor X[B, N, H, D] of ALL N agents, and every block lets each agent attend to every other
agent at the same time step: softmax(Q·Kᵀ/√d)·V over the agent axis. The attention matrix
[B·H, heads, N, N] is materialised on purpose (plain attention, as in the reference
formulation), so time and memory grow as N²; a fused kernel would hide the memory term the
comparison is about (its time is still N²).

Everything else follows MF-Diffuser's conventions (mfdiffuser.planner), so that the comparison
isolates the joint-vs-mean-field design:
  1. data: per step state features ⊕ action one-hot scaled to [-1, 1]; context c = (t, μ_t);
  2. denoiser: the same per-agent residual temporal-convolution blocks with FiLM conditioning on
     the diffusion step, the context and the agent's own in-painted first state; then agent
     attention (instead of mean-field pooling). No positional embedding over agents, so the
     network is permutation-equivariant over agents;
  3. diffusion: the same cosine K-step DDPM schedule; loss = mean over agents of the (optionally
     value-weighted) squared noise error, the in-painted first state excluded;
  4. sampling: ancestral, in-painting every agent's first state after every step; all N agents,
     no particles, no coarse-to-fine;
  5. acting: each agent's first action is the argmax of its first-step action features.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch
from einops import rearrange
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from mfdiffuser.planner.acting import FiniteGame
from mfdiffuser.planner.denoiser import (
    ResidualTemporalBlock,
    SinusoidalEmbedding,
    group_norm_mish,
    temporal_conv,
)
from mfdiffuser.planner.diffusion import NoiseSchedule, decode_actions


class JointDiffuserConfig(BaseModel):
    """Every knob of the joint diffuser; names match `PlannerConfig` where they mean the same."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(4, ge=1, description="H: planning window, steps per agent.")
    diffusion_steps: int = Field(20, ge=2, description="K: number of denoising steps.")
    hidden: int = Field(64, ge=1, description="Channels of the per-agent temporal trunk.")
    n_blocks: int = Field(2, ge=1, description="Residual temporal blocks, each + agent attention.")
    kernel_size: int = Field(3, ge=1, description="Temporal convolution kernel (odd, 'same').")
    heads: int = Field(4, ge=1, description="Attention heads over agents; must divide hidden.")
    clip_denoised: bool = Field(True, description="Clip x̂_0 to [-1, 1] while sampling.")

    @model_validator(mode="after")
    def _check(self) -> JointDiffuserConfig:
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size = {self.kernel_size} must be odd (keeps H unchanged)")
        if self.hidden % self.heads:
            raise ValueError(
                f"heads = {self.heads} must divide hidden = {self.hidden}; "
                f"allowed: divisors of {self.hidden}"
            )
        return self


class AgentAttention(nn.Module):
    """Pre-norm multi-head self-attention across agents, separately at every time step.

    h[B, N, H, c] -> h + Wo·softmax(Q·Kᵀ/√d)·V, attention over N. The score matrix is built
    explicitly (see the module docstring): its [B·H, heads, N, N] size is the N² term.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, h: Tensor) -> Tensor:
        b, t = h.shape[0], h.shape[2]
        tokens = rearrange(self.norm(h), "b n t c -> (b t) n c")
        q, k, v = rearrange(
            self.qkv(tokens), "p n (three g d) -> three p g n d", three=3, g=self.heads
        )
        scores = torch.einsum("pgnd,pgmd->pgnm", q, k) / math.sqrt(q.shape[-1])  # [P, g, N, N]
        mixed = torch.einsum("pgnm,pgmd->pgnd", scores.softmax(dim=-1), v)
        mixed = rearrange(mixed, "(b t) g n d -> b n t (g d)", b=b, t=t)
        return h + self.out(mixed)


class JointDenoiser(nn.Module):
    """ε_θ(x[B, N, H, D], k[B], ctx[B, C]) -> ε̂[B, N, H, D] with attention across all agents."""

    def __init__(
        self, transition_dim: int, context_dim: int, state_dim: int, cfg: JointDiffuserConfig
    ) -> None:
        super().__init__()
        hid, ks = cfg.hidden, cfg.kernel_size
        self.state_dim = state_dim
        self.step_embed = nn.Sequential(
            SinusoidalEmbedding(hid), nn.Linear(hid, 2 * hid), nn.Mish(), nn.Linear(2 * hid, hid)
        )
        self.ctx_embed = nn.Sequential(
            nn.Linear(context_dim, 2 * hid), nn.Mish(), nn.Linear(2 * hid, hid)
        )
        # As in MeanFieldDenoiser: the agent's own first state conditions its trunk directly.
        self.state_embed = nn.Sequential(
            nn.Linear(state_dim, 2 * hid), nn.Mish(), nn.Linear(2 * hid, hid)
        )
        self.inp = nn.Conv1d(transition_dim, hid, ks, padding=ks // 2)
        self.blocks = nn.ModuleList(
            ResidualTemporalBlock(hid, hid, ks) for _ in range(cfg.n_blocks)
        )
        self.attention = nn.ModuleList(AgentAttention(hid, cfg.heads) for _ in range(cfg.n_blocks))
        self.out = nn.Sequential(
            nn.GroupNorm(math.gcd(hid, 8), hid), nn.Mish(), nn.Conv1d(hid, transition_dim, 1)
        )

    def forward(self, x: Tensor, k: Tensor, ctx: Tensor) -> Tensor:
        # Channels-last throughout, as MeanFieldDenoiser.trunk: h[B, N, H, c].
        cond = (self.step_embed(k) + self.ctx_embed(ctx))[:, None]  # [B, 1, c]
        cond = cond + self.state_embed(x[:, :, 0, : self.state_dim])  # [B, N, c]
        h = temporal_conv(x, self.inp)
        for block, attend in zip(self.blocks, self.attention, strict=True):
            h = attend(block(h, cond))  # temporal per agent, then across agents
        norm, out = cast(nn.GroupNorm, self.out[0]), cast(nn.Conv1d, self.out[2])
        return temporal_conv(group_norm_mish(h, norm), out)


class JointDiffuser:
    """The joint N-agent diffuser: denoiser, schedule, loss, sampler and action readout."""

    def __init__(
        self, cfg: JointDiffuserConfig, state_dim: int, n_actions: int, context_dim: int
    ) -> None:
        for name, value in (
            ("state_dim", state_dim),
            ("n_actions", n_actions),
            ("context_dim", context_dim),
        ):
            if value < 1:
                raise ValueError(f"{name} = {value} must be >= 1")
        self.cfg = cfg
        self.state_dim, self.n_actions, self.context_dim = state_dim, n_actions, context_dim
        self.transition_dim = state_dim + n_actions
        self.model = JointDenoiser(self.transition_dim, context_dim, state_dim, cfg)
        self.schedule = NoiseSchedule(cfg.diffusion_steps)

    def inpaint(self, x: Tensor, first_states: Tensor) -> Tensor:
        """x[B, N, H, D] with every agent's first state replaced by first_states[B, N, d_s]."""
        x = x.clone()
        x[:, :, 0, : self.state_dim] = first_states
        return x

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Mean over (batch, agents) of w_j · mean over non-in-painted cells of (ε − ε̂)².

        batch: x[B, N, H, D], ctx[B, C], optional weights[B, N] (as `value_weights` makes them).
        """
        x0, ctx = batch["x"], batch["ctx"]
        b, n, h, d = x0.shape
        if d != self.transition_dim or h != self.cfg.window:
            raise ValueError(
                f"x: expected [B, N, H={self.cfg.window}, D={self.transition_dim}], "
                f"got {tuple(x0.shape)}"
            )
        weights = batch.get("weights", torch.ones(b, n))
        k = torch.randint(0, self.cfg.diffusion_steps, (b,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_noisy = self.inpaint(self.schedule.q_sample(x0, k, noise), x0[:, :, 0, : self.state_dim])
        mask = torch.ones(h, d)
        mask[0, : self.state_dim] = 0.0  # the in-painted first state is never predicted
        per_agent = ((noise - self.model(x_noisy, k, ctx)) ** 2 * mask).sum(dim=(2, 3)) / mask.sum()
        return (weights * per_agent).mean()

    @torch.no_grad()
    def sample(self, ctx: Tensor, first_states: Tensor, generator: torch.Generator) -> Tensor:
        """ctx[B, C], first_states[B, N, d_s] -> x0[B, N, H, D]; all randomness from `generator`."""
        s = self.schedule
        b, n, _ = first_states.shape
        shape = (b, n, self.cfg.window, self.transition_dim)
        x = self.inpaint(torch.randn(shape, generator=generator), first_states)
        for step in range(self.cfg.diffusion_steps - 1, -1, -1):
            kk = torch.full((b,), step, dtype=torch.long)
            eps = self.model(x, kk, ctx)
            x0 = (
                s.extract(s.sqrt_recip_alphas_cumprod, kk) * x
                - s.extract(s.sqrt_recipm1_alphas_cumprod, kk) * eps
            )
            if self.cfg.clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            x = (
                s.extract(s.posterior_mean_coef1, kk) * x0
                + s.extract(s.posterior_mean_coef2, kk) * x
            )
            if step > 0:
                x = x + s.extract(s.posterior_std, kk) * torch.randn(shape, generator=generator)
            x = self.inpaint(x, first_states)
        return x

    def first_actions(self, x0: Tensor) -> Tensor:
        """x0[B, N, H, D] -> actions[B, N]: each agent's first action (argmax of its features)."""
        return decode_actions(x0[:, :, 0, self.state_dim :])

    def act(
        self, t: int, states: np.ndarray, game: FiniteGame, generator: torch.Generator
    ) -> np.ndarray:
        """One planning step in a finite-state game: states[N] -> actions[N] (one joint sample
        of all N agents, conditioned on (t, μ_t) and in-painted with every agent's state)."""
        states = np.asarray(states, dtype=np.int64)
        mu = np.bincount(states, minlength=game.n_states) / states.shape[0]  # mu[S]
        first = torch.as_tensor(np.asarray(game.features(states), dtype=np.float32))[None]
        ctx = torch.as_tensor(np.asarray(game.context(t, mu), dtype=np.float32))[None]
        return self.first_actions(self.sample(ctx, first, generator))[0].numpy()

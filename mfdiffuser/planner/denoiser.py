"""Mean-field denoiser ε_θ(X^k, k, c) of METHOD.md §2.

Axes: x[B, M, H, D] = (batch, particle, time, feature). Each particle runs through the same
temporal trunk; after every residual block the particles interact only through their empirical
measure, h_j ← h_j + W·(1/M) Σ_l φ(h_l). Hence the network is permutation-equivariant over
particles, accepts any M with the same weights, costs O(M·H) per layer and has a parameter count
independent of M and N.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import Tensor, nn


def _groups(channels: int, max_groups: int = 8) -> int:
    return math.gcd(channels, max_groups)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style embedding of the integer diffusion step k."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, k: Tensor) -> Tensor:  # k[B] -> emb[B, dim]
        half = self.dim // 2
        scale = math.log(10_000) / max(half - 1, 1)
        freqs = torch.exp(-scale * torch.arange(half, device=k.device, dtype=torch.float32))
        args = k.float()[:, None] * freqs[None, :]
        emb = torch.cat([args.sin(), args.cos()], dim=-1)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        return emb


class ResidualTemporalBlock(nn.Module):
    """Two 'same' temporal convolutions with GroupNorm/Mish and FiLM from the conditioning."""

    def __init__(self, channels: int, cond_dim: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.act = nn.Mish()
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * channels))

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        # h[P, c, H] with P = batch·particles; cond[P, cond_dim]
        scale, shift = rearrange(self.film(cond), "p (two c) -> two p c 1", two=2)
        out = self.act(self.norm1(self.conv1(h)))
        out = out * (1 + scale) + shift
        out = self.act(self.norm2(self.conv2(out)))
        return h + out


class MeanFieldInteraction(nn.Module):
    """h_j ← h_j + W·(1/M) Σ_l φ(h_l), pooled over particles separately at every time step."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(channels, channels), nn.Mish())
        self.W = nn.Linear(channels, channels)

    def forward(self, h: Tensor) -> Tensor:  # h[B, M, H, c]
        pooled = self.phi(h).mean(dim=1, keepdim=True)  # [B, 1, H, c]: the empirical measure
        return h + self.W(pooled)


class MeanFieldDenoiser(nn.Module):
    """ε_θ(x[B, M, H, D], k[B], ctx[B, C]) -> ε̂[B, M, H, D]."""

    def __init__(
        self,
        transition_dim: int,
        context_dim: int,
        hidden: int = 64,
        n_blocks: int = 2,
        kernel_size: int = 3,
        interaction: bool = True,
        state_dim: int = 0,
        return_embedding: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.transition_dim = transition_dim
        self.context_dim = context_dim
        self.interaction = interaction
        # Conditioning: diffusion-step embedding + context (t, μ_t) embedding, summed; with
        # `return_embedding` a third summand embeds the normalised return (classifier-free
        # guidance), see `forward`.
        self.step_embed = nn.Sequential(
            SinusoidalEmbedding(hidden),
            nn.Linear(hidden, 2 * hidden),
            nn.Mish(),
            nn.Linear(2 * hidden, hidden),
        )
        self.ctx_embed = nn.Sequential(
            nn.Linear(context_dim, 2 * hidden),
            nn.Mish(),
            nn.Linear(2 * hidden, hidden),
        )
        # Per-particle conditioning on its own in-painted first state x[:, :, 0, :state_dim]
        # (the state of the agent it stands for): without it the state reaches the trunk only as
        # one clean cell among noise, and the learned first-action law ignores the state.
        self.state_dim = state_dim
        self.state_embed = (
            nn.Sequential(
                nn.Linear(state_dim, 2 * hidden), nn.Mish(), nn.Linear(2 * hidden, hidden)
            )
            if state_dim > 0
            else None
        )
        self.inp = nn.Conv1d(transition_dim, hidden, kernel_size, padding=kernel_size // 2)
        self.blocks = nn.ModuleList(
            ResidualTemporalBlock(hidden, hidden, kernel_size) for _ in range(n_blocks)
        )
        self.mixers = nn.ModuleList(
            MeanFieldInteraction(hidden) for _ in range(n_blocks if interaction else 0)
        )
        self.out = nn.Sequential(
            nn.GroupNorm(_groups(hidden), hidden), nn.Mish(), nn.Conv1d(hidden, transition_dim, 1)
        )
        # Built last, and only when asked for: without it the parameters (and the RNG draws of
        # their initialisation) are exactly those of the unguided model.
        self.ret_embed = (
            nn.Sequential(nn.Linear(1, 2 * hidden), nn.Mish(), nn.Linear(2 * hidden, hidden))
            if return_embedding
            else None
        )
        # The "no return given" embedding of classifier-free guidance, learned.
        self.null_return = nn.Parameter(torch.zeros(hidden)) if return_embedding else None

    def forward(
        self,
        x: Tensor,
        k: Tensor,
        ctx: Tensor,
        ret: Tensor | None = None,
        drop: Tensor | None = None,
    ) -> Tensor:
        """ret[B]: normalised return (None = unconditional: the null embedding for every
        sample); drop[B] bool: samples whose return is replaced by the null embedding. Both are
        ignored by a model built without `return_embedding`."""
        b, m = x.shape[0], x.shape[1]
        cond = self.step_embed(k) + self.ctx_embed(ctx)  # [B, hidden]
        if self.ret_embed is not None and self.null_return is not None:
            null = self.null_return.expand(b, -1)
            if ret is None:
                cond = cond + null
            else:
                emb = self.ret_embed(ret.reshape(b, 1).to(cond.dtype))
                if drop is not None:
                    emb = torch.where(drop.reshape(b, 1), null, emb)
                cond = cond + emb
        cond = repeat(cond, "b c -> (b m) c", m=m)  # shared by every particle of a sample
        if self.state_embed is not None:
            first = rearrange(x[:, :, 0, : self.state_dim], "b m s -> (b m) s")
            cond = cond + self.state_embed(first)
        h = self.inp(rearrange(x, "b m h d -> (b m) d h"))
        for i, block in enumerate(self.blocks):
            h = block(h, cond)
            if self.interaction:
                hp = rearrange(h, "(b m) c h -> b m h c", b=b, m=m)
                h = rearrange(self.mixers[i](hp), "b m h c -> (b m) c h")
        eps = self.out(h)
        return rearrange(eps, "(b m) d h -> b m h d", b=b, m=m)


class InverseDynamics(nn.Module):
    """Decision-Diffuser style action head: f(s_t, s_{t+1}, c) -> action logits[A].

    Applied per particle and step, so it is permutation-equivariant and independent of M and N.
    """

    def __init__(self, state_dim: int, context_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * state_dim + context_dim, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, n_actions),
        )

    def forward(self, s: Tensor, s_next: Tensor, ctx: Tensor) -> Tensor:
        """s, s_next[..., d_s], ctx[..., C] (broadcast to s's leading axes) -> logits[..., A]."""
        ctx = ctx.expand(*s.shape[:-1], ctx.shape[-1])
        return self.net(torch.cat([s, s_next, ctx], dim=-1))


class JointNet(nn.Module):
    """Denoiser and inverse-dynamics head as one module, so that one DDP wrapper (and one
    optimizer) covers both: forward returns (ε̂, logits of the state pairs of x0)."""

    def __init__(self, denoiser: MeanFieldDenoiser, inverse: InverseDynamics) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.inverse = inverse

    def forward(
        self,
        x: Tensor,
        k: Tensor,
        ctx: Tensor,
        ret: Tensor | None = None,
        drop: Tensor | None = None,
        x0: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        eps = self.denoiser(x, k, ctx, ret=ret, drop=drop)
        if x0 is None:
            return eps, None
        # x0[B, M, H, d_s] clean states: pairs (s_h, s_{h+1}) for h = 0..H-2.
        logits = self.inverse(x0[:, :, :-1], x0[:, :, 1:], ctx[:, None, None, :])
        return eps, logits

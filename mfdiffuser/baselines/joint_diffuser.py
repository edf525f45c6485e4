"""MADiff-style joint denoiser: MF-Diffuser's denoiser with attention across all agents.

The baseline MF-Diffuser is measured against (`madiff`, `mfdiffuser.baselines.madiff`). Where
MF-Diffuser denoises a set of M ≪ N particles that interact only through their empirical measure
(O(M) per layer), this model denoises the windows of ALL N agents, X[B, N, H, D], and after every
residual block each agent attends to every other agent at the same time step:
softmax(Q·Kᵀ/√d)·V over the agent axis, O(N²) per layer.

Everything else is MF-Diffuser's own code, so that the comparison isolates the joint-vs-mean-field
design: the same embeddings and residual temporal blocks (this class is a `MeanFieldDenoiser`
whose mixer after each block is attention instead of mean-field pooling, its output gated by
the block's conditioning from zero at initialisation), and, in
`mfdiffuser.baselines.madiff`, the same `MFDiffuser` noise schedule, in-painting and flat
sampler with every agent a particle, and the shared loss with each agent's first action
weighted (`first_action_weight`, 10 by default in madiff). No positional embedding over
agents: the network is permutation-equivariant over agents.

Two computations of the same attention (`attention`): 'fused' is
`torch.nn.functional.scaled_dot_product_attention` (memory O(N) per row on CPU), 'naive'
materialises the [B·H, heads, N, N] score matrix, which `benchmarks/joint_vs_mf.py` uses to show
the N² memory term; both give the same output on the same weights.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mfdiffuser.planner.denoiser import MeanFieldDenoiser, group_norm_mish, temporal_conv

Attention = Literal["fused", "naive"]


class AgentAttention(nn.Module):
    """Pre-norm multi-head self-attention across agents, separately at every time step, with
    its output gated by the conditioning.

    h[B, N, H, c], cond[B, N', c] -> h + g(cond) ⊙ Wo·softmax(Q·Kᵀ/√d)·V, attention over N.
    The gate g is a linear map of the conditioning (diffusion step, (t, μ_t), the agent's own
    state), initialised to zero, as adaLN-Zero does in DiT (Peebles & Xie, 2023): the untrained
    network is the per-agent denoiser, and how much each agent listens to the others is
    learned per (diffusion step, decision time, mean field). Without it the attention's
    average over the other agents' noisy windows enters every output at full weight from the
    start, whatever the noise level: where the data's agents act independently given (s, t, μ)
    the model has to unlearn it, and what it leaves depends on how many agents are sampled
    together (the frozen table moved with `table_agents`)."""

    def __init__(
        self, channels: int, heads: int, attention: Attention = "fused", cond_dim: int = 0
    ) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads = {heads} must divide the channels {channels}")
        self.heads, self.attention = heads, attention
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.gate = nn.Sequential(nn.Mish(), nn.Linear(cond_dim or channels, channels))
        nn.init.zeros_(self.gate[1].weight)
        nn.init.zeros_(self.gate[1].bias)

    def forward(self, h: Tensor, cond: Tensor | None = None) -> Tensor:
        """cond[B, N', c] (N' = N or 1); None = an ungated (gate 1) attention."""
        b, t = h.shape[0], h.shape[2]
        tokens = rearrange(self.norm(h), "b n t c -> (b t) n c")
        q, k, v = rearrange(
            self.qkv(tokens), "p n (three g d) -> three p g n d", three=3, g=self.heads
        )
        if self.attention == "fused":
            mixed = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B·H, heads, N, N]
            mixed = scores.softmax(dim=-1) @ v
        out = self.out(rearrange(mixed, "(b t) g n d -> b n t (g d)", b=b, t=t))
        if cond is None:
            return h + out
        return h + self.gate(cond).unsqueeze(2) * out  # gate [B, N', 1, c]


class JointDenoiser(MeanFieldDenoiser):
    """ε_θ(x[B, N, H, D], k[B], ctx[B, C]) -> ε̂[B, N, H, D] with attention across all agents."""

    def __init__(
        self,
        transition_dim: int,
        context_dim: int,
        state_dim: int,
        hidden: int = 64,
        n_blocks: int = 2,
        kernel_size: int = 3,
        heads: int = 4,
        attention: Attention = "fused",
    ) -> None:
        super().__init__(
            transition_dim,
            context_dim,
            hidden=hidden,
            n_blocks=n_blocks,
            kernel_size=kernel_size,
            interaction=False,  # no mean-field pooling is built ...
            state_dim=state_dim,
        )
        # ... and the trunk's mixer after every block is attention across agents instead.
        self.interaction = True
        self.mixers = nn.ModuleList(
            AgentAttention(hidden, heads, attention, cond_dim=hidden) for _ in range(n_blocks)
        )

    def trunk(self, x: Tensor, cond: Tensor) -> Tensor:
        """x[B, N, H, D], cond[B, N', hidden] -> ε̂[B, N, H, D]: every block, then attention
        across agents gated by the same conditioning."""
        h = temporal_conv(x, self.inp)  # [B, N, H, hidden]
        for block, mixer in zip(self.blocks, self.mixers, strict=True):
            h = mixer(block(h, cond), cond)
        norm, out = cast(nn.GroupNorm, self.out[0]), cast(nn.Conv1d, self.out[2])
        return temporal_conv(group_norm_mish(h, norm), out)

"""Mean-field denoiser ε_θ(X^k, k, c) of MF-Diffuser (the README's Methods section).

Axes: x[B, M, H, D] = (batch, particle, time, feature). Each particle runs through the same
temporal trunk; after every residual block the particles interact only through their empirical
measure, h_j ← h_j + W·(1/M) Σ_l φ(h_l). Hence the network is permutation-equivariant over
particles, accepts any M with the same weights, costs O(M·H) per layer and has a parameter count
independent of M and N.

Layout and cost. The trunk keeps its features channels-last, h[B, M, H, c], from input to output:
every layer is then one matrix product over the rows (particle, time) with no layout copies, and
the temporal convolutions use the weights of ordinary `nn.Conv1d` modules (the state dict is that
of the channels-first design), computed as unfold + matmul when sampling (`temporal_conv`). At
planning sizes (a few hundred rows) a call is dominated by its fixed per-operator cost, not by
FLOPs: oneDNN's convolution alone set up for ~0.1 ms per call. Under autograd the library
convolutions run on channels-first views, which keeps the gradients' memory layout consistent
(element-wise backwards on mixed layouts run about 2× slower), so training costs what it did.
For the same reason (fixed cost per call) the conditioning is split (`step_embedding`,
`context_embedding`, `state_embedding`, `trunk`), so that a sampler computes the embeddings that
stay fixed through its K steps once, not at every step (`MFDiffuser` does). `forward` composes
the four and is what training uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_Conv = tuple[Tensor, Tensor | None, int]  # weight [c_out, c_in·k], bias, kernel size k
_Norm = tuple[int, Tensor, Tensor, float]  # groups, weight, bias, eps
_Mixer = tuple[Tensor, Tensor, Tensor, Tensor] | None  # φ's and W's weight and bias
LeanWeights = tuple[_Conv, list[tuple[_Conv, _Norm, _Conv, _Norm, _Mixer]], _Norm, _Conv]


def _groups(channels: int, max_groups: int = 8) -> int:
    return math.gcd(channels, max_groups)


def temporal_conv(h: Tensor, conv: nn.Conv1d) -> Tensor:
    """'Same' temporal convolution of channels-last h[..., H, c_in] -> [..., H, c_out].

    Uses conv's weight [c_out, c_in, k] and bias; equal to conv applied channels-first (odd k,
    zero padding k // 2). Two equal computations, chosen by what is fast: without autograd
    (sampling) one matrix product over the unfolded time windows, which has no per-call set-up;
    under autograd (training) the library convolution on a channels-first view (also for
    k = 1), whose backward is about 1.5× faster than unfold's at training batch sizes.
    """
    weight = conv.weight
    k = weight.shape[-1]
    pad = k // 2
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        rows = h.reshape(-1, h.shape[-2], h.shape[-1]).transpose(1, 2)  # [P, c_in, H]
        out = F.conv1d(rows, weight, conv.bias, padding=pad).transpose(1, 2)
        return out.reshape(*h.shape[:-1], weight.shape[0])
    if k == 1:
        return F.linear(h, weight[:, :, 0], conv.bias)
    # [..., H + 2·pad, c] -> windows [..., H, c, k] -> [..., H, c·k] (c major, as the weight).
    cols = F.pad(h, (0, 0, pad, pad)).unfold(-2, k, 1)
    return F.linear(cols.flatten(-2), weight.flatten(1), conv.bias)


def group_norm_mish(h: Tensor, norm: nn.GroupNorm) -> Tensor:
    """Mish(`norm`(h)) over the channels of channels-last h[B, M, H, c] (statistics per row b, m).

    The norm runs channels-first; Mish is applied there too, on the contiguous output (its
    backward is twice as slow on the transposed view), and the result is returned as a view.
    """
    b, m, t, c = h.shape
    out = F.group_norm(
        h.reshape(b * m, t, c).transpose(1, 2), norm.num_groups, norm.weight, norm.bias, norm.eps
    )
    return F.mish(out).transpose(1, 2).view(b, m, t, c)


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
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * channels))

    def film_of(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """cond[..., cond_dim] -> FiLM (1 + scale, shift), each [..., 1, c] (the 1 broadcasts
        over time)."""
        scale, shift = self.film(cond).unsqueeze(-2).chunk(2, dim=-1)
        return 1 + scale, shift

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        """h[B, M, H, c] channels-last; cond[B, M', cond_dim] with M' = M (per particle) or 1
        (shared by the particles of a sample)."""
        return self.filmed(h, self.film_of(cond))

    def filmed(self, h: Tensor, film: tuple[Tensor, Tensor]) -> Tensor:
        """The block with its FiLM given: film = (1 + scale, shift), each [B, M', 1, c]."""
        out = group_norm_mish(temporal_conv(h, self.conv1), self.norm1)
        out = torch.addcmul(film[1], out, film[0])
        out = group_norm_mish(temporal_conv(out, self.conv2), self.norm2)
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

    def step_embedding(self, k: Tensor) -> Tensor:
        """k[B] integer diffusion steps -> [B, hidden]."""
        return self.step_embed(k)

    def context_embedding(
        self, ctx: Tensor, ret: Tensor | None = None, drop: Tensor | None = None
    ) -> Tensor:
        """ctx[B, C] (t, μ_t) -> [B, hidden], plus the return embedding of a guided model.

        ret[B]: normalised return (None = unconditional: the null embedding for every sample);
        drop[B] bool: samples whose return is replaced by the null embedding. Both are ignored by
        a model built without `return_embedding`.
        """
        cond = self.ctx_embed(ctx)
        if self.ret_embed is None or self.null_return is None:
            return cond
        b = ctx.shape[0]
        null = self.null_return.expand(b, -1)
        if ret is None:
            return cond + null
        emb = self.ret_embed(ret.reshape(b, 1).to(cond.dtype))
        if drop is not None:
            emb = torch.where(drop.reshape(b, 1), null, emb)
        return cond + emb

    def state_embedding(self, first_states: Tensor) -> Tensor | None:
        """first_states[B, M, d_s], each particle's in-painted first state -> [B, M, hidden]
        (None for a model built without state conditioning)."""
        if self.state_embed is None:
            return None
        return self.state_embed(first_states)

    def trunk(self, x: Tensor, cond: Tensor) -> Tensor:
        """x[B, M, H, D], cond[B, M', hidden] (M' = M, or 1 when shared) -> ε̂[B, M, H, D]."""
        return self.trunk_filmed(x, self.films(cond))

    def films(self, cond: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every block's FiLM (1 + scale, shift) of cond[..., M', hidden], each [..., M', 1,
        hidden]: what of the trunk depends on the conditioning only. A sampler computes them
        for all the steps of a stage in one call (leading step axis) and indexes them."""
        return [cast(ResidualTemporalBlock, block).film_of(cond) for block in self.blocks]

    def trunk_filmed(
        self,
        x: Tensor,
        films: Sequence[tuple[Tensor, Tensor]],
        weights: LeanWeights | None = None,
    ) -> Tensor:
        """`trunk` with the blocks' FiLM given (`films`). Without autograd (sampling) it runs
        the same operations on the modules' weights directly (`lean_weights`, built here unless
        given), without the module calls and the functional wrappers: at planning sizes these
        were a large part of a step's cost; the values are those of the module path."""
        if weights is None and not (torch.is_grad_enabled() or x.requires_grad):
            weights = self.lean_weights()
        if weights is None:
            h = temporal_conv(x, self.inp)  # [B, M, H, hidden]
            for i, block in enumerate(self.blocks):
                h = cast(ResidualTemporalBlock, block).filmed(h, films[i])
                if self.interaction:
                    h = self.mixers[i](h)
            norm, out = cast(nn.GroupNorm, self.out[0]), cast(nn.Conv1d, self.out[2])
            return temporal_conv(group_norm_mish(h, norm), out)
        return self._trunk_lean(x, films, weights)

    def lean_weights(self) -> LeanWeights | None:
        """The weights the sampling trunk reads, as views of the modules' parameters (current
        until they are replaced): built once per sampling call, not at every step. None when a
        block or mixer is not this module's own kind (the module path then runs)."""
        if not all(type(b) is ResidualTemporalBlock for b in self.blocks) or not all(
            type(m) is MeanFieldInteraction for m in self.mixers
        ):
            return None

        def conv(c: nn.Conv1d) -> _Conv:
            w = c.weight
            return w.flatten(1), c.bias, w.shape[-1]

        def norm(n: nn.Module) -> _Norm:
            n = cast(nn.GroupNorm, n)
            return n.num_groups, n.weight, n.bias, n.eps

        blocks = []
        for i, block in enumerate(self.blocks):
            block = cast(ResidualTemporalBlock, block)
            mixer = None
            if self.interaction:
                mix = cast(MeanFieldInteraction, self.mixers[i])
                phi = cast(nn.Linear, mix.phi[0])
                mixer = (phi.weight, phi.bias, mix.W.weight, mix.W.bias)
            blocks.append(
                (conv(block.conv1), norm(block.norm1), conv(block.conv2), norm(block.norm2), mixer)
            )
        return (conv(self.inp), blocks, norm(self.out[0]), conv(cast(nn.Conv1d, self.out[2])))

    def _trunk_lean(
        self, x: Tensor, films: Sequence[tuple[Tensor, Tensor]], weights: LeanWeights
    ) -> Tensor:
        inp, blocks, out_norm, out = weights
        cudnn = torch.backends.cudnn.enabled
        b, m, t, _ = x.shape

        def conv(h: Tensor, c: _Conv) -> Tensor:
            w, bias, k = c
            if k == 1:
                return F.linear(h, w, bias)
            pad = k // 2
            cols = torch.constant_pad_nd(h, (0, 0, pad, pad)).unfold(-2, k, 1)
            return F.linear(cols.flatten(-2), w, bias)

        def norm_mish(h: Tensor, n: _Norm) -> Tensor:
            # The channels-first view [B·M, c, H] of h and the channels-last view [B, M, H, c]
            # of the result, each one strided view (group_norm's output is contiguous).
            c = h.shape[-1]
            if h.is_contiguous():
                rows = h.as_strided((b * m, c, t), (t * c, 1, c))
            else:
                rows = h.reshape(b * m, t, c).transpose(1, 2)
            out = F.mish(torch.group_norm(rows, n[0], n[1], n[2], n[3], cudnn))
            if out.is_contiguous():
                return out.as_strided((b, m, t, c), (m * c * t, c * t, 1, t))
            return out.transpose(1, 2).reshape(b, m, t, c)

        h = conv(x, inp)
        for (c1, n1, c2, n2, mixer), (scale1p, shift) in zip(blocks, films, strict=True):
            y = torch.addcmul(shift, norm_mish(conv(h, c1), n1), scale1p)
            h = h + norm_mish(conv(y, c2), n2)
            if mixer is not None:
                pooled = F.mish(F.linear(h, mixer[0], mixer[1])).mean(dim=1, keepdim=True)
                h = h + F.linear(pooled, mixer[2], mixer[3])
        return conv(norm_mish(h, out_norm), out)

    def forward(
        self,
        x: Tensor,
        k: Tensor,
        ctx: Tensor,
        ret: Tensor | None = None,
        drop: Tensor | None = None,
    ) -> Tensor:
        """ε̂ for x[B, M, H, D] at steps k[B] with context ctx[B, C]; ret and drop as in
        `context_embedding`. The conditioning (step + context + return, shared by the particles
        of a sample, plus each particle's own first state) FiLMs every block."""
        cond = (self.step_embedding(k) + self.context_embedding(ctx, ret, drop))[:, None]
        state = self.state_embedding(x[:, :, 0, : self.state_dim])
        return self.trunk(x, cond if state is None else cond + state)


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


class ValueNet(nn.Module):
    """Diffuser's value J_φ(x_k, k, c): each particle's noisy window x_k[B, M, H, D] (flattened),
    the diffusion step k[B] and the context c[B, C] -> J[B, M], one value per particle.

    Per particle, like the per-agent denoiser it guides: the guide's Σ_j ∇_{x_j} J_j then moves
    each particle by its own gradient only."""

    def __init__(self, window: int, transition_dim: int, context_dim: int, hidden: int) -> None:
        super().__init__()
        self.step_embed = SinusoidalEmbedding(hidden)
        self.net = nn.Sequential(
            nn.Linear(window * transition_dim + context_dim + hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor, k: Tensor, ctx: Tensor) -> Tensor:
        b, m = x.shape[:2]
        shared = torch.cat([ctx.to(x.dtype), self.step_embed(k)], dim=-1)  # [B, C + hidden]
        inp = torch.cat([x.reshape(b, m, -1), shared[:, None].expand(b, m, -1)], dim=-1)
        return self.net(inp).squeeze(-1)


class ValueGuidedNet(nn.Module):
    """Denoiser and value network as one module (one DDP wrapper, one optimizer): forward is the
    denoiser's, and with value=True also returns J of the same noisy x."""

    def __init__(self, denoiser: nn.Module, value: ValueNet) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.value = value

    def forward(
        self, x: Tensor, k: Tensor, ctx: Tensor, value: bool = False, **kwargs: Tensor
    ) -> Tensor | tuple[Tensor, Tensor]:
        eps = self.denoiser(x, k, ctx, **kwargs)
        return (eps, self.value(x, k, ctx)) if value else eps

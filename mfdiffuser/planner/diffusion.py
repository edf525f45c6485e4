"""DDPM over particle sets (METHOD.md §1–§3): schedule, training loss, ancestral sampler.

Axes: x[B, M, H, D] = (batch, particle, time, feature) with D = d_s + A; per step the feature
vector is the state features ⊕ the action one-hot scaled to [-1, 1]. The first state of every
particle, x[:, :, 0, :d_s], is in-painted: fixed to the state of the agent the particle stands for,
never noised and never in the loss.

The sampler is written as stages of denoising steps (`_denoise_steps`) plus a clean estimate
(`predict_x0`) so that the coarse-to-fine sampler of §4 (stages with growing M; at a boundary each
particle branches into children re-noised from its parent's x̂_0) reuses them; only the flat
single-stage sampler exists now, and it stays the ablation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.denoiser import MeanFieldDenoiser


def encode_actions(actions: Tensor | np.ndarray, n_actions: int) -> Tensor:
    """actions[...] int -> float32[..., A]: one-hot scaled to [-1, 1]."""
    onehot = nn.functional.one_hot(torch.as_tensor(actions).long(), n_actions).float()
    return 2.0 * onehot - 1.0


def decode_actions(x: Tensor) -> Tensor:
    """x[..., A] (one-hot-like features) -> actions[...] long, by argmax."""
    return x.argmax(dim=-1)


def value_weights(advantages: Tensor, beta: float, weight_clip: float) -> Tensor:
    """§3 particle weights w_j = exp(β·A_j), normalised to mean 1 over the batch, clipped at w_max.

    advantages[B, M] -> weights[B, M]. β = 0 gives exactly ones. The advantages themselves (fitted
    Q̂ − V̂ of each particle's first action) are estimated from the dataset outside the planner.
    """
    if beta == 0.0:
        return torch.ones_like(advantages, dtype=torch.float32)
    logits = beta * advantages.float()
    # Shifting by the max before exp avoids overflow; the mean-1 normalisation cancels the shift.
    w = torch.exp(logits - logits.max())
    return (w / w.mean()).clamp(max=weight_clip)


def cosine_betas(n_steps: int, s: float = 0.008) -> np.ndarray:
    """Cosine schedule (Nichol & Dhariwal): betas[K] from ᾱ(t) = cos²((t/K + s)/(1 + s)·π/2)."""
    t = np.linspace(0, n_steps, n_steps + 1, dtype=np.float64)
    ac = np.cos(((t / n_steps) + s) / (1 + s) * math.pi / 2) ** 2
    ac = ac / ac[0]
    betas = 1.0 - ac[1:] / ac[:-1]
    return np.clip(betas, 0.0, 0.999)


class NoiseSchedule(nn.Module):
    """Buffers of a K-step DDPM; index k = 0..K-1, k = K-1 is the noisiest step."""

    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_std: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    def __init__(self, n_steps: int) -> None:
        super().__init__()
        self.n_steps = n_steps
        betas = cosine_betas(n_steps)
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.concatenate([[1.0], ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        buffers = {
            "betas": betas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
            # Posterior q(x_{k-1} | x_k, x_0); its variance is 0 at k = 0 (last step = the mean).
            "posterior_std": np.sqrt(post_var),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        }
        for name, value in buffers.items():
            # Schedules are not learned state: rebuilt from K, so kept out of the state_dict.
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32), persistent=False)

    @staticmethod
    def extract(buf: Tensor, k: Tensor) -> Tensor:
        """buf[K] gathered at k[B] -> [B, 1, 1, 1] to broadcast over (particle, time, feature)."""
        return buf[k].view(-1, 1, 1, 1)

    def q_sample(self, x0: Tensor, k: Tensor, noise: Tensor) -> Tensor:
        """x_k = sqrt(ᾱ_k)·x_0 + sqrt(1 − ᾱ_k)·ε, with k[B]."""
        return (
            self.extract(self.sqrt_alphas_cumprod, k) * x0
            + self.extract(self.sqrt_one_minus_alphas_cumprod, k) * noise
        )


class MFDiffuser:
    """The MF-Diffuser planner: a MeanFieldDenoiser, its noise schedule and its dimensions."""

    def __init__(
        self,
        cfg: PlannerConfig,
        state_dim: int,
        n_actions: int,
        context_dim: int,
        model: MeanFieldDenoiser | None = None,
    ) -> None:
        self.cfg = cfg
        self.state_dim = state_dim  # d_s
        self.n_actions = n_actions  # A
        self.context_dim = context_dim  # C
        self.transition_dim = state_dim + n_actions  # D
        self.model = (
            model
            if model is not None
            else MeanFieldDenoiser(
                transition_dim=self.transition_dim,
                context_dim=context_dim,
                hidden=cfg.hidden,
                n_blocks=cfg.n_blocks,
                kernel_size=cfg.kernel_size,
                interaction=cfg.interaction,
                state_dim=state_dim,
            )
        )
        self.schedule = NoiseSchedule(cfg.diffusion_steps).to(self.device)

    @classmethod
    def from_spec(
        cls, cfg: PlannerConfig, state_dim: int, n_actions: int, context_dim: int
    ) -> MFDiffuser:
        return cls(cfg, state_dim=state_dim, n_actions=n_actions, context_dim=context_dim)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> MFDiffuser:
        """Rebuild a planner saved by `state_dict()` (config and dimensions travel with it)."""
        dims = state["dims"]
        planner = cls(
            PlannerConfig(**state["config"]),
            state_dim=int(dims["state_dim"]),
            n_actions=int(dims["n_actions"]),
            context_dim=int(dims["context_dim"]),
        )
        planner.load_state_dict(state)
        return planner

    # ------------------------------------------------------------------ state

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> MFDiffuser:
        self.model.to(device)
        self.schedule.to(device)
        return self

    def dims(self) -> dict[str, int]:
        return {
            "state_dim": self.state_dim,
            "n_actions": self.n_actions,
            "context_dim": self.context_dim,
        }

    def state_dict(self) -> dict[str, Any]:
        """Weights plus config and dims, only tensors and primitives (torch.load(weights_only))."""
        return {
            "model": self.model.state_dict(),
            "config": self.cfg.model_dump(),
            "dims": self.dims(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "dims" in state and dict(state["dims"]) != self.dims():
            raise ValueError(f"dims mismatch: saved {state['dims']}, planner {self.dims()}")
        self.model.load_state_dict(state["model"])

    # ------------------------------------------------------------------ training

    def q_sample(self, x0: Tensor, k: Tensor, noise: Tensor) -> Tensor:
        return self.schedule.q_sample(x0, k, noise)

    def inpaint(self, x: Tensor, first_states: Tensor) -> Tensor:
        """Fix each particle's first state: x[:, :, 0, :d_s] <- first_states[B, M, d_s]."""
        x = x.clone()
        x[:, :, 0, : self.state_dim] = first_states
        return x

    def loss_mask(self, horizon: int, device: torch.device) -> Tensor:
        """mask[H, D]: 1 where the loss counts, 0 on the in-painted first state."""
        mask = torch.ones(horizon, self.transition_dim, device=device)
        mask[0, : self.state_dim] = 0.0
        return mask

    def loss(
        self,
        batch: dict[str, Tensor],
        model: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Per-particle-normalised (value-weighted) denoising loss of §3.

        L = mean_b (1/M) Σ_j w_j · mean_{(h, d) not in-painted} (ε_j − ε̂_j)².
        batch: x[B, M, H, D], ctx[B, C], optional weights[B, M] (already normalised and clipped,
        see `value_weights`; None = all ones). `model` overrides self.model (e.g. a DDP wrapper).
        """
        net = self.model if model is None else model
        x0, ctx = batch["x"], batch["ctx"]
        b, m, h, _ = x0.shape
        weights = batch.get("weights")
        if weights is None:
            weights = torch.ones(b, m, device=x0.device)
        k = torch.randint(0, self.cfg.diffusion_steps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_noisy = self.inpaint(self.q_sample(x0, k, noise), x0[:, :, 0, : self.state_dim])
        eps_hat = net(x_noisy, k, ctx)
        mask = self.loss_mask(h, x0.device)
        per_particle = ((noise - eps_hat) ** 2 * mask).sum(dim=(2, 3)) / mask.sum()  # [B, M]
        loss = (weights * per_particle).mean()
        info = {
            "loss": float(loss.detach()),
            "loss_unweighted": float(per_particle.detach().mean()),
            "weight_max": float(weights.detach().max()),
        }
        return loss, info

    # ------------------------------------------------------------------ sampling

    def _randn(self, shape: Sequence[int], generator: torch.Generator) -> Tensor:
        # Drawn on the generator's device, then moved: a CPU generator reproduces on any device.
        return torch.randn(tuple(shape), generator=generator, device=generator.device).to(
            self.device
        )

    @torch.no_grad()
    def predict_x0(self, x: Tensor, k: int, ctx: Tensor) -> Tensor:
        """Clean estimate x̂_0 from x_k (used at every step, and by §4 to branch particles)."""
        kk = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
        return self._x0_from_eps(x, kk, self.model(x, kk, ctx))

    def _x0_from_eps(self, x: Tensor, kk: Tensor, eps: Tensor) -> Tensor:
        s = self.schedule
        x0 = s.extract(s.sqrt_recip_alphas_cumprod, kk) * x - (
            s.extract(s.sqrt_recipm1_alphas_cumprod, kk) * eps
        )
        return x0.clamp(-1.0, 1.0) if self.cfg.clip_denoised else x0

    @torch.no_grad()
    def _denoise_steps(
        self,
        x: Tensor,
        steps: Sequence[int],
        ctx: Tensor,
        first_states: Tensor,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """Ancestral steps x_k -> x_{k-1} for k in `steps` (descending), in-painting after each.

        Returns (x after the last step, x̂_0 estimated at the last step).
        """
        s = self.schedule
        x0_hat = x
        for k in steps:
            x0_hat = self.predict_x0(x, k, ctx)
            kk = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
            mean = (
                s.extract(s.posterior_mean_coef1, kk) * x0_hat
                + s.extract(s.posterior_mean_coef2, kk) * x
            )
            if k > 0:
                x = mean + s.extract(s.posterior_std, kk) * self._randn(x.shape, generator)
            else:
                x = mean
            x = self.inpaint(x, first_states)
        return x, x0_hat

    @torch.no_grad()
    def sample(self, ctx: Tensor, first_states: Tensor, generator: torch.Generator) -> Tensor:
        """Flat sampler: ctx[B, C], first_states[B, M, d_s] -> x0[B, M, H, D], H = cfg.window.

        All randomness comes from `generator`, so a seeded generator reproduces the sample.
        """
        b, m, _ = first_states.shape
        ctx = ctx.to(self.device, torch.float32)
        first_states = first_states.to(self.device, torch.float32)
        shape = (b, m, self.cfg.window, self.transition_dim)
        x = self.inpaint(self._randn(shape, generator), first_states)
        steps = list(range(self.cfg.diffusion_steps - 1, -1, -1))
        x, _ = self._denoise_steps(x, steps, ctx, first_states, generator)
        return x

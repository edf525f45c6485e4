"""The training objective of the particle-set diffusion, separate from network and sampler.

The per-particle-normalised, value-weighted denoising loss with the in-painting mask (every
particle's first state x[:, :, 0, :d_s] is fixed to the state of the agent it stands for, never
noised and never in the loss), the classifier-free dropout of the return, the
inverse-dynamics cross-entropy (Decision-Diffuser style: when the head reads the actions, the
diffusion sees the states only and the head is trained on the windows' actions, value-weighted
per particle like the score loss), and the value MSE of a value head (Diffuser's guide, trained
on the same noisy windows as the denoiser).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mfdiffuser.planner.sampling import NoiseSchedule


def encode_actions(actions: Tensor | np.ndarray, n_actions: int) -> Tensor:
    """actions[...] int -> float32[..., A]: one-hot scaled to [-1, 1]."""
    onehot = nn.functional.one_hot(torch.as_tensor(actions).long(), n_actions).float()
    return 2.0 * onehot - 1.0


def decode_actions(x: Tensor) -> Tensor:
    """x[..., A] (one-hot-like features) -> actions[...] long, by argmax."""
    return x.argmax(dim=-1)


def value_weights(advantages: Tensor, beta: float, weight_clip: float) -> Tensor:
    """Particle weights w_j = exp(β·A_j), normalised to mean 1 over the batch, clipped at w_max.

    advantages[B, M] -> weights[B, M]. β = 0 gives exactly ones. The advantages themselves (fitted
    Q̂ − V̂ of each particle's first action) are estimated from the dataset outside the planner.
    """
    if beta == 0.0:
        return torch.ones_like(advantages, dtype=torch.float32)
    logits = beta * advantages.float()
    # Shifting by the max before exp avoids overflow; the mean-1 normalisation cancels the shift.
    w = torch.exp(logits - logits.max())
    return (w / w.mean()).clamp(max=weight_clip)


def cfg_drop_mask(batch: int, p: float, generator: torch.Generator | None, device: Any) -> Tensor:
    """drop[B] bool: each sample's return replaced by the null embedding with probability p."""
    u = torch.rand((batch,), generator=generator, device=device)
    return u < p


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """rewards[E, T, N] -> population return-to-go[E, T] = mean_i Σ_{t' ≥ t} r_{i,t'}."""
    r = np.asarray(rewards, dtype=np.float64).mean(axis=2)
    return np.flip(np.cumsum(np.flip(r, axis=1), axis=1), axis=1).copy()


def inpaint(x: Tensor, first_states: Tensor) -> Tensor:
    """Fix each particle's first state: x[:, :, 0, :d_s] <- first_states[B, M, d_s]."""
    x = x.clone()
    x[:, :, 0, : first_states.shape[-1]] = first_states
    return x


@dataclass(frozen=True)
class DenoisingObjective:
    """L = mean_b (1/M) Σ_j w_j · mean_{(h, d) not in-painted, h valid} (ε_j − ε̂_j)²
    (+ the value-weighted inverse-dynamics cross-entropy when `inverse_dynamics`, + the value
    MSE mean_{b, j} (J_j(x_k, k, c) − value_{b, j})² when `value_head`)."""

    schedule: NoiseSchedule
    state_dim: int  # d_s
    n_actions: int  # A
    inverse_dynamics: bool  # x holds states only; the net also returns the head's logits
    return_guidance: bool  # the batch has ret[B], dropped with probability cfg_dropout
    cfg_dropout: float
    value_head: bool = False  # the net also returns J[B, M], fitted to value[B, M] by MSE
    first_action_weight: float = 1.0  # λ: the first action's cells count λ times in the loss

    @property
    def transition_dim(self) -> int:
        return self.state_dim if self.inverse_dynamics else self.state_dim + self.n_actions

    def loss_mask(self, horizon: int, device: torch.device) -> Tensor:
        """mask[H, D]: 1 where the loss counts, 0 on the in-painted first state, λ on the first
        action (the cells acting reads)."""
        mask = torch.ones(horizon, self.transition_dim, device=device)
        mask[0, : self.state_dim] = 0.0
        if not self.inverse_dynamics:
            mask[0, self.state_dim :] = self.first_action_weight
        return mask

    def __call__(
        self,
        batch: dict[str, Tensor],
        net: nn.Module,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """(loss, figures) of one batch: x[B, M, H, D], ctx[B, C], optional weights[B, M]
        (already normalised and clipped, see `value_weights`; None = all ones), optional
        valid[B, H] or [B, M, H] (0 = a padded step: past the episode end, see
        `WindowSampler`, or after the particle's agent died, see `TeamWindowSampler`; None = all
        valid), ret[B] with return guidance, value[B, M] with a value head. `net` is the
        denoiser (with the inverse or value head when those are on), or a DDP wrapper of it."""
        x0, ctx = batch["x"], batch["ctx"]
        actions: Tensor | None = None
        if self.inverse_dynamics:
            # Windows hold states ⊕ actions; the diffusion sees the states, the head the actions.
            actions = decode_actions(x0[..., self.state_dim :])
            x0 = x0[..., : self.state_dim]
        b, m, h, _ = x0.shape
        weights = batch.get("weights")
        if weights is None:
            weights = torch.ones(b, m, device=x0.device)
        k = torch.randint(0, self.schedule.n_steps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_noisy = inpaint(self.schedule.q_sample(x0, k, noise), x0[:, :, 0, : self.state_dim])
        kwargs: dict[str, Any] = {}
        if self.return_guidance:
            if "ret" not in batch:
                raise ValueError("return_guidance is on: the batch needs ret[B] (see to_batch)")
            # Drawn after k and the noise, so the unguided loss consumes the same randomness.
            drop = cfg_drop_mask(b, self.cfg_dropout, generator, x0.device)
            kwargs = {"ret": batch["ret"], "drop": drop}
        logits: Tensor | None = None
        values: Tensor | None = None
        if self.inverse_dynamics:
            eps_hat, logits = net(x_noisy, k, ctx, x0=x0, **kwargs)
        elif self.value_head:
            # One forward through the (DDP-wrapped) module for both heads.
            eps_hat, values = net(x_noisy, k, ctx, value=True, **kwargs)
        else:
            eps_hat = net(x_noisy, k, ctx, **kwargs)
        mask = self.loss_mask(h, x0.device)  # [H, D]
        valid = batch.get("valid")
        if valid is None:
            per_particle = ((noise - eps_hat) ** 2 * mask).sum(dim=(2, 3)) / mask.sum()  # [B, M]
        else:
            # valid[B, H] (the window past the episode end) or valid[B, M, H] (per particle: a
            # team game's agent that died leaves its window)
            v = valid.to(mask.dtype)
            cells = mask * (v[:, None, :, None] if v.dim() == 2 else v[..., None])
            per_particle = ((noise - eps_hat) ** 2 * cells).sum(dim=(2, 3)) / cells.sum(
                dim=(2, 3)
            ).clamp_min(1.0)
        loss = (weights * per_particle).mean()
        info = {
            "loss_unweighted": float(per_particle.detach().mean()),
            "weight_max": float(weights.detach().max()),
        }
        if logits is not None and actions is not None:
            ce = nn.functional.cross_entropy(
                logits.reshape(-1, self.n_actions),
                actions[:, :, :-1].reshape(-1),
                reduction="none",
            ).view(b, m, h - 1)
            if valid is None:
                per_pair = ce.mean(dim=2)
            else:  # a pair (s_h, s_{h+1}) counts when s_{h+1} is inside the episode
                v = valid.to(ce.dtype)
                pairs = v[:, None, 1:] if v.dim() == 2 else v[:, :, 1:]  # [B, 1 or M, H - 1]
                per_pair = (ce * pairs).sum(dim=2) / pairs.sum(dim=2).clamp_min(1.0)
            ce_loss = (weights * per_pair).mean()
            loss = loss + ce_loss
            info["loss_inverse"] = float(ce_loss.detach())
        if values is not None:
            value_loss = ((values - batch["value"].to(values.dtype)) ** 2).mean()
            info["loss_diffusion"] = float(loss.detach())
            info["loss_value"] = float(value_loss.detach())
            loss = loss + value_loss
        if "drop" in kwargs:
            info["cfg_dropped"] = float(kwargs["drop"].sum())
        info["loss"] = float(loss.detach())
        return loss, info

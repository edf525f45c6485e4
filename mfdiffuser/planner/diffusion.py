"""DDPM over particle sets (METHOD.md §1–§3): schedule, training loss, ancestral sampler.

Axes: x[B, M, H, D] = (batch, particle, time, feature) with D = d_s + A; per step the feature
vector is the state features ⊕ the action one-hot scaled to [-1, 1]. The first state of every
particle, x[:, :, 0, :d_s], is in-painted: fixed to the state of the agent the particle stands for,
never noised and never in the loss.

The sampler is written as stages of denoising steps (`_denoise_steps`) plus a clean estimate
(`_x0`) so that the coarse-to-fine sampler of §4 (stages with growing M; at a boundary each
particle branches into children re-noised from its parent's x̂_0) reuses them. The flat
single-stage sampler (`sample`) stays the ablation; `sample_coarse_to_fine` with one stage
reproduces it exactly (same random draws in the same order).

Coarse-to-fine (§4): `plan_stages` turns a final count M_L into stage counts M_1 < … < M_L, steps
K_l and `parents[l][M_{l+1}]` (the parent of each child, sorted, so the children of a parent are a
contiguous block; the parents that get an extra child when M_{l+1} is not a multiple of M_l are
drawn from the generator). `sample_coarse_to_fine` denoises stage l with M_l particles for K_l
steps, then `branch_particles` re-noises each child from its parent's clean estimate,
child = sqrt(ᾱ_k)·x̂_0(parent) + sqrt(1 − ᾱ_k)·ε_new at the next step k, and in-paints the
children with their own first states. Cost Σ_l M_l·K_l network evaluations instead of M_L·K.

Options (all off by default, each a PlannerConfig field):
- Classifier-free return guidance (`return_guidance`): the conditioning return of a training
  window is the normalised population return-to-go of its episode from the window start (mean
  over the episode's N agents of Σ_{t'≥t0} r): the planner plans for the population, and that
  return is defined for every batch (no agent index needed). It is dropped (null embedding) with
  probability `cfg_dropout` per sample; sampling uses ε = ε_u + w·(ε_c − ε_u), w = `guidance`,
  with the target return at t = the `guidance_quantile` quantile of the data's returns-to-go at t.
  Normalisation: 2·(R − min)/(max − min) − 1 over all (episode, t) of the dataset.
- Inverse dynamics (`action_head = 'inverse_dynamics'`): x holds states only (D = d_s); an MLP
  f(s_h, s_{h+1}, c) -> action logits is trained jointly with cross-entropy on the windows' actions
  (value-weighted per particle like the score loss), and `plan_actions` reads the actions off
  consecutive planned states (H − 1 actions per particle).
- DDIM (`sampler = 'ddim'`): `sampling_steps` S ≤ K evenly strided schedule indices
  round(linspace(K − 1, 0, S)); the update from k to the next index k' (ᾱ_{-1} = 1) is
  x' = sqrt(ᾱ_k')·x̂_0 + sqrt(1 − ᾱ_k' − σ²)·ε̂ + σ·z,
  σ = η·sqrt((1 − ᾱ_k')/(1 − ᾱ_k)·(1 − ᾱ_k/ᾱ_k')), with ε̂ recomputed from the
  (clipped) x̂_0. With S = K and η = 1 this is the DDPM step exactly.
  Coarse-to-fine stages split the strided sequence; in-painting is applied after every step.
- EMA (`ema_decay` > 0): a moving average of the weights (denoiser and inverse head), updated by
  `update_ema` after every optimizer step and used by every sampling method.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.denoiser import InverseDynamics, JointNet, MeanFieldDenoiser


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
        self.alphas_cumprod64 = ac  # float64 copy for the DDIM coefficients
        # Python floats of every buffer for the sampler, whose steps share one k across the
        # batch: a scalar multiply instead of a gather + broadcast per coefficient.
        self.scalars = {name: value.tolist() for name, value in buffers.items()}
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


@dataclass(frozen=True)
class StagePlan:
    """A coarse-to-fine schedule: counts[L] (strictly increasing, ending at M_L), steps[L] (K_l,
    summing to K) and parents[L-1], parents[l][M_{l+1}] long = index in stage l of each child of
    stage l + 1 (sorted: children of one parent are contiguous; every parent has >= 1 child)."""

    counts: list[int]
    steps: list[int]
    parents: list[Tensor]


def branch_counts(m_parent: int, m_child: int, generator: torch.Generator) -> Tensor:
    """Children per parent, counts[m_parent] long summing to m_child >= m_parent.

    Every parent gets floor(m_child / m_parent); the remainder r = m_child mod m_parent extra
    children go to r distinct parents drawn uniformly (one randperm from `generator`, drawn only
    when r > 0, so an exact multiple consumes no randomness).
    """
    if not 1 <= m_parent <= m_child:
        raise ValueError(f"need 1 <= m_parent <= m_child, got {m_parent}, {m_child}")
    q, r = divmod(m_child, m_parent)
    counts = torch.full((m_parent,), q, dtype=torch.long)
    if r:
        extra = torch.randperm(m_parent, generator=generator, device=generator.device)[:r]
        counts[extra.cpu()] += 1
    return counts


def parents_from_counts(counts: Tensor) -> Tensor:
    """counts[M_l] -> parents[sum(counts)]: parent index of every child, sorted (contiguous)."""
    return torch.repeat_interleave(torch.arange(counts.shape[0]), counts.cpu())


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model for every parameter; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(b)


def cfg_drop_mask(batch: int, p: float, generator: torch.Generator | None, device: Any) -> Tensor:
    """drop[B] bool: each sample's return replaced by the null embedding with probability p."""
    u = torch.rand((batch,), generator=generator, device=device)
    return u < p


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """rewards[E, T, N] -> population return-to-go[E, T] = mean_i Σ_{t' ≥ t} r_{i,t'}."""
    r = np.asarray(rewards, dtype=np.float64).mean(axis=2)
    return np.flip(np.cumsum(np.flip(r, axis=1), axis=1), axis=1).copy()


def ddim_sequence(n_steps: int, n_sampling: int) -> list[int]:
    """Descending schedule indices round(linspace(K − 1, 0, S)): distinct for S ≤ K."""
    if not 1 <= n_sampling <= n_steps:
        raise ValueError(f"sampling steps must be in 1..{n_steps}, got {n_sampling}")
    return [int(v) for v in np.rint(np.linspace(n_steps - 1, 0, n_sampling))]


@dataclass
class _Conditioning:
    """The denoiser's conditioning that stays fixed through one sampling call (METHOD.md §2).

    Context (and target-return) embeddings, the step embedding of every step the sampler visits,
    and the embedding of the current stage's in-painted first states (`at_stage`): computed once
    per call or stage, not at every denoising step, where they were most of a small denoiser
    call's fixed cost. Each step then runs only `MeanFieldDenoiser.trunk`.
    """

    net: MeanFieldDenoiser
    ctx_u: Tensor  # [B, hidden]: context without return (a guided model's null embedding)
    ctx_c: Tensor | None  # [B, hidden]: context + target return; None = unguided or w = 0
    steps: dict[int, Tensor]  # k -> step embedding [1, hidden]
    state: Tensor | None = None  # [B, M, hidden] of the current stage's first states

    def at_stage(self, first_states: Tensor) -> None:
        self.state = self.net.state_embedding(first_states)


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
        self.inverse_dynamics = cfg.action_head == "inverse_dynamics"
        # D: states ⊕ actions, or states only when an inverse-dynamics head reads the actions.
        self.transition_dim = state_dim if self.inverse_dynamics else state_dim + n_actions
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
                return_embedding=cfg.return_guidance,
            )
        )
        # Built after the denoiser, so the denoiser's initial weights do not depend on it.
        self.inverse: InverseDynamics | None = None
        self.joint: JointNet | None = None
        if self.inverse_dynamics:
            self.inverse = InverseDynamics(state_dim, context_dim, n_actions, cfg.inverse_hidden)
            self.joint = JointNet(self.model, self.inverse)
        self.ema_model: MeanFieldDenoiser | None = None
        self.ema_inverse: InverseDynamics | None = None
        if cfg.ema_decay > 0.0:
            self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
            if self.inverse is not None:
                self.ema_inverse = copy.deepcopy(self.inverse).requires_grad_(False)
        # Return normaliser and per-t targets of the guidance (see `set_return_stats`).
        self.return_stats: dict[str, Tensor] | None = None
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
        for module in (self.model, self.inverse, self.ema_model, self.ema_inverse):
            if module is not None:
                module.to(device)
        self.schedule.to(device)
        return self

    def train_module(self) -> nn.Module:
        """The module to optimise (and wrap for DDP): the denoiser, or denoiser + inverse head."""
        return self.joint if self.joint is not None else self.model

    def update_ema(self) -> None:
        """One EMA step after an optimizer step (no-op when ema_decay = 0)."""
        if self.ema_model is not None:
            ema_update(self.ema_model, self.model, self.cfg.ema_decay)
        if self.ema_inverse is not None and self.inverse is not None:
            ema_update(self.ema_inverse, self.inverse, self.cfg.ema_decay)

    def sampling_model(self) -> MeanFieldDenoiser:
        """The denoiser used for sampling and acting: the EMA copy when enabled."""
        return self.ema_model if self.ema_model is not None else self.model

    def sampling_inverse(self) -> InverseDynamics | None:
        return self.ema_inverse if self.ema_inverse is not None else self.inverse

    # ------------------------------------------------------------------ returns (guidance)

    def set_return_stats(self, rtg: np.ndarray) -> None:
        """Fit the return normaliser and the per-t guidance targets from returns-to-go[E, T]."""
        r = np.asarray(rtg, dtype=np.float64)
        if r.ndim != 2 or r.size == 0:
            raise ValueError(f"returns-to-go must be [E, T] and non-empty, got {r.shape}")
        lo, hi = float(r.min()), float(r.max())
        target = np.quantile(r, self.cfg.guidance_quantile, axis=0)  # [T]
        self.return_stats = {
            "lo": torch.tensor(lo, dtype=torch.float64),
            "hi": torch.tensor(hi, dtype=torch.float64),
            "target": torch.as_tensor(self.normalise_returns(target, lo, hi)),
        }

    def normalise_returns(
        self, rtg: np.ndarray, lo: float | None = None, hi: float | None = None
    ) -> np.ndarray:
        """Returns -> [-1, 1] by the dataset's min/max (0 when the data has one value)."""
        if lo is None or hi is None:
            if self.return_stats is None:
                raise ValueError("no return statistics: call set_return_stats first")
            lo, hi = float(self.return_stats["lo"]), float(self.return_stats["hi"])
        r = np.asarray(rtg, dtype=np.float64)
        if hi <= lo:
            return np.zeros_like(r)
        return 2.0 * (r - lo) / (hi - lo) - 1.0

    def guidance_target(self, t: int) -> float | None:
        """Normalised target return at decision time t; None when guidance is off."""
        if not self.cfg.return_guidance:
            return None
        if self.return_stats is None:
            raise ValueError("return_guidance is on but the planner has no return statistics")
        target = self.return_stats["target"]
        return float(target[min(max(t, 0), target.shape[0] - 1)])

    def dims(self) -> dict[str, int]:
        return {
            "state_dim": self.state_dim,
            "n_actions": self.n_actions,
            "context_dim": self.context_dim,
        }

    def state_dict(self) -> dict[str, Any]:
        """Weights plus config and dims, only tensors and primitives (torch.load(weights_only))."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "config": self.cfg.model_dump(),
            "dims": self.dims(),
        }
        extra = {
            "inverse": self.inverse,
            "ema_model": self.ema_model,
            "ema_inverse": self.ema_inverse,
        }
        for name, module in extra.items():
            if module is not None:
                state[name] = module.state_dict()
        if self.return_stats is not None:
            state["returns"] = dict(self.return_stats)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "dims" in state and dict(state["dims"]) != self.dims():
            raise ValueError(f"dims mismatch: saved {state['dims']}, planner {self.dims()}")
        self.model.load_state_dict(state["model"])
        extra = {
            "inverse": self.inverse,
            "ema_model": self.ema_model,
            "ema_inverse": self.ema_inverse,
        }
        for name, module in extra.items():
            if module is None:
                continue
            if name in state:
                module.load_state_dict(state[name])
            elif name == "inverse":
                raise ValueError("the state has no inverse-dynamics head, this planner needs one")
            else:  # a state saved without EMA: the average starts from the loaded weights
                source = self.model if name == "ema_model" else self.inverse
                assert source is not None
                module.load_state_dict(source.state_dict())
        if "returns" in state:
            self.return_stats = {k: torch.as_tensor(v) for k, v in state["returns"].items()}

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

        L = mean_b (1/M) Σ_j w_j · mean_{(h, d) not in-painted, h valid} (ε_j − ε̂_j)².
        batch: x[B, M, H, D], ctx[B, C], optional weights[B, M] (already normalised and clipped,
        see `value_weights`; None = all ones), optional valid[B, H] (0 = a step padded past the
        episode end, see `WindowSampler`; None = all valid). `model` overrides self.model (e.g.
        a DDP wrapper).
        """
        net = self.train_module() if model is None else model
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
        k = torch.randint(0, self.cfg.diffusion_steps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_noisy = self.inpaint(self.q_sample(x0, k, noise), x0[:, :, 0, : self.state_dim])
        kwargs: dict[str, Any] = {}
        if self.cfg.return_guidance:
            if "ret" not in batch:
                raise ValueError("return_guidance is on: the batch needs ret[B] (see to_batch)")
            # Drawn after k and the noise, so the unguided loss consumes the same randomness.
            drop = cfg_drop_mask(b, self.cfg.cfg_dropout, generator, x0.device)
            kwargs = {"ret": batch["ret"], "drop": drop}
        logits: Tensor | None = None
        if self.inverse_dynamics:
            eps_hat, logits = net(x_noisy, k, ctx, x0=x0, **kwargs)
        else:
            eps_hat = net(x_noisy, k, ctx, **kwargs)
        mask = self.loss_mask(h, x0.device)  # [H, D]
        valid = batch.get("valid")
        if valid is None:
            per_particle = ((noise - eps_hat) ** 2 * mask).sum(dim=(2, 3)) / mask.sum()  # [B, M]
        else:
            cells = mask * valid.to(mask.dtype)[:, None, :, None]  # [B, 1, H, D]
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
                pairs = valid[:, None, 1:].to(ce.dtype)  # [B, 1, H - 1]
                per_pair = (ce * pairs).sum(dim=2) / pairs.sum(dim=2).clamp_min(1.0)
            ce_loss = (weights * per_pair).mean()
            loss = loss + ce_loss
            info["loss_inverse"] = float(ce_loss.detach())
        if "drop" in kwargs:
            info["cfg_dropped"] = float(kwargs["drop"].sum())
        info["loss"] = float(loss.detach())
        return loss, info

    # ------------------------------------------------------------------ sampling

    def _randn(self, shape: Sequence[int], generator: torch.Generator) -> Tensor:
        # Drawn on the generator's device, then moved: a CPU generator reproduces on any device.
        return torch.randn(tuple(shape), generator=generator, device=generator.device).to(
            self.device
        )

    def sampling_sequence(self) -> list[int]:
        """Descending schedule indices the sampler visits: K − 1..0 (DDPM) or strided (DDIM)."""
        if self.cfg.sampler == "ddim":
            return ddim_sequence(self.cfg.diffusion_steps, self.cfg.n_sampling_steps)
        return list(range(self.cfg.diffusion_steps - 1, -1, -1))

    def _conditioning(
        self, ctx: Tensor, ret: Tensor | None, steps: Sequence[int] = ()
    ) -> _Conditioning:
        """Embeddings of ctx[B, C] (and of the target return ret[B] when guidance is on and
        w ≠ 0) and of the diffusion steps `steps`, for one sampling call."""
        net = self.sampling_model()
        guided = ret is not None and self.cfg.return_guidance and self.cfg.guidance != 0.0
        steps = list(steps)
        table = (
            net.step_embedding(torch.tensor(steps, device=self.device, dtype=torch.long))
            if steps
            else None
        )
        return _Conditioning(
            net=net,
            ctx_u=net.context_embedding(ctx),
            ctx_c=net.context_embedding(ctx, ret) if guided else None,
            steps={} if table is None else {k: table[i : i + 1] for i, k in enumerate(steps)},
        )

    def _eps(self, x: Tensor, step: Tensor, cond: _Conditioning) -> Tensor:
        """ε̂ at x[B, M, H, D] for step embeddings step[B or 1, hidden]: ε_u, or with guidance
        ε_u + w·(ε_c − ε_u)."""

        def eps(ctx_embedding: Tensor) -> Tensor:
            shared = (step + ctx_embedding)[:, None]  # [B, 1, hidden]
            return cond.net.trunk(x, shared if cond.state is None else shared + cond.state)

        eps_u = eps(cond.ctx_u)
        if cond.ctx_c is None:
            return eps_u
        return eps_u + self.cfg.guidance * (eps(cond.ctx_c) - eps_u)

    @torch.no_grad()
    def guided_eps(self, x: Tensor, kk: Tensor, ctx: Tensor, ret: Tensor | None = None) -> Tensor:
        """ε̂ of the sampling model at steps kk[B]; with a return, ε_u + w·(ε_c − ε_u) (w = 0:
        ε_u only)."""
        cond = self._conditioning(ctx, ret)
        cond.at_stage(x[:, :, 0, : self.state_dim])
        return self._eps(x, cond.net.step_embedding(kk), cond)

    def _ret(self, ret: Tensor | float | None, batch: int) -> Tensor | None:
        if ret is None:
            return None
        r = torch.as_tensor(ret, dtype=torch.float32, device=self.device)
        return r.expand(batch) if r.ndim == 0 else r

    def _x0(self, x: Tensor, k: int, cond: _Conditioning) -> Tensor:
        """x̂_0 = x/sqrt(ᾱ_k) − sqrt(1/ᾱ_k − 1)·ε̂ at a step k embedded in `cond`, clipped to
        [-1, 1] if cfg.clip_denoised (every step of the sampler, and by §4 to branch particles)."""
        c = self.schedule.scalars
        eps = self._eps(x, cond.steps[k], cond)
        x0 = torch.sub(
            x * c["sqrt_recip_alphas_cumprod"][k], eps, alpha=c["sqrt_recipm1_alphas_cumprod"][k]
        )
        return x0.clamp_(-1.0, 1.0) if self.cfg.clip_denoised else x0

    def ddim_sigma(self, k: int, k_prev: int) -> float:
        """σ of the DDIM step k -> k_prev (k_prev = -1: the clean end, ᾱ = 1)."""
        ac = self.schedule.alphas_cumprod64
        a_k, a_p = float(ac[k]), (float(ac[k_prev]) if k_prev >= 0 else 1.0)
        return self.cfg.ddim_eta * math.sqrt((1.0 - a_p) / (1.0 - a_k) * (1.0 - a_k / a_p))

    @torch.no_grad()
    def plan_actions(self, x0: Tensor, ctx: Tensor) -> Tensor:
        """Planned actions of sampled particles: x0[B, M, H, D], ctx[B, C] -> long[B, M, H'].

        H' = H when actions are diffused (argmax of the action features), H − 1 with the
        inverse-dynamics head (argmax of f(s_h, s_{h+1}, c) on consecutive planned states).
        """
        inverse = self.sampling_inverse()
        if inverse is None:
            return decode_actions(x0[..., self.state_dim :])
        ctx = ctx.to(x0.device, torch.float32)[:, None, None, :]
        return inverse(x0[:, :, :-1], x0[:, :, 1:], ctx).argmax(dim=-1)

    @torch.no_grad()
    def _denoise_steps(
        self,
        x: Tensor,
        steps: Sequence[int],
        cond: _Conditioning,
        first_states: Tensor,
        generator: torch.Generator,
        targets: Sequence[int],
    ) -> Tensor:
        """Steps x_k -> x_{k'} for k in `steps` (descending), k' = targets[i] (the next index
        of the sampling sequence, -1 = clean), in-painting first_states after each.

        DDPM: ancestral posterior step (needs k' = k − 1); DDIM: the step of the module doc.
        `cond` holds the embeddings of `steps` and of first_states (`at_stage`).
        """
        c = self.schedule.scalars
        ddim = self.cfg.sampler == "ddim"
        for k, k_prev in zip(steps, targets, strict=True):
            x0_hat = self._x0(x, k, cond)
            if ddim:
                ac = self.schedule.alphas_cumprod64
                a_k, a_p = float(ac[k]), (float(ac[k_prev]) if k_prev >= 0 else 1.0)
                eps = (x - math.sqrt(a_k) * x0_hat) / math.sqrt(1.0 - a_k)
                sigma = self.ddim_sigma(k, k_prev)
                x = math.sqrt(a_p) * x0_hat + math.sqrt(max(1.0 - a_p - sigma**2, 0.0)) * eps
                if sigma > 0.0:
                    x = x + sigma * self._randn(x.shape, generator)
            else:
                x = torch.add(
                    x0_hat * c["posterior_mean_coef1"][k], x, alpha=c["posterior_mean_coef2"][k]
                )
                if k > 0:
                    x = x.add_(self._randn(x.shape, generator), alpha=c["posterior_std"][k])
            x[:, :, 0, : self.state_dim] = first_states  # in-paint (x is this step's new tensor)
        return x

    @torch.no_grad()
    def sample(
        self,
        ctx: Tensor,
        first_states: Tensor,
        generator: torch.Generator,
        ret: Tensor | float | None = None,
    ) -> Tensor:
        """Flat sampler: ctx[B, C], first_states[B, M, d_s] -> x0[B, M, H, D], H = cfg.window.

        All randomness comes from `generator`, so a seeded generator reproduces the sample.
        ret: normalised target return (scalar or [B]) for guidance; None = unconditional.
        """
        b, m, _ = first_states.shape
        ctx = ctx.to(self.device, torch.float32)
        first_states = first_states.to(self.device, torch.float32)
        shape = (b, m, self.cfg.window, self.transition_dim)
        x = self.inpaint(self._randn(shape, generator), first_states)
        steps = self.sampling_sequence()
        cond = self._conditioning(ctx, self._ret(ret, b), steps)
        cond.at_stage(first_states)
        return self._denoise_steps(x, steps, cond, first_states, generator, [*steps[1:], -1])

    @torch.no_grad()
    def sample_transitions(
        self,
        ctx: Tensor,
        first_states: Tensor,
        generator: torch.Generator,
        t: int | None = None,
    ) -> Tensor:
        """Flat sample in the data layout x[B, M, H, d_s + A] (states ⊕ action one-hots) for any
        action head, e.g. to compare plans with data windows; with return guidance the target
        return at decision time t. With the inverse-dynamics head the actions are the head's
        (H − 1 of them) and the last step repeats the one before it. Without guidance and with
        diffused actions this is exactly `sample`."""
        x0 = self.sample(
            ctx, first_states, generator, ret=None if t is None else self.guidance_target(t)
        )
        if not self.inverse_dynamics:
            return x0
        actions = self.plan_actions(x0, ctx)  # [B, M, H - 1]
        actions = torch.cat([actions, actions[..., -1:]], dim=-1)
        return torch.cat([x0, encode_actions(actions, self.n_actions).to(x0)], dim=-1)

    # ------------------------------------------------------------------ coarse-to-fine (§4)

    def plan_stages(
        self, m_final: int, generator: torch.Generator, cfg: PlannerConfig | None = None
    ) -> StagePlan:
        """Stage counts, steps and sampled parent maps for a final count M_L = m_final.

        Counts are `cfg.stage_particles(m_final)` and steps `cfg.resolved_stage_steps()` (cfg
        defaults to self.cfg). Consecutive stages with equal counts (small M_L) are merged, their
        steps added, so counts are strictly increasing; one stage left = the flat sampler, and then
        nothing is drawn from `generator`. Branching draws (see `branch_counts`) are made here,
        coarsest boundary first, before any noise of the sampler.
        """
        cfg = self.cfg if cfg is None else cfg
        counts: list[int] = []
        steps: list[int] = []
        for m, k in zip(cfg.stage_particles(m_final), cfg.resolved_stage_steps(), strict=True):
            if counts and counts[-1] == m:
                steps[-1] += k
            else:
                counts.append(m)
                steps.append(k)
        parents = [
            parents_from_counts(branch_counts(counts[i], counts[i + 1], generator))
            for i in range(len(counts) - 1)
        ]
        return StagePlan(counts=counts, steps=steps, parents=parents)

    def branch_particles(self, x0_hat: Tensor, parents: Tensor, k: int, noise: Tensor) -> Tensor:
        """Children at step k from parents' clean estimates (no in-painting, no randomness).

        x0_hat[B, M_l, H, D], parents[M_{l+1}] long, noise[B, M_{l+1}, H, D] ->
        x_k[B, M_{l+1}, H, D] = sqrt(ᾱ_k)·x̂_0[:, parents] + sqrt(1 − ᾱ_k)·noise.
        """
        s = self.schedule
        kk = torch.full((x0_hat.shape[0],), k, device=x0_hat.device, dtype=torch.long)
        return s.q_sample(x0_hat[:, parents.to(x0_hat.device)], kk, noise)

    @torch.no_grad()
    def sample_coarse_to_fine(
        self,
        ctx: Tensor,
        stage_first_states: Sequence[Tensor],
        parents: Sequence[Tensor],
        generator: torch.Generator,
        stage_steps: Sequence[int] | None = None,
        ret: Tensor | float | None = None,
    ) -> Tensor:
        """Hierarchical sampler of §4 -> x0[B, M_L, H, D].

        ctx[B, C]; stage_first_states[l][B, M_l, d_s], the in-painted first states of every stage;
        parents[l][M_{l+1}] long, the parent (index in stage l) of every particle of stage l + 1;
        stage_steps[L] (K_l, summing to K; None = cfg.resolved_stage_steps()). Stage l runs its K_l
        steps on M_l particles (the last step of a non-final stage only estimates x̂_0); the first
        step k of the next stage starts from `branch_particles` of those x̂_0 with fresh noise,
        in-painted with the children's first states.
        All randomness comes from `generator`; with one stage this is exactly `sample`.
        """
        n_stages = len(stage_first_states)
        steps_l = list(self.cfg.resolved_stage_steps() if stage_steps is None else stage_steps)
        if len(steps_l) != n_stages or len(parents) != n_stages - 1:
            raise ValueError(
                f"need one stage_steps entry per stage and one parents map per boundary: "
                f"{n_stages} stages, {len(steps_l)} stage_steps, {len(parents)} parents"
            )
        all_steps = self.sampling_sequence()
        if any(k < 1 for k in steps_l) or sum(steps_l) != len(all_steps):
            raise ValueError(
                f"stage_steps must be >= 1 and sum to the sampling steps ({len(all_steps)}), "
                f"got {steps_l}"
            )
        # Target of every step: the next index of the (possibly strided) sequence, -1 = clean.
        nxt = dict(zip(all_steps, [*all_steps[1:], -1], strict=True))
        firsts = [f.to(self.device, torch.float32) for f in stage_first_states]
        b = firsts[0].shape[0]
        for i, p in enumerate(parents):
            m_par, m_child = firsts[i].shape[1], firsts[i + 1].shape[1]
            if p.shape != (m_child,) or int(p.min()) < 0 or int(p.max()) >= m_par:
                raise ValueError(
                    f"parents[{i}] must be [M_{i + 2}] = [{m_child}] indices in [0, {m_par}), "
                    f"got shape {tuple(p.shape)}"
                )
        ctx = ctx.to(self.device, torch.float32)
        cond = self._conditioning(ctx, self._ret(ret, b), all_steps)
        shape = (b, firsts[0].shape[1], self.cfg.window, self.transition_dim)
        x = self.inpaint(self._randn(shape, generator), firsts[0])
        start = 0
        for i in range(n_stages):
            stage = all_steps[start : start + steps_l[i]]
            start += steps_l[i]
            cond.at_stage(firsts[i])
            if i == n_stages - 1:
                return self._denoise_steps(
                    x, stage, cond, firsts[i], generator, [nxt[k] for k in stage]
                )
            # A non-final stage needs only x̂_0 at its last step (its children are re-noised
            # from it), so that step is a clean estimate, not an ancestral step.
            x = self._denoise_steps(
                x, stage[:-1], cond, firsts[i], generator, [nxt[k] for k in stage[:-1]]
            )
            x0_hat = self._x0(x, stage[-1], cond)
            k = all_steps[start]  # the next step: children are noised to level k
            child_shape = (b, firsts[i + 1].shape[1], self.cfg.window, self.transition_dim)
            noise = self._randn(child_shape, generator)
            x = self.branch_particles(x0_hat, parents[i], k, noise)
            x = self.inpaint(x, firsts[i + 1])
        raise AssertionError("unreachable: the last stage returns")

"""MF-Diffuser: the object that ties its parts together.

The parts, one job each: the network (`denoiser.py`: `MeanFieldDenoiser`, and the optional
`InverseDynamics` head), the objective (`objective.py`: the value-weighted denoising loss with
in-painting and the inverse-dynamics cross-entropy), the sampler (`sampling.py`: the noise
schedule, DDPM and DDIM schedulers, flat and coarse-to-fine sampling over any model) and acting
(`acting.py`). `MFDiffuser` holds the networks, their EMA copies and the return statistics of
guidance, and saves and loads them.

Axes: x[B, M, H, D] = (batch, particle, time, feature) with D = d_s + A; per step the feature
vector is the state features ⊕ the action one-hot scaled to [-1, 1] (states only, D = d_s, when
an inverse-dynamics head reads the actions).

Options (all off by default, each a PlannerConfig field):
- Classifier-free return guidance (`return_guidance`): the conditioning return of a training
  window is the normalised population return-to-go of its episode from the window start (mean
  over the episode's N agents of Σ_{t'≥t0} r): the planner plans for the population, and that
  return is defined for every batch (no agent index needed). It is dropped (null embedding) with
  probability `cfg_dropout` per sample; sampling uses ε = ε_u + w·(ε_c − ε_u), w = `guidance`,
  with the target return at t = the `guidance_quantile` quantile of the data's returns-to-go at t.
  Normalisation: 2·(R − min)/(max − min) − 1 over all (episode, t) of the dataset.
- Inverse dynamics (`action_head = 'inverse_dynamics'`): `plan_actions` reads the actions off
  consecutive planned states (H − 1 actions per particle).
- DDIM (`sampler = 'ddim'`): see `sampling.DDIMScheduler`; coarse-to-fine stages split the
  strided sequence.
- EMA (`ema_decay` > 0): a moving average of the weights (denoiser and inverse head), updated by
  `update_ema` after every optimizer step and used by every sampling method.
- A value guide (`guide`, set by the `diffuser` method): see `sampling.Sampler`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.denoiser import InverseDynamics, JointNet, MeanFieldDenoiser
from mfdiffuser.planner.objective import (
    DenoisingObjective,
    decode_actions,
    encode_actions,
    inpaint,
    returns_to_go,
    value_weights,
)
from mfdiffuser.planner.sampling import (
    Conditioning,
    DDIMScheduler,
    Guide,
    NoiseSchedule,
    Sampler,
    StagePlan,
    branch_counts,
    make_scheduler,
    parents_from_counts,
    plan_stages,
)

# Re-exported: the names callers import from here.
__all__ = [
    "MFDiffuser",
    "NoiseSchedule",
    "StagePlan",
    "branch_counts",
    "decode_actions",
    "encode_actions",
    "parents_from_counts",
    "returns_to_go",
    "value_weights",
]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model for every parameter; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(b)


class MFDiffuser:
    """The MF-Diffuser planner: its networks (any denoiser with MeanFieldDenoiser's
    interface via `model`), noise schedule, objective, sampler, EMA and return statistics."""

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
        self.objective = DenoisingObjective(
            self.schedule,
            state_dim,
            n_actions,
            self.inverse_dynamics,
            cfg.return_guidance,
            cfg.cfg_dropout,
            first_action_weight=cfg.first_action_weight,
        )
        self.guide: Guide | None = None  # a value guide of the reverse steps (`diffuser`)

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
        return inpaint(x, first_states)

    def loss(
        self,
        batch: dict[str, Tensor],
        model: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """The objective (`DenoisingObjective`) of one batch; `model` overrides the train
        module (e.g. a DDP wrapper)."""
        return self.objective(batch, self.train_module() if model is None else model, generator)

    # ------------------------------------------------------------------ sampling

    def sampler(self) -> Sampler:
        """The configured scheduler (DDPM or DDIM) over this planner's schedule, with its guide."""
        return Sampler(
            make_scheduler(self.cfg, self.schedule),
            self.state_dim,
            self.cfg.clip_denoised,
            self.guide,
            self.cfg.branch,
        )

    def sampling_sequence(self) -> list[int]:
        """Descending schedule indices the sampler visits: K − 1..0 (DDPM) or strided (DDIM)."""
        return make_scheduler(self.cfg, self.schedule).timesteps()

    def ddim_sigma(self, k: int, k_prev: int) -> float:
        """σ of the DDIM step k -> k_prev (k_prev = -1: the clean end, ᾱ = 1)."""
        return DDIMScheduler(self.schedule, self.cfg.n_sampling_steps, self.cfg.ddim_eta).sigma(
            k, k_prev
        )

    def conditioning(
        self, ctx: Tensor, ret: Tensor | float | None, steps: Sequence[int] = ()
    ) -> Conditioning:
        """The sampling model's conditioning on ctx[B, C], the target return ret (scalar or
        [B]; used only with return guidance) and the diffusion steps `steps`."""
        ctx = ctx.to(self.device, torch.float32)
        r = None
        if ret is not None and self.cfg.return_guidance:
            r = torch.as_tensor(ret, dtype=torch.float32, device=self.device)
            r = r.expand(ctx.shape[0]) if r.ndim == 0 else r
        return Conditioning.of(self.sampling_model(), ctx, r, self.cfg.guidance, steps)

    @torch.no_grad()
    def guided_eps(self, x: Tensor, kk: Tensor, ctx: Tensor, ret: Tensor | None = None) -> Tensor:
        """ε̂ of the sampling model at steps kk[B]; with a return, ε_u + w·(ε_c − ε_u) (w = 0:
        ε_u only)."""
        cond = self.conditioning(ctx, ret)
        cond.at_stage(x[:, :, 0, : self.state_dim])
        return cond.eps(x, cond.net.step_embedding(kk))

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

    def plan_action_probs(self, x0: Tensor, ctx: Tensor) -> Tensor:
        """The posterior over each particle's planned actions: x0[B, M, H, D] -> probs[B, M, H', A].

        With diffused actions (features 2·onehot − 1) the clean estimate of the action channel
        is x̂_0 = E[2·onehot(a) − 1 | x_k] = 2·p(a | x_k) − 1, so p = (x̂_0 + 1) / 2, clipped at 0
        and renormalised (a row clipped to all zeros falls back to its decoded action). With
        the inverse-dynamics head: the softmax of its logits. argmax of this is `plan_actions`.
        """
        inverse = self.sampling_inverse()
        if inverse is not None:
            ctx = ctx.to(x0.device, torch.float32)[:, None, None, :]
            return inverse(x0[:, :, :-1], x0[:, :, 1:], ctx).softmax(dim=-1)
        feats = x0[..., self.state_dim :]
        p = ((feats + 1.0) / 2.0).clamp_min(0.0)
        total = p.sum(dim=-1, keepdim=True)
        hard = nn.functional.one_hot(decode_actions(feats), feats.shape[-1]).to(p.dtype)
        return torch.where(total > 1e-6, p / total.clamp_min(1e-6), hard)

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
        return self.sampler().sample(
            lambda steps: self.conditioning(ctx, ret, steps),
            first_states.to(self.device, torch.float32),
            self.cfg.window,
            self.transition_dim,
            generator,
        )

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

    # ------------------------------------------------------------------ coarse-to-fine

    def plan_stages(
        self, m_final: int, generator: torch.Generator, cfg: PlannerConfig | None = None
    ) -> StagePlan:
        """`sampling.plan_stages` for a final count m_final (cfg defaults to self.cfg)."""
        return plan_stages(self.cfg if cfg is None else cfg, m_final, generator)

    def branch_particles(self, x0_hat: Tensor, parents: Tensor, k: int, noise: Tensor) -> Tensor:
        """`Sampler.branch_particles`: children at step k from parents' clean estimates."""
        return self.sampler().branch_particles(x0_hat, parents, k, noise)

    def sample_coarse_to_fine(
        self,
        ctx: Tensor,
        stage_first_states: Sequence[Tensor],
        parents: Sequence[Tensor],
        generator: torch.Generator,
        stage_steps: Sequence[int] | None = None,
        ret: Tensor | float | None = None,
    ) -> Tensor:
        """`Sampler.sample_coarse_to_fine` -> x0[B, M_L, H, D] (stage_steps None =
        cfg.resolved_stage_steps()); with one stage this is exactly `sample`."""
        return self.sampler().sample_coarse_to_fine(
            lambda steps: self.conditioning(ctx, ret, steps),
            [f.to(self.device, torch.float32) for f in stage_first_states],
            parents,
            self.cfg.resolved_stage_steps() if stage_steps is None else stage_steps,
            self.cfg.window,
            self.transition_dim,
            generator,
        )

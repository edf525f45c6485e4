"""MADiff, the joint diffuser (a baseline), on the Method interface.

One denoiser over the windows of all N agents of an episode, with attention across agents after
every block (`mfdiffuser.baselines.joint_diffuser.JointDenoiser`), plugged into MF-Diffuser's own
`MFDiffuser`: the same cosine schedule, the same loss with value weighting off (β = 0), the same
in-painting of every agent's first state and the same flat sampler. Every agent is a particle:
a training sample holds all N agents of an episode (`WindowSampler` with M = N draws them all,
in random order), and acting samples one joint window for all N agents of the population, then
reads actions off it by the finite-state rule (per-state table of the agents' first actions).
The frozen policy table, which has no N of its own, is read from joint samples of
`table_agents` agents, each agent adding its decoded action (`readout` 'hard', the default;
'soft' adds its action posterior, see `mfdiffuser.planner.acting`). The attention after each
block is gated by the block's conditioning, from zero at initialisation
(`joint_diffuser.AgentAttention`); method version 2.

Agent limit (`MAX_AGENTS`): attention costs O(N²) time per layer, and acting samples all N agents
jointly at every decision time. Measured with `benchmarks/joint_vs_mf.py` (one planning step of
crowd_1d, 1 thread, hidden 64, 2 blocks, 4 heads, H = 4, K = 20, on a shared 2-core machine):
with the fused attention 137 ms at N = 64, 244 ms at N = 256 and 2.3 s at N = 1,024 (MF-Diffuser
0.15 s there); with the naive one 20 s and 148 MiB at N = 1,024. At N = 1,024 one crowd_1d
evaluation episode (10 steps) is already about 23 s, and time grows as N², so `madiff` runs for
N ≤ 1,024 (the registry's `max_agents`): above it a config is refused before any Ray work and a
sweep skips the cell.

Heavy imports are made on first use, so validating a config that names it does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mfdiffuser.methods.base import Batches, Dims, Policy, TrainedMethod
from mfdiffuser.planner.config import (
    ClipDenoised,
    DiffusionSteps,
    Draws,
    EmaDecay,
    FirstActionWeight,
    Hidden,
    KernelSize,
    NBlocks,
    PlannerConfig,
    Readout,
    Smoothing,
    Window,
)

MAX_AGENTS = 1024


class Params(BaseModel):
    """MADiff's parameters; those it shares with MF-Diffuser are `PlannerConfig`'s own field
    definitions (in madiff every agent is a particle)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    window: Window = 4
    diffusion_steps: DiffusionSteps = 20
    hidden: Hidden = 64
    n_blocks: NBlocks = 2
    kernel_size: KernelSize = 3
    heads: int = Field(4, ge=1, le=4096, description="Attention heads; must divide hidden.")
    attention: Literal["fused", "naive"] = Field(
        "fused",
        description="'fused': torch's scaled_dot_product_attention; 'naive': the [B·H, heads, "
        "N, N] score matrix materialised (the same output, N² memory).",
    )
    clip_denoised: ClipDenoised = True
    table_agents: int = Field(
        64,
        ge=1,
        le=MAX_AGENTS,
        description=f"Agents of each joint sample the frozen policy table is read from, "
        f"1..{MAX_AGENTS} (acting always samples all N agents).",
    )
    smoothing: Smoothing = 0.0
    draws: Draws = 16
    # Soft (Rao-Blackwellised): each agent of a joint sample adds its action posterior, not one
    # decoded action, to the frozen table (and to acting's per-state table).
    readout: Readout = "hard"
    # On by default: the frozen table is read off the final weights, and with a joint sample
    # per batch row (one diffusion step and one decision time for all N agents) the last steps'
    # weights are noisy; their average is not.
    ema_decay: EmaDecay = 0.99
    first_action_weight: FirstActionWeight = 10.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.hidden % self.heads:
            raise ValueError(
                f"heads = {self.heads} must divide hidden = {self.hidden}; "
                f"allowed: divisors of {self.hidden}"
            )
        return self

    def activations(self, batch_size: int, n_agents: int) -> list[list[tuple[str, int]]]:
        """Its largest activations in training, as named factors (the config check bounds each):
        the trunk over all N agents of every window, batch x N x window x hidden, and with
        attention = 'naive' the score matrix of every layer, batch x window x heads x N²."""
        batch, window = ("train.batch_size", batch_size), ("method.params.window", self.window)
        agents = ("data.n_agents", n_agents)
        trunk = [batch, agents, window, ("method.params.hidden", self.hidden)]
        if self.attention == "fused":
            return [trunk]
        return [trunk, [batch, window, ("method.params.heads", self.heads), agents, agents]]

    @property
    def n_particles(self) -> int:
        """Every agent is a particle: a sample of N agents takes min(N, this) = N (the plan
        quality windows of an evaluation read it)."""
        return MAX_AGENTS

    def planner_config(self) -> PlannerConfig:
        """The shared planner's settings: flat sampler, β = 0, every agent a particle when
        acting (max_particles = MAX_AGENTS >= N)."""
        return PlannerConfig(
            window=self.window,
            max_particles=MAX_AGENTS,
            diffusion_steps=self.diffusion_steps,
            hidden=self.hidden,
            n_blocks=self.n_blocks,
            kernel_size=self.kernel_size,
            clip_denoised=self.clip_denoised,
            stages=1,
            beta=0.0,
            smoothing=self.smoothing,
            draws=self.draws,
            readout=self.readout,
            ema_decay=self.ema_decay,
            first_action_weight=self.first_action_weight,
        )


class _JointPolicy(Policy):
    """Acting: one joint sample of all N agents per decision time; the frozen table: joint
    samples of `table_agents` agents along the policy's own exact flow."""

    def __init__(self, planner: Any, game: Any, prior: np.ndarray, seed: int, table: int) -> None:
        import torch

        from mfdiffuser.planner.acting import FiniteStatePlannerPolicy

        cfg = planner.cfg
        self.live = FiniteStatePlannerPolicy(planner, game, prior, cfg)
        self.frozen = FiniteStatePlannerPolicy(
            planner, game, prior, cfg.model_copy(update={"max_particles": table})
        )
        self.generator = torch.Generator().manual_seed(seed)

    def act(self, t: int, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if len(states) > MAX_AGENTS:
            raise ValueError(f"madiff acts for at most {MAX_AGENTS} agents, got {len(states)}")
        return np.asarray(self.live.act(t, states, rng, self.generator))

    def expected_table(
        self, propagate_fn: Callable[[np.ndarray], np.ndarray], seed: int
    ) -> np.ndarray:
        return self.frozen.expected_table(propagate_fn, seed)


class MADiffMethod(TrainedMethod):
    params: Params
    generative = True

    def __init__(self, params: Params, dims: Dims) -> None:
        from mfdiffuser.baselines.joint_diffuser import JointDenoiser
        from mfdiffuser.planner.diffusion import MFDiffuser

        super().__init__(params, dims)
        denoiser = JointDenoiser(
            dims.feature_dim + dims.n_actions,
            dims.context_dim,
            dims.feature_dim,
            hidden=params.hidden,
            n_blocks=params.n_blocks,
            kernel_size=params.kernel_size,
            heads=params.heads,
            attention=params.attention,
        )
        self.planner = MFDiffuser(
            params.planner_config(),
            dims.feature_dim,
            dims.n_actions,
            dims.context_dim,
            model=denoiser,
        )

    def batches(self, arrays: Any, game: Any, seed: int) -> Batches:
        from mfdiffuser.data.windows import WindowSampler

        # M = N: every sample holds all of its episode's agents (distinct, in random order).
        return WindowSampler(arrays, game, self.params.window, arrays.n_agents, seed=seed)

    def train_module(self) -> Any:
        return self.planner.train_module()

    def to_batch(self, raw: dict[str, np.ndarray], device: Any) -> dict[str, Any]:
        from mfdiffuser.planner.training import to_batch

        return to_batch(raw, device)  # β = 0: no value weights

    def loss(self, batch: dict[str, Any], model: Any) -> tuple[Any, dict[str, float]]:
        loss, info = self.planner.loss(batch, model=model)
        return loss, {"loss_unweighted": info["loss_unweighted"]}

    def after_step(self) -> None:
        self.planner.update_ema()

    def state_dict(self) -> dict[str, Any]:
        state = self.planner.state_dict()
        return {k: state[k] for k in ("model", "ema_model") if k in state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.planner.load_state_dict(state)

    def to(self, device: Any) -> MADiffMethod:
        self.planner.to(device)
        return self

    def policy(self, game: Any, prior: np.ndarray, seed: int) -> Policy:
        return _JointPolicy(self.planner, game, prior, seed, self.params.table_agents)

    def sample_transitions(self, ctx: Any, first_states: Any, generator: Any, t: int) -> Any:
        return self.planner.sample_transitions(ctx, first_states, generator, t=t)


def build(params: Params, dims: Dims) -> MADiffMethod:
    return MADiffMethod(params, dims)

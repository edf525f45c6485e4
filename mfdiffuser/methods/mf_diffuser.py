"""MF-Diffuser (and its named variants) on the Method interface.

The planner itself lives in `mfdiffuser.planner`: the denoiser (`denoiser.py`), the objective
(`objective.py`), the samplers (`sampling.py`), acting (`acting.py`) and the object that ties
them together (`diffusion.py`). This file only connects it to the
platform: which batches it trains on (windows of M particles, with value weights when β > 0 and
return targets with return guidance), its loss, its state, and its policy. Heavy imports are
made on first use, so validating a config that names it does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mfdiffuser.methods.base import Batches, DataStats, Dims, Policy, TrainedMethod
from mfdiffuser.planner.config import PlannerConfig

Params = PlannerConfig


class _PlannerPolicy(Policy):
    """The live planner (acting rule and replanning of the config) and its frozen table."""

    def __init__(self, planner: Any, game: Any, prior: np.ndarray, seed: int) -> None:
        import torch

        from mfdiffuser.planner.acting import FiniteStatePlannerPolicy, PlannerPolicy

        cfg = planner.cfg
        self.live = PlannerPolicy(planner, game, prior, cfg, torch.Generator().manual_seed(seed))
        self.frozen = FiniteStatePlannerPolicy(planner, game, prior, cfg)

    def reset(self) -> None:
        self.live.reset()

    def act(self, t: int, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(self.live.act(t, states, rng))

    def expected_table(
        self, propagate_fn: Callable[[np.ndarray], np.ndarray], seed: int
    ) -> np.ndarray:
        return self.frozen.expected_table(propagate_fn, seed)


class MFDiffuserMethod(TrainedMethod):
    params: PlannerConfig
    generative = True

    def __init__(self, params: PlannerConfig, dims: Dims) -> None:
        from mfdiffuser.planner.diffusion import MFDiffuser

        super().__init__(params, dims)
        self.planner = MFDiffuser.from_spec(
            params, dims.feature_dim, dims.n_actions, dims.context_dim
        )
        self.advantage: Any = None  # the dataset's tabular advantage when beta > 0
        self.returns: np.ndarray | None = None  # normalised returns-to-go of this rank's episodes

    @classmethod
    def of(cls, planner: Any) -> MFDiffuserMethod:
        """This method around an existing planner (its config and dimensions)."""
        method = cls.__new__(cls)
        TrainedMethod.__init__(
            method,
            planner.cfg,
            Dims(planner.state_dim, planner.n_actions, planner.context_dim, 0, 0),
        )
        method.planner, method.advantage, method.returns = planner, None, None
        method.name = "mf_diffuser"
        return method

    # ------------------------------------------------------------------ training

    def prepare(self, stats: DataStats) -> None:
        if self.params.beta > 0:
            self.advantage = self.tilt_advantage(stats.advantage)
        if self.params.return_guidance:
            self.planner.set_return_stats(stats.returns_to_go)

    def batches(self, arrays: Any, game: Any, seed: int) -> Batches:
        from mfdiffuser.data.windows import WindowSampler
        from mfdiffuser.planner.diffusion import returns_to_go

        if self.params.return_guidance:
            self.returns = self.planner.normalise_returns(returns_to_go(arrays.rewards))
        return WindowSampler(
            arrays,
            game,
            self.params.window,
            self.params.n_particles,
            advantage=self.advantage,
            seed=seed,
        )

    def train_module(self) -> Any:
        return self.planner.train_module()

    def to_batch(self, raw: dict[str, np.ndarray], device: Any) -> dict[str, Any]:
        from mfdiffuser.planner.training import to_batch

        return to_batch(
            raw,
            device,
            beta=self.params.beta,
            weight_clip=self.params.weight_clip,
            returns=self.returns,
        )

    def loss(self, batch: dict[str, Any], model: Any) -> tuple[Any, dict[str, float]]:
        loss, info = self.planner.loss(batch, model=model)
        info.pop("loss", None)
        info.pop("cfg_dropped", None)
        return loss, info  # loss_unweighted, weight_max (the largest value weight), loss_inverse

    def after_step(self) -> None:
        self.planner.update_ema()

    # ------------------------------------------------------------------ state and acting

    def state_dict(self) -> dict[str, Any]:
        state = self.planner.state_dict()
        return {k: v for k, v in state.items() if k not in ("config", "dims")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.planner.load_state_dict(state)

    def to(self, device: Any) -> MFDiffuserMethod:
        self.planner.to(device)
        return self

    def policy(self, game: Any, prior: np.ndarray, seed: int) -> Policy:
        return _PlannerPolicy(self.planner, game, prior, seed)

    @property
    def tilt(self) -> tuple[float, float]:
        return float(self.params.beta), float(self.params.weight_clip)

    def tilt_advantage(self, advantage: Any) -> Any:
        return advantage.shrunk(float(self.params.advantage_shrinkage))

    def sample_transitions(self, ctx: Any, first_states: Any, generator: Any, t: int) -> Any:
        return self.planner.sample_transitions(ctx, first_states, generator, t=t)


def build(params: PlannerConfig, dims: Dims) -> MFDiffuserMethod:
    return MFDiffuserMethod(params, dims)

"""The Method interface: what every method the platform trains, loads, plays and scores provides.

Three kinds (`MethodSpec.kind`):
- "trained": built from its parameters and the game's dimensions (`Dims`), fitted on batches of
  the offline dataset by the one training loop (`mfdiffuser.methods.training`), saved as tensors
  only and loaded weights-only;
- "reference": computed from the exact mean-field model with no data (`fp`, `omd`); its policy
  table is saved the same way, so evaluation does not tell the kinds apart;
- "external": another library runs its own training loop and writes its own checkpoint (RLlib's
  `rllib_bc`, `rllib_marwil`); the platform starts it (`ExternalTrainer.fit`), logs it, and loads
  the checkpoint back through that library (`ExternalTrainer.load`) as a `Method`.

Every method, of any kind, becomes a `Policy`: it acts for any N (`act`) and freezes into a
policy table π[T, S, A] along its own exact mean-field flow (`expected_table`), which is what
exploitability, J^∞ and the suboptimality decomposition score. This module is pure: no torch at
import, no Ray, no MLflow.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel

if TYPE_CHECKING:
    import torch
    from torch import nn

    from mfdiffuser.data.advantages import TabularAdvantage
    from mfdiffuser.data.windows import EpisodeArrays
    from mfdiffuser.envs.finite import FiniteMeanFieldGame

Kind = Literal["trained", "reference", "external"]


@dataclass(frozen=True)
class Dims:
    """The game's dimensions a method is built for (a checkpoint records them)."""

    feature_dim: int  # d_s: per-agent state features
    n_actions: int  # A
    context_dim: int  # C: features of (t, μ_t)
    n_states: int  # S
    horizon: int  # T

    @classmethod
    def of(cls, game: FiniteMeanFieldGame) -> Dims:
        return cls(
            feature_dim=int(game.feature_dim),
            n_actions=int(game.n_actions),
            context_dim=int(game.context_dim),
            n_states=int(game.n_states),
            horizon=int(game.horizon),
        )


@dataclass
class DataStats:
    """Whole-dataset statistics, identical on every training rank (all-reduced or gathered).

    prior[T, S, A]: the behaviour policy's empirical action frequencies (uniform where unseen);
    advantage: the dataset-fitted tabular advantage A(s, a, t); returns_to_go[E, T]: the
    population return-to-go of every episode from every t."""

    prior: np.ndarray
    advantage: TabularAdvantage
    returns_to_go: np.ndarray

    @classmethod
    def of(cls, arrays: EpisodeArrays, game: FiniteMeanFieldGame) -> DataStats:
        """The statistics of episodes held in one process (a Train worker all-reduces the same
        sums and counts over its ranks instead)."""
        from mfdiffuser.data.advantages import advantage_from_sums, advantage_sums
        from mfdiffuser.data.windows import normalise_counts
        from mfdiffuser.planner.diffusion import returns_to_go

        sums, counts, squares = advantage_sums(arrays, game.n_states, game.n_actions)
        return cls(
            normalise_counts(counts),
            advantage_from_sums(sums, counts, squares),
            returns_to_go(arrays.rewards),
        )


class Batches(Protocol):
    """A seeded source of raw training batches (numpy arrays), e.g. `WindowSampler`."""

    def sample(self, batch_size: int) -> dict[str, np.ndarray]: ...


class Policy(ABC):
    """A method as a mean-field policy π(a | s, t, μ) of a finite-state game."""

    def reset(self) -> None:  # noqa: B027 (most policies keep no state between episodes)
        """A new episode begins (a policy that keeps a plan forgets it)."""

    @abstractmethod
    def act(self, t: int, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """states[N] -> actions[N] at decision time t; the agents' own draws come from rng."""

    @abstractmethod
    def expected_table(
        self, propagate_fn: Callable[[np.ndarray], np.ndarray], seed: int
    ) -> np.ndarray:
        """π[T, S, A] frozen along the policy's own exact flow (propagate_fn: π -> μ[T, S])."""


class Method(ABC):
    """A built method: its parameters, dimensions and state (tensors only)."""

    name = ""  # the registry name it was built under (set by `MethodSpec.build`)
    generative = False  # generates trajectories: `sample_transitions` (plan-quality metrics)

    def __init__(self, params: BaseModel, dims: Dims) -> None:
        self.params = params
        self.dims = dims

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Nested dicts of tensors (and plain numbers): loadable with weights_only=True."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def to(self, device: torch.device | str) -> Method:
        return self

    @abstractmethod
    def policy(self, game: FiniteMeanFieldGame, prior: np.ndarray, seed: int) -> Policy:
        """The policy evaluation plays and freezes; its own randomness seeded by `seed`."""

    @property
    def tilt(self) -> tuple[float, float]:
        """(β, w_max) of the value tilt the decomposition compares with; (0, 1) = no tilt."""
        return 0.0, 1.0

    def tilt_advantage(self, advantage: TabularAdvantage) -> TabularAdvantage:
        """The dataset advantage as this method's tilt uses it (the decomposition's π_β^D is
        tilted by the same); MF-Diffuser shrinks it (`advantage_shrinkage`)."""
        return advantage

    def sample_transitions(self, ctx: Any, first_states: Any, generator: Any, t: int) -> Any:
        """Generated trajectories for the plan-quality metrics; only generative planners."""
        raise NotImplementedError


class TrainedMethod(Method):
    """A method fitted on the offline dataset by `mfdiffuser.methods.training.train_epochs`."""

    def prepare(self, stats: DataStats) -> None:
        """Take whole-dataset statistics before training (and before a resumed state loads)."""

    @abstractmethod
    def batches(self, arrays: EpisodeArrays, game: FiniteMeanFieldGame, seed: int) -> Batches:
        """The raw batch source of this rank's episodes."""

    @abstractmethod
    def train_module(self) -> nn.Module:
        """The module to optimise (DDP wraps it)."""

    @abstractmethod
    def to_batch(self, raw: dict[str, np.ndarray], device: Any) -> dict[str, Any]:
        """Raw arrays -> tensors on `device`, as `loss` takes them."""

    @abstractmethod
    def loss(self, batch: dict[str, Any], model: nn.Module) -> tuple[Any, dict[str, float]]:
        """(scalar loss, figures) of one batch; `model` is `train_module()` or its DDP wrapper.
        Figures are averaged over an epoch and logged as train/<name> (names ending in _max:
        the largest value)."""

    def after_step(self) -> None:
        """After every optimizer step (e.g. an EMA or a target-network update)."""


class ReferenceMethod(Method):
    """A method computed from the exact model: its state is the policy table."""

    @abstractmethod
    def solve(self, game: FiniteMeanFieldGame) -> dict[str, float]:
        """Compute the table from the game; returns figures to log (e.g. its exploitability)."""


MetricsLog = Callable[[dict[str, float], int], None]  # (metrics, step) -> logged to the run


class ExternalTrainer(Protocol):
    """What the module of an external method provides besides `Params` (no `build`)."""

    def fit(self, cfg: Any, dataset: str, out: Path, log: MetricsLog) -> dict[str, Any]:
        """Train on the dataset with the library's own loop, its checkpoint written under `out`;
        `log` takes the per-iteration figures (named as `platform.tracking` names them).
        Returns the checkpoint's meta.json extras (e.g. the library's version)."""
        ...

    def load(self, directory: Path, meta: dict[str, Any]) -> Method:
        """The library's checkpoint under `directory`, restored by the library, as a Method;
        refused (ValueError) when it was written by another version of the library."""
        ...


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry: a named, versioned method and its validated parameters.

    `module` holds the implementation (`Params`, the pydantic parameter model, and `build`,
    params + Dims -> Method); it is imported on first use, so listing or validating a config
    that names a light method does not import torch. `fixed` are parameter values a named
    variant (an ablation) pins; `max_agents` is the largest N the method can act for."""

    name: str
    version: int
    kind: Kind
    description: str
    module: str
    params_name: str = "Params"
    fixed: dict[str, Any] = field(default_factory=dict)
    max_agents: int | None = None
    family: str = ""  # methods sharing a parameter model (e.g. MF-Diffuser and its ablations)

    def _load(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.module), attr)

    @property
    def params_model(self) -> type[BaseModel]:
        model: type[BaseModel] = self._load(self.params_name)
        return model

    def params(self, values: dict[str, Any] | None = None) -> BaseModel:
        return self.params_model.model_validate({**(values or {}), **self.fixed})

    def build(self, params: BaseModel, dims: Dims) -> Method:
        method: Method = self._load("build")(params, dims)
        method.name = self.name
        return method

    @property
    def external(self) -> ExternalTrainer:
        """An external method's module (`fit`, `load`)."""
        if self.kind != "external":
            raise TypeError(f"method {self.name!r} is {self.kind}, not external")
        module: ExternalTrainer = importlib.import_module(self.module)  # type: ignore[assignment]
        return module

    def cannot_run(self, benchmark: Any, n_agents: list[int]) -> str | None:
        """Why this method cannot run on this benchmark (a `BenchmarkSpec`) at these N, or None."""
        if benchmark.simulator is not None:
            from mfdiffuser.methods.team import cannot_play

            reason = cannot_play(self)
            if reason is not None:
                return reason
        if self.kind == "reference" and benchmark.cooperative:
            return (
                f"{self.name} solves for a Nash equilibrium, and in the cooperative "
                f"{benchmark.name} every policy is one: nothing to solve"
            )
        too_many = [n for n in n_agents if self.max_agents is not None and n > self.max_agents]
        if too_many:
            return (
                f"{self.name} acts for at most {self.max_agents} agents (a joint model over all "
                f"N), asked for N = {too_many[0]}"
            )
        return None

    def describe(self, values: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "params": self.params(values).model_dump(),
        }

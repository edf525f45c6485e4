"""`rllib_bc` and `rllib_marwil`: RLlib's BC and MARWIL (new API stack) as external methods.

`fit` maps the dataset to RLlib's offline rows (`data.write_rllib_input`), builds the algorithm
with spaces but no environment (no env runners, one local learner), calls `train()` for
`iterations` iterations, logging each one's learner losses as `train/…`, and saves RLlib's own
checkpoint. `load` restores the policy's RLModule from that checkpoint through RLlib, refusing a
checkpoint of another RLlib version, and `RLlibMethod.policy` is π(a | s, t, μ) = softmax of its
action logits on features(s) ⊕ context(t, μ): a mean-field policy for any N, frozen into the
table along its own flow like every other method. RLlib's CQL needs continuous actions, so it has
no entry here (the platform's own `mf_cql` is the discrete one).

Parameters are validated here, before any Ray work; this module imports neither Ray nor torch
until a method is fitted or loaded.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mfdiffuser.baselines.baseline_params import Hidden, Layers
from mfdiffuser.methods.base import Dims, Method, MetricsLog, Policy

if TYPE_CHECKING:
    from mfdiffuser.envs.finite import FiniteMeanFieldGame
    from mfdiffuser.platform.config import ExperimentConfig

CHECKPOINT_DIR = "rllib"  # RLlib's checkpoint inside the platform's checkpoint directory
INPUT_DIR = "rllib-input"  # the mapped rows RLlib reads (beside the checkpoint)


class Params(BaseModel):
    """rllib_bc's parameters (RLlib's names where RLlib has one)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    hidden: Hidden = 64
    layers: Layers = 2  # RLlib's fcnet_hiddens = [hidden] * layers
    iterations: int = Field(
        100,
        ge=1,
        le=100_000,
        description="RLlib training iterations (Algorithm.train() calls), one learner update "
        "each, 1..100000.",
    )
    train_batch_size: int = Field(
        512,
        ge=1,
        le=65_536,
        description="Transitions per learner update (train_batch_size_per_learner), 1..65536.",
    )
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam's learning rate, (0, 1].")


class MARWILParams(Params):
    """rllib_marwil's parameters: bc's plus MARWIL's advantage weighting."""

    beta: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="Scale of the advantages in exp(beta * A) of the policy loss, (0, 100] "
        "(beta = 0 is BC: use rllib_bc).",
    )
    vf_coeff: float = Field(
        1.0, ge=0.0, le=1000.0, description="Weight of the value loss, 0..1000."
    )
    gamma: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Discount of the advantages' returns, 0..1; 1 = the undiscounted return "
        "the platform scores.",
    )


# RLlib 2.60 calls its own deprecated arguments (OfflinePreLearner(module_spec=…),
# RLModule(config=…)) and logs a DeprecationWarning line for each, in every pre-learner and
# every process that restores a module; its informational lines (new API stack, gputil)
# and Tune's (gputil) likewise. Shown with MFD_VERBOSE only, as Ray's other informational lines.
_NOISY_LOGGERS = ("ray._common.deprecation", "ray.rllib", "ray.data", "ray.tune.utils.util")


@contextmanager
def _quiet() -> Iterator[None]:
    from mfdiffuser.platform.errors import verbose

    if verbose():
        yield
        return
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _prelearner_class() -> type:
    from ray.rllib.offline.offline_prelearner import OfflinePreLearner

    class PreLearner(OfflinePreLearner):
        """RLlib's pre-learner, constructed quietly (it runs in a Ray Data actor)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            with _quiet():
                super().__init__(*args, **kwargs)

    return PreLearner


def _algorithm_config(params: Params, game: FiniteMeanFieldGame, data: Path) -> Any:
    import gymnasium as gym
    from ray.rllib.algorithms.bc import BCConfig
    from ray.rllib.algorithms.marwil import MARWILConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from mfdiffuser.workers.rllib.data import PRELEARNER_KWARGS, observation_dim

    training: dict[str, Any] = {
        "lr": params.lr,
        "train_batch_size_per_learner": params.train_batch_size,
    }
    if isinstance(params, MARWILParams):
        config: Any = MARWILConfig()
        training |= {"beta": params.beta, "vf_coeff": params.vf_coeff, "gamma": params.gamma}
    else:
        config = BCConfig()
    return (
        config.environment(
            # features and context lie in [-1, 1] (`FiniteMeanFieldGame.features`, `.context`)
            observation_space=gym.spaces.Box(-1.0, 1.0, (observation_dim(game),), np.float32),
            action_space=gym.spaces.Discrete(game.n_actions),
        )
        .offline_data(
            input_=str(data),
            map_batches_kwargs=PRELEARNER_KWARGS,
            dataset_num_iters_per_learner=1,
            prelearner_class=_prelearner_class(),
        )
        .learners(num_learners=0)
        .env_runners(num_env_runners=0)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[params.hidden] * params.layers))
        .training(**training)
        .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=0)
    )


def fit(cfg: ExperimentConfig, dataset: str, out: Path, log: MetricsLog) -> dict[str, Any]:
    import ray
    import torch
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.utils.metrics import LEARNER_RESULTS

    from mfdiffuser.envs.registry import get_benchmark
    from mfdiffuser.platform.tracking import rllib_train_metrics
    from mfdiffuser.workers.rllib.data import write_rllib_input

    game = get_benchmark(cfg.benchmark.name).game(cfg.benchmark.params)
    params = cfg.method.settings
    assert isinstance(params, Params)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))  # the learner runs here
    with _quiet():
        data = write_rllib_input(dataset, game, out / INPUT_DIR)
        config = _algorithm_config(params, game, data).debugging(seed=cfg.train.seed)
        algo = config.build_algo()
        try:
            for i in range(params.iterations):
                result = algo.train()
                log(rllib_train_metrics(result[LEARNER_RESULTS][DEFAULT_MODULE_ID]), i + 1)
            algo.save_to_path(str(out / CHECKPOINT_DIR))
        finally:
            # RLlib leaves its Ray Data batch iterator open; closed by the garbage collector
            # after Ray has shut down, it logs a traceback.
            batches = getattr(algo.offline_data, "batch_iterators", None)
            if isinstance(batches, types.GeneratorType):
                batches.close()
            algo.stop()
            torch.set_num_threads(threads)
    return {"rllib": {"version": ray.__version__, "checkpoint": CHECKPOINT_DIR}}


class RLlibMethod(Method):
    """An RLlib policy restored from its checkpoint; its state is the RLModule's tensors."""

    def __init__(self, params: BaseModel, dims: Dims, module: Any) -> None:
        super().__init__(params, dims)
        self.module = module

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])

    def policy(self, game: FiniteMeanFieldGame, prior: np.ndarray, seed: int) -> Policy:
        import torch
        from ray.rllib.core.columns import Columns

        from mfdiffuser.baselines.networks import network_policy

        def logits(feats: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            ctx = ctx[:, None, :].expand(*feats.shape[:-1], ctx.shape[-1])
            obs = torch.cat([feats, ctx], dim=-1)
            out = self.module.forward_inference({Columns.OBS: obs.flatten(0, 1)})
            return out[Columns.ACTION_DIST_INPUTS].reshape(*obs.shape[:-1], -1)

        return network_policy(game, logits, torch.device("cpu"))


def load(directory: Path, meta: dict[str, Any]) -> Method:
    import ray
    from ray.rllib.core import (
        COMPONENT_LEARNER,
        COMPONENT_LEARNER_GROUP,
        COMPONENT_RL_MODULE,
        DEFAULT_MODULE_ID,
    )
    from ray.rllib.core.rl_module.rl_module import RLModule

    from mfdiffuser.methods.registry import get_method

    recorded = meta.get("rllib", {})
    if recorded.get("version") != ray.__version__:
        raise ValueError(
            f"checkpoint {str(directory)!r}: written by RLlib (ray) {recorded.get('version')}, "
            f"this installation has {ray.__version__}; RLlib restores only checkpoints of its "
            f"own version: re-train, or use ray=={recorded.get('version')}"
        )
    path = Path(directory, recorded["checkpoint"], COMPONENT_LEARNER_GROUP, COMPONENT_LEARNER)
    with _quiet():
        module = RLModule.from_checkpoint(path / COMPONENT_RL_MODULE / DEFAULT_MODULE_ID)
    spec = get_method(meta["method"]["name"])
    method = RLlibMethod(spec.params(meta["method"]["params"]), Dims(**meta["dims"]), module)
    method.name = spec.name
    return method

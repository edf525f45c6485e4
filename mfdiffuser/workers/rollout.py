"""Evaluation by Ray actors: each actor loads a checkpoint once and plays the planner at a given N.

Rollouts at several N and seeds run in parallel; the frozen policy table (METHOD.md §5) and its
exact exploitability are computed by one more actor at the same time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import ray

from mfdiffuser.platform.config import ExperimentConfig


@ray.remote(num_cpus=1)
class RolloutActor:
    def __init__(self, checkpoint: str) -> None:
        import torch

        from mfdiffuser.envs.registry import get_benchmark
        from mfdiffuser.planner.acting import FiniteStatePlannerPolicy
        from mfdiffuser.planner.checkpoint import load_checkpoint

        torch.set_num_threads(1)
        planner, prior, meta, _ = load_checkpoint(checkpoint)
        cfg = ExperimentConfig.model_validate(meta["config"])
        self.spec = get_benchmark(cfg.benchmark.name)
        self.game = self.spec.game(cfg.benchmark.params)
        self.policy = FiniteStatePlannerPolicy(planner, self.game, prior, planner.cfg)

    def returns(self, n_agents: int, episodes: int, seed: int) -> dict[str, Any]:
        import torch

        from mfdiffuser.evaluation.rollout import rollout_returns

        gen = torch.Generator().manual_seed(seed)

        def act(t: int, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return np.asarray(self.policy.act(t, states, rng, gen))

        rets = rollout_returns(
            lambda: self.spec.make_sim(self.game, n_agents), act, self.game.horizon, episodes, seed
        )
        return {"n_agents": n_agents, "seed": seed, "returns": rets}

    def table(self, seed: int) -> dict[str, Any]:
        from mfdiffuser.evaluation.rollout import propagate_fn, table_metrics

        table = self.policy.expected_table(propagate_fn(self.game), seed)
        return {"table": table, **table_metrics(self.game, table)}


def evaluate_checkpoint(
    checkpoint: str | Path,
    n_agents: list[int],
    *,
    episodes: int,
    seeds: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Returns metrics named by the MLflow scheme plus the raw per-episode returns."""
    jobs = [(n, seed + s) for n in n_agents for s in range(seeds)]
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1.0)))
    actors = [RolloutActor.remote(str(checkpoint)) for _ in range(min(len(jobs) + 1, cpus))]
    try:
        table_ref = actors[-1].table.remote(seed)
        refs = [
            actors[i % len(actors)].returns.remote(n, episodes, s) for i, (n, s) in enumerate(jobs)
        ]
        results = ray.get(refs)
        table = ray.get(table_ref)
    finally:  # a failed rollout must not leave actors holding CPUs
        for a in actors:
            ray.kill(a)

    metrics: dict[str, float] = {
        "exploitability": float(table["exploitability"]),
        "return_mf": float(table["return_mf"]),
    }
    per_n: dict[int, list[float]] = {}
    for r in results:
        per_n.setdefault(r["n_agents"], []).extend(r["returns"])
    for n, rets in sorted(per_n.items()):
        metrics[f"return/n{n}"] = float(np.mean(rets))
        metrics[f"return/n{n}_std"] = float(np.std(rets))
    return {
        "metrics": metrics,
        "returns": {str(n): r for n, r in per_n.items()},
        "table": table["table"].tolist(),
    }

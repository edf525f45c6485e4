"""battle at map 40 (64 agents per team): methods trained in-process on one dataset per seed.

For each seed: a medium dataset (team 0 the behaviour, team 1 the expert), every method trained
for a fixed budget, then scored against `expert` and `random` (win rate, kill ratio, survival,
return); the behaviour policy itself is scored the same way; `mf_diffuser` is also trained on
expert data and scored against `random`; the seed-0 models play each other (cross-play, row =
team 0). With `--team-sizes`, the seed-0 models trained at map 40 also play at larger maps
(the same weights, more agents per team) against `expert` and `random`. Intervals: 95%
percentile bootstrap over seeds (`scipy.stats.bootstrap`). Prints JSON.

    .venv/bin/python benchmarks/battle_methods.py --seeds 3 --steps 300 --episodes 4
    .venv/bin/python benchmarks/battle_methods.py --seeds 1 --team-sizes 256 1024 4096
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from scipy.stats import bootstrap

from mfdiffuser.data.team_windows import team_episodes_from_table
from mfdiffuser.envs.battle import BattleParams, BattleSim, eps_actions
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.evaluation.team import team_scores
from mfdiffuser.methods import team
from mfdiffuser.methods.registry import get_method

PLANNER = {"window": 4, "n_particles": 16, "max_particles": 64, "diffusion_steps": 10}
PLANNER.update(hidden=64, n_blocks=1, stages=1, replan_every=4)
SETTINGS = {
    "mf_diffuser": PLANNER,
    "per_agent_diffuser": {k: v for k, v in PLANNER.items() if k != "stages"},
    "madiff": {"window": 4, "diffusion_steps": 10, "hidden": 64, "n_blocks": 1},
    "bc": {"hidden": 64},
    "mf_iql": {"hidden": 64},
}


class Scripted:
    """A behaviour quality (expert with epsilon-noise) as a player."""

    def __init__(self, eps: float, sim: BattleSim) -> None:
        self.eps, self.sim = eps, sim

    def reset(self) -> None: ...

    def act(self, t: int, feats: np.ndarray, mu: np.ndarray, rng: np.random.Generator):
        team0 = np.flatnonzero(self.sim.alive[: self.sim.n_team])
        return eps_actions(self.sim, team0, self.eps, rng)


def interval(xs: list[float]) -> list[float] | None:
    if len(xs) < 2 or np.ptp(xs) == 0:
        return [float(np.mean(xs))] * 2 if xs else None
    res = bootstrap((np.asarray(xs),), np.mean, n_resamples=10_000, random_state=0)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--data-episodes", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--team-sizes", type=int, nargs="*", default=[], help="beyond 64")
    a = ap.parse_args()
    torch.set_num_threads(1)
    sim_spec = get_benchmark("battle").simulator
    assert sim_spec is not None
    p = BattleParams(max_steps=a.max_steps, observations=False).with_team_size(64)
    layout = sim_spec.layout(p)
    scores: dict[str, dict[str, list[float]]] = {}
    models: dict[str, Any] = {}
    start = time.perf_counter()

    def record(name: str, opponent: str, s: dict[str, Any]) -> None:
        for k in ("win_rate", "kill_ratio", "survival", "return"):
            scores.setdefault(f"{name} vs {opponent}", {}).setdefault(k, []).append(s[k])

    for seed in range(a.seeds):
        for quality in ("medium", "expert"):
            table, _ = sim_spec.generate_shard(p, quality, range(a.data_episodes), seed)
            arrays = team_episodes_from_table(table, layout, "data")
            names = list(SETTINGS) if quality == "medium" else ["mf_diffuser"]
            for name in names:
                spec = get_method(name)
                torch.manual_seed(seed)
                method = spec.build(spec.params(SETTINGS[name]), team.dims_of(layout))
                team.fit(method, arrays, steps=a.steps, batch_size=32, lr=3e-3, seed=seed)
                label = name if quality == "medium" else f"{name} (expert data)"
                if seed == 0:
                    models[label] = method
                for opp in ("expert", "random") if quality == "medium" else ("random",):
                    player = team.TeamPolicy(method, layout, seed)
                    s = team_scores(
                        BattleSim(p),
                        layout,
                        sim_spec.scripted,
                        player,
                        opp,
                        a.episodes,
                        seed=100 + seed,
                    )
                    record(label, opp, s)
        for opp in ("expert", "random"):
            sim = BattleSim(p)
            s = team_scores(
                sim, layout, sim_spec.scripted, Scripted(0.4, sim), opp, a.episodes, seed=100 + seed
            )
            record("behaviour (medium)", opp, s)
    table_out = {
        row: {k: {"mean": float(np.mean(v)), "ci95": interval(v), "seeds": v} for k, v in m.items()}
        for row, m in scores.items()
    }
    cross = {}
    for r, mr in models.items():
        for c, mc in models.items():
            s = team_scores(
                BattleSim(p),
                layout,
                {},
                team.TeamPolicy(mr, layout, 0),
                team.TeamPolicy(mc, layout, 1),
                a.episodes,
                seed=200,
            )
            cross.setdefault(r, {})[c] = {"win_rate": s["win_rate"], "kill_ratio": s["kill_ratio"]}
    at_scale: dict[str, dict[int, dict[str, Any]]] = {}
    for n in a.team_sizes:
        pn = BattleParams(max_steps=a.max_steps, observations=False).with_team_size(n)
        layout_n = sim_spec.layout(pn)
        for label, method in models.items():
            limit = get_method(label.split(" ")[0]).max_agents
            if limit is not None and n > limit:
                continue  # madiff: above its agent limit
            for opp in ("expert", "random"):
                t0 = time.perf_counter()
                s = team_scores(
                    BattleSim(pn),
                    layout_n,
                    sim_spec.scripted,
                    team.TeamPolicy(method, layout_n, 0),
                    opp,
                    a.episodes,
                    seed=300,
                )
                at_scale.setdefault(label, {}).setdefault(n, {})[opp] = {
                    k: s[k] for k in ("win_rate", "kill_ratio", "survival", "return")
                } | {"seconds": time.perf_counter() - t0}
    print(
        json.dumps(
            {
                "settings": vars(a),
                "table": table_out,
                "cross_play": cross,
                "at_scale": at_scale,
                "seconds": time.perf_counter() - start,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

"""The value weighting's β against each dataset: the ideal tilt π_β^D's exploitability on every
finite benchmark and data quality, and a data-only criterion for choosing β (docs/method.md).

    .venv/bin/python benchmarks/beta_choice.py [--benchmarks crowd_1d sis ...] [--agents 100]
        [--episodes 40] [--betas 0 0.25 0.5 1 2]

For each benchmark (its default params) and quality, one dataset is generated on the pure path
(the registry's behaviour, `generate_shard`, N = `--agents` agents, `--episodes` episodes,
seed 0), and from it, exactly as training sees it: π̂_b (the data's action frequencies), the
dataset advantage Â (docs/metrics.md) and, for each β, the target of the weighted loss
π_β^D = π̂_b·min(exp(β·Â)/Z, w_max) normalised (`tilted_policy`, clipped as the training weights
clip). Scored exactly: exploitability (welfare gap for the cooperative gaussian_squeeze), beside
the behaviour π_b's and π̂_b's. The last columns are the data-only criterion: the effective
sample size of the weights exp(β·Â) over the data's (t, s, a) (Kish's (Σw)²/(n·Σw²), per step,
averaged), and the β it picks, the largest on the grid whose ESS is at least `--ess`.
`--shrink z ...` gives rows where Â is first shrunk toward 0 by z standard errors of Q̂, as
training does with `advantage_shrinkage` = z (`TabularAdvantage.shrunk`: sign(Â)·max(0, |Â| − z·se),
se from the returns-to-go's spread per (t, s, a); once-seen (t, s, a) get 0); z = 0 is the raw Â. No
training: the ideal tilt is what a perfect generative model of the weighted objective would play.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from mfdiffuser.data.advantages import (
    expected_log_normaliser,
    fit_tabular_advantage,
    tilted_policy,
)
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.windows import behaviour_prior, episodes_from_table
from mfdiffuser.envs import exploitability, policy_value
from mfdiffuser.envs.behaviour import occupancy_mixture
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.planner.config import PlannerConfig

BENCHMARKS = (
    "crowd_1d",
    "crowd_2d",
    "four_rooms",
    "sis",
    "predator_prey",
    "left_right",
    "rock_paper_scissors",
    "gaussian_squeeze",
)
QUALITIES = ("expert", "medium", "mixed")


def ess(adv: np.ndarray, counts: np.ndarray, beta: float) -> float:
    """Kish's effective sample size fraction of w = exp(β·A) over the data, per step, averaged:
    adv[T, S, A] (0 where unseen), counts[T, S, A]."""
    logw = beta * adv
    logw = logw - logw.max(axis=(1, 2), keepdims=True)
    w = np.exp(logw)
    n = counts.sum(axis=(1, 2))
    s1 = (counts * w).sum(axis=(1, 2))
    s2 = (counts * w * w).sum(axis=(1, 2))
    per_t = np.where(n > 0, s1 * s1 / np.maximum(n * s2, 1e-300), 1.0)
    return float(per_t.mean())


def score(spec, game, policy: np.ndarray) -> float:
    """Exploitability, or the welfare gap for a cooperative benchmark."""
    if spec.reference_value is not None:
        return float(spec.reference_value(game)) - float(policy_value(game, policy))
    return float(exploitability(game, policy))


def rows(name: str, quality: str, args: argparse.Namespace) -> list[dict[str, object]]:
    """One dataset of `name` at `quality`, and one row per shrinkage z of `--shrink`."""
    spec = get_benchmark(name)
    game = spec.game({})
    made = spec.behaviour(game, quality)
    table, _ = generate_shard(
        lambda: spec.make_sim(game, args.agents), made.policies, range(args.episodes), 0
    )
    arrays = episodes_from_table(table, args.agents)
    prior = behaviour_prior(arrays, game.n_states, game.n_actions)
    raw = fit_tabular_advantage(arrays, game.n_states, game.n_actions)
    clip = PlannerConfig().weight_clip
    head: dict[str, object] = {
        "benchmark": name,
        "quality": quality,
        "measure": "welfare_gap" if spec.reference_value is not None else "exploitability",
        "behaviour": score(spec, game, occupancy_mixture(game, made.policies)),
        "data_policy": score(spec, game, prior),
    }
    out = []
    for z in args.shrink:
        adv = raw.shrunk(z)  # the training path's shrinkage (`advantage_shrinkage`)
        tilts, esss = {}, {}
        for beta in args.betas:
            target = tilted_policy(prior, adv, beta, clip, expected_log_normaliser(adv, beta))
            tilts[beta] = score(spec, game, target)
            esss[beta] = ess(adv.table, adv.counts, beta)
        picked = max((b for b in args.betas if esss[b] >= args.ess), default=min(args.betas))
        out.append(
            head
            | {"shrink_z": z, "tilt": tilts, "ess": esss, "ess_pick": picked}
            | {"tilt_at_pick": tilts[picked]}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    parser.add_argument("--qualities", nargs="+", default=list(QUALITIES))
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument(
        "--betas", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
    )
    parser.add_argument("--ess", type=float, default=0.9)
    parser.add_argument("--shrink", type=float, nargs="+", default=[0.0])
    args = parser.parse_args()
    start = time.perf_counter()
    header = "benchmark            quality z behaviour  data π̂_b  " + "  ".join(
        f"β={b:<5g}" for b in args.betas
    )
    print(header)
    for name in args.benchmarks:
        for r in (r for quality in args.qualities for r in rows(name, quality, args)):
            print(
                f"{name:<20} {r['quality']:<7} {r['shrink_z']:g} "
                f"{r['behaviour']:>9.4f} {r['data_policy']:>9.4f}  "
                + "  ".join(f"{r['tilt'][b]:7.4f}" for b in args.betas)  # type: ignore[index]
                + "   ESS: "
                + " ".join(f"{r['ess'][b]:.3f}" for b in args.betas)  # type: ignore[index]
                + f"  pick β={r['ess_pick']:g}",
                flush=True,
            )
            print(json.dumps(r), flush=True)
    print(f"{time.perf_counter() - start:.1f} s wall; load {os.getloadavg()}")


if __name__ == "__main__":
    main()

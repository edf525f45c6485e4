"""Behaviour policies that generate offline datasets of a given quality (D4RL-style names).

The data qualities (docs/data.md):
- `random`: uniform actions;
- `expert`: the reference policy (the benchmark's solver setting run to convergence: fictitious
  play by default, `BenchmarkSpec.expert_solver` otherwise; or the benchmark's own expert, e.g.
  the welfare optimum of a cooperative game);
- `medium`: the expert with epsilon-noise, epsilon chosen by bisection so that the policy sits
  halfway between random and expert: by exploitability where it is meaningful, by exact
  mean-field return for cooperative games (where every policy has exploitability 0);
- `mixed`: the union of episodes from the solver's policies at log-spaced
  iterations (a learning "replay"); where there is no solver (cooperative games), the union of
  random, medium and expert;
- `medium-expert`: half medium, half expert episodes.
A dataset's episodes are assigned round-robin to the policies; `Behaviour.info` records how they
were made and goes into the dataset manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    FloatArray,
    exploitability,
    policy_value,
    propagate,
    uniform_policy,
)
from mfdiffuser.envs.solvers import SolverSetting

QUALITIES = ("random", "medium", "expert", "mixed", "medium-expert")

ExpertFn = Callable[[FiniteMeanFieldGame], FloatArray]


@dataclass(frozen=True)
class Behaviour:
    policies: list[FloatArray]  # each policy[T, S, A]; episode e uses policies[e % len]
    info: dict[str, Any] = field(default_factory=dict)


def eps_mixture(expert: FloatArray, uniform: FloatArray, eps: float) -> FloatArray:
    return (1.0 - eps) * expert + eps * uniform


def _halfway_eps(
    score: Callable[[FloatArray], float], expert: FloatArray, uniform: FloatArray, iters: int = 40
) -> tuple[float, float, float]:
    """Bisection for eps with score(mix(eps)) at the midpoint of score(expert), score(uniform).

    Returns (eps, target, achieved). The score is assumed monotone in eps (checked by the caller's
    tests on every benchmark); bisection keeps the interval that brackets the target.
    """
    lo_v, hi_v = score(expert), score(uniform)
    target = 0.5 * (lo_v + hi_v)
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        v = score(eps_mixture(expert, uniform, mid))
        if (v - target) * (hi_v - lo_v) < 0:
            lo = mid
        else:
            hi = mid
    eps = 0.5 * (lo + hi)
    return eps, target, score(eps_mixture(expert, uniform, eps))


def make_behaviour(
    game: FiniteMeanFieldGame,
    quality: str,
    *,
    expert: ExpertFn | None = None,
    cooperative: bool = False,
    solver_iterations: int | None = None,
    solver: SolverSetting | None = None,
) -> Behaviour:
    """The behaviour policies of a data quality, with a record of how they were made.

    `expert` overrides the default expert (the solver's last iterate); `solver` is the solver
    setting (default: fictitious play, 200 iterations), `solver_iterations` overrides its
    iterations; `cooperative` games measure 'halfway' by return, since exploitability is 0 for
    every policy there.
    """
    setting = solver or SolverSetting()
    n_iter = setting.iterations if solver_iterations is None else solver_iterations
    if quality not in QUALITIES:
        raise ValueError(f"quality: unknown quality {quality!r}; allowed: {', '.join(QUALITIES)}")
    uniform = uniform_policy(game)
    if quality == "random":
        return Behaviour([uniform], {"quality": quality, "source": "uniform"})

    if expert is not None:
        expert_pol, expert_src = expert(game), "benchmark expert"
    else:
        expert_pol = setting.run(game, n_iter).policy
        expert_src = setting.describe(n_iter)
    if quality == "expert":
        return Behaviour([expert_pol], {"quality": quality, "source": expert_src})

    def score(p: FloatArray) -> float:
        return policy_value(game, p) if cooperative else exploitability(game, p)

    eps, target, achieved = _halfway_eps(score, expert_pol, uniform)
    medium = eps_mixture(expert_pol, uniform, eps)
    medium_info = {
        "source": f"expert ({expert_src}) with epsilon-uniform noise",
        "epsilon": eps,
        "halfway_by": "return" if cooperative else "exploitability",
        "target": target,
        "achieved": achieved,
    }
    if quality == "medium":
        return Behaviour([medium], {"quality": quality, **medium_info})
    if quality == "medium-expert":
        return Behaviour(
            [medium, expert_pol], {"quality": quality, "medium": medium_info, "expert": expert_src}
        )
    # mixed
    if cooperative or expert is not None:
        return Behaviour(
            [uniform, medium, expert_pol],
            {"quality": quality, "source": "union of random, medium and expert", **medium_info},
        )
    checkpoints = sorted({int(k) for k in np.geomspace(1, n_iter, 8)})
    iterates = [setting.run(game, k).policy for k in checkpoints]
    return Behaviour(
        iterates,
        {
            "quality": quality,
            "source": f"iterates of {setting.describe(n_iter)}",
            "iterations": checkpoints,
        },
    )


def occupancy_mixture(game: FiniteMeanFieldGame, policies: list[FloatArray]) -> FloatArray:
    """The behaviour policy of a dataset mixed from several policies (docs/data.md).

    pi_b,t(a|s) = sum_k d_k,t(s) pi_k,t(a|s) / sum_k d_k,t(s), with d_k the state distribution of
    policy k against its own flow (each episode is played by one policy throughout); uniform where
    no policy reaches (t, s). With one policy this is that policy.
    """
    if len(policies) == 1:
        return np.asarray(policies[0], dtype=np.float64)
    num = np.zeros_like(np.asarray(policies[0], dtype=np.float64))
    den = np.zeros(num.shape[:2])
    for p in policies:
        d = propagate(game, p)  # d[T, S]
        num += d[..., None] * p
        den += d
    uniform = uniform_policy(game)
    return np.where(den[..., None] > 0, num / np.maximum(den, 1e-300)[..., None], uniform)

"""Every finite benchmark x every data quality generates data on the pure (Ray-free) path:
make_behaviour + generate_shard, deterministic under a seed, with sensibly ordered qualities."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest

from mfdiffuser.data.generate import generate_shard
from mfdiffuser.envs import exploitability, policy_value
from mfdiffuser.envs.behaviour import QUALITIES, Behaviour, occupancy_mixture
from mfdiffuser.envs.finite import FiniteMeanFieldGame
from mfdiffuser.envs.registry import BENCHMARKS

FINITE = sorted(name for name, spec in BENCHMARKS.items() if getattr(spec, "exact_model", True))
# Small settings keep the solvers and episodes fast; the defaults are exercised elsewhere.
SMALL: dict[str, dict[str, Any]] = {
    "sis": {"horizon": 6},
    "four_rooms": {"horizon": 6},
    "crowd_2d": {"size": 5, "horizon": 5},
    "crowd_1d": {"horizon": 5},
    "predator_prey": {"horizon": 5},
}
SOLVER_ITERATIONS = 30
N_AGENTS, EPISODES = 9, 3


@cache
def _game(name: str) -> FiniteMeanFieldGame:
    return BENCHMARKS[name].game(SMALL.get(name))


@cache
def _behaviour(name: str, quality: str) -> Behaviour:
    return BENCHMARKS[name].behaviour(_game(name), quality, solver_iterations=SOLVER_ITERATIONS)


def recorded_score(name: str, quality: str) -> float:
    """What a dataset's manifest records as the behaviour's distance from the reference:
    the exploitability of the occupancy mixture, or the welfare gap for cooperative games."""
    spec, game, made = BENCHMARKS[name], _game(name), _behaviour(name, quality)
    if spec.cooperative:
        assert spec.reference_value is not None
        return spec.reference_value(game) - float(
            np.mean([policy_value(game, p) for p in made.policies])
        )
    return exploitability(game, occupancy_mixture(game, made.policies))


def test_the_finite_benchmarks_include_the_new_ones() -> None:
    assert {"sis", "predator_prey", "crowd_1d", "crowd_2d", "gaussian_squeeze"} <= set(FINITE)


@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("name", FINITE)
def test_every_quality_generates_rows_deterministically(name: str, quality: str) -> None:
    spec, game, made = BENCHMARKS[name], _game(name), _behaviour(name, quality)
    assert made.info["quality"] == quality

    def make_sim() -> Any:
        return spec.make_sim(game, N_AGENTS)

    table, returns = generate_shard(make_sim, made.policies, range(EPISODES), seed=5)
    assert table.num_rows == EPISODES * N_AGENTS * game.horizon
    assert np.isfinite(returns).all() and returns.shape == (EPISODES,)
    states = table.column("state").to_numpy()
    actions = table.column("action").to_numpy()
    assert states.min() >= 0 and states.max() < game.n_states
    assert actions.min() >= 0 and actions.max() < game.n_actions
    again, returns_again = generate_shard(make_sim, made.policies, range(EPISODES), seed=5)
    assert again.equals(table)
    np.testing.assert_array_equal(returns, returns_again)
    other, _ = generate_shard(make_sim, made.policies, range(EPISODES), seed=6)
    assert not other.equals(table)


@pytest.mark.parametrize("name", FINITE)
def test_expert_medium_random_are_ordered(name: str) -> None:
    """expert <= medium <= random by recorded exploitability (welfare gap when cooperative).
    No benchmark needs an exception: medium is bisected to the midpoint of the other two."""
    expert, medium, random = (recorded_score(name, q) for q in ("expert", "medium", "random"))
    assert -1e-9 <= expert <= medium + 1e-9, (expert, medium)
    assert medium <= random + 1e-9, (medium, random)
    assert expert < random  # the solver made progress even with few iterations

"""N-agent simulators converge to the exact mean-field flow at the 1/sqrt(N) rate, and their
per-agent randomness (action sampling, transitions) matches the exact model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mfdiffuser.envs import propagate, sample_actions
from mfdiffuser.envs.crowd_1d import Crowd1D, Crowd1DSim
from mfdiffuser.envs.crowd_2d import Crowd2DSim, make_crowd_2d
from mfdiffuser.envs.finite import FiniteMeanFieldGame
from mfdiffuser.envs.predator_prey import PredatorPrey, PredatorPreySim
from mfdiffuser.envs.simulate import FiniteGameSim
from mfdiffuser.envs.sis import SIS

SEEDS = range(6)
SIZES = (300, 3000, 30000)

CASES: dict[str, tuple[Callable[[], FiniteMeanFieldGame], Callable[[Any, int], Any]]] = {
    "crowd_1d": (lambda: Crowd1D(size=6, horizon=8), Crowd1DSim),
    "crowd_2d": (lambda: make_crowd_2d(size=4, horizon=8), Crowd2DSim),
    "sis": (lambda: SIS(horizon=8), FiniteGameSim),
    "predator_prey": (lambda: PredatorPrey(size=3, horizon=8), PredatorPreySim),
}


def fixed_policy(game: FiniteMeanFieldGame) -> np.ndarray:
    rng = np.random.default_rng(123)
    return rng.dirichlet(np.ones(game.n_actions), size=(game.horizon, game.n_states))


def mean_l1_distance(game: FiniteMeanFieldGame, make_sim: Any, n: int) -> float:
    """E over seeds and epochs of ||empirical histogram_t - exact mu_t||_1."""
    policy = fixed_policy(game)
    flow = propagate(game, policy)
    dists = []
    for seed in SEEDS:
        sim = make_sim(game, n)
        states = sim.reset(seed)
        rng = np.random.default_rng(seed + 1000)
        for t in range(game.horizon):
            dists.append(np.abs(sim.mean_field() - flow[t]).sum())
            states, _, _ = sim.step(sample_actions(policy[t], states, rng))
    return float(np.mean(dists))


@pytest.mark.parametrize("name", sorted(CASES))
def test_histogram_converges_to_the_exact_flow_like_one_over_sqrt_n(name: str) -> None:
    make_game, make_sim = CASES[name]
    game = make_game()
    dist = [mean_l1_distance(game, make_sim, n) for n in SIZES]
    slope = np.polyfit(np.log(SIZES), np.log(dist), 1)[0]
    assert -0.65 <= slope <= -0.35, (dist, slope)
    assert dist[-1] < 0.05  # and the largest N is close in absolute terms


def test_sample_actions_frequencies_match_the_policy() -> None:
    rng = np.random.default_rng(0)
    policy_t = np.array([[0.2, 0.0, 0.8], [0.5, 0.3, 0.2], [0.0, 0.0, 1.0]])
    n = 200_000
    states = np.repeat(np.arange(3), n)
    actions = sample_actions(policy_t, states, rng)
    assert actions.dtype == np.int64
    for s in range(3):
        freq = np.bincount(actions[states == s], minlength=3) / n
        sigma = np.sqrt(policy_t[s] * (1 - policy_t[s]) / n)
        assert np.all(np.abs(freq - policy_t[s]) <= 5 * sigma + 1e-12), (s, freq)
    assert not np.any((states == 0) & (actions == 1))  # zero-probability actions never drawn
    assert not np.any((states == 2) & (actions != 2))


def test_sample_actions_is_deterministic_under_a_seed() -> None:
    policy_t = np.random.default_rng(1).dirichlet(np.ones(5), size=7)
    states = np.random.default_rng(2).integers(0, 7, 1000)
    a = sample_actions(policy_t, states, np.random.default_rng(3))
    b = sample_actions(policy_t, states, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["crowd_1d", "crowd_2d", "predator_prey"])
def test_simulated_transitions_match_the_exact_kernel(name: str) -> None:
    """Every agent in one state with one action: next-state frequencies = push(unit mass)."""
    make_game, make_sim = CASES[name]
    game = make_game()
    n = 60_000
    sim = make_sim(game, n)
    sim.reset(0)
    s = int(np.flatnonzero(game.mu0)[0])
    for a in range(game.n_actions):
        sim.states = np.full(n, s, dtype=np.int64)
        sim.t = 1
        nxt, _, _ = sim.step(np.full(n, a, dtype=np.int64))
        unit = np.zeros((game.n_states, game.n_actions))
        unit[s, a] = 1.0
        expected = game.push(1, game.mu0, unit)
        freq = np.bincount(nxt, minlength=game.n_states) / n
        sigma = np.sqrt(expected * (1 - expected) / n)
        assert np.all(np.abs(freq - expected) <= 5 * sigma + 1e-12), (a, freq, expected)

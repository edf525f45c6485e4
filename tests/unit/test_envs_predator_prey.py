"""predator_prey: exact model over (population, cell) and per-population exploitability."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from pydantic import ValidationError

from mfdiffuser import api
from mfdiffuser.envs import exploitability, fictitious_play, propagate, uniform_policy
from mfdiffuser.envs.finite import best_response
from mfdiffuser.envs.predator_prey import PredatorPrey, PredatorPreySim


def random_policy(game: PredatorPrey, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(game.n_actions), size=(game.horizon, game.n_states))


def test_each_population_keeps_exactly_a_third_of_the_mass() -> None:
    game = PredatorPrey()
    assert game.n_states == 75 and game.n_populations == 3
    for policy in (uniform_policy(game), random_policy(game, 0)):
        per_pop = propagate(game, policy).reshape(game.horizon, 3, 25).sum(axis=2)
        np.testing.assert_allclose(per_pop, 1.0 / 3.0, rtol=0, atol=1e-15)


def test_start_cells_are_openspiels_corners() -> None:
    game = PredatorPrey()
    starts = np.flatnonzero(game.mu0)
    # pop 0 at (0, 0), pop 1 at (4, 0), pop 2 at (0, 4); state = pop * 25 + y * 5 + x
    assert starts.tolist() == [0, 25 + 4, 50 + 20]
    np.testing.assert_allclose(game.mu0[starts], 1.0 / 3.0)


def test_one_step_transition_by_hand() -> None:
    game = PredatorPrey()
    mass = np.zeros((75, 5))
    mass[0, 1] = 1.0  # pop 0 at (0, 0) moves +x to (1, 0), then noise (p = 0.8, 0.2 per move)
    nxt = game.push(0, game.mu0, mass)
    expected = np.zeros(75)
    expected[1] = 0.2 + 0.2  # noise stays, or noise -y clipped at the border
    expected[2] = 0.2  # noise +x -> (2, 0)
    expected[6] = 0.2  # noise +y -> (1, 1)
    expected[0] = 0.2  # noise -x -> (0, 0)
    np.testing.assert_allclose(nxt, expected, atol=1e-15)
    # pull is the adjoint of push: <push(mass), v> = <mass, pull(v)>
    v = np.random.default_rng(1).normal(size=75)
    m = np.random.default_rng(2).random((75, 5))
    assert game.push(0, game.mu0, m) @ v == pytest.approx(np.sum(m * game.pull(0, game.mu0, v)))


def test_one_step_reward_by_hand() -> None:
    game = PredatorPrey()
    mu = np.zeros(75)
    mu[0] = 0.5 / 3  # pop 0: half of its mass at cell (0, 0)
    mu[25 + 0] = 0.25 / 3  # pop 1: a quarter at (0, 0)
    mu[50 + 0] = 1.0 / 3  # pop 2: all at (0, 0)
    r = game.reward(0, mu)
    assert r.shape == (75, 5) and np.all(r == r[:, :1])  # action-independent
    # r_i = -log(mu_i + 1e-25) + sum_j R_ij mu_j,  R = [[0,-1,1],[1,0,-1],[-1,1,0]]
    assert r[0, 0] == pytest.approx(-math.log(0.5) - 0.25 + 1.0)
    assert r[25, 0] == pytest.approx(-math.log(0.25) + 0.5 - 1.0)
    assert r[50, 0] == pytest.approx(-math.log(1.0) - 0.5 + 0.25)
    # an empty cell: -log(1e-25) and no interaction
    assert r[1, 0] == pytest.approx(25 * math.log(10))


def test_exploitability_is_nonnegative_and_vanishes_under_fictitious_play() -> None:
    game = PredatorPrey()
    for seed in range(3):
        assert exploitability(game, random_policy(game, seed)) > 0
    curve = fictitious_play(game, 200).exploitability_curve
    e10, e50, e200 = curve[9], curve[49], curve[199]
    assert e200 < e50 < e10 < exploitability(game, uniform_policy(game))
    assert 0 <= e200 < 0.05


def test_per_population_gains_average_to_the_aggregate() -> None:
    game = PredatorPrey()
    for policy in (uniform_policy(game), random_policy(game, 3), fictitious_play(game, 20).policy):
        gains = game.exploitability_per_population(policy)
        assert gains.shape == (3,) and np.all(gains >= -1e-12)
        assert gains.mean() == pytest.approx(exploitability(game, policy), rel=1e-12, abs=1e-12)


def test_solve_reports_per_population_exploitability() -> None:
    out = api.solve("predator_prey", algorithm="fp", iterations=5)
    per_pop = out["exploitability_per_population"]
    assert len(per_pop) == 3 and out["exploitability_aggregation"] == "mean over populations"
    assert np.mean(per_pop) == pytest.approx(out["exploitability"], rel=1e-12)


def _dense_kernel(size: int) -> np.ndarray:
    """P[a, c, c'] written from the rules alone (clipped move, then clipped noise, p = 0.8)."""
    moves = [(0, 0), (1, 0), (0, 1), (0, -1), (-1, 0)]
    noise = [0.2] * 5

    def step(c: int, d: tuple[int, int]) -> int:
        x, y = c % size, c // size
        x, y = min(max(x + d[0], 0), size - 1), min(max(y + d[1], 0), size - 1)
        return y * size + x

    p = np.zeros((5, size * size, size * size))
    for a, c in itertools.product(range(5), range(size * size)):
        m = step(c, moves[a])
        for e, q in enumerate(noise):
            p[a, c, step(m, moves[e])] += q
    return p


def test_best_response_matches_brute_force_on_a_tiny_game() -> None:
    """size 2, horizon 3: every deterministic policy of one agent (5 first actions x 5^4 second
    actions; the last action does not matter) against a fixed population flow."""
    game = PredatorPrey(size=2, horizon=3)
    flow = propagate(game, random_policy(game, 7))
    p = _dense_kernel(2)
    br_values = game.population_values(best_response(game, flow)[0], flow)
    for i in range(3):
        r = [game.reward(t, flow[t])[i * 4 : (i + 1) * 4, 0] for t in range(3)]  # r_t[cell]
        c0 = int(np.flatnonzero(game.mu0[i * 4 : (i + 1) * 4])[0])
        w = r[1][None, :] + p @ r[2]  # w[a1, c1]: reward at t=1 plus expected reward at t=2
        combos = np.array(list(itertools.product(range(5), repeat=4)))  # a1 per cell c1
        best = max(
            r[0][c0] + (p[a0, c0] * w[combos, np.arange(4)]).sum(axis=1).max() for a0 in range(5)
        )
        assert br_values[i] == pytest.approx(best, rel=1e-12)


def test_simulator_populations_and_mean_field() -> None:
    game = PredatorPrey()
    sim = PredatorPreySim(game, 10)
    states = sim.reset(0)
    assert (states // 25).tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    mf = sim.mean_field().reshape(3, 25).sum(axis=1)
    np.testing.assert_allclose(mf, 1.0 / 3.0)
    _, rewards, _ = sim.step(np.zeros(10, dtype=np.int64))
    np.testing.assert_allclose(rewards, game.reward(0, game.mu0)[states, 0])
    with pytest.raises(ValueError, match="n_agents"):
        PredatorPreySim(game, 2)


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ValidationError, match="size"):
        PredatorPrey(size=1)
    with pytest.raises(ValidationError, match="noise_probability"):
        PredatorPrey(noise_probability=1.5)
    with pytest.raises(ValidationError, match="reward_matrix"):
        PredatorPrey(reward_matrix=[[0.0, 1.0], [1.0]])
    with pytest.raises(ValidationError, match="initial"):
        PredatorPrey(initial=[(0, 0), (9, 0), (0, 4)])

"""sis (MFGLib's susceptible_infected): contract, a hand-computed value, simulator vs exact flow."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from mfdiffuser.envs.finite import (
    best_response,
    exploitability,
    policy_value,
    propagate,
    sample_actions,
    uniform_policy,
)
from mfdiffuser.envs.simulate import FiniteGameSim
from mfdiffuser.envs.sis import SIS, make_sis

GO_OUT, KEEP_DISTANCE = 0, 1


def test_defaults_follow_mfglib() -> None:
    game = SIS()
    assert (game.n_states, game.n_actions, game.horizon) == (2, 2, 51)
    np.testing.assert_array_equal(game.mu0, [0.4, 0.6])
    np.testing.assert_array_equal(game.reward(7, game.mu0), [[0.0, -0.5], [-1.0, -1.5]])
    with pytest.raises(pydantic.ValidationError):
        make_sis(T=50)
    with pytest.raises(pydantic.ValidationError):
        make_sis(initial_infected=1.5)
    assert make_sis(horizon=3).horizon == 3


def test_mass_conservation_and_adjointness() -> None:
    game = SIS()
    rng = np.random.default_rng(0)
    for t in (0, 10, 50):
        mu = rng.dirichlet(np.ones(2))
        mass = rng.random((2, 2))
        v = rng.normal(size=2)
        pushed = game.push(t, mu, mass)
        assert pushed.sum() == pytest.approx(mass.sum(), rel=1e-12)
        assert np.all(pushed >= 0)
        assert pushed @ v == pytest.approx(np.sum(mass * game.pull(t, mu, v)), rel=1e-12)
    flow = propagate(game, uniform_policy(game))
    np.testing.assert_allclose(flow.sum(axis=1), 1.0, atol=1e-12)


def test_hand_computed_two_epoch_value_and_exploitability() -> None:
    game = SIS(horizon=2)
    policy = np.zeros((2, 2, 2))
    policy[0, :, GO_OUT] = 1.0  # everyone goes out at t = 0
    policy[1, :, KEEP_DISTANCE] = 1.0  # everyone keeps distance at t = 1
    # t = 0: 0.4 * 0 + 0.6 * (-1) = -0.6; infection prob 0.81 * 0.6 = 0.486
    # mu_1(I) = 0.6 * 0.7 + 0.4 * 0.486 = 0.6144; t = 1: -0.5 * 0.3856 - 1.5 * 0.6144 = -1.1144
    flow = propagate(game, policy)
    np.testing.assert_allclose(flow[1], [0.3856, 0.6144], atol=1e-12)
    assert policy_value(game, policy) == pytest.approx(-1.7144, abs=1e-12)
    # best response: go out at t = 1 (V_1 = (0, -1)); at t = 0, S: out -0.486 > distance -0.5,
    # I: out -1 - 0.7 = -1.7; value 0.4 * -0.486 + 0.6 * -1.7 = -1.2144
    br, br_value = best_response(game, flow)
    assert br_value == pytest.approx(-1.2144, abs=1e-12)
    np.testing.assert_array_equal(br[:, :, GO_OUT], np.ones((2, 2)))
    assert exploitability(game, policy) == pytest.approx(0.5, abs=1e-12)


def test_simulator_matches_exact_flow_and_value() -> None:
    game = SIS()
    rng = np.random.default_rng(2)
    policy = rng.dirichlet(np.ones(2), size=(game.horizon, 2))
    flow = propagate(game, policy)
    sim = FiniteGameSim(game, 100_000)
    states = sim.reset(seed=5)
    returns = np.zeros(sim.n_agents)
    max_gap = 0.0
    done = False
    while not done:
        max_gap = max(max_gap, float(np.abs(sim.mean_field() - flow[sim.t]).max()))
        actions = sample_actions(policy[sim.t], states, sim.rng)
        states, rewards, done = sim.step(actions)
        returns += rewards
    assert max_gap < 0.01  # sampling error ~ 1/sqrt(N) = 0.003
    assert returns.mean() == pytest.approx(policy_value(game, policy), abs=0.1)


def test_sample_next_matches_transition_probabilities() -> None:
    game = SIS()
    mu = np.array([0.3, 0.7])
    n = 200_000
    states = np.zeros(n, dtype=np.int64)  # all susceptible, going out
    nxt = game.sample_next(0, mu, states, np.zeros(n, dtype=np.int64), np.random.default_rng(0))
    assert nxt.mean() == pytest.approx(0.81 * 0.7, abs=0.005)
    nxt = game.sample_next(0, mu, states, np.ones(n, dtype=np.int64), np.random.default_rng(0))
    assert nxt.max() == 0  # keeping distance never infects
    infected = np.ones(n, dtype=np.int64)
    nxt = game.sample_next(0, mu, infected, infected, np.random.default_rng(0))
    assert 1.0 - nxt.mean() == pytest.approx(0.3, abs=0.005)

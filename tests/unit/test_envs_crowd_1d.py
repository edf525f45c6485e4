"""crowd_1d: exact values over the true state (x, previous action) and the N-agent simulator."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest

from mfdiffuser.envs import (
    Crowd1D,
    Crowd1DSim,
    best_response,
    exploitability,
    make_crowd_1d,
    policy_value,
    propagate,
    sample_actions,
    uniform_policy,
)

MOVES = (-1, 0, 1)
NEUTRAL = 1


def literal_reward(n: int, x: int, a_prev: int, mu_x: float, crowd_aversion: float) -> float:
    """r_t of docs/benchmarks.md, written out for one agent."""
    half = n // 2
    return (
        1.0
        - abs(x - half) / half
        - abs(MOVES[a_prev]) / n
        - crowd_aversion * math.log(mu_x + 1e-25)
    )


def loop_flow(n: int, horizon: int, policy: np.ndarray) -> list[list[float]]:
    """Population flow with plain loops (the dynamics here do not depend on mu)."""
    flow = [[1.0 / n] * n]
    for t in range(horizon - 1):
        nxt = [0.0] * n
        for x in range(n):
            for a in range(3):
                for eps in (-1, 0, 1):
                    nxt[(x + MOVES[a] + eps) % n] += flow[t][x] * policy[t, x, a] / 3
        flow.append(nxt)
    return flow


def true_state_value(
    n: int,
    horizon: int,
    crowd_aversion: float,
    policy: np.ndarray,
    flow: list[list[float]],
    best: bool = False,
) -> float:
    """Value by a plain recursion over the true state (t, x, a_prev) with the literal reward.

    With best=True, the agent maximises over actions at every (t, x, a_prev) instead.
    """

    def v(t: int, x: int, a_prev: int) -> float:
        if t == horizon:
            return 0.0
        now = literal_reward(n, x, a_prev, flow[t][x], crowd_aversion)
        q = [sum(v(t + 1, (x + MOVES[a] + eps) % n, a) for eps in (-1, 0, 1)) / 3 for a in range(3)]
        future = max(q) if best else sum(policy[t, x, a] * q[a] for a in range(3))
        return now + future

    return sum(flow[0][x] * v(0, x, NEUTRAL) for x in range(n))


def test_hand_computed_value_size_4_horizon_2() -> None:
    game = Crowd1D(size=4, horizon=2, crowd_aversion=1.0)
    policy = np.zeros((2, 4, 3))
    # t = 0: move towards the centre cell 2 (0 -> +1, 1 -> +1, 2 stays, 3 -> -1)
    policy[0, [0, 1, 2, 3], [2, 2, 1, 0]] = 1.0
    # t = 1: everyone moves +1 (the last move's cost is never paid, so it does not matter)
    policy[1, :, 2] = 1.0
    # flow: after the t = 0 moves, 1/4 sits at cell 1 and 3/4 at cell 2; the noise spreads each
    # third to the left, stay, right: mu_1 = (1/12, 1/12 + 1/4, 1/12 + 1/4, 1/4)
    np.testing.assert_allclose(propagate(game, policy)[1], [1 / 12, 1 / 3, 1 / 3, 1 / 4])
    # t = 0, mu uniform, no movement cost (a_{-1} neutral):
    #   position terms 1 - |x - 2|/2 = (0, 1/2, 1, 1/2) -> mean 1/2;  -log(1/4) = log 4
    r0 = 0.5 + math.log(4)
    # t = 1: position terms: (1/12)*0 + (1/3)*(1/2) + (1/3)*1 + (1/4)*(1/2) = 5/8
    #   crowd term: -sum mu log mu = (1/12) log 12 + 2 (1/3) log 3 + (1/4) log 4
    #   movement cost of a_0: mass 3/4 moved (cells 0, 1, 3), each paying 1/4 -> 3/16
    r1 = 5 / 8 + (1 / 12) * math.log(12) + (2 / 3) * math.log(3) + (1 / 4) * math.log(4) - 3 / 16
    assert policy_value(game, policy) == pytest.approx(r0 + r1, abs=1e-12)


@pytest.mark.parametrize("crowd_aversion", [1.0, 0.3])
def test_values_equal_brute_force_over_the_true_state(crowd_aversion: float) -> None:
    n, horizon = 4, 3
    game = Crowd1D(size=n, horizon=horizon, crowd_aversion=crowd_aversion)
    rng = np.random.default_rng(0)
    policies = [rng.dirichlet(np.ones(3), size=(horizon, n)) for _ in range(4)]
    # a deterministic, state-dependent policy too
    policies.append(np.eye(3)[rng.integers(0, 3, size=(horizon, n))])
    for policy in policies:
        flow = loop_flow(n, horizon, policy)
        np.testing.assert_allclose(propagate(game, policy), flow, atol=1e-14)
        expected = true_state_value(n, horizon, crowd_aversion, policy, flow)
        assert policy_value(game, policy) == pytest.approx(expected, abs=1e-10)
        # the best response over x is optimal over (x, a_prev) as well
        _, br_value = best_response(game, propagate(game, policy))
        expected_best = true_state_value(n, horizon, crowd_aversion, policy, flow, best=True)
        assert br_value == pytest.approx(expected_best, abs=1e-10)


def test_best_response_has_zero_exploitability_without_crowd_aversion() -> None:
    game = Crowd1D(size=10, horizon=10, crowd_aversion=0.0)
    br, br_value = best_response(game, propagate(game, uniform_policy(game)))
    assert abs(exploitability(game, br)) < 1e-9
    assert policy_value(game, br) == pytest.approx(br_value, abs=1e-12)
    assert exploitability(game, uniform_policy(game)) > 0.5


def test_uniform_policy_is_exploitable_with_crowd_aversion() -> None:
    game = Crowd1D()
    expl = exploitability(game, uniform_policy(game))
    assert 2.7 < expl < 2.9  # measured 2.7867


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"size": 1}, "size"),
        ({"horizon": 0}, "horizon"),
        ({"crowd_aversion": -0.5}, "crowd_aversion"),
        ({"size": 2.5}, "size"),
    ],
)
def test_bad_parameters_raise_validation_errors_naming_the_field(params: dict, field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        Crowd1D(**params)
    with pytest.raises(pydantic.ValidationError, match=field):
        make_crowd_1d(**params)


def test_make_crowd_1d_rejects_unknown_parameters() -> None:
    with pytest.raises(pydantic.ValidationError, match="grid_size"):
        make_crowd_1d(grid_size=5)
    game = make_crowd_1d(size=6, horizon=3, crowd_aversion=0.5)
    assert (game.n_states, game.n_actions, game.horizon, game.crowd_aversion) == (6, 3, 3, 0.5)
    np.testing.assert_allclose(game.mu0, np.full(6, 1 / 6))


def run_episode(
    game: Crowd1D, policy: np.ndarray, n_agents: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """states, actions and rewards per step of one seeded episode."""
    sim = Crowd1DSim(game, n_agents)
    rng = np.random.default_rng(seed + 1_000)
    states = sim.reset(seed)
    all_states, all_actions, all_rewards = [], [], []
    done = False
    while not done:
        actions = sample_actions(policy[sim.t], states, rng)
        all_states.append(states)
        all_actions.append(actions)
        states, rewards, done = sim.step(actions)
        all_rewards.append(rewards)
    assert sim.t == game.horizon
    return all_states, all_actions, all_rewards


def test_simulator_rewards_are_the_literal_per_step_rewards() -> None:
    game = Crowd1D(size=5, horizon=3, crowd_aversion=0.7)
    policy = np.random.default_rng(1).dirichlet(np.ones(3), size=(3, 5))
    states, actions, rewards = run_episode(game, policy, n_agents=40, seed=2)
    for t in range(game.horizon):
        hist = np.bincount(states[t], minlength=5) / 40
        for i in range(40):
            a_prev = NEUTRAL if t == 0 else int(actions[t - 1][i])
            x = int(states[t][i])
            assert rewards[t][i] == pytest.approx(literal_reward(5, x, a_prev, hist[x], 0.7))
        if t + 1 < game.horizon:  # the move + noise: displacement in {-2..2}, on the torus
            shift = (states[t + 1] - states[t] - np.array(MOVES)[actions[t]]) % 5
            assert set(np.unique(shift)) <= {4, 0, 1}


def test_simulator_is_deterministic_under_a_seed() -> None:
    game = Crowd1D(size=8, horizon=5)
    policy = uniform_policy(game)
    first = run_episode(game, policy, 1_000, seed=3)
    second = run_episode(game, policy, 1_000, seed=3)
    other = run_episode(game, policy, 1_000, seed=4)
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert any(np.any(x != y) for x, y in zip(first[0], other[0], strict=True))


def test_simulator_lifecycle_errors() -> None:
    sim = Crowd1DSim(Crowd1D(size=4, horizon=1), 10)
    with pytest.raises(RuntimeError, match="reset"):
        sim.step(np.ones(10, dtype=np.int64))
    sim.reset(0)
    with pytest.raises(ValueError, match="actions"):
        sim.step(np.full(10, 3))
    _, _, done = sim.step(np.ones(10, dtype=np.int64))
    assert done
    with pytest.raises(RuntimeError, match="done"):
        sim.step(np.ones(10, dtype=np.int64))


def test_monte_carlo_return_matches_exact_value_at_large_n() -> None:
    game = Crowd1D(size=10, horizon=10)
    policy = np.random.default_rng(5).dirichlet(np.ones(3), size=(10, 10))
    _, _, rewards = run_episode(game, policy, 200_000, seed=6)
    mc_return = float(np.sum(rewards, axis=0).mean())
    assert mc_return == pytest.approx(policy_value(game, policy), abs=0.03)


def test_empirical_histogram_error_shrinks_like_one_over_sqrt_n() -> None:
    game = Crowd1D(size=10, horizon=10)
    policy = np.random.default_rng(7).dirichlet(np.ones(3), size=(10, 10))
    exact = propagate(game, policy)  # the dynamics do not depend on mu: this is the N -> inf flow
    mean_l1 = []
    for n_agents in (1_000, 10_000, 100_000):
        errors = []
        for seed in range(4):
            states, _, _ = run_episode(game, policy, n_agents, seed)
            hist = np.array([np.bincount(s, minlength=10) / n_agents for s in states])  # [T, S]
            errors.append(np.abs(hist - exact).sum(axis=1).mean())
        mean_l1.append(float(np.mean(errors)))
    ratios = [mean_l1[0] / mean_l1[1], mean_l1[1] / mean_l1[2]]
    assert all(2.0 < r < 5.0 for r in ratios), (mean_l1, ratios)  # sqrt(10) = 3.16


def test_mean_field_is_the_normalised_histogram() -> None:
    game = Crowd1D(size=6, horizon=2)
    sim = Crowd1DSim(game, 500)
    states = sim.reset(9)
    assert states.dtype == np.int64
    hist = sim.mean_field()
    np.testing.assert_allclose(hist, np.bincount(states, minlength=6) / 500)
    assert hist.sum() == pytest.approx(1.0)

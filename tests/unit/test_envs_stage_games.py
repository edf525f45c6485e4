"""Stage games (left_right, rock_paper_scissors, gaussian_squeeze): equilibria, solvers, sim."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest

from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    best_response,
    exploitability,
    policy_value,
    propagate,
    sample_actions,
    uniform_policy,
)
from mfdiffuser.envs.simulate import FiniteGameSim
from mfdiffuser.envs.solvers import fictitious_play, online_mirror_descent
from mfdiffuser.envs.stage_games import (
    RPS_EQUILIBRIUM,
    RPS_VALUE,
    GaussianSqueeze,
    LeftRight,
    RockPaperScissors,
    expert_policy,
    make_gaussian_squeeze,
    make_left_right,
    make_rock_paper_scissors,
    welfare,
    welfare_gap,
    welfare_optimum,
)


def stage_policy(game: FiniteMeanFieldGame, probs: list[float] | np.ndarray) -> np.ndarray:
    """Decision probs[A] from the start state at t = 0; uniform elsewhere (irrelevant)."""
    policy = uniform_policy(game)
    policy[0, 0] = probs
    return policy


def all_games() -> list[FiniteMeanFieldGame]:
    return [LeftRight(), RockPaperScissors(), GaussianSqueeze(), GaussianSqueeze(n_actions=3)]


# --- left_right -------------------------------------------------------------------------------


def test_left_right_equilibrium_and_pure_policies() -> None:
    game = LeftRight()
    assert (game.n_states, game.n_actions, game.horizon) == (3, 2, 2)
    assert abs(exploitability(game, stage_policy(game, [2 / 3, 1 / 3]))) < 1e-9
    assert exploitability(game, stage_policy(game, [1.0, 0.0])) == 1.0
    assert exploitability(game, stage_policy(game, [0.0, 1.0])) == 2.0
    assert exploitability(game, uniform_policy(game)) == pytest.approx(0.25, abs=1e-12)
    # value at equilibrium: everyone earns -mu(L) = -2 mu(R) = -2/3
    assert policy_value(game, stage_policy(game, [2 / 3, 1 / 3])) == pytest.approx(-2 / 3)


def test_left_right_fictitious_play_converges_to_two_thirds_left() -> None:
    game = LeftRight()
    result = fictitious_play(game, 300)
    assert result.exploitability_curve[-1] < 2e-3  # measured 5.5e-4
    assert result.policy[0, 0, 0] == pytest.approx(2 / 3, abs=5e-3)
    omd = online_mirror_descent(game, 300, learning_rate=0.1)
    assert omd.exploitability_curve[-1] < 1e-6  # measured 1.4e-10
    assert omd.policy[0, 0, 0] == pytest.approx(2 / 3, abs=1e-6)


# --- rock_paper_scissors ----------------------------------------------------------------------


def test_rps_equilibrium_exploitability_and_value() -> None:
    game = RockPaperScissors()
    eq = stage_policy(game, RPS_EQUILIBRIUM)
    assert abs(exploitability(game, eq)) < 1e-9
    assert policy_value(game, eq) == pytest.approx(RPS_VALUE, abs=1e-12)
    flow = propagate(game, eq)
    np.testing.assert_allclose(flow[1], [0.0, 26 / 77, 20 / 77, 31 / 77], atol=1e-15)
    # every chosen state earns 6/11 at equilibrium: indifference
    np.testing.assert_allclose(game.reward(1, flow[1])[1:, 0], [6 / 11] * 3, atol=1e-12)
    assert exploitability(game, uniform_policy(game)) == pytest.approx(1 / 3, abs=1e-12)


def test_rps_fp_and_small_step_omd_converge() -> None:
    game = RockPaperScissors()
    fp = fictitious_play(game, 300)
    assert fp.exploitability_curve[-1] < 0.05  # measured 0.0136
    omd = online_mirror_descent(game, 300, learning_rate=0.1)
    assert omd.exploitability_curve[-1] < 0.02  # measured 0.0041
    np.testing.assert_allclose(omd.policy[0, 0], RPS_EQUILIBRIUM, atol=0.02)


def test_rps_omd_with_unit_step_does_not_converge() -> None:
    game = RockPaperScissors()
    omd = online_mirror_descent(game, 300, learning_rate=1.0)
    late = omd.exploitability_curve[150:]
    assert min(late) > 0.5  # measured min 0.79, max 5.7
    assert max(late) > 4.0


def test_rps_best_response_iteration_cycles() -> None:
    game = RockPaperScissors()
    policy = uniform_policy(game)
    choices = []
    for _ in range(7):
        br, _ = best_response(game, propagate(game, policy))
        choices.append(int(np.argmax(br[0, 0])))
        assert exploitability(game, br) >= 2.0  # pure profiles are far from equilibrium
        policy = br
    # uniform -> scissors -> rock -> paper -> scissors -> ...: a 3-cycle, never settling
    assert choices == [2, 0, 1, 2, 0, 1, 2]


# --- gaussian_squeeze -------------------------------------------------------------------------


def test_gaussian_squeeze_welfare_optimum() -> None:
    game = GaussianSqueeze()
    x_star, value = welfare_optimum(game)
    assert x_star == pytest.approx(200 + math.sqrt(60000), abs=1e-12)
    assert x_star == pytest.approx(444.949, abs=1e-3)
    assert value == pytest.approx(x_star * math.exp(-((x_star - 400) ** 2) / 200**2) / 100)
    # x* maximises G over the reachable range [0, 900]
    grid = np.linspace(0, 900, 90001)
    assert max(game.payoff(float(x)) for x in grid[::100]) <= value + 1e-12
    expert = expert_policy(game)
    assert welfare(game, expert) == pytest.approx(value, abs=1e-12)
    np.testing.assert_allclose(expert[0, 0, 4:6], [1 - 0.44949, 0.44949], atol=1e-5)
    assert welfare_gap(game, expert) == pytest.approx(0.0, abs=1e-12)
    gap = welfare_gap(game, uniform_policy(game))  # x = 450: close to, not at, the optimum
    assert gap > 1e-3  # measured 0.00297
    assert welfare_gap(game, stage_policy(game, np.eye(10)[0])) == pytest.approx(value)
    # an agent cannot move x: every policy is an equilibrium
    assert exploitability(game, uniform_policy(game)) == pytest.approx(0.0, abs=1e-12)


def test_gaussian_squeeze_clips_optimum_to_reachable_range() -> None:
    game = GaussianSqueeze(n_actions=3)  # x in [0, 200] < x*
    x_star, value = welfare_optimum(game)
    assert x_star == 200.0
    assert welfare(game, expert_policy(game)) == pytest.approx(value, abs=1e-12)


def test_params_models_forbid_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        make_left_right(size=3)
    with pytest.raises(pydantic.ValidationError):
        make_rock_paper_scissors(T=2)
    with pytest.raises(pydantic.ValidationError):
        make_gaussian_squeeze(n_actions=1)
    with pytest.raises(pydantic.ValidationError):
        make_gaussian_squeeze(bogus=1)
    assert make_gaussian_squeeze(width=100.0).width == 100.0


# --- contract: mass, adjointness, simulator ---------------------------------------------------


@pytest.mark.parametrize("game", all_games(), ids=lambda g: type(g).__name__)
def test_mass_conservation_and_adjointness(game: FiniteMeanFieldGame) -> None:
    rng = np.random.default_rng(0)
    for t in range(game.horizon):
        mu = rng.dirichlet(np.ones(game.n_states))
        mass = rng.random((game.n_states, game.n_actions))
        v = rng.normal(size=game.n_states)
        pushed = game.push(t, mu, mass)
        assert pushed.sum() == pytest.approx(mass.sum(), rel=1e-12)
        assert np.all(pushed >= 0)
        # <push(mass), v> = <mass, pull(v)>
        assert pushed @ v == pytest.approx(np.sum(mass * game.pull(t, mu, v)), rel=1e-12)


@pytest.mark.parametrize("game", all_games(), ids=lambda g: type(g).__name__)
def test_simulator_mean_return_matches_exact_value(game: FiniteMeanFieldGame) -> None:
    rng = np.random.default_rng(1)
    policy = stage_policy(game, rng.dirichlet(np.ones(game.n_actions)))
    sim = FiniteGameSim(game, 100_000)
    states = sim.reset(seed=3)
    returns = np.zeros(sim.n_agents)
    chosen = None
    done = False
    while not done:
        actions = sample_actions(policy[sim.t], states, sim.rng)
        states, rewards, done = sim.step(actions)
        returns += rewards
        if sim.t == 1:
            chosen = sim.mean_field()
    assert returns.mean() == pytest.approx(policy_value(game, policy), abs=0.02)
    assert chosen is not None
    np.testing.assert_allclose(chosen[1:], policy[0, 0], atol=0.01)


def test_simulator_validates_inputs() -> None:
    sim = FiniteGameSim(LeftRight(), 4)
    with pytest.raises(RuntimeError):
        sim.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError):
        FiniteGameSim(LeftRight(), 0)
    states = sim.reset(seed=0)
    np.testing.assert_array_equal(states, [0, 0, 0, 0])
    with pytest.raises(ValueError):
        sim.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError):
        sim.step(np.full(4, 2))
    next_states, rewards, done = sim.step(np.array([0, 1, 1, 0]))
    np.testing.assert_array_equal(next_states, [1, 2, 2, 1])
    np.testing.assert_array_equal(rewards, np.zeros(4))
    assert not done
    np.testing.assert_allclose(sim.mean_field(), [0.0, 0.5, 0.5])
    _, rewards, done = sim.step(np.zeros(4, dtype=np.int64))
    np.testing.assert_allclose(rewards, [-0.5, -1.0, -1.0, -0.5])
    assert done
    with pytest.raises(RuntimeError):
        sim.step(np.zeros(4, dtype=np.int64))

"""Behaviour policies of every data quality, on crowd_1d (exact exploitability)."""

from __future__ import annotations

import numpy as np
import pytest

from mfdiffuser.envs import Crowd1D, exploitability, policy_value, propagate, uniform_policy
from mfdiffuser.envs.behaviour import QUALITIES, eps_mixture, make_behaviour, occupancy_mixture


@pytest.fixture(scope="module")
def game() -> Crowd1D:
    return Crowd1D(size=8, horizon=6)


def test_random_and_expert(game: Crowd1D) -> None:
    rnd = make_behaviour(game, "random", solver_iterations=60)
    assert len(rnd.policies) == 1 and np.array_equal(rnd.policies[0], uniform_policy(game))
    exp = make_behaviour(game, "expert", solver_iterations=60)
    assert exploitability(game, exp.policies[0]) < 0.1 * exploitability(game, rnd.policies[0])


def test_medium_is_halfway_in_exploitability(game: Crowd1D) -> None:
    expert = make_behaviour(game, "expert", solver_iterations=60).policies[0]
    med = make_behaviour(game, "medium", solver_iterations=60)
    e_med = exploitability(game, med.policies[0])
    e_exp, e_uni = exploitability(game, expert), exploitability(game, uniform_policy(game))
    assert e_med == pytest.approx(0.5 * (e_exp + e_uni), rel=1e-6)
    assert med.info["achieved"] == pytest.approx(e_med)
    assert 0 < med.info["epsilon"] < 1
    np.testing.assert_allclose(
        med.policies[0], eps_mixture(expert, uniform_policy(game), med.info["epsilon"])
    )


def test_mixed_is_a_learning_replay_and_medium_expert_is_half_half(game: Crowd1D) -> None:
    mixed = make_behaviour(game, "mixed", solver_iterations=60)
    assert mixed.info["iterations"][0] == 1 and mixed.info["iterations"][-1] == 60
    expl = [exploitability(game, p) for p in mixed.policies]
    assert len(expl) == len(mixed.info["iterations"]) >= 5
    assert expl[-1] < 0.25 * expl[0]  # later iterates are far better than the first
    me = make_behaviour(game, "medium-expert", solver_iterations=60)
    assert len(me.policies) == 2
    np.testing.assert_allclose(
        me.policies[1], make_behaviour(game, "expert", solver_iterations=60).policies[0]
    )


def test_cooperative_medium_is_halfway_in_return(game: Crowd1D) -> None:
    # A benchmark-supplied expert and the cooperative rule (quality by return).
    def expert(g: Crowd1D) -> np.ndarray:
        p = np.zeros((g.horizon, g.n_states, g.n_actions))
        p[..., 1] = 1.0  # always stay
        return p

    med = make_behaviour(game, "medium", expert=expert, cooperative=True)
    v = policy_value(game, med.policies[0])
    target = 0.5 * (policy_value(game, expert(game)) + policy_value(game, uniform_policy(game)))
    assert med.info["halfway_by"] == "return" and v == pytest.approx(target, rel=1e-6)
    mixed = make_behaviour(game, "mixed", expert=expert, cooperative=True)
    assert len(mixed.policies) == 3  # random, medium, expert: there is no solver replay


def test_occupancy_mixture_weights_by_state_distribution(game: Crowd1D) -> None:
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.ones(game.n_actions), size=(game.horizon, game.n_states))
    b = rng.dirichlet(np.ones(game.n_actions), size=(game.horizon, game.n_states))
    mix = occupancy_mixture(game, [a, b])
    np.testing.assert_allclose(mix.sum(-1), 1.0)
    # t = 0: both start from mu0, so the weights are equal and the mixture is the plain average.
    np.testing.assert_allclose(mix[0], 0.5 * (a[0] + b[0]))
    # Later: weighted by each policy's own state distribution.
    da, db = propagate(game, a), propagate(game, b)
    t, s = 3, 2
    expected = (da[t, s] * a[t, s] + db[t, s] * b[t, s]) / (da[t, s] + db[t, s])
    np.testing.assert_allclose(mix[t, s], expected)
    np.testing.assert_array_equal(occupancy_mixture(game, [a]), a)


def test_unknown_quality_names_the_allowed_ones(game: Crowd1D) -> None:
    with pytest.raises(ValueError, match="'superb'") as err:
        make_behaviour(game, "superb")
    for q in QUALITIES:
        assert q in str(err.value)

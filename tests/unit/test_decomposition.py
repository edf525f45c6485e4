"""The four-term decomposition (docs/metrics.md), each term from its own definition, plan quality.

The terms add up to the total by construction, so that is not tested; each term is checked on a
case where its value is known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfdiffuser.data.advantages import TabularAdvantage, fit_tabular_advantage
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.windows import EpisodeArrays, behaviour_prior, episodes_from_table
from mfdiffuser.envs import (
    Crowd1D,
    Crowd1DSim,
    fictitious_play,
    policy_value,
    sample_actions,
    uniform_policy,
)
from mfdiffuser.evaluation.decomposition import (
    Decomposition,
    beta_data_policy,
    beta_star_policy,
    exact_terms,
    occupancy,
    true_advantage,
)
from mfdiffuser.evaluation.plan_quality import (
    mmd2_unbiased,
    plan_quality,
    transition_probabilities,
)
from mfdiffuser.evaluation.rollout import rollout_returns
from mfdiffuser.planner.acting import nearest_states


@pytest.fixture(scope="module")
def game() -> Crowd1D:
    return Crowd1D(size=6, horizon=5)


@pytest.fixture(scope="module")
def medium(game: Crowd1D) -> np.ndarray:
    """A fully supported behaviour: half FP equilibrium, half uniform."""
    return 0.5 * fictitious_play(game, 50).policy + 0.5 * uniform_policy(game)


def _data(game: Crowd1D, policy: np.ndarray, episodes: int, n: int = 500) -> EpisodeArrays:
    table, _ = generate_shard(lambda: Crowd1DSim(game, n), [policy], range(episodes), seed=11)
    return episodes_from_table(table, n)


def test_true_advantage_is_zero_on_average_under_the_policy(
    game: Crowd1D, medium: np.ndarray
) -> None:
    adv = true_advantage(game, medium)
    assert np.allclose((medium * adv).sum(-1), 0.0, atol=1e-12)
    assert np.allclose(occupancy(game, medium).sum(axis=(1, 2)), 1.0)


def test_regularisation_gap_is_zero_for_the_references_own_data_at_beta_zero(
    game: Crowd1D,
) -> None:
    ref = fictitious_play(game, 100).policy
    pi_star = beta_star_policy(game, ref, beta=0.0, weight_clip=20.0)
    np.testing.assert_array_equal(pi_star, ref)
    dec = Decomposition(
        j_ref=policy_value(game, ref),
        j_beta_star=policy_value(game, pi_star),
        j_beta_data=0.0,
        j_hat=0.0,
        episode_returns={},
    )
    assert dec.regularisation_gap == 0.0
    # ... and it is not 0 once beta tilts the reference's own data away from it.
    tilted = beta_star_policy(game, ref, beta=3.0, weight_clip=20.0)
    assert abs(policy_value(game, ref) - policy_value(game, tilted)) > 1e-3


def test_beta_star_improves_return_of_the_behaviour(game: Crowd1D, medium: np.ndarray) -> None:
    """A mild tilt toward the behaviour's own advantage raises J^∞ (policy improvement); not
    monotone in β in a mean-field game: the tilt ignores that the flow moves with the policy."""
    base = policy_value(game, medium)
    values = [policy_value(game, beta_star_policy(game, medium, b, 1e9)) for b in (0.5, 2.0)]
    assert base < values[0] < values[1]


def test_shift_is_zero_with_exact_coverage_and_returns(game: Crowd1D, medium: np.ndarray) -> None:
    """Data covering every (s, a, t) in proportion to the behaviour with exact returns."""
    adv = true_advantage(game, medium)
    occ = occupancy(game, medium)
    assert np.all(occ > 0)
    exact = TabularAdvantage(q=adv, v=np.zeros(adv.shape[:2]), counts=1e6 * occ)
    for beta, clip in ((1.0, 20.0), (4.0, 1.5)):
        pi_star = beta_star_policy(game, medium, beta, clip)
        pi_data = beta_data_policy(medium, exact, beta, clip)
        np.testing.assert_allclose(pi_data, pi_star, atol=1e-12)
        assert abs(policy_value(game, pi_star) - policy_value(game, pi_data)) < 1e-12


def test_shift_shrinks_with_more_data(game: Crowd1D, medium: np.ndarray) -> None:
    pi_star = beta_star_policy(game, medium, 2.0, 20.0)
    j_star = policy_value(game, pi_star)
    shifts = []
    for episodes in (2, 64):
        arrays = _data(game, medium, episodes)
        prior = behaviour_prior(arrays, game.n_states, game.n_actions)
        adv = fit_tabular_advantage(arrays, game.n_states, game.n_actions)
        shifts.append(abs(j_star - policy_value(game, beta_data_policy(prior, adv, 2.0, 20.0))))
    assert shifts[1] < 0.5 * shifts[0]
    assert shifts[1] < 0.02


def test_generative_error_is_zero_when_the_model_is_its_target(
    game: Crowd1D, medium: np.ndarray
) -> None:
    arrays = _data(game, medium, 4)
    prior = behaviour_prior(arrays, game.n_states, game.n_actions)
    adv = fit_tabular_advantage(arrays, game.n_states, game.n_actions)
    target = beta_data_policy(prior, adv, 1.0, 20.0)
    v = exact_terms(
        game,
        j_ref=0.0,
        behaviour=medium,
        prior=prior,
        advantage=adv,
        table=target,
        beta=1.0,
        weight_clip=20.0,
    )
    assert v["j_beta_data"] == v["j_hat"]
    dec = Decomposition(**v, episode_returns={})
    assert dec.generative_error == 0.0
    # A different table has a nonzero generative error.
    v2 = {**v, "j_hat": policy_value(game, uniform_policy(game))}
    assert abs(Decomposition(**v2, episode_returns={}).generative_error) > 1e-3


def test_mean_field_error_shrinks_like_one_over_sqrt_n(game: Crowd1D, medium: np.ndarray) -> None:
    """A fixed table played by N agents: the per-episode deviation from J^∞ falls ~ 1/√N once
    N is large (at small N the 1/N bias of -log μ^N dominates), the signed bias faster."""
    j_inf = policy_value(game, medium)

    def act(t: int, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sample_actions(medium[t], states, rng)

    ns = (100, 1000, 10_000, 100_000)
    returns = {
        n: rollout_returns(lambda n=n: Crowd1DSim(game, n), act, game.horizon, 40, seed=3)
        for n in ns
    }
    dec = Decomposition(
        j_ref=0.0, j_beta_star=0.0, j_beta_data=0.0, j_hat=j_inf, episode_returns=returns
    )
    devs = [dec.mean_field_abs_deviation(n) for n in ns[1:]]
    slope = np.polyfit(np.log(ns[1:]), np.log(devs), 1)[0]
    assert -0.7 < slope < -0.3, (devs, slope)
    bias = [dec.mean_field_error(n) for n in ns]
    assert bias[0] > 0  # -log μ^N overstates crowding cost on average: J^N < J^∞
    assert abs(bias[2]) < 0.05 * bias[0]  # 100x more agents: the bias fell more than 20x
    m = dec.metrics()
    assert m["subopt/mf_abs_dev/n1000"] == devs[0]
    assert m["subopt/mf_error/n100"] == j_inf - np.mean(returns[100])
    assert m["subopt/total/n1000"] == -np.mean(returns[1000])


def test_mmd_is_near_zero_for_one_law_and_positive_for_two() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    c = rng.normal(loc=1.0, size=(300, 4))
    same, diff = mmd2_unbiased(a, b), mmd2_unbiased(a, c)
    assert abs(same) < 0.01 < 0.1 < diff
    assert math.isclose(mmd2_unbiased(a, c), mmd2_unbiased(c, a), rel_tol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        mmd2_unbiased(a[:1], b)


def test_transition_probabilities_of_crowd_1d(game: Crowd1D) -> None:
    """Move a in {-1, 0, +1}, then noise in {-1, 0, +1}: each reachable cell has P = 1/3."""
    states = np.array([[2, 3, 4], [0, 5, 5], [1, 1, 4]])  # [M, H]
    actions = np.array([[2, 2, 0], [0, 1, 1], [1, 1, 1]])  # action index 0: -1, 1: 0, 2: +1
    p = transition_probabilities(game, 0, states, actions)
    # 2 -(+1)-> 3 ok; 3 -(+1)-> 4 ok | 0 -(-1)-> 5 ok (torus); 5 -(0)-> 5 ok | 1 -(0)-> 1; 1 -> 4 no
    np.testing.assert_allclose(p, [[1 / 3, 1 / 3], [1 / 3, 1 / 3], [1 / 3, 0.0]])


def test_nearest_states_inverts_features(game: Crowd1D) -> None:
    s = np.arange(game.n_states)
    noisy = game.features(s) + 0.01
    np.testing.assert_array_equal(nearest_states(game, noisy), s)


def test_plan_quality_of_a_perfect_and_of_a_random_planner(
    game: Crowd1D, medium: np.ndarray
) -> None:
    """A 'planner' replaying true behaviour windows is dynamically consistent (log 1/3 per
    transition, every transition feasible) and closer in MMD than one emitting noise."""
    held = _data(game, medium, 2, n=64)
    pool = _data(game, medium, 8, n=64)  # other episodes of the same behaviour
    window = 3
    feats = np.asarray(game.features(np.arange(game.n_states)), dtype=np.float64)
    one_hot = 2.0 * np.eye(game.n_actions) - 1.0

    def replay(t: int, mu: np.ndarray, first: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((len(first), window, feats.shape[1] + game.n_actions))
        for j, s0 in enumerate(first):
            where = np.argwhere(pool.states[:, t] == s0)  # (episode, agent) of any agent at s0
            e, i = where[rng.integers(len(where))]
            s_w, a_w = pool.states[e, t : t + window, i], pool.actions[e, t : t + window, i]
            out[j] = np.concatenate([feats[s_w], one_hot[a_w]], axis=-1)
        return out

    def noise(t: int, mu: np.ndarray, first: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = rng.uniform(-1, 1, size=(len(first), window, feats.shape[1] + game.n_actions))
        x[:, 0, : feats.shape[1]] = feats[first]
        return x

    kw = {"window": window, "n_particles": 32, "n_windows": 4, "seed": 0}
    good = plan_quality(game, replay, held.states, held.actions, **kw)
    bad = plan_quality(game, noise, held.states, held.actions, **kw)
    assert good["dynamics/feasible_fraction"] == 1.0
    assert math.isclose(good["dynamics/log_likelihood"], math.log(1 / 3), rel_tol=1e-12)
    assert bad["dynamics/feasible_fraction"] < 0.9
    assert good["trajectory/mmd2"] < bad["trajectory/mmd2"]

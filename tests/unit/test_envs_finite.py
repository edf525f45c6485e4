"""The generic finite mean-field core: propagation, values, best response, sampling.

A small dense game with population-dependent dynamics (written here, independently of the
package's shift-based games) checks the recursions against plain dense linear algebra.
"""

from __future__ import annotations

import numpy as np
import pytest

from mfdiffuser.envs import (
    Crowd1D,
    FiniteMeanFieldGame,
    best_response,
    exploitability,
    policy_value,
    propagate,
    q_values,
    sample_actions,
    uniform_policy,
)


class DenseToyGame(FiniteMeanFieldGame):
    """P_t(s' | s, a, mu) = (1 - mu[0]) P1 + mu[0] P2; r(s, a, mu) = R[s, a] - 2 mu[s]."""

    def __init__(self, seed: int = 0, n_states: int = 4, n_actions: int = 3, horizon: int = 5):
        rng = np.random.default_rng(seed)
        self.n_states, self.n_actions, self.horizon = n_states, n_actions, horizon
        self.mu0 = rng.dirichlet(np.ones(n_states))
        self.p1 = rng.dirichlet(np.ones(n_states), size=(n_states, n_actions))  # [S, A, S']
        self.p2 = rng.dirichlet(np.ones(n_states), size=(n_states, n_actions))
        self.r = rng.normal(size=(n_states, n_actions))

    def kernel(self, mu: np.ndarray) -> np.ndarray:
        return (1 - mu[0]) * self.p1 + mu[0] * self.p2

    def reward(self, t: int, mu: np.ndarray) -> np.ndarray:
        return self.r - 2.0 * mu[:, None]

    def push(self, t: int, mu: np.ndarray, mass: np.ndarray) -> np.ndarray:
        return np.einsum("sa,sap->p", mass, self.kernel(mu))

    def pull(self, t: int, mu: np.ndarray, v_next: np.ndarray) -> np.ndarray:
        return self.kernel(mu) @ v_next


def random_policy(game: FiniteMeanFieldGame, rng: np.random.Generator) -> np.ndarray:
    return rng.dirichlet(np.ones(game.n_actions), size=(game.horizon, game.n_states))


def dense_flow(game: DenseToyGame, policy: np.ndarray, population: np.ndarray | None) -> np.ndarray:
    flow = [game.mu0]
    for t in range(game.horizon - 1):
        mu_pop = flow[t] if population is None else population[t]
        kernel_pi = np.einsum("sa,sap->sp", policy[t], game.kernel(mu_pop))  # [S, S']
        flow.append(flow[t] @ kernel_pi)
    return np.array(flow)


def dense_value(game: DenseToyGame, policy: np.ndarray, flow: np.ndarray) -> float:
    v = np.zeros(game.n_states)
    for t in reversed(range(game.horizon)):
        r_pi = np.sum(policy[t] * game.reward(t, flow[t]), axis=1)
        p_pi = np.einsum("sa,sap->sp", policy[t], game.kernel(flow[t]))
        v = r_pi + p_pi @ v
    return float(game.mu0 @ v)


@pytest.mark.parametrize("game", [DenseToyGame(seed=1), Crowd1D(size=7, horizon=6)])
def test_propagate_conserves_mass_and_stays_non_negative(game: FiniteMeanFieldGame) -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        flow = propagate(game, random_policy(game, rng))
        assert flow.shape == (game.horizon, game.n_states)
        np.testing.assert_allclose(flow.sum(axis=1), 1.0, atol=1e-12)
        assert flow.min() >= 0.0
        np.testing.assert_array_equal(flow[0], game.mu0)


@pytest.mark.parametrize("game", [DenseToyGame(seed=2), Crowd1D(size=9, horizon=4)])
def test_push_and_pull_are_adjoint(game: FiniteMeanFieldGame) -> None:
    rng = np.random.default_rng(3)
    for t in range(game.horizon):
        mu = rng.dirichlet(np.ones(game.n_states))
        mass = rng.random((game.n_states, game.n_actions))  # need not be normalised
        v = rng.normal(size=game.n_states)
        lhs = np.sum(game.push(t, mu, mass) * v)
        rhs = np.sum(mass * game.pull(t, mu, v))
        assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_recursions_match_dense_linear_algebra_with_population_dependent_dynamics() -> None:
    game = DenseToyGame(seed=4)
    rng = np.random.default_rng(5)
    policy = random_policy(game, rng)
    other = random_policy(game, rng)
    own_flow = dense_flow(game, policy, None)
    np.testing.assert_allclose(propagate(game, policy), own_flow, atol=1e-14)
    # the distribution of `policy` inside the population of `other` differs from its own flow
    population = dense_flow(game, other, None)
    inside = propagate(game, policy, flow=population)
    np.testing.assert_allclose(inside, dense_flow(game, policy, population), atol=1e-14)
    assert np.abs(inside - own_flow).max() > 1e-3
    assert policy_value(game, policy) == pytest.approx(dense_value(game, policy, own_flow), 1e-12)
    assert policy_value(game, policy, population) == pytest.approx(
        dense_value(game, policy, population), rel=1e-12
    )
    q = q_values(game, policy, population)
    assert q.shape == (game.horizon, game.n_states, game.n_actions)
    np.testing.assert_allclose(q[-1], game.reward(game.horizon - 1, population[-1]), atol=1e-14)


def test_best_response_dominates_every_policy_against_the_same_flow() -> None:
    rng = np.random.default_rng(6)
    for game in (DenseToyGame(seed=7), Crowd1D(size=6, horizon=5)):
        flow = propagate(game, random_policy(game, rng))
        br, br_value = best_response(game, flow)
        assert set(np.unique(br)) == {0.0, 1.0}
        np.testing.assert_array_equal(br.sum(axis=2), 1.0)
        assert policy_value(game, br, flow) == pytest.approx(br_value, rel=1e-12)
        values = [policy_value(game, random_policy(game, rng), flow) for _ in range(50)]
        assert max(values) <= br_value + 1e-12
        assert br_value - max(values) > 1e-3  # random policies are strictly worse here


def test_best_response_breaks_ties_towards_the_lowest_action() -> None:
    game = Crowd1D(size=4, horizon=1)  # one epoch: no movement cost, every action ties
    br, _ = best_response(game, propagate(game, uniform_policy(game)))
    np.testing.assert_array_equal(br[0].argmax(axis=1), 0)


def test_exploitability_is_non_negative_and_positive_for_uniform() -> None:
    rng = np.random.default_rng(8)
    game = DenseToyGame(seed=9)
    for _ in range(10):
        assert exploitability(game, random_policy(game, rng)) >= -1e-9
    assert exploitability(game, uniform_policy(game)) > 1e-2


def test_policy_shape_is_checked() -> None:
    game = Crowd1D(size=4, horizon=3)
    with pytest.raises(ValueError, match=r"policy: expected shape"):
        propagate(game, np.ones((3, 4, 2)) / 2)


def test_features_and_context() -> None:
    game = Crowd1D(size=5, horizon=4)
    feats = game.features(np.array([[0, 3], [4, 4]]))
    assert feats.dtype == np.float32
    assert feats.shape == (2, 2, game.feature_dim) == (2, 2, 5)
    np.testing.assert_array_equal(feats[0, 1], [-1, -1, -1, 1, -1])
    mu = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    ctx = game.context(1, mu)
    assert ctx.dtype == np.float32
    # horizon 4: log2(4) + 1 = 3 octaves -> [t/T, 3 sines, 3 cosines, mu(5)]
    assert ctx.shape == (game.context_dim,) == (12,)
    x = 0.25
    expected = [x]
    expected += [np.sin(np.pi * 2**j * x) for j in range(3)]
    expected += [np.cos(np.pi * 2**j * x) for j in range(3)]
    np.testing.assert_allclose(ctx, [*expected, 0.1, 0.2, 0.3, 0.4, 0.0], rtol=1e-6, atol=1e-7)
    # Every pair of decision epochs has distinct time features.
    times = np.stack([game.context(t, mu)[:7] for t in range(game.horizon)])
    gaps = np.abs(times[:, None] - times[None]).max(-1) + np.eye(game.horizon)
    assert gaps.min() > 0.3


def test_sample_actions_matches_policy_rows() -> None:
    rng = np.random.default_rng(10)
    policy_t = np.array(
        [[0.2, 0.5, 0.3], [0.0, 0.0, 1.0], [0.6, 0.4, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0]]
    )
    n_states, n_actions = policy_t.shape
    states = rng.integers(0, n_states, size=300_000)
    actions = sample_actions(policy_t, states, np.random.default_rng(11))
    assert actions.shape == states.shape
    assert actions.dtype == np.int64
    counts = np.zeros((n_states, n_actions))
    np.add.at(counts, (states, actions), 1)
    # zero-probability actions are never drawn
    assert np.all(counts[policy_t == 0] == 0)
    # Pearson chi-square over the actions with positive probability
    expected = counts.sum(axis=1, keepdims=True) * policy_t
    support = policy_t > 0
    chi2 = np.sum((counts[support] - expected[support]) ** 2 / expected[support])
    dof = int(support.sum() - n_states)  # 5 here
    assert chi2 < dof + 6 * np.sqrt(2 * dof)  # about a 1e-4 false-alarm rate
    np.testing.assert_allclose(counts / counts.sum(axis=1, keepdims=True), policy_t, atol=0.01)


def test_sample_actions_is_deterministic_under_a_seed() -> None:
    policy_t = np.random.default_rng(12).dirichlet(np.ones(3), size=7)
    states = np.random.default_rng(13).integers(0, 7, size=1000)
    a1 = sample_actions(policy_t, states, np.random.default_rng(14))
    a2 = sample_actions(policy_t, states, np.random.default_rng(14))
    a3 = sample_actions(policy_t, states, np.random.default_rng(15))
    np.testing.assert_array_equal(a1, a2)
    assert np.any(a1 != a3)


def _two_pass_exploitability(game, policy):  # type: ignore[no-untyped-def]
    """The definition: best-response value minus the policy's value, each its own pass."""
    from mfdiffuser.envs.finite import best_response, mean_field_flow, policy_value

    flow = mean_field_flow(game, policy)
    return best_response(game, flow)[1] - policy_value(game, policy, flow)


def test_fused_and_linear_exploitability_match_the_two_pass_definition() -> None:
    from mfdiffuser.envs.crowd_2d import FOUR_ROOMS_MAP, make_crowd_2d
    from mfdiffuser.envs.finite import exploitability, exploitability_batch
    from mfdiffuser.envs.stage_games import LeftRight, RockPaperScissors

    games = [
        make_crowd_2d(size=4, horizon=5),  # dense operator
        make_crowd_2d(size=17, horizon=4),  # sparse operator
        make_crowd_2d(walls=FOUR_ROOMS_MAP, horizon=6),
        LeftRight(),
        RockPaperScissors(),
    ]
    rng = np.random.default_rng(3)
    for game in games:
        assert game.linear_dynamics() is not None
        shape = (game.horizon, game.n_states)
        policies = rng.dirichlet(np.ones(game.n_actions), (3, *shape))
        batch = exploitability_batch(game, policies)
        for policy, batched in zip(policies, batch, strict=True):
            want = _two_pass_exploitability(game, policy)
            assert abs(exploitability(game, policy) - want) < 1e-10
            assert abs(batched - want) < 1e-10
        # the operator is the game's own push
        dense = game.linear_dynamics().matrix()  # P[a * S + s, s']
        for s in range(game.n_states):
            for a in range(game.n_actions):
                unit = np.zeros((game.n_states, game.n_actions))
                unit[s, a] = 1.0
                np.testing.assert_allclose(
                    dense[a * game.n_states + s], game.push(0, game.mu0, unit), atol=1e-15
                )
    with pytest.raises(ValueError, match=r"\[B, T, S, A\]"):
        exploitability_batch(games[0], np.ones((2, 3)))

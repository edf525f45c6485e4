"""State-action mean-field games (`state_action_mean_field = True`): rewards and dynamics of L_t.

A small hand-written L_t game is checked against its lifting to a state-only game: states s
(decision) and (s, a) (committed), twice the horizon. At epoch 2t an agent in s picks a and moves
to (s, a) with no reward; at epoch 2t + 1 the population's distribution over committed states is
exactly L_t, every action is the same, the agent receives r_t(s, a, L_t) and moves by
P_t(. | s, a, L_t). So the exploitability of a policy of the L_t game is the lifted game's one of
the lifted policy, which is computed here both by the exact model and by brute force over every
deterministic policy of the decision epochs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    FloatArray,
    best_response,
    exploitability,
    mean_field_flow,
    policy_value,
    propagate,
    q_values,
    uniform_policy,
)
from mfdiffuser.envs.simulate import FiniteGameSim
from mfdiffuser.envs.solvers import damped_fictitious_play, fictitious_play, online_mirror_descent
from mfdiffuser.evaluation.decomposition import true_advantage

N_S, N_A, T = 3, 2, 3


class TinyStateActionGame(FiniteMeanFieldGame):
    """Rewards and transitions that depend on L_t itself (not only on its state marginal):
    r_t(s, a, L) = c_t(s, a) - 2 L(s, a) + 1.5 sum_s' L(s', a) (crowding of an action),
    P_t(s' | s, a, L) = softmax_s'(g_t(s, a, s') + 4 L(s, a) w(s') - 3 L_A(a) w'(s')),
    L_A(a) = sum_s L(s, a)."""

    state_action_mean_field = True

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n_states, self.n_actions, self.horizon = N_S, N_A, T
        self.mu0 = rng.dirichlet(np.ones(N_S))
        self.c = rng.normal(size=(T, N_S, N_A))
        self.g = rng.normal(size=(T, N_S, N_A, N_S))
        self.w = rng.normal(size=N_S)
        self.w2 = rng.normal(size=N_S)

    def _check(self, big_l: FloatArray) -> FloatArray:
        big_l = np.asarray(big_l, dtype=np.float64)
        assert big_l.shape == (N_S, N_A), big_l.shape  # always L_t, never mu_t
        return big_l

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        big_l = self._check(mu)
        return self.c[t] - 2.0 * big_l + 1.5 * big_l.sum(axis=0)[None, :]

    def transition(self, t: int, big_l: FloatArray) -> FloatArray:
        """P[s, a, s']."""
        big_l = self._check(big_l)
        logits = (
            self.g[t]
            + 4.0 * big_l[:, :, None] * self.w[None, None, :]
            - 3.0 * big_l.sum(axis=0)[None, :, None] * self.w2[None, None, :]
        )
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        return np.einsum("sa,sap->p", mass, self.transition(t, mu))

    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        return self.transition(t, mu) @ np.asarray(v_next, dtype=np.float64)


class Lifted(FiniteMeanFieldGame):
    """The state-only lifting of a state-action game: S + S*A states, horizon 2T (see above)."""

    def __init__(self, base: TinyStateActionGame) -> None:
        self.base = base
        self.n_states = N_S + N_S * N_A
        self.n_actions = N_A
        self.horizon = 2 * T
        self.mu0 = np.concatenate([base.mu0, np.zeros(N_S * N_A)])

    def _big_l(self, mu: FloatArray) -> FloatArray:
        return np.asarray(mu, dtype=np.float64)[N_S:].reshape(N_S, N_A)

    def matrix(self, t: int, mu: FloatArray) -> FloatArray:
        """P[s, a, s'] of the lifted game."""
        p = np.zeros((self.n_states, N_A, self.n_states))
        if t % 2 == 0:
            for s, a in itertools.product(range(N_S), range(N_A)):
                p[s, a, N_S + s * N_A + a] = 1.0
            p[N_S:, :, 0] = 1.0  # never reached at even epochs
        else:
            base = self.base.transition(t // 2, self._big_l(mu))  # [S, A, S]
            for s, a in itertools.product(range(N_S), range(N_A)):
                p[N_S + s * N_A + a, :, :N_S] = base[s, a][None, :]
            for s in range(N_S):
                p[s, :, s] = 1.0  # never reached at odd epochs
        return p

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        r = np.zeros((self.n_states, N_A))
        if t % 2 == 1:
            base = self.base.reward(t // 2, self._big_l(mu))  # [S, A]
            r[N_S:] = base.reshape(-1)[:, None]  # every action of (s, a) is the same
        return r

    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        return np.einsum("sa,sap->p", mass, self.matrix(t, mu))

    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        return self.matrix(t, mu) @ np.asarray(v_next, dtype=np.float64)


def lift(policy: FloatArray) -> FloatArray:
    lifted = np.full((2 * T, N_S + N_S * N_A, N_A), 1.0 / N_A)
    lifted[0::2, :N_S] = policy
    return lifted


def brute_force_exploitability(lifted: Lifted, policy: FloatArray) -> float:
    """max over every deterministic policy of the decision epochs, against the lifted flow."""
    population = propagate(lifted, lift(policy))
    best = -np.inf
    for choice in itertools.product(range(N_A), repeat=T * N_S):
        det = np.zeros((T, N_S, N_A))
        det[np.repeat(np.arange(T), N_S), np.tile(np.arange(N_S), T), choice] = 1.0
        best = max(best, policy_value(lifted, lift(det), population))
    return best - policy_value(lifted, lift(policy), population)


def policies(game: FiniteMeanFieldGame) -> list[FloatArray]:
    rng = np.random.default_rng(3)
    shape = (game.horizon, game.n_states)
    return [uniform_policy(game)] + [rng.dirichlet(np.ones(N_A), size=shape) for _ in range(4)]


def test_exploitability_equals_brute_force_over_the_lifted_game() -> None:
    game = TinyStateActionGame()
    lifted = Lifted(game)
    for policy in policies(game):
        ours = exploitability(game, policy)
        assert ours == pytest.approx(exploitability(lifted, lift(policy)), abs=1e-10)
        assert ours == pytest.approx(brute_force_exploitability(lifted, policy), abs=1e-10)
        assert ours > 1e-3  # not a trivial agreement at zero
        # the lifted flow at odd epochs is L_t, at even epochs mu_t
        lifted_flow = propagate(lifted, lift(policy))
        big_l = mean_field_flow(game, policy)
        np.testing.assert_allclose(lifted_flow[1::2, N_S:].reshape(T, N_S, N_A), big_l, atol=1e-14)
        np.testing.assert_allclose(lifted_flow[0::2, :N_S], propagate(game, policy), atol=1e-14)
        # values and Q agree: Q of the L_t game is the lifted Q at the decision epochs
        q = q_values(game, policy, big_l)
        q_lifted = q_values(lifted, lift(policy), lifted_flow)
        np.testing.assert_allclose(q, q_lifted[0::2, :N_S], atol=1e-12)
        assert policy_value(game, policy) == pytest.approx(
            policy_value(lifted, lift(policy)), abs=1e-12
        )


def test_treating_the_game_as_state_only_would_be_wrong() -> None:
    # The L_t dependence matters: the same numbers with L_t = mu_t x uniform differ clearly.
    game = TinyStateActionGame()
    policy = policies(game)[1]
    right = exploitability(game, policy)
    mu = propagate(game, policy)
    wrong_flow = mu[..., None] * uniform_policy(game)
    _, br = best_response(game, wrong_flow)
    wrong = br - policy_value(game, policy, wrong_flow)
    assert abs(right - wrong) > 1e-2


def test_a_state_flow_is_refused_with_a_clear_error() -> None:
    game = TinyStateActionGame()
    policy = uniform_policy(game)
    mu = propagate(game, policy)
    assert mu.shape == (T, N_S)
    for call in (
        lambda: best_response(game, mu),
        lambda: q_values(game, policy, mu),
        lambda: policy_value(game, policy, mu),
        lambda: propagate(game, policy, flow=mu),
    ):
        with pytest.raises(ValueError, match=r"state-action mean-field game.*mean_field_flow"):
            call()
    assert mean_field_flow(game, policy).shape == (T, N_S, N_A)
    np.testing.assert_allclose(mean_field_flow(game, policy).sum(axis=(1, 2)), 1.0)
    adv = true_advantage(game, policy)
    np.testing.assert_allclose((policy * adv).sum(-1), 0.0, atol=1e-12)


def test_solvers_run_directly_and_match_the_lifted_game() -> None:
    game = TinyStateActionGame()
    lifted = Lifted(game)
    start = exploitability(game, uniform_policy(game))
    omd = online_mirror_descent(game, 30, learning_rate=0.3)
    omd_lifted = online_mirror_descent(lifted, 30, learning_rate=0.3)
    # the lifted Q at decision epochs is the L_t game's Q, and at committed epochs it does not
    # depend on the action: the two runs are the same iterates
    np.testing.assert_allclose(
        omd.exploitability_curve, omd_lifted.exploitability_curve, atol=1e-10
    )
    np.testing.assert_allclose(lift(omd.policy), omd_lifted.policy, atol=1e-10)
    fp = fictitious_play(game, 40)
    dfp = damped_fictitious_play(game, 40)
    for result in (omd, fp, dfp):
        assert result.exploitability_curve[-1] < 0.5 * start
        np.testing.assert_allclose(result.policy.sum(-1), 1.0)
        assert result.exploitability_curve[-1] == pytest.approx(
            exploitability(game, result.policy), abs=1e-12
        )


def test_the_simulator_uses_the_agents_empirical_state_action_distribution() -> None:
    game = TinyStateActionGame()
    policy = policies(game)[2]
    big_l = mean_field_flow(game, policy)
    sim = FiniteGameSim(game, 200_000)
    rng = np.random.default_rng(0)
    errors: list[float] = []
    returns = np.zeros(sim.n_agents)
    sim.reset(seed=1)
    for t in range(T):
        # sample the actions the way the data generator does: one per agent from pi_t
        cdf = np.cumsum(policy[t], axis=1)[sim.states]
        actions = (rng.random(sim.n_agents)[:, None] > cdf[:, :-1]).sum(axis=1)
        empirical = sim.state_action_distribution(actions)
        errors.append(float(np.abs(empirical - big_l[t]).max()))
        _, rewards, _ = sim.step(actions)
        returns += rewards
    # L_N -> L_t at rate 1/sqrt(N) (here ~1e-3); the returns' mean -> the exact value
    assert max(errors) < 5e-3
    assert returns.mean() == pytest.approx(policy_value(game, policy), abs=1e-2)

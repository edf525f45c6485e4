"""Fictitious play and online mirror descent on crowd_1d, and the behaviour policies."""

from __future__ import annotations

import numpy as np
import pytest

from mfdiffuser.envs import (
    Crowd1D,
    SolveResult,
    best_response,
    exploitability,
    fictitious_play,
    online_mirror_descent,
    policy_value,
    propagate,
    q_values,
    uniform_policy,
)


@pytest.fixture(scope="module")
def game() -> Crowd1D:
    return Crowd1D(size=10, horizon=10)


@pytest.fixture(scope="module")
def uniform_exploitability(game: Crowd1D) -> float:
    return exploitability(game, uniform_policy(game))  # measured 2.787


def test_fictitious_play_converges_on_crowd_1d(
    game: Crowd1D, uniform_exploitability: float
) -> None:
    result = fictitious_play(game, 100)
    curve = np.array(result.exploitability_curve)
    assert len(curve) == len(result.values) == 100
    assert curve.min() >= -1e-9
    assert curve[-1] < 0.05 * uniform_exploitability  # measured 0.034 (0.012x uniform)
    assert curve[-1] == pytest.approx(exploitability(game, result.policy), abs=1e-12)
    assert result.values[-1] == pytest.approx(policy_value(game, result.policy), abs=1e-12)
    # FP's curve is not monotone step by step, but keeps falling late in the run
    assert curve[90:].mean() < 0.7 * curve[40:50].mean()
    assert curve[90:].max() < curve[40:50].max()
    np.testing.assert_allclose(result.policy.sum(axis=2), 1.0, atol=1e-12)


def test_online_mirror_descent_converges_on_crowd_1d(
    game: Crowd1D, uniform_exploitability: float
) -> None:
    result = online_mirror_descent(game, 100, learning_rate=0.1)
    curve = np.array(result.exploitability_curve)
    assert len(curve) == len(result.values) == 100
    # lr = 0.1 is slow here: measured 0.365 after 100 iterations (0.13x uniform); lr = 1 reaches
    # 0.0035, tested below
    assert curve[-1] < 0.2 * uniform_exploitability
    assert np.all(np.diff(curve) < 0)  # monotone on this game
    assert curve[-1] == pytest.approx(exploitability(game, result.policy), abs=1e-12)
    fast = online_mirror_descent(game, 100, learning_rate=1.0)
    assert fast.exploitability_curve[-1] < 0.01 * uniform_exploitability


def test_online_mirror_descent_first_step_is_softmax_of_uniform_q() -> None:
    game = Crowd1D(size=5, horizon=3)
    uniform = uniform_policy(game)
    q = q_values(game, uniform, propagate(game, uniform))
    expected = np.exp(0.5 * q) / np.exp(0.5 * q).sum(axis=2, keepdims=True)
    result = online_mirror_descent(game, 1, learning_rate=0.5)
    np.testing.assert_allclose(result.policy, expected, atol=1e-14)


def test_fictitious_play_average_is_weighted_by_state_distributions() -> None:
    game = Crowd1D(size=5, horizon=4)
    iterations = 3
    result = fictitious_play(game, iterations)

    # independent re-computation with explicit loops over iterates, epochs and states
    uniform = uniform_policy(game)
    iterates = [uniform]
    distributions = [propagate(game, uniform)]
    avg = uniform
    for _ in range(iterations):
        br, _ = best_response(game, propagate(game, avg))
        iterates.append(br)
        distributions.append(propagate(game, br, flow=propagate(game, avg)))
        avg = np.empty_like(uniform)
        for t in range(game.horizon):
            for s in range(game.n_states):
                weight = sum(d[t, s] for d in distributions)
                avg[t, s] = sum(
                    d[t, s] * pi[t, s] for d, pi in zip(distributions, iterates, strict=True)
                )
                avg[t, s] /= weight
    plain_average = np.mean(iterates, axis=0)
    np.testing.assert_allclose(result.policy, avg, atol=1e-12)

    # the weighted average is the policy whose flow is the mixture of the iterates' flows
    np.testing.assert_allclose(
        propagate(game, result.policy), np.mean(distributions, axis=0), atol=1e-12
    )
    # a plain average of action probabilities is a different policy with a different flow
    assert np.abs(plain_average - result.policy).max() > 0.05
    assert np.abs(propagate(game, plain_average) - np.mean(distributions, axis=0)).max() > 1e-3


def test_solvers_reject_zero_iterations(game: Crowd1D) -> None:
    with pytest.raises(ValueError, match="iterations"):
        fictitious_play(game, 0)
    with pytest.raises(ValueError, match="iterations"):
        online_mirror_descent(game, 0)


def test_solve_result_is_frozen(game: Crowd1D) -> None:
    result = fictitious_play(game, 1)
    assert isinstance(result, SolveResult)
    with pytest.raises(AttributeError):
        result.policy = uniform_policy(game)  # type: ignore[misc]


def test_damped_fictitious_play_converges_where_plain_fp_stalls() -> None:
    from mfdiffuser.envs import damped_fictitious_play
    from mfdiffuser.envs.sis import SIS

    sis = SIS(horizon=20)
    damped = damped_fictitious_play(sis, 150).exploitability_curve
    plain = fictitious_play(sis, 150).exploitability_curve
    assert damped[-1] < 1e-6 < 0.1 < plain[-1]  # measured: 1.8e-9 vs 0.225
    assert min(damped) >= -1e-9
    with pytest.raises(ValueError, match="step_exponent"):
        damped_fictitious_play(sis, 5, step_exponent=0.0)


def test_damped_step_one_mixes_each_best_response_by_its_distribution(game: Crowd1D) -> None:
    """One iteration by hand: a_1 = 2^-p, weights (1 - a) mu and a d_br."""
    from mfdiffuser.envs import damped_fictitious_play
    from mfdiffuser.envs.finite import best_response

    p = 0.4
    a = 2.0**-p
    pi0 = uniform_policy(game)
    mu = propagate(game, pi0)
    br, _ = best_response(game, mu)
    d = propagate(game, br, flow=mu)
    den = (1 - a) * mu + a * d
    expected = ((1 - a) * mu[..., None] * pi0 + a * d[..., None] * br) / den[..., None]
    got = damped_fictitious_play(game, 1, step_exponent=p).policy
    np.testing.assert_allclose(got, expected, atol=1e-14)


def test_sis_registers_damped_fp_as_its_expert_solver() -> None:
    from mfdiffuser import api
    from mfdiffuser.envs.registry import get_benchmark

    setting = get_benchmark("sis").expert_solver
    assert setting.algorithm == "damped_fp" and setting.iterations >= 400
    assert get_benchmark("crowd_1d").expert_solver.algorithm == "fp"
    out = api.solve("sis", {"horizon": 20}, algorithm="damped_fp", iterations=150)
    assert out["exploitability"] < 1e-6 and out["step_exponent"] == setting.step_exponent
    sis = get_benchmark("sis")
    made = sis.behaviour(sis.game({"horizon": 8}), "expert", solver_iterations=20)
    assert "damped fictitious play" in made.info["source"]

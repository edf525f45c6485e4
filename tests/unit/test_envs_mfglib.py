"""Agreement with MFGLib 0.3.0 on left_right, rock_paper_scissors and sis (susceptible_infected).

MFGLib's T = horizon - 1 and its policy tensor pi[T + 1, S, A] has our layout policy[T, S, A]. Its
examples build tensors with torch's default dtype, so these tests run MFGLib in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from mfglib.alg import FictitiousPlay, OnlineMirrorDescent
from mfglib.env import Environment
from mfglib.scoring import exploitability_score

from mfdiffuser.envs.finite import FiniteMeanFieldGame, exploitability, uniform_policy
from mfdiffuser.envs.mfglib_env import torch_float64
from mfdiffuser.envs.sis import SIS
from mfdiffuser.envs.solvers import fictitious_play, online_mirror_descent
from mfdiffuser.envs.stage_games import LeftRight, RockPaperScissors

TOLERANCE = 1e-6

PAIRS: dict[str, tuple[Callable[[], FiniteMeanFieldGame], Callable[[], Environment]]] = {
    "left_right": (LeftRight, Environment.left_right),
    "rock_paper_scissors": (RockPaperScissors, Environment.rock_paper_scissors),
    "sis": (SIS, Environment.susceptible_infected),
}


@pytest.fixture(autouse=True)
def float64_torch() -> Iterator[None]:
    with torch_float64(torch):
        yield


def mfglib_exploitability(env: Environment, policy: np.ndarray) -> float:
    return float(exploitability_score(env, torch.tensor(policy, dtype=torch.float64)))


def policies_to_compare(game: FiniteMeanFieldGame) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (game.horizon, game.n_states)
    policies = [uniform_policy(game)]
    policies += [rng.dirichlet(np.ones(game.n_actions), size=shape) for _ in range(3)]
    policies += [fictitious_play(game, k).policy for k in (1, 5, 20)]
    policies += [online_mirror_descent(game, k, learning_rate=0.1).policy for k in (1, 5, 20)]
    return policies


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_shapes_rewards_and_transitions_match(name: str) -> None:
    make_ours, make_theirs = PAIRS[name]
    game, env = make_ours(), make_theirs()
    assert game.horizon == env.T + 1
    assert (game.n_states, game.n_actions) == (env.n_states, env.n_actions)
    np.testing.assert_allclose(game.mu0, env.mu0.numpy(), atol=1e-15)
    rng = np.random.default_rng(1)
    for t in (0, game.horizon - 1):
        big_l = rng.dirichlet(np.ones(game.n_states * game.n_actions))
        big_l = big_l.reshape(game.n_states, game.n_actions)  # L_t[S, A]
        mu = big_l.sum(axis=1)
        l_t = torch.tensor(big_l)
        np.testing.assert_allclose(game.reward(t, mu), env.reward(t, l_t).numpy(), atol=1e-12)
        prob = env.prob(t, l_t).numpy()  # prob[s', s, a]
        for s in range(game.n_states):
            for a in range(game.n_actions):
                unit = np.zeros((game.n_states, game.n_actions))
                unit[s, a] = 1.0
                np.testing.assert_allclose(game.push(t, mu, unit), prob[:, s, a], atol=1e-12)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_exploitability_matches_mfglib(name: str) -> None:
    make_ours, make_theirs = PAIRS[name]
    game, env = make_ours(), make_theirs()
    diffs = [
        abs(exploitability(game, p) - mfglib_exploitability(env, p))
        for p in policies_to_compare(game)
    ]
    assert max(diffs) < TOLERANCE


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_exploitability_of_mfglib_solver_iterates_matches(name: str) -> None:
    make_ours, make_theirs = PAIRS[name]
    game, env = make_ours(), make_theirs()
    fp_pis, fp_expls, _ = FictitiousPlay().solve(env, max_iter=3, atol=None, rtol=None)
    omd_pis, omd_expls, _ = OnlineMirrorDescent(alpha=0.1).solve(
        env, max_iter=3, atol=None, rtol=None
    )
    for pi, theirs in zip(fp_pis + omd_pis, fp_expls + omd_expls, strict=True):
        ours = exploitability(game, pi.numpy().astype(np.float64))
        assert ours == pytest.approx(theirs, abs=TOLERANCE)

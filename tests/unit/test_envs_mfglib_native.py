"""crowd_motion and building_evacuation, written as this package's games (sparse dynamics), agree
with MFGLib 0.3.0's own environments: rewards, transitions and exploitability (to 1e-9; seen at
~3e-14), MFGLib run in float64. The `mfglib` family (its dense adapter) is the second oracle."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mfglib.alg  # noqa: F401 (mfglib.scoring alone hits a circular import in 0.3.0)
import numpy as np
import pytest
import torch
from mfglib.env import Environment
from mfglib.scoring import exploitability_score

from mfdiffuser.envs.building_evacuation import BuildingEvacuation, BuildingEvacuationParams
from mfdiffuser.envs.crowd_motion import CrowdMotion, CrowdMotionParams
from mfdiffuser.envs.finite import (
    FiniteMeanFieldGame,
    exploitability,
    exploitability_batch,
    uniform_policy,
)
from mfdiffuser.envs.mfglib_env import MFGLibParams, make_mfglib_game, torch_float64
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.envs.solvers import fictitious_play

TOLERANCE = 1e-9

# (benchmark, our params, MFGLib's kwargs): MFGLib's T is our horizon - 1
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("crowd_motion", {}, {}),
    (
        "crowd_motion",
        {"horizon": 7, "torus_l": 5, "torus_w": 3, "seed": 4, "p_still": 0.2, "c": 3.0},
        {"T": 6, "torus_l": 5, "torus_w": 3, "seed": 4, "p_still": 0.2, "c": 3.0},
    ),
    (
        "crowd_motion",
        {"horizon": 9, "torus_l": 2, "torus_w": 4, "seed": 11, "loc_change_freq": 1},
        {"T": 8, "torus_l": 2, "torus_w": 4, "seed": 11, "loc_change_freq": 1},
    ),
    ("building_evacuation", {}, {}),
    (
        "building_evacuation",
        {"horizon": 8, "n_floor": 3, "floor_l": 4, "floor_w": 2, "eta": 0.5, "evac_r": 2.0},
        {"T": 7, "n_floor": 3, "floor_l": 4, "floor_w": 2, "eta": 0.5, "evac_r": 2.0},
    ),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


@pytest.fixture(autouse=True)
def float64_torch() -> Iterator[None]:
    with torch_float64(torch), torch.random.fork_rng(devices=[]):
        yield


def pair(case: tuple[str, dict[str, Any], dict[str, Any]]) -> tuple[FiniteMeanFieldGame, Any]:
    name, ours, theirs = case
    return get_benchmark(name).game(ours), getattr(Environment, name)(**theirs)


def policies(game: FiniteMeanFieldGame) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (game.horizon, game.n_states)
    out = [uniform_policy(game)]
    out += [rng.dirichlet(np.ones(game.n_actions) * k, size=shape) for k in (0.2, 1.0, 5.0)]
    out.append(fictitious_play(game, 5).policy)
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rewards_and_transitions_match_mfglib(case: tuple[str, dict, dict]) -> None:
    game, env = pair(case)
    assert game.horizon == env.T + 1
    assert (game.n_states, game.n_actions) == (env.n_states, env.n_actions)
    np.testing.assert_allclose(game.mu0, env.mu0.numpy().reshape(-1), atol=1e-15)
    rng = np.random.default_rng(1)
    dense = game.linear_dynamics().matrix()  # P[a * S + s, s']
    n_s, n_a = game.n_states, game.n_actions
    for t in range(game.horizon):
        mu = rng.dirichlet(np.ones(n_s))
        big_l = torch.tensor(np.repeat(mu[:, None] / n_a, n_a, axis=1))
        big_l = big_l.reshape(*env.S, *env.A)
        theirs = env.reward(t, big_l).numpy().reshape(n_s, n_a)
        np.testing.assert_allclose(game.reward(t, mu), theirs, rtol=1e-13, atol=1e-12)
        prob = env.prob(t, big_l).numpy().reshape(n_s, n_s, n_a)  # [s', s, a]
        np.testing.assert_allclose(
            dense, prob.transpose(2, 1, 0).reshape(n_a * n_s, n_s), atol=1e-15
        )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_exploitability_matches_mfglib_and_the_dense_family(case: tuple[str, dict, dict]) -> None:
    game, env = pair(case)
    name, _, theirs_kwargs = case
    dense = make_mfglib_game(MFGLibParams(env=name, **theirs_kwargs))
    pols = policies(game)
    batch = exploitability_batch(game, np.stack(pols))
    for policy, batched in zip(pols, batch, strict=True):
        pi = torch.tensor(policy).reshape(env.T + 1, *env.S, *env.A)
        theirs = float(exploitability_score(env, pi))
        ours = exploitability(game, policy)
        assert abs(ours - theirs) < TOLERANCE, (ours, theirs)
        assert abs(batched - theirs) < TOLERANCE
        assert abs(exploitability(dense, policy) - theirs) < TOLERANCE


def test_crowd_motion_bar_path_is_mfglibs_draw_or_given() -> None:
    params = CrowdMotionParams(horizon=12, torus_l=4, torus_w=4, seed=7, loc_change_freq=1)
    game = CrowdMotion(params)
    env = Environment.crowd_motion(T=11, torus_l=4, torus_w=4, seed=7, loc_change_freq=1)
    mu = np.full(16, 1.0 / 16)
    big_l = torch.tensor(np.repeat(mu[:, None] / 5, 5, axis=1)).reshape(4, 4, 5)
    for t, (i, j) in enumerate(game.bar_path):  # the bar is where MFGLib's reward peaks
        peak = int(np.argmax(env.reward(t, big_l).numpy()[..., 0]))
        assert peak == i * 4 + j
    assert len(set(game.bar_path)) > 1  # it moved
    path = [(0, 0)] * 3
    assert CrowdMotion(horizon=3, torus_l=2, torus_w=2, bar_path=path).bar_path == path
    with pytest.raises(ValueError, match="one cell per epoch"):
        CrowdMotionParams(horizon=2, bar_path=path)
    with pytest.raises(ValueError, match="off the grid"):
        CrowdMotionParams(horizon=1, torus_l=2, bar_path=[(2, 0)])


@pytest.mark.parametrize("make", [CrowdMotion, BuildingEvacuation])
def test_sampled_next_states_follow_the_dynamics(make: Any) -> None:
    game = make(horizon=2, **({"torus_l": 3, "torus_w": 3} if make is CrowdMotion else {}))
    if make is BuildingEvacuation:
        game = BuildingEvacuation(BuildingEvacuationParams(n_floor=2, floor_l=2, floor_w=2))
    rng = np.random.default_rng(0)
    n = 200_000
    states = rng.integers(0, game.n_states, n)
    actions = rng.integers(0, game.n_actions, n)
    nxt = game.sample_next(0, game.mu0, states, actions, rng)
    dense = game.linear_dynamics().matrix()
    for s, a in [(0, 0), (game.n_states - 1, game.n_actions - 1), (game.n_states // 2, 1)]:
        mask = (states == s) & (actions == a)
        freq = np.bincount(nxt[mask], minlength=game.n_states) / mask.sum()
        np.testing.assert_allclose(freq, dense[a * game.n_states + s], atol=0.03)
        assert np.all(freq[dense[a * game.n_states + s] == 0] == 0)

"""The fused finite-game simulator (envs/simulate.py + envs/kernels.py), on every kind of game:
its N-agent histogram follows the exact flow, a seed fixes every output, `act_and_step` is
`sample_actions` then `step` bit for bit, and the draws follow the policy rows and the
transition supports (chi-square tests at large N)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from mfdiffuser.envs import propagate, sample_actions
from mfdiffuser.envs.building_evacuation import BuildingEvacuation
from mfdiffuser.envs.crowd_1d import Crowd1D, Crowd1DSim
from mfdiffuser.envs.crowd_2d import Crowd2DSim, make_crowd_2d, make_four_rooms
from mfdiffuser.envs.crowd_motion import CrowdMotion
from mfdiffuser.envs.finite import FiniteMeanFieldGame, SupportTable
from mfdiffuser.envs.predator_prey import PredatorPrey, PredatorPreySim
from mfdiffuser.envs.simulate import FiniteGameSim
from mfdiffuser.envs.sis import SIS
from mfdiffuser.envs.stage_games import GaussianSqueeze, RockPaperScissors


class DenseGame(FiniteMeanFieldGame):
    """A game with only push/pull (no transition_support of its own): the generic default,
    mu-dependent dynamics P = (1 - mu[0]) P1 + mu[0] P2 with some zero entries."""

    def __init__(self) -> None:
        rng = np.random.default_rng(4)
        self.n_states, self.n_actions, self.horizon = 5, 3, 6
        self.mu0 = rng.dirichlet(np.ones(5))
        mask = rng.random((5, 3, 5)) < 0.6
        mask[..., 0] = True
        self.p1 = rng.dirichlet(np.ones(5), size=(5, 3)) * mask
        self.p1 /= self.p1.sum(-1, keepdims=True)
        self.p2 = rng.dirichlet(np.ones(5), size=(5, 3)) * mask
        self.p2 /= self.p2.sum(-1, keepdims=True)
        self.r = rng.normal(size=(5, 3))

    def kernel(self, mu: np.ndarray) -> np.ndarray:
        return (1 - mu[0]) * self.p1 + mu[0] * self.p2

    def reward(self, t: int, mu: np.ndarray) -> np.ndarray:
        return self.r - mu[:, None]

    def push(self, t: int, mu: np.ndarray, mass: np.ndarray) -> np.ndarray:
        return np.einsum("sa,sap->p", mass, self.kernel(mu))

    def pull(self, t: int, mu: np.ndarray, v_next: np.ndarray) -> np.ndarray:
        return self.kernel(mu) @ v_next


def _mfglib_case() -> tuple[FiniteMeanFieldGame, Callable[[Any, int], Any]]:
    pytest.importorskip("mfglib")
    from mfdiffuser.envs.registry import get_benchmark

    game = get_benchmark("mfglib").game({"env": "conservative_treasure_hunting"})
    assert game.state_action_mean_field
    return game, FiniteGameSim


def _plugin_case() -> tuple[FiniteMeanFieldGame, Callable[[Any, int], Any]]:
    """The example plugin's bar_line (examples/plugin): only push/pull, FiniteGameSim."""
    path = Path(__file__).resolve().parents[2] / "examples/plugin/mfd_example_plugin/bar_line.py"
    spec = importlib.util.spec_from_file_location("_bar_line_for_the_fused_sim", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BarLine(module.BarLineParams()), module.SPEC.make_sim


CASES: dict[str, Callable[[], tuple[FiniteMeanFieldGame, Callable[[Any, int], Any]]]] = {
    "crowd_1d": lambda: (Crowd1D(size=10, horizon=6), Crowd1DSim),
    "crowd_2d": lambda: (make_crowd_2d(size=5, horizon=6), Crowd2DSim),
    "four_rooms": lambda: (make_four_rooms(horizon=6), Crowd2DSim),
    "sis": lambda: (SIS(horizon=8), FiniteGameSim),
    "rock_paper_scissors": lambda: (RockPaperScissors(), FiniteGameSim),
    "gaussian_squeeze": lambda: (GaussianSqueeze(), FiniteGameSim),  # 10 actions: long rows
    "predator_prey": lambda: (PredatorPrey(size=3, horizon=6), PredatorPreySim),
    "dense_default": lambda: (DenseGame(), FiniteGameSim),
    "plugin_bar_line": _plugin_case,
    "mfglib_state_action": _mfglib_case,
    # fixed dynamics, the table from the game's sparse operator (LinearDynamics.support)
    "building_evacuation": lambda: (
        BuildingEvacuation(n_floor=3, floor_l=4, floor_w=5, horizon=6),
        FiniteGameSim,
    ),
    "crowd_motion": lambda: (CrowdMotion(torus_l=5, torus_w=6, horizon=6), FiniteGameSim),
}


def policy_of(game: FiniteMeanFieldGame) -> np.ndarray:
    """A fixed random policy with some zero-probability actions (never drawn)."""
    rng = np.random.default_rng(11)
    policy = rng.dirichlet(np.ones(game.n_actions), size=(game.horizon, game.n_states))
    if game.n_actions > 2:
        policy[..., 1] = 0.0
        policy /= policy.sum(-1, keepdims=True)
    return policy


def play(game: FiniteMeanFieldGame, make_sim: Any, n: int, seed: int, fused: bool) -> list:
    sim = make_sim(game, n)
    policy = policy_of(game)
    rng = np.random.default_rng(seed + 1)
    states = sim.reset(seed)
    out = [states]
    for t in range(game.horizon):
        if fused:
            actions, states, rewards, _ = sim.act_and_step(policy[t], rng)
        else:
            actions = sample_actions(policy[t], states, rng)
            states, rewards, _ = sim.step(actions)
        out += [actions, states, rewards]
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_histogram_follows_the_exact_flow_at_large_n(name: str) -> None:
    game, make_sim = CASES[name]()
    n = 200_000
    policy = policy_of(game)
    flow = propagate(game, policy)
    sim = make_sim(game, n)
    rng = np.random.default_rng(0)
    sim.reset(5)
    for t in range(game.horizon):
        assert np.abs(sim.mean_field() - flow[t]).max() <= 6 / np.sqrt(n), t
        np.testing.assert_array_equal(
            sim.counts(), np.bincount(sim.states, minlength=game.n_states)
        )
        _, states, _, _ = sim.act_and_step(policy[t], rng)
        assert not np.any(np.asarray(sim.states) != states)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_seed_fixes_every_output_and_the_fused_path_is_the_two_call_path(name: str) -> None:
    game, make_sim = CASES[name]()
    first = play(game, make_sim, 3_000, seed=3, fused=False)
    again = play(game, make_sim, 3_000, seed=3, fused=False)
    fused = play(game, make_sim, 3_000, seed=3, fused=True)
    for a, b, c in zip(first, again, fused, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        assert a.dtype == c.dtype
    other = play(game, make_sim, 3_000, seed=4, fused=True)
    assert any(np.any(a != b) for a, b in zip(first, other, strict=True))


def test_sample_actions_chi_square_at_large_n() -> None:
    rng = np.random.default_rng(0)
    policy_t = rng.dirichlet(np.ones(6), size=4)  # 6 actions: the padded 4-slot... and beyond
    policy_t[2, [0, 3]] = 0.0
    policy_t /= policy_t.sum(-1, keepdims=True)
    n = 400_000
    states = rng.integers(0, 4, n)
    actions = sample_actions(policy_t, states, np.random.default_rng(1))
    for s in range(4):
        mine = actions[states == s]
        observed = np.bincount(mine, minlength=6)
        support = policy_t[s] > 0
        assert observed[~support].sum() == 0  # zero-probability actions are never drawn
        expected = policy_t[s, support] * mine.shape[0]
        p = stats.chisquare(observed[support], expected).pvalue
        assert p > 1e-4, (s, observed, expected)
    for n_a in (1, 2, 3, 5):  # each row layout (no threshold, 1, 2 and 4 slots)
        pol = rng.dirichlet(np.ones(n_a), size=3)
        st = rng.integers(0, 3, 200_000)
        act = sample_actions(pol, st, np.random.default_rng(2))
        for s in range(3):
            obs = np.bincount(act[st == s], minlength=n_a)
            if n_a > 1:
                assert stats.chisquare(obs, pol[s] * obs.sum()).pvalue > 1e-4
    with pytest.raises(IndexError, match="states"):
        sample_actions(policy_t, np.array([0, 4]), rng)


@pytest.mark.parametrize(
    "name", ["crowd_2d", "sis", "predator_prey", "dense_default", "building_evacuation"]
)
def test_transitions_chi_square_against_the_support(name: str) -> None:
    """Every agent in one (s, a): next-state counts against the game's push of a unit mass."""
    game, make_sim = CASES[name]()
    n = 200_000
    sim = make_sim(game, n)
    sim.reset(0)
    s = int(np.argmax(game.mu0))
    for a in range(game.n_actions):
        sim.states = np.full(n, s)
        sim.t = 1
        mu = sim.mean_field()
        unit = np.zeros((game.n_states, game.n_actions))
        unit[s, a] = 1.0
        expected = game.push(1, mu, unit)
        nxt, _, _ = sim.step(np.full(n, a))
        observed = np.bincount(nxt, minlength=game.n_states)
        support = expected > 0
        assert observed[~support].sum() == 0
        if support.sum() > 1:
            p = stats.chisquare(observed[support], expected[support] * n).pvalue
            assert p > 1e-4, (a, observed, expected)


def test_support_tables_are_checked() -> None:
    game = SIS()
    with pytest.raises(ValueError, match="shape"):
        SupportTable.of(game, np.zeros((3, 2), dtype=np.int64), np.ones((3, 2)))
    with pytest.raises(ValueError, match="lie in"):
        SupportTable.of(game, np.full((4, 2), 2), np.ones((4, 2)))
    sim = FiniteGameSim(game, 10)
    with pytest.raises(ValueError, match="states"):
        sim.states = np.full(10, 2)


@pytest.mark.parametrize("name", ["crowd_1d", "sis", "mfglib_state_action"])
def test_data_generation_rows_are_the_two_call_paths(name: str) -> None:
    """play_episode through act_and_step(out=...) into reused episode arrays gives the rows
    sample_actions + step give (a simulator without act_and_step takes that path)."""
    from mfdiffuser.data.generate import play_episode

    game, make_sim = CASES[name]()
    policy = policy_of(game)

    class TwoCalls:
        def __init__(self) -> None:
            self.sim = make_sim(game, 500)
            self.reset, self.step = self.sim.reset, self.sim.step

    sim = make_sim(game, 500)
    buffers = None
    for seed in (1, 2):
        fused = play_episode(sim, policy, seed, buffers)
        two = play_episode(TwoCalls(), policy, seed)
        for x, y in zip(fused, two, strict=True):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
        buffers = fused
    with pytest.raises(ValueError, match="out"):
        sim.reset(0)
        sim.act_and_step(policy[0], np.random.default_rng(0), out=(np.zeros(3), None, None))

"""The `mfglib` benchmark family: every MFGLib 0.3.0 environment through our exact model.

Our exploitability (float64) equals MFGLib's own `exploitability_score`, MFGLib run in float64
too, for the uniform policy and a random non-uniform one on each environment at its default
sizes; of these, conservative_treasure_hunting, equilibrium_price and random_linear depend on the
state-action distribution L_t (the non-uniform policy is what tells the two contracts apart).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from mfglib.alg import OnlineMirrorDescent
from mfglib.env import Environment
from mfglib.scoring import exploitability_score

from mfdiffuser.envs.finite import (
    exploitability,
    mean_field_flow,
    policy_value,
    propagate,
    uniform_policy,
)
from mfdiffuser.envs.mfglib_env import (
    ENV_KWARGS,
    ENV_NAMES,
    STATE_ACTION_ENVS,
    MFGLibGame,
    MFGLibParams,
    make_environment,
    torch_float64,
)
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.envs.simulate import FiniteGameSim
from mfdiffuser.envs.solvers import fictitious_play, online_mirror_descent
from mfdiffuser.platform.config import ConfigError, load_config

TOLERANCE = 1e-10
SPEC = get_benchmark("mfglib")


@pytest.fixture(autouse=True)
def float64_torch() -> Iterator[None]:
    with torch_float64(torch):
        yield


def theirs(name: str) -> Environment:
    """MFGLib's environment, built by MFGLib itself in float64 (its RNG use kept local)."""
    with torch.random.fork_rng(devices=[]):
        return getattr(Environment, name)()


def mfglib_exploitability(env: Environment, policy: np.ndarray) -> float:
    pi = torch.tensor(policy, dtype=torch.float64).reshape(env.T + 1, *env.S, *env.A)
    return float(exploitability_score(env, pi))


def random_policy(game: MFGLibGame, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(game.n_actions), size=(game.horizon, game.n_states))


@pytest.mark.parametrize("name", ENV_NAMES)
def test_exploitability_matches_mfglib(name: str) -> None:
    game = SPEC.game({"env": name})
    env = theirs(name)
    assert game.horizon == env.T + 1  # MFGLib's epochs 0..T
    assert (game.n_states, game.n_actions) == (env.n_states, env.n_actions)
    assert game.state_action_mean_field == (name in STATE_ACTION_ENVS)
    np.testing.assert_array_equal(game.mu0, env.mu0.numpy().reshape(-1))
    for label, policy in (("uniform", uniform_policy(game)), ("random", random_policy(game, 7))):
        ours, ref = exploitability(game, policy), mfglib_exploitability(env, policy)
        assert ours == pytest.approx(ref, abs=TOLERANCE), (name, label)
    if name in STATE_ACTION_ENVS:
        # an L_t game evaluated as if it depended on mu_t only (actions uniform) is wrong
        policy = random_policy(game, 7)
        mu_only = MFGLibGame(env, name=name, state_action=False)
        assert abs(exploitability(mu_only, policy) - mfglib_exploitability(env, policy)) > 1e-3


def test_omd_iterates_match_mfglib_on_a_state_action_game() -> None:
    game = SPEC.game({"env": "random_linear"})
    pis, expls, _ = OnlineMirrorDescent(alpha=0.1).solve(
        theirs("random_linear"), max_iter=3, atol=None, rtol=None
    )
    for pi, ref in zip(pis, expls, strict=True):
        policy = pi.numpy().reshape(game.horizon, game.n_states, game.n_actions)
        assert exploitability(game, policy) == pytest.approx(ref, abs=TOLERANCE)
    ours = online_mirror_descent(game, 3, learning_rate=0.1)
    np.testing.assert_allclose(ours.exploitability_curve, expls[1:], atol=TOLERANCE)


def test_the_kwargs_table_is_mfglibs_signatures() -> None:
    for name in ENV_NAMES:
        params = inspect.signature(getattr(Environment, name)).parameters
        declared = {k: p.default for k, p in params.items() if k != "mu0"}
        assert declared == {k: default for k, (_, default) in ENV_KWARGS[name].items()}, name
        validated = MFGLibParams(env=name)
        assert validated.kwargs() == declared
        env = theirs(name)
        assert validated.shapes() == (tuple(env.S), tuple(env.A)), name


def test_multi_dimensional_states_and_actions_are_flattened_row_major() -> None:
    game = SPEC.game({"env": "equilibrium_price"})  # actions (Q + 1, H + 1) = (3, 3)
    env = theirs("equilibrium_price")
    big_l = np.random.default_rng(0).dirichlet(np.ones(game.n_states * game.n_actions))
    big_l = big_l.reshape(game.n_states, game.n_actions)
    r = env.reward(1, torch.tensor(big_l).reshape(*env.S, *env.A)).numpy()  # r[s, q, h]
    np.testing.assert_array_equal(game.reward(1, big_l), r.reshape(game.n_states, -1))
    assert game.reward(1, big_l)[2, 1 * 3 + 2] == r[2, 1, 2]
    crowd = SPEC.game({"env": "building_evacuation"})  # states (floor, row, column)
    assert crowd.state_shape == (5, 10, 10)
    assert int(crowd.state_index([[2, 3, 4]])[0]) == (2 * 10 + 3) * 10 + 4
    np.testing.assert_array_equal(crowd.state_coordinates([234]), [[2, 3, 4]])


def test_parameters_are_validated_with_the_field_value_and_what_is_allowed() -> None:
    p = SPEC.params({"env": "random_linear", "n": 4})
    assert p.model_dump()["n"] == 4 and p.model_dump()["m"] == 10.0
    assert p.model_dump()["bar_loc"] is None  # not a parameter of random_linear
    with pytest.raises(
        ValueError,
        match=r"bar_loc = 1: not a parameter of MFGLib's "
        r"random_linear; allowed: env, T, n, m, seed",
    ):
        SPEC.params({"env": "random_linear", "bar_loc": 1})
    with pytest.raises(ValueError, match=r"m = 2.5: linear_quadratic takes int"):
        SPEC.params({"env": "linear_quadratic", "m": 2.5})
    with pytest.raises(ValueError, match=r"beach_bar.*building_evacuation"):
        SPEC.params({"env": "beachbar"})
    with pytest.raises(ValueError, match=r"bar_loc must be between zero and n-1"):
        SPEC.game({"env": "beach_bar", "bar_loc": 9})
    # The config path: strict JSON, every field named under benchmark.params
    with pytest.raises(ConfigError, match=r"benchmark\.params.*p_still = 0.3.*random_linear"):
        load_config(
            None,
            [
                "benchmark.name=mfglib",
                "benchmark.params.env=random_linear",
                "benchmark.params.p_still=0.3",
            ],
        )
    cfg = load_config(None, ["benchmark.name=mfglib", "benchmark.params.env=equilibrium_price"])
    assert cfg.benchmark.horizon == 5 and tuple(cfg.benchmark.params["c"]) == (1.0,) * 5


def test_environments_too_big_for_dense_transitions_are_refused_before_building() -> None:
    # 50,000 states: MFGLib's own constructor would allocate a 112 GiB tensor
    with pytest.raises(ValueError, match=r"50000 x 50000 x 6 = 15,000,000,000 .*limit"):
        SPEC.params({"env": "building_evacuation", "floor_l": 100, "floor_w": 100})
    with pytest.raises(ValueError, match=r"400 x 400 x 5 = 800,000 .*limit of 1,000"):
        MFGLibGame(theirs("crowd_motion"), name="crowd_motion", max_dense_entries=1000)


def test_building_leaves_torchs_rng_and_default_dtype_alone() -> None:
    torch.set_default_dtype(torch.float32)  # the fixture restores float64 afterwards
    state = torch.random.get_rng_state()
    game = SPEC.game({"env": "random_linear", "seed": 3})
    SPEC.game({"env": "crowd_motion"})
    assert torch.get_default_dtype() == torch.float32
    assert torch.equal(torch.random.get_rng_state(), state)
    assert game.reward(0, np.full((5, 5), 1 / 25)).dtype == np.float64
    # the same seed gives the same game (MFGLib's draws, in float64)
    with torch.random.fork_rng(devices=[]), torch_float64(torch):
        ref = Environment.random_linear(seed=3)
    l_t = np.full((5, 5), 1 / 25)
    np.testing.assert_array_equal(game.reward(1, l_t), ref.reward(1, torch.tensor(l_t)).numpy())
    assert make_environment("random_linear", seed=3).T == 3


def test_simulator_and_solvers_on_a_state_action_environment() -> None:
    game = SPEC.game({"env": "conservative_treasure_hunting"})
    policy = random_policy(game, 1)
    big_l = mean_field_flow(game, policy)
    assert big_l.shape == (game.horizon, game.n_states, game.n_actions)
    sim = FiniteGameSim(game, 100_000)
    rng = np.random.default_rng(0)
    sim.reset(seed=2)
    errors, returns = [], np.zeros(sim.n_agents)
    for t in range(game.horizon):
        cdf = np.cumsum(policy[t], axis=1)[sim.states]
        actions = (rng.random(sim.n_agents)[:, None] > cdf[:, :-1]).sum(axis=1)
        errors.append(np.abs(sim.state_action_distribution(actions) - big_l[t]).max())
        _, rewards, _ = sim.step(actions)
        returns += rewards
    assert max(errors) < 1e-2
    assert returns.mean() == pytest.approx(policy_value(game, policy), abs=2e-2)
    start = exploitability(game, uniform_policy(game))
    assert fictitious_play(game, 30).exploitability_curve[-1] < start
    assert online_mirror_descent(game, 30, learning_rate=0.1).exploitability_curve[-1] < start


def test_sampled_transitions_follow_the_dense_rows() -> None:
    game = SPEC.game({"env": "beach_bar"})
    mu = propagate(game, uniform_policy(game))[1]
    n = 200_000
    states, actions = np.full(n, 1), np.full(n, 2)
    nxt = game.sample_next(1, mu, states, actions, np.random.default_rng(0))
    freq = np.bincount(nxt, minlength=game.n_states) / n
    np.testing.assert_allclose(freq, game.transition_matrix(1, mu)[1 * 3 + 2], atol=5e-3)
    last = game.sample_next(game.horizon - 1, mu, states, actions, np.random.default_rng(0))
    np.testing.assert_array_equal(last, states)  # no move after MFGLib's last epoch T


def test_mfd_solve_through_the_config() -> None:
    from typer.testing import CliRunner

    from mfdiffuser.cli import app

    runner = CliRunner()
    args = ["solve", "mfglib", "-s", "benchmark.params.env=random_linear", "-s", "n=4", "--json"]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output[-2000:]
    out = json.loads(done.stdout)
    assert out["benchmark"]["name"] == "mfglib" and out["benchmark"]["params"]["n"] == 4
    with torch.random.fork_rng(devices=[]):
        env = Environment.random_linear(n=4)
    pi = np.full((env.T + 1, 4, 4), 0.25)
    assert out["exploitability"] == pytest.approx(mfglib_exploitability(env, pi), abs=TOLERANCE)
    refused = runner.invoke(app, ["solve", "mfglib", "-s", "env=beach_bar", "-s", "seed=1"])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1, refused.output[-2000:]
    assert "seed = 1: not a parameter of MFGLib's beach_bar; allowed: env, T, n, bar_loc" in (
        refused.stderr
    )


def test_without_mfglib_the_family_says_how_to_install_it() -> None:
    # A fresh interpreter in which `import mfglib` fails (None in sys.modules: Python's own way
    # of marking a module unavailable); the registry still loads and lists the family.
    code = (
        "import sys; sys.modules['mfglib'] = None\n"
        "from mfdiffuser.envs.registry import get_benchmark\n"
        "spec = get_benchmark('mfglib')\n"
        "assert spec.params({'env': 'beach_bar'}).n == 4\n"
        "try:\n"
        "    spec.game({'env': 'beach_bar'})\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )
    assert "pip install mfglib==0.3.0" in done.stdout, done.stdout + done.stderr

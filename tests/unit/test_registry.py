"""Every registered benchmark: validated params, exact model, simulator, data of every quality."""

from __future__ import annotations

import numpy as np
import pytest

from mfdiffuser import api
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.envs import exploitability, uniform_policy
from mfdiffuser.envs.behaviour import QUALITIES
from mfdiffuser.envs.registry import BENCHMARKS, get_benchmark
from mfdiffuser.platform.config import ConfigError, load_config

# Benchmarks with an exact mean-field model (battle has none; tests/unit/test_battle.py covers it).
NAMES = sorted(n for n, s in BENCHMARKS.items() if s.exact_model)


def test_the_three_families_are_registered() -> None:
    families = {spec.family for spec in BENCHMARKS.values()}
    assert {"stage", "sequential", "team"} <= families
    assert {"left_right", "rock_paper_scissors", "gaussian_squeeze"} <= set(NAMES)
    assert {"crowd_1d", "crowd_2d", "four_rooms", "sis"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_solve_contract_on_every_benchmark(name: str) -> None:
    out = api.solve(name, algorithm="uniform")
    assert out["benchmark"]["name"] == name and out["benchmark"]["version"] >= 1
    assert out["exploitability"] == pytest.approx(out["best_response_value"] - out["value"])
    assert out["exploitability"] >= -1e-9
    if BENCHMARKS[name].cooperative:
        assert out["exploitability"] == pytest.approx(0.0, abs=1e-12)
        assert out["welfare_gap"] > 0  # uniform is not the welfare optimum
        assert api.solve(name, algorithm="expert")["welfare_gap"] == pytest.approx(0, abs=1e-9)
        with pytest.raises(ConfigError, match="cooperative"):
            api.solve(name, algorithm="fp")
    else:
        # the benchmark's registered solver: fictitious play, damped for sis, mirror descent
        # for building_evacuation (20 plain fictitious-play iterations do not beat uniform there)
        solver = BENCHMARKS[name].expert_solver.algorithm
        fp = api.solve(name, algorithm=solver, iterations=20)
        assert fp["exploitability"] < out["exploitability"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("quality", QUALITIES)
def test_every_quality_generates_data(name: str, quality: str) -> None:
    spec = get_benchmark(name)
    game = spec.game({"horizon": 6} if name in ("sis", "four_rooms") else None)
    made = spec.behaviour(game, quality, solver_iterations=10)
    for p in made.policies:
        assert p.shape == (game.horizon, game.n_states, game.n_actions)
        np.testing.assert_allclose(p.sum(-1), 1.0)
    table, returns = generate_shard(lambda: spec.make_sim(game, 12), made.policies, range(3), 0)
    assert table.num_rows == 3 * 12 * game.horizon
    assert np.isfinite(returns).all()
    if quality == "medium" and not spec.cooperative:
        e = [exploitability(game, p) for p in (uniform_policy(game), made.policies[0])]
        assert e[1] < e[0]


def test_benchmark_parameters_are_validated_by_name() -> None:
    with pytest.raises(ConfigError, match=r"params\.size"):
        load_config(None, ["benchmark.name=crowd_2d", "size=1"])
    with pytest.raises(ConfigError, match="horizon"):
        load_config(None, ["benchmark.name=sis", "horizon=0"])
    cfg = load_config(None, ["benchmark.name=four_rooms", "planner.window=8"])
    assert cfg.benchmark.params["horizon"] == 40 and cfg.benchmark.params["size"] == 13


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_loads_with_its_episode_length(name: str) -> None:
    # Stage games have no `horizon` parameter: the registry knows their episode length.
    cfg = load_config(None, [f"benchmark.name={name}"])
    spec = get_benchmark(name)
    expected = (
        spec.game(cfg.benchmark.params).horizon
        if spec.exact_model
        else cfg.benchmark.params["max_steps"]
    )
    assert cfg.benchmark.horizon == spec.horizon(cfg.benchmark.params) == expected
    assert cfg.benchmark.horizon == {"left_right": 2, "sis": 51, "battle": 400}.get(
        name, cfg.benchmark.horizon
    )
    assert cfg.planner.window == min(4, expected)  # the default window fits every episode

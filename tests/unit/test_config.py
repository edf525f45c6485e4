"""Config validation: every bad value fails before any Ray work, naming field, value, allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfdiffuser.platform.config import ConfigError, load_config

PRESET = Path(__file__).resolve().parents[2] / "mfdiffuser" / "presets" / "quickstart.yaml"


def test_defaults_are_complete_and_valid() -> None:
    cfg = load_config()
    assert cfg.benchmark.name == "crowd_1d"
    # The stored params are the complete defaulted set, so artifacts record all of them.
    assert cfg.benchmark.params == {"size": 10, "horizon": 10, "crowd_aversion": 1.0}


def test_preset_loads_and_overrides_resolve() -> None:
    cfg = load_config(PRESET, ["size=20", "n_agents=300", "planner.window=8", "train.lr=0.01"])
    assert cfg.benchmark.params["size"] == 20
    assert cfg.data.n_agents == 300
    assert cfg.planner.window == 8
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.eval.n_agents == [100, 1000]


def test_list_values_parse_as_yaml() -> None:
    cfg = load_config(None, ["eval.n_agents=[10, 20, 30]"])
    assert cfg.eval.n_agents == [10, 20, 30]


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("benchmark.name=nope", ["benchmark.name", "'nope'", "crowd_1d"]),
        ("n_agents=0", ["data.n_agents", "0", "greater than or equal to 1"]),
        ("data.quality=great", ["data.quality", "'great'", "random", "expert"]),
        ("planner.window=11", ["method.params.window", "11", "1..10"]),
        ("size=1", ["params.size", "1", "greater than or equal to 2"]),
        ("horizon=-3", ["params.horizon", "-3"]),
        ("data.path=/no/such/dataset", ["data.path", "/no/such/dataset", "manifest.json"]),
        ("eval.n_agents=[100, 0]", ["eval.n_agents", "[0]"]),
        ("train.lr=-1", ["train.lr", "-1", "greater than 0"]),
    ],
)
def test_bad_values_name_field_value_and_allowed(override: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_unknown_and_ambiguous_keys() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(None, ["frobnicate=3"])
    with pytest.raises(ConfigError, match="ambiguous"):
        load_config(None, ["seed=3"])  # data.seed, train.seed, eval.seed
    unknown = r"method.params.frobnicate: unknown setting; allowed: method.params"
    with pytest.raises(ConfigError, match=unknown):
        load_config(None, ["planner.frobnicate=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["size"])


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("planner.windw=3", "(did you mean method.params.window?)"),
        ("method.param.window=3", "(did you mean method.params.window?)"),
        ("benchmark.params.sise=3", "(did you mean benchmark.params.size?)"),
        ("sze=3", "(did you mean size?)"),
        ("n_agent=3", "(did you mean n_agents?)"),
        ("benchmark=crowd1d", "'crowd1d': unknown benchmark (did you mean crowd_1d?)"),
    ],
)
def test_unknown_names_suggest_the_closest(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert suggestion in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_bare_keys_belong_to_the_benchmark_set_anywhere() -> None:
    cfg = load_config(None, ["max_steps=12", "benchmark.name=battle"])
    assert cfg.benchmark.params["max_steps"] == 12 and cfg.benchmark.horizon == 12


def test_window_checked_against_overridden_horizon() -> None:
    assert load_config(None, ["horizon=20", "planner.window=16"]).planner.window == 16
    with pytest.raises(ConfigError, match="horizon 3"):
        load_config(None, ["horizon=3", "planner.window=4"])
    # The default window (4) is capped at a shorter episode instead of failing.
    assert load_config(None, ["horizon=3"]).planner.window == 3


def test_bad_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)

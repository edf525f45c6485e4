"""Sweep files: grids expand to validated trials, bad sweeps fail before anything launches."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mfdiffuser.platform.config import ConfigError
from mfdiffuser.tuning.sweep import METHODS, load_sweep

BASE = {
    "name": "s",
    "benchmark": {"name": "crowd_1d", "params": {"size": 6, "horizon": 10}},
    "data": {"quality": "expert", "n_agents": 20, "episodes": 4, "shards": 4},
}


def _write(tmp_path: Path, sweep: dict, **base) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({**BASE, **base, "sweep": sweep}))
    return p


def test_grid_expands_to_every_combination_with_axes_applied(tmp_path: Path) -> None:
    sw = load_sweep(
        _write(
            tmp_path,
            {
                "grid": {"N": [100, 1000], "quality": ["medium", "expert"], "seed": [0, 1, 2]},
                "transitions_per_dataset": 20_000,
            },
        )
    )
    assert len(sw.trials) == 12
    assert len({t.key for t in sw.trials}) == 12 and len({t.trial_id for t in sw.trials}) == 12
    for t in sw.trials:
        cfg = sw.experiment_config(t)
        n = t.axes["N"]
        assert cfg.data.n_agents == n and cfg.data.quality == t.axes["quality"]
        assert cfg.data.seed == cfg.train.seed == cfg.eval.seed == t.axes["seed"]
        # agent-transitions held fixed: episodes = ceil(20000 / (N * T))
        assert cfg.data.episodes == {100: 20, 1000: 2}[n]
        assert cfg.data.shards == min(4, cfg.data.episodes)
        assert cfg.eval.n_agents == [n]  # evaluated at its own N
    # Stable: the same file gives the same keys and sweep id.
    again = load_sweep(tmp_path / "sweep.yaml")
    assert [t.key for t in again.trials] == [t.key for t in sw.trials]
    assert again.sweep_id == sw.sweep_id


def test_method_axis_and_dotted_axes(tmp_path: Path) -> None:
    sw = load_sweep(
        _write(tmp_path, {"grid": {"method": list(METHODS), "train.lr": [0.01], "H": [2]}})
    )
    by_method = {t.method: sw.experiment_config(t) for t in sw.trials}
    assert by_method["per_agent_diffuser"].planner.interaction is False
    assert by_method["per_agent_diffuser"].planner.stages == 1
    assert by_method["mf_diffuser_unweighted"].planner.beta == 0.0
    # methods without a window (fp, omd, bc, ...): their cells are skipped with the reason
    windowless = {n for n, m in METHODS.items() if "window" not in m.params_model.model_fields}
    assert {"fp", "omd", "bc"} <= windowless
    assert {c.method for c in sw.skipped} == windowless
    assert all(c.reason == f"H: {c.method} has no parameter window" for c in sw.skipped)
    assert all(c.train.lr == 0.01 for c in by_method.values())
    assert all(c.method.params["window"] == 2 for c in by_method.values())


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"grid": {}}, "empty grid"),
        ({"grid": {"n_agents": []}}, "n_agents has no values"),
        ({"grid": {"temperature": [1]}}, "sweep.grid.temperature: unknown axis"),
        ({"grid": {"method": ["magic"]}}, "sweep.grid.method = 'magic': unknown method"),
        ({"grid": {"H": [4, 40]}}, "H=40"),  # window > horizon, named with its trial
        ({"grid": {"quality": ["good"]}}, "quality"),
        ({"grid": {"N": [1, 1]}}, "duplicate trials"),
        ({"grid": {"N": [10]}, "typo": 1}, "sweep.typo"),
    ],
)
def test_bad_sweeps_fail_before_launch(tmp_path: Path, sweep: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sweep(_write(tmp_path, sweep))


def test_a_sweep_file_needs_a_sweep_section(tmp_path: Path) -> None:
    p = tmp_path / "plain.yaml"
    p.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError, match="needs a `sweep:` section"):
        load_sweep(p)
    with pytest.raises(ConfigError, match="no such file"):
        load_sweep(tmp_path / "missing.yaml")


def test_presets_parse() -> None:
    presets = Path(__file__).resolve().parents[2] / "configs"
    names = sorted(p.name for p in presets.glob("sweep_*.yaml"))
    assert names, "no sweep presets"
    for name in names:
        assert load_sweep(presets / name).trials


def test_cells_a_method_cannot_run_are_skipped_with_the_reason(tmp_path: Path) -> None:
    sw = load_sweep(
        _write(
            tmp_path,
            {
                "grid": {"method": ["mf_diffuser", "mf_diffuser_unweighted", "fp"], "beta": [0.5]},
                "methods": {"fp": {"iterations": 7}, "mf_diffuser": {"train.epochs": 2}},
            },
            method={"params": {"hidden": 8, "iterations": 9}},  # each method takes its own
        )
    )
    assert [t.method for t in sw.trials] == ["mf_diffuser"]
    cfg = sw.experiment_config(sw.trials[0])
    assert cfg.planner.beta == 0.5 and cfg.planner.hidden == 8 and cfg.train.epochs == 2
    assert cfg.name == "crowd_1d-expert-N20-mf_diffuser-seed0-beta0.5"
    reasons = {c.method: c.reason for c in sw.skipped}
    assert reasons == {
        "mf_diffuser_unweighted": "beta: mf_diffuser_unweighted fixes beta = 0.0",
        "fp": "beta: fp has no parameter beta",
    }
    # Reference solvers have nothing to solve in a cooperative game; with no cell left: exit 2.
    with pytest.raises(ConfigError, match=r"every one of the 1 cells is skipped.*cooperative"):
        load_sweep(
            _write(
                tmp_path,
                {"grid": {"method": ["fp"]}},
                benchmark={"name": "gaussian_squeeze", "params": {}},
            )
        )
    with pytest.raises(ConfigError, match=r"method.params.hiden: no method of this sweep"):
        load_sweep(_write(tmp_path, {"grid": {"seed": [0]}}, method={"params": {"hiden": 8}}))


def test_a_method_s_own_settings_stay_in_its_trials(tmp_path: Path) -> None:
    sw = load_sweep(
        _write(
            tmp_path,
            {
                "grid": {"method": ["mf_diffuser", "mf_diffuser_flat", "per_agent_diffuser"]},
                "methods": {"mf_diffuser_flat": {"train.lr": 0.5, "hidden": 8}},
            },
        )
    )
    lrs = {t.method: sw.experiment_config(t).train.lr for t in sw.trials}
    hidden = {t.method: sw.experiment_config(t).planner.hidden for t in sw.trials}
    assert lrs == {"mf_diffuser": 1e-3, "mf_diffuser_flat": 0.5, "per_agent_diffuser": 1e-3}
    assert hidden == {"mf_diffuser": 64, "mf_diffuser_flat": 8, "per_agent_diffuser": 64}

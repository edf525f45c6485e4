"""Plugins through entry points: the example plugin package (examples/plugin) installed into a
temporary target directory (never into the environment), found through MFD_PLUGIN_PATH by the
driver and by every Ray worker `mfd` starts, and run generate -> train -> evaluate through the CLI
in real Ray on both its benchmarks: a finite game and a simulator-only team game."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import EVAL, PLANNER, TRAIN
from tiny import sets as tiny_sets

from mfdiffuser.plugins import PLUGIN_PATH_ENV

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
N = 4
TINY = [
    f"n_agents={N}",
    "data.episodes=2",
    "data.shards=1",
    *TRAIN,
    "train.num_workers=1",
    *PLANNER,
    *EVAL,
    f"eval.n_agents=[{N}]",
]


def install_example(tmp: Path) -> Path:
    """`pip install --target` of a copy of examples/plugin (the build writes beside its source,
    so the repository's copy is left alone); offline, no dependencies, no build isolation."""
    source = tmp / "source"
    shutil.copytree(REPO / "examples" / "plugin", source)
    target = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "--target", str(target), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_example(tmp_path_factory.mktemp("plugin"))


def _mfd(
    args: list[str], site: Path | None, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", PLUGIN_PATH_ENV)}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    if site is not None:
        env[PLUGIN_PATH_ENV] = str(site)
    return subprocess.run(
        [str(BIN / "mfd"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.integration
def test_the_plugins_benchmarks_are_listed_with_where_they_came_from(
    plugin_site: Path, tmp_path: Path
) -> None:
    listed = _mfd(["benchmarks", "--json"], plugin_site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    origins = {b["name"]: b["origin"] for b in json.loads(listed.stdout)}
    for name in ("bar_line", "skirmish"):
        assert origins[name] == (
            f"plugin mfd-example-plugin 0.1.0 (entry point {name} = mfd_example_plugin.{name}:SPEC)"
        )
    assert origins["crowd_1d"] == "built-in"
    text = _mfd(["benchmarks"], plugin_site, tmp_path).stdout
    assert "from: plugin mfd-example-plugin 0.1.0" in text
    # without the path the names are unknown, and said so in one line
    alone = _mfd(["solve", "bar_line"], None, tmp_path)
    assert alone.returncode == 2 and "unknown benchmark" in alone.stderr, alone.stderr
    # a plugin path that is not a directory is refused, naming the variable and its value
    for command in ("benchmarks", "methods"):
        bad = _mfd([command], tmp_path / "nowhere", tmp_path)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        assert f"error: {PLUGIN_PATH_ENV} = '{tmp_path / 'nowhere'}'" in bad.stderr, bad.stderr
    # the finite game has an exact model: `mfd solve` computes its exploitability
    solved = _mfd(["solve", "bar_line", "--json"], plugin_site, tmp_path)
    assert solved.returncode == 0, solved.stderr
    # the same figure as the exact model computes here from the installed plugin's game
    from mfdiffuser.envs import exploitability, uniform_policy

    sys.path.insert(0, str(plugin_site))
    try:
        from mfd_example_plugin.bar_line import SPEC

        game = SPEC.game({})
    finally:
        sys.path.remove(str(plugin_site))
    expected = exploitability(game, uniform_policy(game))
    assert expected > 0.1  # uniform play is exploitable
    assert json.loads(solved.stdout)["exploitability"] == pytest.approx(expected, abs=1e-9)


# ~40 s each on 2 idle cores (a Ray start and a Ray Train fit); capped for a loaded machine
@pytest.mark.integration
@pytest.mark.timeout(420)
def test_the_plugins_team_game_goes_through_generate_train_evaluate_in_ray(
    plugin_site: Path, tmp_path: Path
) -> None:
    """`mfd run` (generate -> train -> evaluate) starts its own Ray: its dataset actors, Train
    worker and evaluation tasks know the plugin's benchmark only through MFD_PLUGIN_PATH, which
    `mfd` hands them in the runtime environment."""
    sets = tiny_sets(["benchmark.name=skirmish", *TINY, "benchmark.params.max_steps=8"])
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    done = _mfd(["run", *sets, "--storage", "store", *tracking, "--json"], plugin_site, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout)
    manifest = json.loads((Path(out["dataset"]) / "manifest.json").read_text())
    assert manifest["spec"]["benchmark"]["name"] == "skirmish"
    assert manifest["row_schema"] == "team" and manifest["rows"] > 0
    assert (Path(out["checkpoint"]) / "meta.json").is_file()
    m = out["metrics"]  # simulator only: scored by play against its scripted players
    assert math.isfinite(m[f"return/n{N}"]) and "exploitability" not in m
    for opp in ("expert", "random"):
        assert 0 <= m[f"win_rate/vs_{opp}/n{N}"] <= 1


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_the_plugins_finite_game_goes_through_a_sweep_in_ray(
    plugin_site: Path, tmp_path: Path
) -> None:
    """`mfd sweep` of one trial on the finite game: the Tune trial, its dataset actors and its
    Train worker load the plugin from MFD_PLUGIN_PATH; the trial logs an exact exploitability
    and the decomposition."""
    from mlflow.tracking import MlflowClient

    doc = {  # the same tiny settings as TINY, as sections (this process has no plugin)
        "name": "plugin-sweep",
        "benchmark": {"name": "bar_line"},
        "data": {"n_agents": N, "episodes": 2, "shards": 1},
        "method": {
            "name": "mf_diffuser",
            "params": {
                "diffusion_steps": 2,
                "stages": 1,
                "n_particles": 4,
                "max_particles": 4,
                "hidden": 16,
                "n_blocks": 1,
            },
        },
        "train": {"epochs": 1, "steps_per_epoch": 3, "batch_size": 2, "num_workers": 1},
        "eval": {"episodes": 1, "plan_windows": 1, "held_out_episodes": 1, "n_agents": [N]},
        "runtime": {"storage": "store", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "sweep": {"grid": {"seed": [0]}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = _mfd(["sweep", "--config", str(path), "--json"], plugin_site, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    client = MlflowClient(tracking_uri=doc["runtime"]["tracking_uri"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (trial,) = [r for r in runs if r.data.tags.get("mfd.role") == "trial"]
    assert trial.info.status == "FINISHED"
    assert trial.data.params["benchmark.name"] == "bar_line"
    m = trial.data.metrics
    assert m["exploitability"] >= -1e-9 and math.isfinite(m["subopt/generative_error"])

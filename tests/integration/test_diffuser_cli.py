"""The `diffuser` baseline through the commands a user types, on the session's Ray:
`mfd generate` -> `mfd train -s method=diffuser` -> `mfd evaluate` (typer's CliRunner)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mfdiffuser.cli import app

pytestmark = pytest.mark.integration

N = 4
TINY = [
    "method=diffuser",
    "benchmark.name=crowd_1d",
    f"n_agents={N}",
    "data.episodes=2",
    "data.shards=1",
    "train.epochs=1",
    "train.steps_per_epoch=3",
    "train.batch_size=2",
    "train.num_workers=1",
    "diffusion_steps=2",
    "n_particles=4",
    "max_particles=4",
    "hidden=16",
    "n_blocks=1",
    "value_hidden=8",
    "eval.episodes=1",
    "eval.plan_windows=1",
    "eval.held_out_episodes=1",
]


def _mfd(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (args, result.output[-3000:], result.exception)
    return json.loads(result.stdout)


@pytest.mark.timeout(240)
def test_diffuser_trains_and_evaluates(ray_local: None, tmp_path: Path) -> None:
    sets = [x for s in TINY for x in ("-s", s)]
    where = ["--storage", str(tmp_path / "store")]
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    data = _mfd("generate", "crowd_1d", *sets, *where)
    trained = _mfd("train", *sets, *where, *tracking)
    assert trained["dataset"] == data["dataset"]
    meta = json.loads((Path(trained["checkpoint"]) / "meta.json").read_text())
    assert meta["method"]["name"] == "diffuser"
    assert meta["method"]["params"]["interaction"] is False
    assert meta["method"]["params"]["value_hidden"] == 8
    evaluated = _mfd("evaluate", trained["checkpoint"], "-n", str(N), *tracking)
    m = evaluated["metrics"]
    assert evaluated["run_id"] == trained["run_id"]
    assert math.isfinite(m[f"return/n{N}"]) and m["exploitability"] >= -1e-9

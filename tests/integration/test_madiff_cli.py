"""`madiff` through the commands a user types: `mfd train -s method=madiff` -> `mfd evaluate`, by
the real CLI (typer's CliRunner, in-process) on the session's Ray, at a tiny size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mfdiffuser.cli import app

pytestmark = pytest.mark.integration

N = 4
SETTINGS = [
    "method=madiff",
    f"n_agents={N}",
    "data.episodes=2",
    "data.shards=1",
    "train.epochs=1",
    "train.steps_per_epoch=3",
    "train.batch_size=2",
    "train.num_workers=1",
    "diffusion_steps=2",
    "hidden=16",
    "n_blocks=1",
    "heads=2",
    "table_agents=4",
    "eval.episodes=1",
    "eval.plan_windows=1",
    "eval.held_out_episodes=1",
]


def _mfd(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (args, result.output[-3000:], result.exception)
    return json.loads(result.stdout)


@pytest.mark.timeout(240)
def test_train_then_evaluate_madiff(ray_local: None, tmp_path: Path) -> None:
    sets = [x for s in SETTINGS for x in ("-s", s)]
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    trained = _mfd("train", *sets, "--storage", str(tmp_path / "store"), *tracking)
    meta = json.loads((Path(trained["checkpoint"]) / "meta.json").read_text())
    assert meta["method"]["name"] == "madiff" and meta["method"]["params"]["heads"] == 2
    evaluated = _mfd("evaluate", trained["checkpoint"], "-n", str(N), *tracking)
    m = evaluated["metrics"]
    assert evaluated["run_id"] == trained["run_id"]
    assert math.isfinite(m[f"return/n{N}"]) and m["exploitability"] >= -1e-9
    assert math.isfinite(m["trajectory/mmd2"])

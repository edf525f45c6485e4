"""Each mean-field baseline through the commands a user types: `mfd train -s method=<name>` then
`mfd evaluate <checkpoint>`, parsed by the real CLI (typer's CliRunner, in-process) on the
session's Ray. One store for the three: the first `mfd train` generates the dataset, the
others reuse it (same data settings), and a fresh SQLite MLflow store costs seconds."""

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
    "benchmark.name=crowd_1d",
    "size=5",
    "horizon=4",
    f"n_agents={N}",
    "data.episodes=2",
    "data.shards=1",
    "train.num_workers=1",
    "train.epochs=1",
    "train.steps_per_epoch=3",
    "train.batch_size=2",
    "method.params.n_particles=4",
    "method.params.hidden=16",
    "eval.episodes=1",
    "eval.held_out_episodes=1",
]


@pytest.fixture(scope="module")
def where(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("baselines")
    return ["--storage", str(d / "store"), "--tracking-uri", f"sqlite:///{d / 'mlflow.db'}"]


def _mfd(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (args, result.output[-3000:], result.exception)
    return json.loads(result.stdout)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", ["bc", "mf_iql", "mf_cql"])
def test_train_evaluate(name: str, ray_local: None, where: list[str]) -> None:
    sets = [x for s in [f"method={name}", *TINY] for x in ("-s", s)]
    trained = _mfd("train", *sets, *where)
    meta = json.loads((Path(trained["checkpoint"]) / "meta.json").read_text())
    assert meta["method"]["name"] == name and meta["method"]["params"]["hidden"] == 16
    evaluated = _mfd("evaluate", trained["checkpoint"], "-n", str(N), *where[2:])
    m = evaluated["metrics"]
    assert evaluated["run_id"] == trained["run_id"]
    assert math.isfinite(m[f"return/n{N}"]) and m["exploitability"] >= -1e-9
    assert math.isfinite(m["behaviour/exploitability"])

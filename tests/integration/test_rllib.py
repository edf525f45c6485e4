"""RLlib's methods (kind "external") through `mfd run` on the session's Ray: RLlib's own loop
learns on crowd_1d medium data, its checkpoint is RLlib's, restored through RLlib to the same
frozen table the evaluation scored, and one written by another RLlib version is refused.
Parametrised over the registry's external methods: registering one enrols it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.envs import exploitability
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.evaluation.rollout import propagate_fn
from mfdiffuser.methods.checkpoint import META, load_checkpoint
from mfdiffuser.methods.registry import METHODS

pytestmark = pytest.mark.integration

EXTERNAL = sorted(n for n, s in METHODS.items() if s.kind == "external")
CONFIG = {
    "name": "rllib",
    "benchmark": {"name": "crowd_1d", "params": {"size": 10, "horizon": 10}},
    # small: RLlib's pre-learner turns every row into an episode object of its own
    "data": {"quality": "medium", "n_agents": 50, "episodes": 4, "shards": 2, "seed": 0},
    "method": {"params": {"iterations": 60, "hidden": 32}},
    "train": {"num_workers": 1, "seed": 0},
    "eval": {"n_agents": [50], "episodes": 1, "seeds": 1, "max_actors": 1, "decomposition": False},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for both methods: the dataset is generated once and reused."""
    d = tmp_path_factory.mktemp("rllib")
    (d / "rllib.yaml").write_text(json.dumps(CONFIG))
    return d


@pytest.mark.parametrize("name", EXTERNAL)
def test_external_method_trains_through_mfd_run_and_its_rllib_checkpoint_round_trips(
    ray_local: None, workdir: Path, name: str
) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    r = CliRunner().invoke(
        app,
        [
            "run",
            *("-c", str(workdir / "rllib.yaml"), "-s", f"method={name}"),
            *("--storage", str(workdir / "store"), "--tracking-uri", uri, "--json"),
        ],
    )
    assert r.exit_code == 0, (r.stdout[-2000:], r.stderr[-3000:])
    out = json.loads(r.stdout)
    checkpoint = Path(out["checkpoint"])
    client = MlflowClient(uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["mfd.method"] == name
    losses = [m.value for m in client.get_metric_history(out["run_id"], "train/loss")]
    assert len(losses) == 60 and np.isfinite(losses).all()  # one per RLlib iteration
    if name == "rllib_marwil":
        assert "train/vf_loss" in run.data.metrics

    # RLlib's checkpoint, restored through RLlib (here and in the rollout actor): the same
    # frozen table, bit for bit, as the evaluation scored
    meta = json.loads((checkpoint / META).read_text())
    assert meta["rllib"]["version"] == __import__("ray").__version__
    assert (checkpoint / meta["rllib"]["checkpoint"] / "rllib_checkpoint.json").is_file()
    method, prior, _, _ = load_checkpoint(checkpoint)
    game = get_benchmark("crowd_1d").game({"size": 10, "horizon": 10})
    table = method.policy(game, prior, seed=0).expected_table(propagate_fn(game), seed=0)
    scored = json.loads(
        Path(client.download_artifacts(out["run_id"], "evaluation/evaluation.json")).read_text()
    )
    np.testing.assert_array_equal(table, np.asarray(scored["table"]))
    assert exploitability(game, table) == run.data.metrics["exploitability"]

    # it learned: the frozen table's exploitability is below that of the same network with
    # RLlib's initial weights
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    module = method.module
    torch.manual_seed(0)
    fresh = RLModuleSpec(
        module_class=type(module),
        observation_space=module.observation_space,
        action_space=module.action_space,
        model_config=module.model_config,
    ).build()
    method.module = fresh
    untrained = method.policy(game, prior, seed=0).expected_table(propagate_fn(game), seed=0)
    assert run.data.metrics["exploitability"] < exploitability(game, untrained)

    # a checkpoint written by another RLlib version is refused, before any Ray work
    other = workdir / f"{name}-other-version"
    shutil.copytree(checkpoint, other)
    meta["rllib"]["version"] = "2.0.0"
    (other / META).write_text(json.dumps(meta))
    r = CliRunner().invoke(app, ["evaluate", str(other), "--tracking-uri", uri])
    assert r.exit_code == 2
    assert "written by RLlib (ray) 2.0.0" in r.output and "re-train, or use ray==2.0.0" in r.output

"""A user's own rows through the commands they type: the same rows as Parquet, CSV and NumPy
.npz -> `mfd import` (one dataset) -> `mfd train --dataset` -> `mfd evaluate`, on the
session's Ray and a real MLflow store. The evaluation names what rests on the estimated
behaviour as estimates (metric names and tags) and never the true behaviour's figures."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from tiny import PLANNER, TRAIN
from tiny import sets as tiny_sets
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.platform.names import BEHAVIOUR_TAG, ESTIMATES_TAG, RESTS_ON_BEHAVIOUR

pytestmark = pytest.mark.integration

N, EPISODES, HORIZON = 4, 3, 6
TINY = [*TRAIN, "train.num_workers=1", *PLANNER]


def _mfd(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (args, result.output[-3000:], result.exception)
    return json.loads(result.stdout)


@pytest.mark.timeout(300)
def test_import_train_evaluate_on_a_file_the_user_wrote(
    ray_local: None, tmp_path: Path, gen_docs: ModuleType
) -> None:
    spec = get_benchmark("crowd_1d")
    game = spec.game({"horizon": HORIZON})
    policy = np.random.default_rng(1).dirichlet(np.ones(3), size=(HORIZON, game.n_states))
    table, _ = generate_shard(lambda: spec.make_sim(game, N), [policy], range(EPISODES), 5)
    df = table.to_pandas().sample(frac=1.0, random_state=1)
    df.to_parquet(tmp_path / "rows.parquet", index=False)
    df.to_csv(tmp_path / "rows.csv", index=False)
    np.savez(tmp_path / "rows.npz", **{c: df[c].to_numpy() for c in df.columns})
    store = ["--storage", str(tmp_path / "store")]
    bench = ["crowd_1d", "-s", f"horizon={HORIZON}"]
    made = [
        _mfd("import", str(tmp_path / f"rows.{k}"), *bench, *store)
        for k in ("parquet", "csv", "npz")
    ]
    assert len({m["dataset"] for m in made}) == 1  # the same rows, one dataset
    assert [m["reused"] for m in made] == [False, True, True]
    dataset = made[0]["dataset"]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = tiny_sets(TINY)
    trained = _mfd("train", "--dataset", dataset, *sets, *store, "--tracking-uri", uri)
    out = _mfd(
        "evaluate", trained["checkpoint"], "-n", "8", "--episodes", "1", "--tracking-uri", uri
    )
    m = out["metrics"]
    behaviour = made[0]["behaviour"]
    assert m["behaviour/exploitability_estimate"] == pytest.approx(
        behaviour["exploitability_estimate"]
    )
    assert m["behaviour/data_return"] == pytest.approx(behaviour["data_mean_return"])
    # what rests on the unknown behaviour is an estimate, and nothing claims to be the real one
    for key in RESTS_ON_BEHAVIOUR:
        assert key not in m and np.isfinite(m[f"{key}_estimate"])
    assert "behaviour/return" not in m and "behaviour/exploitability" not in m
    # the estimated terms still add up: regularisation gap + shift = j_ref - j_beta_data
    assert m["subopt/regularisation_gap_estimate"] + m[
        "subopt/distribution_shift_estimate"
    ] == pytest.approx(m["subopt/j_ref"] - m["subopt/j_beta_data"])
    assert m["subopt/generative_error"] == pytest.approx(
        m["subopt/j_beta_data"] - m["subopt/j_hat"]
    )
    # what `mfd run` prints of these figures says which are estimates
    from mfdiffuser.cli import _summary

    text = _summary(
        {**out, "experiment": "crowd_1d", "checkpoint": trained["checkpoint"], "wall_seconds": 0}
    )
    assert "four terms (the first two estimated: imported data)" in text, text
    assert "behaviour estimated from the data" in text, text
    run = MlflowClient(tracking_uri=uri).get_run(out["run_id"])
    assert run.data.tags["mfd.quality"] == "imported"
    assert run.data.tags[BEHAVIOUR_TAG] == "unknown"
    named = set(run.data.tags[ESTIMATES_TAG].split(","))
    assert {"behaviour/exploitability_estimate", "subopt/distribution_shift_estimate"} <= named
    assert all(k.endswith("_estimate") for k in named)
    assert gen_docs.undocumented_metrics(set(run.data.metrics)) == []

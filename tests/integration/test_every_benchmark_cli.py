"""Every registered benchmark through the commands a user types: `mfd generate` -> `mfd train` ->
`mfd evaluate`, parsed by the real CLI (typer's CliRunner, in-process) on the session's Ray."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import EVAL, PLANNER, TRAIN
from tiny import sets as tiny_sets
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.envs.registry import BENCHMARKS, get_benchmark
from mfdiffuser.platform.config import load_config

pytestmark = pytest.mark.integration

N, EPISODES = 4, 2
TINY = [f"n_agents={N}", f"data.episodes={EPISODES}", "data.shards=1", *TRAIN, *PLANNER, *EVAL]
# One worker everywhere but predator_prey (three populations) and crowd_1d (the Ray Data
# path), which train with DDP over 2 ranks.
WORKERS = {"predator_prey": 2, "crowd_1d": 2}
# Long default episodes, shortened for time (the length still comes from the registry).
# mfglib: a state-action mean-field environment (L_t), the contract's harder case.
PARAMS = {
    "battle": ["max_steps=12"],
    "sis": ["horizon=6"],
    "four_rooms": ["horizon=6"],
    "mfglib": ["env=random_linear"],
    # crowd_1d trains on the other data path: its 2 shards streamed through Ray Data to 2 DDP
    # workers of half a CPU each beside the Train controller on the session's 2-CPU Ray (Ray
    # Data's read tasks, 0.25 CPU each, must still run: a deadlock would hit the timeout), and
    # the statistics pass checks that the rows summed over both workers are the manifest's.
    "crowd_1d": [
        "data.shards=2",
        "train.data_path=ray_data",
        "train.buffer_episodes=2",
        "train.cpus_per_worker=0.5",
        "train.lr_schedule=cosine",  # 3 steps from 1e-3 toward 0: the last at a quarter of it
    ],
    "crowd_motion": ["torus_l=4", "torus_w=4"],
    "building_evacuation": ["n_floor=2", "floor_l=3", "floor_w=3"],
}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """One MLflow store for all cases (a fresh SQLite store costs seconds to create)."""
    return ["--tracking-uri", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"]


def _mfd(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (args, result.output[-3000:], result.exception)
    return json.loads(result.stdout)


# ~10-30 s each on 2 idle cores; the cap leaves room for a loaded machine.
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_generate_train_evaluate(
    name: str, ray_local: None, tracking: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = get_benchmark(name)
    settings = [*TINY, *PARAMS.get(name, []), f"train.num_workers={WORKERS.get(name, 1)}"]
    sets = tiny_sets(settings)
    # A relative store, as a user types it: the Ray workers run in other working directories.
    monkeypatch.chdir(tmp_path)
    where = ["--storage", "store"]

    data = _mfd("generate", name, *sets, *where)
    horizon = load_config(None, [f"benchmark.name={name}", *settings]).benchmark.horizon
    assert data["episodes"] == EPISODES and not data["reused"]
    manifest = json.loads((Path(data["dataset"]) / "manifest.json").read_text())
    if spec.exact_model:
        assert manifest["rows"] == EPISODES * N * horizon == data["rows"]
        assert math.isfinite(data["behaviour"]["exploitability"])
    else:  # battle: two teams of N, episodes end when a team is gone (at most `horizon` steps)
        assert 0 < manifest["rows"] <= EPISODES * 2 * N * horizon
        assert 0 <= data["behaviour"]["win_rate"] <= 1

    train = [*sets, "-s", f"benchmark.name={name}", *where, *tracking]
    if not spec.exact_model:  # a method that needs a finite state space is refused first
        refused = ["train", "-s", f"benchmark.name={name}", "-s", "method=mf_cql", *where]
        result = CliRunner().invoke(app, [*refused, *tracking])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output[-3000:]
        assert "mf_cql needs a finite state space" in result.stderr

    trained = _mfd("train", *train)
    assert trained["dataset"] == data["dataset"]  # the generated dataset, reused
    meta = json.loads((Path(trained["checkpoint"]) / "meta.json").read_text())
    assert meta["config"]["train"]["num_workers"] == WORKERS.get(name, 1)
    assert meta["config"]["train"]["data_path"] == ("ray_data" if name == "crowd_1d" else "local")
    assert math.isfinite(meta["metrics"]["train/loss"])
    lr_last = 0.25e-3 if name == "crowd_1d" else 1e-3  # cosine: 1e-3 · (1 + cos(2π/3)) / 2
    assert meta["metrics"]["train/lr"] == pytest.approx(lr_last)
    evaluated = _mfd("evaluate", trained["checkpoint"], "-n", str(N), *tracking)
    m = evaluated["metrics"]
    assert evaluated["run_id"] == trained["run_id"]
    assert math.isfinite(m[f"return/n{N}"])
    if not spec.exact_model:  # team games: played against every opponent, no exploitability
        for opp in ("expert", "random", "self"):
            assert 0 <= m[f"win_rate/vs_{opp}/n{N}"] <= 1 and m[f"kill_ratio/vs_{opp}/n{N}"] >= 0
            assert 0 <= m[f"survival/vs_{opp}/n{N}"] <= 1
        assert m[f"jn_spread/n{N}"] >= 0 and "exploitability" not in m
        assert m["behaviour/return"] == pytest.approx(data["behaviour"]["return"])
        # two checkpoint opponents keep their own keys: each named by an id of its path
        twin = Path(trained["checkpoint"]).parent / "twin"
        shutil.copytree(trained["checkpoint"], twin)
        asked = [trained["checkpoint"], str(twin)]
        vs = ["--opponent", asked[0], "--opponent", asked[1]]
        both = _mfd("evaluate", trained["checkpoint"], "-n", str(N), *vs, *tracking)
        assert sorted(both["opponents"].values()) == sorted(asked)
        for name in both["opponents"]:
            assert name.startswith("checkpoint_") and len(name) == len("checkpoint_") + 8
            assert 0 <= both["metrics"][f"win_rate/vs_{name}/n{N}"] <= 1
        assert not any("vs_checkpoint/" in k for k in both["metrics"])
        # an opponent trained on another benchmark is refused, in one line
        other = Path(trained["checkpoint"]).parent / "elsewhere"
        meta = json.loads((Path(trained["checkpoint"]) / "meta.json").read_text())
        meta["config"]["benchmark"] = {"name": "crowd_1d", "params": {}}
        other.mkdir()
        (other / "meta.json").write_text(json.dumps(meta))
        args = ["evaluate", trained["checkpoint"], "--opponent", str(other), *tracking]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output[-3000:]
        assert "trained on crowd_1d; allowed: random, expert, self, or a checkpoint" in (
            result.stderr
        )
    else:
        assert math.isfinite(m["exploitability"]) and m["exploitability"] >= -1e-9
        assert m["behaviour/exploitability"] == data["behaviour"]["exploitability"]
    # No Ray Train run of this session logged the PreemptionWatcher error (see trainer.py).
    assert "'PreemptionWatcher'" not in _ray_logs()


def _ray_logs() -> str:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return "".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())


@pytest.mark.timeout(120)
def test_generate_again_reuses_without_ray(ray_local: None, tmp_path: Path) -> None:
    args = ["generate", "left_right", "--episodes", "1", "-s", "n_agents=3"]
    args += ["--storage", str(tmp_path / "store"), "--json"]
    first = _mfd(*args[:-1])  # on the session's Ray
    assert not first["reused"]
    ray_tmp = tmp_path / "raytmp"  # a Ray started by the command would leave ray_tmp/ray/session_*
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
    r = subprocess.run(
        [sys.executable, "-m", "mfdiffuser.cli", *args], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads(r.stdout)
    assert again["reused"] and again["dataset"] == first["dataset"]
    assert again["rows"] == first["rows"] == 1 * 3 * 2
    assert not ray_tmp.exists()
    r = subprocess.run(
        [sys.executable, "-m", "mfdiffuser.cli", *args[:-1]],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.stdout.startswith(f"dataset {first['dataset']} (reused)\n"), r.stdout

"""Every dataset is verified against its manifest before it is read (`mfd train`, `mfd evaluate`,
the reuse by `mfd generate`): a corrupted user dataset is refused with exit status 2 before any
Ray Train work; `mfd generate` repairs its own content-addressed datasets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.data.verify import DatasetError, verify_dataset
from mfdiffuser.data.windows import load_episodes

pytestmark = pytest.mark.integration

DATA = ["-s", "data.n_agents=20", "-s", "data.episodes=4", "-s", "data.shards=2"]


def _generate(storage: Path, *extra: str) -> dict[str, Any]:
    res = CliRunner().invoke(app, ["generate", "--storage", str(storage), *DATA, *extra, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def datasets(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny dataset (seed 0), and one of seed 1 to take a foreign shard from."""
    tmp = tmp_path_factory.mktemp("integrity")
    store = tmp / "store"
    return {
        "store": store,
        "seed0": _generate(store),
        "seed1": _generate(store, "-s", "data.seed=1"),
    }


def _flip_byte(path: Path) -> None:
    """Flip one byte so that the file is still valid Parquet but holds other values."""
    data = path.read_bytes()
    original = pq.read_table(pa.BufferReader(data))
    for offset in range(4, len(data) - 8):  # inside the magic bytes
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        try:
            table = pq.read_table(pa.BufferReader(bytes(flipped)))
        except (pa.ArrowException, OSError):
            continue
        if table.num_rows == original.num_rows and not table.equals(original):
            path.write_bytes(bytes(flipped))
            return
    raise AssertionError("no single-byte flip keeps this shard valid Parquet")


def _edit_rows(root: Path) -> None:
    """A shard's row count and the total raised by 100: the manifest still adds up."""
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][1]["rows"] += 100
    manifest["rows"] += 100
    (root / "manifest.json").write_text(json.dumps(manifest))


def _edit_total(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["rows"] += 100
    (root / "manifest.json").write_text(json.dumps(manifest))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _train_workers() -> set[str]:
    """Ids of every Ray Train worker this session's Ray has started, alive or not."""
    gcs = ray.get_runtime_context().gcs_address
    workers = list_actors(
        address=gcs, filters=[("class_name", "=", "RayTrainWorker")], limit=10_000
    )
    return {a.actor_id for a in workers}


SHARD = "shard-00001.parquet"
CASES: dict[str, tuple[Callable[[Path, dict[str, Any]], None], str, str]] = {
    "flipped_byte": (lambda r, d: _flip_byte(r / SHARD), SHARD, "sha256 mismatch"),
    "foreign_shard": (
        lambda r, d: shutil.copyfile(Path(d["seed1"]["dataset"]) / SHARD, r / SHARD),
        SHARD,
        "sha256 mismatch",
    ),
    "edited_rows": (lambda r, d: _edit_rows(r), SHARD, "rows mismatch"),
    "edited_total": (lambda r, d: _edit_total(r), "manifest.json", "rows mismatch"),
    "truncated": (lambda r, d: _truncate(r / SHARD), SHARD, "sha256 mismatch"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_train_refuses_a_corrupted_dataset(
    datasets: dict[str, Any], tmp_path: Path, case: str
) -> None:
    corrupt, file, kind = CASES[case]
    root = tmp_path / "dataset"
    shutil.copytree(datasets["seed0"]["dataset"], root)
    corrupt(root, datasets)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    store = tmp_path / "store"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--dataset",
            str(root),
            "--storage",
            str(store),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            *DATA,
        ],
    )
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"error: dataset {root}: {file}: {kind} ("), lines[0]
    assert not (store / "train").exists()  # no Ray Train work started
    assert not (tmp_path / "mlflow.db").exists()  # nor an MLflow run
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before  # never rewritten


def test_generate_repairs_its_own_dataset_and_refuses_a_users(
    datasets: dict[str, Any], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(datasets["store"], store)
    root = store / "datasets" / datasets["seed0"]["dataset_id"]
    original = json.loads((root / "manifest.json").read_text())

    _flip_byte(root / SHARD)
    out = _generate(store)
    assert out["dataset"] == str(root)
    assert out["repaired"] == f"regenerated 1 of 2 shards: {SHARD} (sha256 mismatch)"
    again = verify_dataset(str(root))  # generation is deterministic: the original bytes
    assert [s.sha256 for s in again.shards] == [s["sha256"] for s in original["shards"]]
    assert again.rows == original["rows"]

    _edit_total(root)  # every shard verifies: only the manifest is written again
    out = _generate(store)
    assert out["repaired"].startswith("regenerated 0 of 2 shards; manifest rewritten: ")
    assert out["rows"] == original["rows"]
    assert verify_dataset(str(root)).rows == original["rows"]

    # A dataset given by the user is refused, never rewritten.
    _truncate(root / SHARD)
    broken = (root / SHARD).read_bytes()
    res = CliRunner().invoke(
        app, ["generate", "--storage", str(store), *DATA, "-s", f"data.path={root}"]
    )
    assert res.exit_code == 2, res.output
    assert f"error: dataset {root}: {SHARD}: sha256 mismatch (" in res.output
    assert (root / SHARD).read_bytes() == broken


def test_a_shard_changed_after_verification_is_refused_where_it_is_read(
    datasets: dict[str, Any], tmp_path: Path
) -> None:
    """The driver verifies before Ray Train starts; a worker reads later. The reader checks the
    bytes it parses: a shard swapped in between, or a manifest edited in between, is refused."""
    root = tmp_path / "dataset"
    shutil.copytree(datasets["seed0"]["dataset"], root)
    verify_dataset(str(root))  # the driver's check passes
    shutil.copyfile(Path(datasets["seed1"]["dataset"]) / SHARD, root / SHARD)
    with pytest.raises(DatasetError) as err:
        load_episodes(str(root))
    assert str(err.value).startswith(f"dataset {root}: {SHARD}: sha256 mismatch (expected ")
    arrays, _ = load_episodes(str(root), [0])  # the untouched shard still reads
    assert arrays.states.shape == (2, 10, 20)

    shutil.copyfile(Path(datasets["seed0"]["dataset"]) / SHARD, root / SHARD)
    _edit_rows(root)
    with pytest.raises(DatasetError) as err:
        load_episodes(str(root), [1])
    assert str(err.value) == f"dataset {root}: {SHARD}: rows mismatch (manifest 500, file 400)"


def _mfd(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`mfd` as a user runs it, in its own process: what it prints is the point."""
    # The session's Ray set RAY_AUTH_MODE in this process; a user's shell has none.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}, **env}
    return subprocess.run(
        [sys.executable, "-m", "mfdiffuser.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _only_line(res: subprocess.CompletedProcess[str]) -> str:
    """The one line on stderr (and nothing on stdout): no Ray banner, no worker traceback."""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and not res.stdout, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return lines[0]


def _failed_run(db: Path) -> Any:
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    return run


def test_unrecoverable_worker_error_is_not_retried(
    datasets: dict[str, Any], tmp_path: Path
) -> None:
    """A dataset that verifies but whose episodes are incomplete fails in the Ray Train workers:
    a ValueError, which no retry fixes: exit 2, stderr one line, no second worker group. `mfd`
    connects to the session's Ray here (`--address`, as on a cluster), so its workers count."""
    root = tmp_path / "dataset"
    shutil.copytree(datasets["seed0"]["dataset"], root)
    manifest = json.loads((root / "manifest.json").read_text())
    for shard in manifest["shards"]:  # drop one agent's rows, and make the manifest agree
        path = root / shard["file"]
        table = pq.read_table(path)
        table = table.filter(pc.not_equal(table["agent"], 0))
        pq.write_table(table, path, compression="zstd")
        shard["rows"] = table.num_rows
        shard["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["rows"] = sum(s["rows"] for s in manifest["shards"])
    (root / "manifest.json").write_text(json.dumps(manifest))
    verify_dataset(str(root))

    before = _train_workers()
    db = tmp_path / "mlflow.db"
    res = _mfd(
        "train",
        *("--dataset", str(root), "--storage", str(tmp_path / "store")),
        *("--tracking-uri", f"sqlite:///{db}"),
        *("--address", ray.get_runtime_context().gcs_address),
        *DATA,
        *("-s", "train.max_failures=2"),
        cwd=tmp_path,
        RAY_AUTH_MODE="token",  # Ray's rule for joining a cluster with token authentication
    )
    assert res.returncode == 2, res.stderr
    assert _only_line(res) == (
        f"error: dataset {str(root)!r}: rows do not form complete episodes of 20 agents"
    )
    assert len(_train_workers() - before) == 2  # one worker group of 2, not retried
    run = _failed_run(db)
    assert "episodes_from_table" in run.data.tags["mfd.traceback"]  # the worker's traceback


def test_diverged_training_prints_one_line(datasets: dict[str, Any], tmp_path: Path) -> None:
    """`mfd train -s train.lr=1000` as a user runs it (a local Ray of its own): the loss
    diverges in the Train workers, and stderr is the one error line; the traceback is in
    MLflow."""
    db = tmp_path / "mlflow.db"
    res = _mfd(
        "train",
        *("--dataset", datasets["seed0"]["dataset"], "--storage", str(tmp_path / "store")),
        *("--tracking-uri", f"sqlite:///{db}"),
        *DATA,
        *("-s", "train.lr=1000", "-s", "train.epochs=2", "-s", "train.steps_per_epoch=3"),
        cwd=tmp_path,
    )
    assert res.returncode == 1, res.stderr
    line = _only_line(res)
    assert line.startswith("error: train/loss = ") and "training diverged" in line
    traceback = _failed_run(db).data.tags["mfd.traceback"]
    assert "FloatingPointError" in traceback and "in on_epoch" in traceback


def test_diverged_training_fails_once_with_one_line(
    datasets: dict[str, Any], tmp_path: Path
) -> None:
    """A diverged loss (FloatingPointError in the loop) is a crash: exit 1, one line, no retry."""
    db = tmp_path / "mlflow.db"
    before = _train_workers()
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--dataset",
            datasets["seed0"]["dataset"],
            "--storage",
            str(tmp_path / "store"),
            "--tracking-uri",
            f"sqlite:///{db}",
            *DATA,
            *("-s", "train.lr=1000", "-s", "train.epochs=2", "-s", "train.steps_per_epoch=3"),
        ],
    )
    assert res.exit_code == 1, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: train/loss = ") and "training diverged" in last, res.output
    assert len(_train_workers() - before) == 2  # one worker group of 2, not retried
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    assert "FloatingPointError" in run.data.tags["mfd.traceback"]

"""Datasets, checkpoints and evaluation on `s3://`, against moto's S3 server on 127.0.0.1, through
the `mfd` commands a user types (each its own process and local Ray, configured by the standard
AWS environment only), and the bad-input cases that must fail before any Ray work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from processes import free_ports
from s3 import S3Server
from tiny import EVAL, PLANNER, TRAIN, sets

from mfdiffuser.data import storage
from mfdiffuser.data.manifest import read_manifest, shard_file, shard_ranges
from mfdiffuser.data.verify import verify_dataset

pytestmark = pytest.mark.integration

N, EPISODES, SHARDS, HORIZON = 4, 2, 2, 10
TINY = [
    f"n_agents={N}",
    f"data.episodes={EPISODES}",
    f"data.shards={SHARDS}",
    f"benchmark.params.horizon={HORIZON}",
    *TRAIN,
    *PLANNER,
    "eval.n_agents=[4]",
    *EVAL,
]
SETS = sets(TINY)
AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


def mfd(
    *args: str, env: dict[str, str], tmp: Path, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base.pop("RAY_ADDRESS", None)
    base["RAY_TMPDIR"] = str(tmp / "r")  # a Ray this command starts leaves its dir here
    return subprocess.run(
        [sys.executable, "-m", "mfdiffuser.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp,
        env={**base, **env},
        timeout=timeout,
    )


@pytest.fixture
def aws(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process pointed at the moto server, as a user's shell would be."""
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server.env


def test_store_probe_names_what_is_missing(
    aws: dict[str, str], s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.check_store(s3_server.uri("probe"))  # credentials and a live endpoint: passes
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.check_store("s3://no-such-bucket/x")
    (closed,) = free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    with pytest.raises(storage.StorageError, match=f"endpoint http://127.0.0.1:{closed} does not"):
        storage.check_store(s3_server.uri("probe"), "data.path")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    with pytest.raises(storage.StorageError, match=r"data\.path = 's3://.*': no S3 credentials"):
        storage.check_store(s3_server.uri("probe"), "data.path")
    storage.check_store("/a/local/path")  # local paths: not probed


def test_bad_s3_storage_exits_2_before_ray(s3_server: S3Server, tmp_path: Path) -> None:
    no_creds = {
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    (closed,) = free_ports(1)
    unreachable = {**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}"}
    uri = s3_server.uri("bad")
    for env, needle in (
        (no_creds, f"runtime.storage = '{uri}': no S3 credentials; set AWS_ACCESS_KEY_ID"),
        (unreachable, f"endpoint http://127.0.0.1:{closed} does not answer"),
    ):
        r = mfd("generate", "crowd_1d", *SETS, "--storage", uri, env=env, tmp=tmp_path)
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = mfd("evaluate", s3_server.uri("bad", "checkpoint_x"), env=unreachable, tmp=tmp_path)
    assert r.returncode == 2 and "checkpoint = 's3://" in r.stderr, r.stderr
    assert "does not answer" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()  # no Ray was started
    assert s3_server.keys("bad") == []


def _interrupted_generation(store: str) -> tuple[str, str]:
    """What a generation killed after its first shard leaves on the store: shard 0, written by
    the code each generation actor runs (here without Ray), and no manifest. (uri, shard 0's
    sha256)."""
    from mfdiffuser.envs.registry import get_benchmark
    from mfdiffuser.platform.config import load_config
    from mfdiffuser.workers.datagen import dataset_params, dataset_uri, write_shard

    cfg = load_config(None, [*TINY, f"runtime.storage={store}"])
    uri, _ = dataset_uri(cfg)
    bench, params = get_benchmark(cfg.benchmark.name), dataset_params(cfg)
    game = bench.game(params)
    policies = bench.behaviour(game, cfg.data.quality).policies
    first = shard_ranges(EPISODES, SHARDS)[0]
    q, seed = cfg.data.quality, cfg.data.seed
    info = write_shard(bench, game, params, policies, q, uri, 0, first, N, seed)
    return uri, info.sha256


@pytest.mark.timeout(400)
def test_run_on_s3_resumes_and_evaluates_from_uri(
    aws: dict[str, str], s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp_path = tmp_path_factory.mktemp("s3")  # short: Ray's socket paths must stay short
    store = s3_server.uri("run")
    dataset, sha0 = _interrupted_generation(store)
    ds_key = dataset.removeprefix(f"s3://{s3_server.bucket}/")
    files = [shard_file(i) for i in range(SHARDS)]
    assert s3_server.keys(ds_key) == [f"{ds_key}/{files[0]}"]  # no temp object, no manifest
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json"):
        read_manifest(dataset)  # a reader does not trust it
    client = s3_server.client()
    kept = client.head_object(Bucket=s3_server.bucket, Key=f"{ds_key}/{files[0]}")

    # `mfd run` resumes the generation, trains and evaluates, all on the store.
    db = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    r = mfd("run", *SETS, "--storage", store, *db, "--json", env=aws, tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["dataset"] == dataset
    checkpoint = out["checkpoint"]
    assert checkpoint.startswith(f"{store}/train/"), checkpoint

    # The dataset: the shards and the manifest (the commit), nothing else.
    assert s3_server.keys(ds_key) == sorted(f"{ds_key}/{f}" for f in [*files, "manifest.json"])
    manifest = verify_dataset(dataset)  # every shard's sha256 and rows against the manifest
    assert manifest.shards[0].sha256 == sha0  # the interrupted run's shard, kept as it was
    again = client.head_object(Bucket=s3_server.bucket, Key=f"{ds_key}/{files[0]}")
    assert (again["ETag"], again["LastModified"]) == (kept["ETag"], kept["LastModified"])
    assert manifest.rows == EPISODES * N * HORIZON
    # Every (episode, t, agent) exactly once: no gap, no duplicate.
    fs, root = storage.resolve(dataset)
    keys = [
        np.stack([t[c].to_numpy() for c in ("episode", "t", "agent")], axis=1)
        for f in files
        if (t := pq.read_table(storage.join(root, f), filesystem=fs))
    ]
    rows = np.concatenate(keys)
    assert len(np.unique(rows, axis=0)) == len(rows) == EPISODES * N * HORIZON

    # The checkpoint: meta.json (its commit marker) and the weights, on the store.
    ck_key = checkpoint.removeprefix(f"s3://{s3_server.bucket}/")
    assert {f"{ck_key}/meta.json", f"{ck_key}/weights.pt"} <= set(s3_server.keys(ck_key))

    # `mfd evaluate` on the checkpoint's URI: downloaded, loaded weights-only, the same figures.
    r = mfd("evaluate", checkpoint, *db, "--json", env=aws, tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads(r.stdout)
    assert ev["metrics"]["return/n4"] == pytest.approx(out["metrics"]["return/n4"])

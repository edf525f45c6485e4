"""`mfd import` and `mfd export` through the CLI, without Ray: every malformed file refused
with exit status 2 naming the column and the rows, a dataset that disagrees with the config
refused before any Ray work naming both values, export -> import keeping the rows (a checksum
of the sorted rows computed here), and the behaviour's estimated exploitability equal to the
exploitability of the data's empirical policy computed here by brute force."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.envs.registry import get_benchmark

N, EPISODES, HORIZON, SIZE = 4, 3, 5, 6  # crowd_1d: states 0..5, actions 0..2, t 0..4
BENCH = ["crowd_1d", "-s", f"horizon={HORIZON}", "-s", f"size={SIZE}"]


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Rows a user could bring: crowd_1d played by a fixed non-uniform policy, episode ids
    not 0-based, agent ids not 0..N-1, rows shuffled."""
    spec = get_benchmark("crowd_1d")
    game = spec.game({"horizon": HORIZON, "size": SIZE})
    rng = np.random.default_rng(3)
    policy = rng.dirichlet(np.ones(3), size=(HORIZON, SIZE))
    table, _ = generate_shard(lambda: spec.make_sim(game, N), [policy], range(EPISODES), 7)
    df = table.to_pandas()
    df["episode"] = df["episode"] * 10 + 100
    df["agent"] = df["agent"] * 3 + 1
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


def _mfd(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


def _import(path: Path, store: Path) -> dict:
    code, out = _mfd(
        "import", str(path), *BENCH, "--storage", str(store), "--shards", "2", "--json"
    )
    assert code == 0, out
    return json.loads(out.splitlines()[-1])


def _sorted_rows_sha(frame: pd.DataFrame) -> str:
    """Independent of the code under test: the rows as (episode rank, t, agent rank, state,
    action, reward) tuples, sorted, hashed as text."""
    f = frame.copy()
    f["episode"] = f["episode"].rank(method="dense").astype(int)
    f["agent"] = f.groupby("episode")["agent"].rank(method="dense").astype(int)
    key = f[["episode", "t", "agent", "state", "action", "reward"]].astype({"reward": np.float32})
    lines = sorted(f"{e},{t},{a},{s},{u},{r!r}" for e, t, a, s, u, r in key.itertuples(index=False))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _dataset_rows(dataset: str) -> pd.DataFrame:
    return pd.concat(
        pq.read_table(p).to_pandas() for p in sorted(Path(dataset).glob("shard-*.parquet"))
    )


def test_import_export_import_keeps_the_rows(rows: pd.DataFrame, tmp_path: Path) -> None:
    src = tmp_path / "mine.parquet"
    rows.to_parquet(src, index=False)
    first = _import(src, tmp_path / "store")
    manifest = json.loads((Path(first["dataset"]) / "manifest.json").read_text())
    assert manifest["spec"]["quality"] == "imported"
    assert (first["rows"], first["episodes"], first["n_agents"]) == (len(rows), EPISODES, N)
    assert _sorted_rows_sha(_dataset_rows(first["dataset"])) == _sorted_rows_sha(rows)
    assert manifest["behaviour"]["return"] == manifest["behaviour"]["exploitability"] == "unknown"
    for fmt in ("csv", "npz", "parquet"):
        out = tmp_path / "out" / f"shared.{fmt}"
        code, text = _mfd("export", first["dataset"], str(out), "--json")
        assert code == 0, text
        card = yaml.safe_load((tmp_path / "out" / "shared.card.md").read_text().split("---")[1])
        assert card["benchmark"]["name"] == "crowd_1d" and card["quality"] == "imported"
        assert (card["n_agents"], card["episodes"], card["horizon"]) == (N, EPISODES, HORIZON)
        assert card["checksums"]["file_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
        assert card["checksums"]["content_sha256"] == first["content_sha256"]
        assert card["behaviour"]["exploitability_estimate"] == pytest.approx(
            manifest["behaviour"]["exploitability_estimate"]
        )
        again = _import(out, tmp_path / f"store-{fmt}")
        assert again["dataset_id"] == first["dataset_id"]
        assert _sorted_rows_sha(_dataset_rows(again["dataset"])) == _sorted_rows_sha(rows)
    # the same rows again into the first store: that very dataset, reused
    assert _import(tmp_path / "out" / "shared.csv", tmp_path / "store")["reused"]


def _brute_exploitability(game, policy: np.ndarray) -> float:
    """Exploitability from dense transition tensors built here from the game's `push` on unit
    masses (not the package's propagate / best response): the flow of `policy`, then one
    backward induction for its value and one with a max for the best response."""
    horizon, n_s, n_a = policy.shape
    flow = [np.asarray(game.mu0, dtype=float)]
    kernels = []
    for t in range(horizon):
        p = np.zeros((n_s, n_a, n_s))
        for s in range(n_s):
            for a in range(n_a):
                mass = np.zeros((n_s, n_a))
                mass[s, a] = 1.0
                p[s, a] = game.push(t, flow[t], mass)
        kernels.append(p)
        flow.append(np.einsum("s,sa,sak->k", flow[t], policy[t], p))
    v_pi, v_br = np.zeros(n_s), np.zeros(n_s)
    for t in reversed(range(horizon)):
        r = np.asarray(game.reward(t, flow[t]))
        v_pi = (policy[t] * (r + kernels[t] @ v_pi)).sum(axis=1)
        v_br = (r + kernels[t] @ v_br).max(axis=1)
    return float(flow[0] @ v_br - flow[0] @ v_pi)


def test_the_estimated_exploitability_is_that_of_the_empirical_policy(
    rows: pd.DataFrame, tmp_path: Path
) -> None:
    src = tmp_path / "mine.csv"
    rows.assign(note="x").to_csv(src, index=False)
    made = _import(src, tmp_path / "store")
    assert made["ignored_columns"] == ["note"]
    behaviour = made["behaviour"]
    game = get_benchmark("crowd_1d").game({"horizon": HORIZON, "size": SIZE})
    counts = np.zeros((HORIZON, SIZE, 3))
    np.add.at(counts, (rows["t"], rows["state"], rows["action"]), 1.0)
    seen = counts.sum(axis=2, keepdims=True)
    empirical = np.where(seen > 0, counts / np.maximum(seen, 1), 1.0 / 3)
    assert (seen == 0).any()  # unvisited (t, s): the uniform fill matters
    expected = _brute_exploitability(game, empirical)
    assert expected > 0.01
    assert behaviour["exploitability_estimate"] == pytest.approx(expected, abs=1e-10)
    mean_return = rows.groupby(["episode", "agent"])["reward"].sum().mean()
    assert behaviour["data_mean_return"] == pytest.approx(mean_return, rel=1e-6)


def _bad(rows: pd.DataFrame, case: str) -> tuple[pd.DataFrame | pa.Table, str, str]:
    """A malformed copy of the rows, the column the message must name and the rows (0-based
    data rows) it must list."""
    df = rows.copy()
    if case == "dtype":
        df["state"] = df["state"].astype(float) + 0.5
        return df, "column state: type double", "all rows"
    if case == "range":
        df.loc[[4, 11], "state"] = SIZE
        return df, f"column state: {SIZE} at rows 4, 11; allowed: 0..{SIZE - 1}", ""
    if case == "missing":
        return df.drop(columns=["action"]), "missing column action", ""
    if case == "duplicate":
        df = pd.concat([df, df.iloc[[9]]], ignore_index=True)
        return df, "columns episode, t, agent: duplicate rows: rows 9, " + str(len(df) - 1), ""
    # ragged: the last decision epoch of one episode is missing
    gone = df.index[(df["episode"] == 110) & (df["t"] == HORIZON - 1)]
    kept = df.drop(index=gone).reset_index(drop=True)
    first = kept.index[kept["episode"] == 110][0]
    return kept, f"column t: ragged episode 110 (rows {first}, ", f"no rows at t = {HORIZON - 1}"


@pytest.mark.parametrize("case", ["dtype", "range", "missing", "duplicate", "ragged"])
def test_a_malformed_import_names_the_column_and_the_rows(
    rows: pd.DataFrame, case: str, tmp_path: Path
) -> None:
    df, must, also = _bad(rows, case)
    src = tmp_path / "bad.csv"
    df.to_csv(src, index=False)
    code, out = _mfd("import", str(src), *BENCH, "--storage", str(tmp_path / "store"))
    assert code == 2, out
    assert must in out and also in out, out
    assert not (tmp_path / "store" / "datasets").exists() or not any(
        (tmp_path / "store" / "datasets").iterdir()
    )


def test_npz_with_a_wrong_dtype_is_refused(rows: pd.DataFrame, tmp_path: Path) -> None:
    arrays = {c: rows[c].to_numpy() for c in rows.columns}
    arrays["action"] = arrays["action"].astype(str)
    np.savez(tmp_path / "bad.npz", **arrays)
    code, out = _mfd("import", str(tmp_path / "bad.npz"), *BENCH, "--storage", str(tmp_path))
    assert code == 2 and "column action: type string (all rows)" in out, out


def test_a_dataset_that_disagrees_with_the_config_fails_before_ray(
    rows: pd.DataFrame, tmp_path: Path
) -> None:
    import ray

    src = tmp_path / "mine.parquet"
    rows.to_parquet(src, index=False)
    dataset = _import(src, tmp_path / "store")["dataset"]
    config = tmp_path / "h8.yaml"
    config.write_text(yaml.safe_dump({"benchmark": {"name": "crowd_1d", "params": {"horizon": 8}}}))
    cases = [
        (["-c", str(config)], f"benchmark.params.horizon = 8 but the dataset has {HORIZON}"),
        (["-s", "horizon=12"], f"benchmark.params.horizon = 12 but the dataset has {HORIZON}"),
        (["-s", "n_agents=7"], f"data.n_agents = 7 but the dataset has {N}"),
        (["-s", "benchmark=sis"], "benchmark.name = 'sis' but the dataset has 'crowd_1d'"),
        (["-s", "quality=expert"], "data.quality = 'expert' but the dataset has 'imported'"),
    ]
    ray_before = ray.is_initialized()  # another test of the session may have started it
    db = tmp_path / "mlflow.db"
    for args, message in cases:
        code, out = _mfd(
            "train", "--dataset", dataset, *args, "--storage", str(tmp_path),
            "--tracking-uri", f"sqlite:///{db}",
        )  # fmt: skip
        assert code == 2 and message in out, (args, out)
    # refused before the MLflow run that precedes any Ray work, and no Ray started
    assert not db.exists() and ray.is_initialized() == ray_before
    # a data file where a dataset is expected: told how to make one
    code, out = _mfd("train", "--dataset", str(src))
    assert code == 2 and f"mfd import {src}" in out, out
    # `imported` is a quality of imported data only
    code, out = _mfd("config", "-s", "data.quality=imported")
    assert code == 2 and "data.quality" in out and "imported" in out and "data.path" in out, out


def test_a_hand_written_manifest_is_checked_and_printed(rows: pd.DataFrame, tmp_path: Path) -> None:
    src = tmp_path / "mine.parquet"
    rows.to_parquet(src, index=False)
    dataset = Path(_import(src, tmp_path / "store")["dataset"])
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["behaviour"] = {}  # nothing known: printed, never a KeyError
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    code, out = _mfd("generate", "-s", f"data.path={dataset}", "--storage", str(tmp_path))
    assert code == 0 and "behaviour return unknown, exploitability unknown" in out, out
    # a spec edited by hand (here the horizon): no longer the spec its id hashes, refused
    manifest["spec"]["benchmark"]["params"]["horizon"] = 8
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    code, out = _mfd("train", "--dataset", str(dataset), "--storage", str(tmp_path))
    assert code == 2 and "dataset_id mismatch" in out, out


def test_a_datasets_statistics_shard_by_shard_equal_those_of_all_its_episodes(
    rows: pd.DataFrame, tmp_path: Path
) -> None:
    """What the evaluation's decomposition reads of a dataset (the tabular advantage and the
    behaviour prior) comes shard by shard, so a dataset larger than memory is scored: the same
    figures as from every episode loaded at once."""
    from mfdiffuser.data.advantages import dataset_statistics, fit_tabular_advantage
    from mfdiffuser.data.manifest import read_manifest
    from mfdiffuser.data.windows import behaviour_prior, load_episodes

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path)
    code, out = _mfd(
        "import", str(path), *BENCH, "--storage", str(tmp_path / "s"), "--shards", "3", "--json"
    )
    assert code == 0, out
    uri = json.loads(out.splitlines()[-1])["dataset"]
    assert len(read_manifest(uri).shards) == 3
    advantage, prior = dataset_statistics(uri, SIZE, 3)
    arrays, _ = load_episodes(uri)
    whole = fit_tabular_advantage(arrays, SIZE, 3)
    np.testing.assert_allclose(advantage.q, whole.q, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(advantage.v, whole.v, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(advantage.counts, whole.counts)
    np.testing.assert_array_equal(prior, behaviour_prior(arrays, SIZE, 3))

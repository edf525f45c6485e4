"""Hostile config input through `mfd config` / `mfd train` / `mfd run` / `mfd sweep` (in-process,
no Ray): alias bombs, deep nesting, duplicate keys, non-UTF-8 files, and names that would become
paths outside the storage root. Each is one short line and exit 2; nothing is written."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.data.manifest import dataset_id, dataset_spec
from mfdiffuser.envs.registry import BENCHMARKS
from mfdiffuser.platform.config import load_config
from mfdiffuser.platform.names import check_name, derived_name
from mfdiffuser.tuning.sweep import load_sweep

NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"


def mfd(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, (r.stderr if r.exit_code else r.stdout)


def one_error_line(code: int, text: str, *needles: str, limit: int = 400) -> str:
    lines = text.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, text[:2000])
    assert lines[0].startswith("error: ") and len(lines[0]) <= limit, lines[0][:2000]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# The 334-byte bomb of the issue: 9 levels of 9 aliases, 9^9 = 387 million leaves if expanded.
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.timeout(20)
def test_an_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "planner:\n  stage_steps:\n" + "".join(f"    {ln}\n" for ln in BOMB.splitlines())
    )
    start = time.perf_counter()
    one_error_line(*mfd("config", "-c", str(bomb)), str(bomb), "aliases", "line 4")
    one_error_line(*mfd("config", "-s", "planner.stage_steps=[&x [1, 2], *x]"), "-s planner")
    assert time.perf_counter() - start < 5


@pytest.mark.timeout(20)
def test_deep_nesting_is_refused_without_a_traceback(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("eval:\n  n_agents: " + "[" * 20_000 + "]" * 20_000 + "\n")
    one_error_line(*mfd("config", "-c", str(deep)), str(deep), "nested deeper than 16 levels")
    code, text = mfd("config", "-s", "eval.n_agents=" + "[" * 20_000 + "]" * 20_000)
    one_error_line(code, text, "-s eval.n_agents", "nested deeper than 16")


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  epochs: 3\n  lr: 0.01\n  epochs: 5\n")
    one_error_line(
        *mfd("config", "-c", str(dup)), str(dup), "duplicate key 'epochs' on lines 2 and 4"
    )
    one_error_line(*mfd("config", "-s", "eval.n_agents={a: 1, a: 2}"), "duplicate key 'a'")


def test_every_yaml_problem_names_the_file(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: café\n".encode("latin-1"))
    one_error_line(
        *mfd("config", "-c", str(latin1)), str(latin1), "not UTF-8 (byte 0xe9 at offset 9)"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {epochs: 3\n")
    one_error_line(*mfd("config", "-c", str(broken)), str(broken), "not valid YAML (line 2")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    one_error_line(*mfd("config", "-c", str(listed)), str(listed), "mapping of sections")
    # An argument that is not UTF-8 reaches Python as a lone surrogate (surrogateescape).
    one_error_line(*mfd("config", "-s", "runtime.storage=caf\udce9"), "the value is not UTF-8")
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: " + "a" * 2_000_000 + "\n")
    one_error_line(*mfd("config", "-c", str(huge)), str(huge), "allowed: at most 1000000")


def test_long_values_are_shown_truncated() -> None:
    line = one_error_line(*mfd("config", "-s", "data.quality=" + "q" * 100_000), "data.quality")
    assert "q" * 100 not in line


def test_config_prints_the_resolved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, text = mfd("config", "-s", "train.lr=1e-4", "-s", "size=12", "--json")
    assert code == 0, text
    out = json.loads(text)
    assert out == load_config(None, ["train.lr=1e-4", "size=12"]).model_dump(mode="json")
    assert out["train"]["lr"] == 1e-4  # `1e-4` is a float, as a user means it
    assert out["benchmark"]["params"] == {"size": 12, "horizon": 10, "crowd_aversion": 1.0}
    code, text = mfd("config")
    assert code == 0 and yaml.safe_load(text) == load_config().model_dump(mode="json")
    assert os.listdir(tmp_path) == []


def test_a_local_data_path_too_big_for_a_worker_is_refused_before_ray() -> None:
    """A dataset may be larger than the `local` path can hold (1e9 agent-steps here, 1e8 per
    shard): training on `local` is refused naming the fix; the dataset itself is allowed."""
    big = ["-s", "data.episodes=1000", "-s", "n_agents=100000", "-s", "data.shards=10"]
    assert mfd("config", *big)[0] == 0
    one_error_line(
        *mfd("train", *big),
        "train.data_path = 'local': each of train.num_workers = 2 Train workers would load "
        "5e+08 agent-steps",
        "allowed: <= 2e+08 per worker: more train.num_workers, or (finite-state games) "
        "train.data_path=ray_data",
        limit=500,
    )


def test_budgets_name_the_fields_they_multiply() -> None:
    one_error_line(
        *mfd("config", "-s", "data.episodes=100000", "-s", "n_agents=1000"),
        "data.episodes x data.n_agents x horizon = 100000 x 1000 x 10 in data.shards = 4: "
        "2.5e+08 agent-steps per shard",
        "allowed: <= 2e+08 per shard (more data.shards)",
    )
    one_error_line(
        *mfd("config", "-s", "data.episodes=1000000", "-s", "n_agents=10000"),
        "data.episodes x data.n_agents x horizon = 1000000 x 10000 x 10 = 1e+11 agent-steps",
        "allowed: <= 1e+10",
    )
    one_error_line(
        *mfd("config", "-s", "train.batch_size=4096", "-s", "planner.hidden=1024"),
        "train.batch_size x method.params.n_particles x method.params.window x "
        "method.params.hidden",
    )


# ---------------------------------------------------------------------------- names are names


@pytest.mark.parametrize(
    ("command", "setting", "needle"),
    [
        ("train", "name: ../../../escaped_train", "name = '../../../escaped_train'"),
        ("run", "runtime: {experiment: ../../../escaped_exp}", "runtime.experiment = '../"),
        ("sweep", "name: ../../../escaped_sweep", "name = '../../../escaped_sweep'"),
    ],
)
def test_a_name_that_is_a_path_exits_2_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, setting: str, needle: str
) -> None:
    root, cwd = tmp_path / "root", tmp_path / "root" / "a" / "b" / "cwd"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    config = tmp_path / "config.yaml"
    sweep = "sweep: {grid: {seed: [0]}}\n" if command == "sweep" else ""
    config.write_text(f"{setting}\n{sweep}")
    store, db = cwd / "store", root / "mlflow.db"
    code, text = mfd(
        command, "-c", str(config), "--storage", str(store), "--tracking-uri", f"sqlite:///{db}"
    )
    one_error_line(code, text, needle, "allowed: letters, digits, '.', '_', '-'")
    assert [p for p in root.rglob("*") if p.is_file()] == []  # no store, no MLflow db
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "root"]


def test_sweep_trial_names_are_safe_and_keys_stay_tags(tmp_path: Path) -> None:
    p = tmp_path / "sweep.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "name": "crowd_1d-medium",
                "benchmark": {"name": "crowd_1d", "params": {"size": 6}},
                "sweep": {
                    "grid": {"N": [100, 1000], "quality": ["medium"], "train.lr": [0.001, 0.01]}
                },
            }
        )
    )
    sw = load_sweep(p)
    names = [sw.experiment_config(t).name for t in sw.trials]
    assert names[0] == "crowd_1d-medium-N100-mf_diffuser-seed0-lr0.001"
    assert len(set(names)) == len(names) == 4
    for name in names:
        assert check_name(name) == name and not set(name) & set('[]"=,/ ')
    assert sw.trials[0].key == 'N=100,quality="medium",train.lr=0.001'  # the tag keeps the key


def test_derived_names_stay_short_distinct_and_safe() -> None:
    long_a, long_b = derived_name("s", "x=" + "a" * 300), derived_name("s", "x=" + "a" * 299)
    assert len(long_a) == len(long_b) == 100 and long_a != long_b
    assert derived_name("s", "../../x") == "s-x"
    for name in (long_a, long_b, derived_name("s", 'q="ä/..\\b"')):
        assert check_name(name) == name


@pytest.mark.parametrize(
    "bad", ["", "..", "a..b", "../x", "a/b", "-a", ".a", "a b", "ä", "a" * 101]
)
def test_the_name_rule(bad: str) -> None:
    with pytest.raises(ValueError, match="allowed: letters"):
        check_name(bad)


def test_dataset_ids_are_names() -> None:
    for name, spec in BENCHMARKS.items():
        ident = dataset_id(dataset_spec(spec.describe(), "expert", 10, 2, 1, 0))
        assert check_name(ident) == ident and ident.startswith(name)

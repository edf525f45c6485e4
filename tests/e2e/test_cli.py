"""The `mfd` command as a user runs it: contracts, bad input, and the quickstart at a tiny size."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

MFD = [sys.executable, "-m", "mfdiffuser.cli"]


def mfd(
    *args: str, cwd: Path | None = None, timeout: int = 120, ray_tmpdir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if ray_tmpdir is not None:  # a Ray started by this command leaves ray_tmpdir/ray/session_*
        env["RAY_TMPDIR"] = str(ray_tmpdir)
    return subprocess.run(
        [*MFD, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def test_solve_json_contract() -> None:
    r = mfd(
        "solve", "crowd_1d", "-s", "size=10", "-s", "horizon=10", "--algorithm", "uniform", "--json"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"value", "best_response_value", "exploitability"} <= set(out)
    assert out["exploitability"] == pytest.approx(out["best_response_value"] - out["value"])
    assert out["exploitability"] > 0
    r = mfd("solve", "crowd_1d", "--algorithm", "fp", "--iterations", "7", "--json")
    fp = json.loads(r.stdout)
    assert len(fp["exploitability_curve"]) == 7
    assert fp["exploitability"] == pytest.approx(fp["exploitability_curve"][-1], rel=1e-9)
    assert fp["exploitability"] < out["exploitability"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["solve", "nope"], "benchmark = 'nope': unknown benchmark"),
        (["solve", "crowd1d"], "unknown benchmark (did you mean crowd_1d?)"),
        (["solve", "crowd_1d", "-s", "sise=3"], "(did you mean size?)"),
        (["solve", "crowd_1d", "-s", "size=1"], "size"),
        (["solve", "crowd_1d", "-s", "colour=red"], "colour"),
        (["solve", "crowd_1d", "--algorithm", "magic"], "magic"),
        (["generate", "nope"], "nope"),
        (["generate", "crowd_1d", "-s", "n_agents=0"], "data.n_agents = 0"),
        (["generate", "crowd_1d", "--quality", "superb"], "superb"),
        (["train", "-s", "planner.window=50"], "method.params.window = 50"),
        (["train", "-s", "benchmark=battle", "-s", "method=fp"], "fp needs a finite state"),
        (["train", "--dataset", "/no/such/dataset"], "/no/such/dataset"),
        (["train", "--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
        # A tracking server that does not answer: named, before any Ray work, for every command.
        (["run", "--tracking-uri", "http://127.0.0.1:9"], "'http://127.0.0.1:9' is unreachable"),
        (
            ["table", "--sweep", "s1", "--tracking-uri", "http://127.0.0.1:9"],
            "'http://127.0.0.1:9' is unreachable",
        ),
        (["evaluate", "/no/such/checkpoint"], "/no/such/checkpoint"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    args: list[str], needle: str, tmp_path: Path
) -> None:
    storing = args[0] in ("generate", "train", "run")
    r = mfd(*args, "--storage", str(tmp_path)) if storing else mfd(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # failed before writing anything


def test_bad_sweep_fails_before_launch_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsweep:\n  grid:\n    temperature: [1, 2]\n")
    r = mfd("sweep", "--config", str(bad), "--storage", str(tmp_path / "store"))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "sweep.grid.temperature: unknown axis" in r.stderr and "Traceback" not in r.stderr
    bad.write_text("name: x\nsweep:\n  grid: {}\n")
    r = mfd("sweep", "--config", str(bad))
    assert r.returncode == 2 and "empty grid" in r.stderr, r.stderr
    assert not (tmp_path / "store").exists()  # nothing launched, nothing written


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sweep_fails_before_ray_starts(tmp_path: Path) -> None:
    from mfdiffuser.tuning.sweep import check_sweep, load_sweep

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: early\nsweep:\n  grid:\n    seed: [0]\n")
    store, ray_tmp = tmp_path / "store", tmp_path / "raytmp"
    closed = f"http://127.0.0.1:{_free_port()}"
    r = mfd(
        "sweep",
        "-c",
        str(sweep),
        "--storage",
        str(store),
        "--tracking-uri",
        closed,
        ray_tmpdir=ray_tmp,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: tracking URI"), r.stderr
    assert "unreachable" in r.stderr and r.stderr.count("\n") == 1, r.stderr

    # A sweep of this name already ran here (its Tune experiment directory exists).
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_sweep(sweep, [f"runtime.tracking_uri={db}", f"runtime.storage={store}"])
    _, _, exp_dir = check_sweep(spec)
    Path(exp_dir).mkdir(parents=True)
    r = mfd(
        "sweep", "-c", str(sweep), "--storage", str(store), "--tracking-uri", db, ray_tmpdir=ray_tmp
    )
    assert r.returncode == 2 and "already ran in" in r.stderr and "--resume" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert not ray_tmp.exists()  # no Ray was started for either


def test_version() -> None:
    from mfdiffuser import __version__
    from mfdiffuser.platform.provenance import code_version

    r = mfd("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"mfd {__version__} (code {code_version()})\n"


def test_help_lists_every_choice() -> None:
    from mfdiffuser.api import ALGORITHMS
    from mfdiffuser.envs.behaviour import QUALITIES

    def help_text(command: str) -> str:  # the help panel's words, without borders and wrapping
        return " ".join(mfd(command, "--help").stdout.replace("│", " ").split())

    assert " | ".join(QUALITIES) in help_text("generate")
    assert " | ".join(ALGORITHMS) in help_text("solve")


def test_help_for_every_command() -> None:
    for cmd in (
        "quickstart",
        "solve",
        "generate",
        "train",
        "evaluate",
        "run",
        "benchmarks",
        "sweep",
    ):
        r = mfd(cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, (cmd, r.stderr)


@pytest.mark.e2e
def test_quickstart_tiny(tmp_path: Path) -> None:
    r = mfd(
        "quickstart",
        "--workdir",
        str(tmp_path / "qs"),
        "--json",
        "-s",
        "data.episodes=4",
        "-s",
        "data.shards=2",
        "-s",
        "train.epochs=1",
        "-s",
        "train.steps_per_epoch=10",
        "-s",
        "planner.diffusion_steps=5",
        "-s",
        "eval.n_agents=[20, 50]",
        "-s",
        "eval.episodes=1",
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)  # stdout holds the JSON object alone; logs went to stderr
    db = tmp_path / "qs" / "mlflow.db"
    assert out["tracking_uri"] == f"sqlite:///{db}"
    assert Path(out["checkpoint"]).is_dir()
    with sqlite3.connect(db) as con:
        status = con.execute(
            "select status from runs where run_uuid=?", (out["run_id"],)
        ).fetchone()
        keys = {
            k
            for (k,) in con.execute(
                "select distinct key from metrics where run_uuid=?", (out["run_id"],)
            )
        }
    assert status == ("FINISHED",)
    assert {
        "train/loss",
        "return/n20",
        "return/n50",
        "exploitability",
        "behaviour/return",
        "behaviour/exploitability",
    } <= keys
    # Nothing escaped the working directory.
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mfd-work").exists()
    # What it prints to open the run: the venv's `mfd ui` on this store, the run's page in the
    # model-training view.
    assert (
        out["mlflow_ui_command"]
        == f"{Path(sys.executable).parent / 'mfd'} ui --tracking-uri sqlite:///{db}"
    )
    assert out["mlflow_ui_url"].endswith(f"/runs/{out['run_id']}?workflowType=machine_learning")


def test_human_summary_shows_the_decomposition() -> None:
    from mfdiffuser.cli import _summary

    m = {
        "return/n100": 27.5,
        "return/n100_std": 0.3,
        "exploitability": 0.31,
        "subopt/regularisation_gap": 0.0,
        "subopt/distribution_shift": 0.001,
        "subopt/generative_error": 0.052,
        "subopt/mf_error/n100": 0.79,
        "subopt/total/n100": 0.843,
    }
    text = _summary(
        {"metrics": m, "run_id": "r", "experiment": "e", "tracking_uri": "u"}
        | {"checkpoint": "c", "wall_seconds": 1.0}
    )
    assert "return/n100: 27.5000 ± 0.3000" in text
    assert "generative error +0.0520" in text
    assert "mean-field error at N=100: +0.7900 (total +0.8430)" in text
    assert "exploitability: planner 0.3100\n" in text  # no behaviour figures given
    m |= {"return_mf": 27.1, "behaviour/return": 26.0, "behaviour/exploitability": 0.02}
    text = _summary(
        {"metrics": m, "run_id": "r", "experiment": "e", "tracking_uri": "u"}
        | {"checkpoint": "c", "wall_seconds": 1.0}
    )
    assert "exploitability: planner 0.3100 (behaviour 0.0200)" in text
    assert "mean-field return: planner 27.1000 (behaviour 26.0000)" in text

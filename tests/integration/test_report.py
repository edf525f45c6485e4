"""`mfd report` against a real SQLite MLflow store laid out as `mfd sweep` lays it out, with a
known power law in it; the HTML report opened in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.platform import tracking
from mfdiffuser.tuning.sweep import load_sweep, parent_run, trial_run

pytestmark = pytest.mark.integration

SWEEP = """\
name: laws
benchmark: {name: crowd_1d, params: {size: 10, horizon: 10}}
data: {quality: medium, n_agents: 100, episodes: 2}
planner: {window: 4}
sweep:
  grid:
    N: [100, 1000, 10000]
    method: [mf_diffuser, bc]
    seed: [0, 1, 2]
"""
TEAMS = """\
name: teams
benchmark: {name: battle, params: {max_steps: 100}}
data: {quality: medium, n_agents: 64, episodes: 2}
sweep:
  grid:
    N: [64, 256]
    method: [mf_diffuser, bc]
    seed: [0, 1, 2]
"""
SETUP = "bash scripts/setup.sh --test (as root; it says what to install otherwise)"
C = 2.0  # |mean-field deviation| = C * N^-0.5 * noise


def _metrics(n: int, method: str, seed: int, rng: np.random.Generator) -> dict[str, float]:
    # Multiplicative noise exp(-0.1), exp(0), exp(0.1) over the 3 seeds at every N (in an order
    # that changes with N): the exact law is then the least-squares fit of log y on log N.
    noise = float(np.exp(0.1 * ((seed + round(np.log10(n))) % 3 - 1)))
    dev = C * n**-0.5 * noise
    mf = 0.5 / n + rng.normal(scale=0.01) / np.sqrt(n)
    shift = 0.03 * noise
    return {
        f"return/n{n}": (-1.0 if method == "mf_diffuser" else -1.2) - dev,
        "exploitability": 0.1 + 0.01 * rng.random(),
        f"subopt/mf_abs_dev/n{n}": dev,
        f"subopt/mf_error/n{n}": mf,
        "subopt/distribution_shift": shift,
        "subopt/regularisation_gap": 0.01,
        "subopt/generative_error": -0.02,
        f"subopt/total/n{n}": 0.01 + shift - 0.02 + mf,
    }


def _team_metrics(n: int, method: str, seed: int) -> dict[str, float]:
    """Scores whose mean over the 3 seeds is `_team_mean` (seed offsets -0.1, 0, +0.1)."""
    out = {f"return/n{n}": -0.5}
    for opponent in ("expert", "random", "self"):
        for score in ("win_rate", "kill_ratio"):
            mean = _team_mean(score, opponent, method, n)
            out[f"{score}/vs_{opponent}/n{n}"] = mean + 0.1 * (seed - 1)
    return out


def _team_mean(score: str, opponent: str, method: str, n: int) -> float:
    base = {"expert": 0.2, "random": 0.8, "self": 0.5}[opponent] + 0.1 * (n == 256)
    return (base if method == "mf_diffuser" else base - 0.15) * (
        3.0 if score == "kill_ratio" else 1
    )


def _log_sweep(tmp: Path, uri: str, text: str, fail: bool = False) -> str:
    """A sweep's parent and trial runs as `mfd sweep` makes them; returns the parent's id."""
    name = text.split("\n", 1)[0].removeprefix("name: ")
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    sweep = load_sweep(path, [f"runtime.tracking_uri={uri}", f"runtime.storage={tmp}"])
    parent = parent_run(sweep, sweep.experiment_config(sweep.trials[0]), uri, resume=False)
    rng = np.random.default_rng(0)
    for t in sweep.trials if not fail else sweep.trials[:2]:
        run_id, _ = trial_run(sweep.experiment_config(t), t, uri, parent)
        if fail:
            tracking.fail_run(uri, run_id, RuntimeError("loss is NaN [epoch 1]"))
            continue
        for epoch in (1, 2, 3):
            loss = {"train/loss": 1.0 / epoch, "train/loss_unweighted": 1.2 / epoch}
            tracking.log_metrics(uri, run_id, loss, step=epoch)
        metrics = _team_metrics if name == "teams" else partial(_metrics, rng=rng)
        tracking.log_metrics(uri, run_id, metrics(t.axes["N"], t.axes["method"], t.axes["seed"]))
        tracking.end_run(uri, run_id)
    tracking.end_run(uri, parent)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished sweep: 18 trials with per-epoch losses, a second one whose trials failed, and
    a battle sweep (12 trials) with known win rates and kill ratios."""
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return {
        "uri": uri,
        "tmp": tmp,
        "laws": _log_sweep(tmp, uri, SWEEP),
        "broken": _log_sweep(tmp, uri, SWEEP.replace("name: laws", "name: broken"), fail=True),
        "teams": _log_sweep(tmp, uri, TEAMS),
    }


def _report(store: dict[str, Any], sweep: str) -> dict[str, Any]:
    out = store["tmp"] / f"report-{sweep}"
    args = ["--sweep", store[sweep], "--tracking-uri", store["uri"], "--out", str(out), "--json"]
    res = CliRunner().invoke(app, ["report", *args])
    assert res.exit_code == 0, res.output
    return {**json.loads(res.stdout), "dir": out}


@pytest.fixture(scope="module")
def report(store: dict[str, Any]) -> dict[str, Any]:
    return _report(store, "laws")


def test_report_recovers_the_power_law_and_logs_the_figures(
    store: dict[str, Any], report: dict[str, Any]
) -> None:
    laws = {(x["method"], x["term"], x["fit"]): x for x in report["laws"]}
    for method in ("mf_diffuser", "bc"):
        dev = laws[(method, "|mean-field deviation| per episode", "log-log")]
        assert dev["low"] < -0.5 < dev["high"] and dev["slope"] == pytest.approx(-0.5), dev
        assert dev["reference"] == -0.5 and dev["high"] - dev["low"] < 0.3
        flat = laws[(method, "distribution shift", "per decade")]
        assert flat["low"] < 0.0 < flat["high"], flat
    folder = report["dir"] / "figures"
    names = {"return_vs_n", "terms_vs_n", "shift", "exploitability", "comparison"}
    assert names | {"training_curves"} == set(report["figures"])  # no team figure here
    assert report["team_scores"] == []
    for name in report["figures"]:
        for ext in ("png", "svg"):
            assert (folder / f"{name}.{ext}").stat().st_size > 1000, name
    assert (report["dir"] / "index.html").is_file()
    assert not [p for p in report["dir"].parent.iterdir() if ".tmp-" in p.name]
    client = tracking.client(store["uri"])
    on_parent = {a.path for a in client.list_artifacts(store["laws"], "figures")}
    assert {f"figures/{n}.png" for n in names} <= on_parent
    trial = tracking.sweep_results(store["uri"], store["laws"])["records"][0]["run_id"]
    on_trial = {a.path for a in client.list_artifacts(trial, "figures")}
    assert {"figures/training.png", "figures/decomposition.png"} <= on_trial
    # The per-N keys are logged once more without N, at step N: what MLflow charts against N.
    history = tracking.metric_history(store["uri"], trial, "subopt/mf_abs_dev")
    assert len(history) == 1 and history[0][0] in (100, 1000, 10000)


def test_battle_sweep_report_draws_win_rate_and_kill_ratio_against_n(
    store: dict[str, Any],
) -> None:
    report = _report(store, "teams")
    cells = {
        (c["score"], c["opponent"], c["method"], c["n_agents"]): c for c in report["team_scores"]
    }
    assert len(cells) == 2 * 3 * 2 * 2  # score x opponent x method x N
    for (score, opponent, method, n), c in cells.items():
        assert c["benchmark"] == "battle" and c["quality"] == "medium" and c["seeds"] == 3
        mean = _team_mean(score, opponent, method, n)
        assert c["mean"] == pytest.approx(mean) and c["low"] < mean < c["high"], c
    assert "team_scores" in report["figures"]
    for ext in ("png", "svg"):
        assert (report["dir"] / "figures" / f"team_scores.{ext}").stat().st_size > 1000
    on_parent = {
        a.path for a in tracking.client(store["uri"]).list_artifacts(store["teams"], "figures")
    }
    assert "figures/team_scores.png" in on_parent


def test_report_opens_in_headless_chromium(report: dict[str, Any]) -> None:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed: run {SETUP}")
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.fail(f"chromium and chromium-driver are needed: run {SETUP}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get((report["dir"] / "index.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.src, i.complete, i.naturalWidth])"
        )
        trials = driver.execute_script(
            "return Array.from(document.querySelectorAll('details.trial'))"
            ".map(d => [d.open, d.querySelectorAll('img').length])"
        )
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('table.comparison'))"
            ".map(t => Array.from(t.querySelectorAll('tr.method')).map(r => r.cells[0].innerText))"
        )
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    per_run = report["run_figures"]
    assert len(per_run) == 18 and all(v == ["training", "decomposition"] for v in per_run.values())
    assert len(images) == len(report["figures"]) + 2 * 18
    assert trials == [[False, 2]] * 18  # collapsed, each with its two figures
    assert all(done and width > 0 for _, done, width in images), images
    assert len(rows) == 3 and all(sorted(r) == ["bc", "mf_diffuser"] for r in rows), rows
    assert errors == []


def _fails(*args: str) -> str:
    res = CliRunner().invoke(app, ["report", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_report_bad_input_exits_2_and_leaves_the_output_untouched(
    store: dict[str, Any], tmp_path: Path
) -> None:
    uri = store["uri"]
    out = tmp_path / "out"
    assert "no such run" in _fails("--sweep", "0" * 32, "--tracking-uri", uri, "--out", str(out))
    assert "no such experiment" in _fails(
        "--experiment", "nope", "--tracking-uri", uri, "--out", str(out)
    )
    assert "unreachable" in _fails(
        "--sweep", store["laws"], "--tracking-uri", "http://127.0.0.1:9", "--out", str(out)
    )
    assert "no finished trial" in _fails(
        "--sweep", store["broken"], "--tracking-uri", uri, "--out", str(out)
    )
    (tmp_path / "file").write_text("keep")
    assert "is a file" in _fails(
        "--sweep", store["laws"], "--tracking-uri", uri, "--out", str(tmp_path / "file")
    )
    assert "not a writable directory" in _fails(
        "--sweep", store["laws"], "--tracking-uri", uri, "--out", str(tmp_path / "file" / "x")
    )
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "not a report" in _fails(
        "--sweep", store["laws"], "--tracking-uri", uri, "--out", str(out)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (tmp_path / "file").read_text() == "keep"

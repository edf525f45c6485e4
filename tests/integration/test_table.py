"""`mfd table` against a real SQLite MLflow store laid out the way `mfd sweep` lays it out."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.platform import tracking
from mfdiffuser.tuning.sweep import Trial, load_sweep, parent_run, trial_run

pytestmark = pytest.mark.integration

SWEEP = """\
name: {name}
benchmark: {{name: crowd_1d, params: {{size: 10, horizon: 10}}}}
data: {{quality: expert, n_agents: 100, episodes: 2}}
planner: {{window: 4}}
sweep:
  grid:
    N: [100, 1000]
    method: [mf_diffuser, per_agent_diffuser]
    seed: [0, 1, 2]
"""


def _sweep(tmp_path: Path, uri: str, name: str) -> tuple[object, str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SWEEP.format(name=name))
    sweep = load_sweep(path, [f"runtime.tracking_uri={uri}", f"runtime.storage={tmp_path}"])
    return sweep, parent_run(sweep, sweep.experiment_config(sweep.trials[0]), uri, resume=False)


def _trial(cfg: object, trial: Trial, uri: str, parent: str, metrics: dict | None) -> str:
    run_id, _ = trial_run(cfg, trial, uri, parent)
    if metrics is None:
        tracking.fail_run(uri, run_id, RuntimeError("loss is NaN [epoch 1]"))
    else:
        tracking.log_metrics(uri, run_id, metrics)
        tracking.end_run(uri, run_id)
    return run_id


def _invoke(*args: str) -> object:
    return CliRunner().invoke(app, ["table", *args])


def test_table_of_a_sweep_with_a_failed_trial_a_skipped_cell_and_a_reference(
    tmp_path: Path, tracking_uri: str
) -> None:
    rng = np.random.default_rng(3)
    sweep, parent = _sweep(tmp_path, tracking_uri, "cmp")
    logged: dict[tuple[int, str], dict[int, tuple[float, float]]] = {}
    skipped, failed = [], None
    for t in sweep.trials:
        n, method, seed = t.axes["N"], t.axes["method"], t.axes["seed"]
        if method == "per_agent_diffuser" and n == 1000:  # what the sweep will skip
            skipped.append(
                {
                    "axes": t.axes,
                    "key": t.key,
                    "method": method,
                    "benchmark": "crowd_1d",
                    "quality": "expert",
                    "n_agents": n,
                    "seed": seed,
                    "reason": "per-agent planning at N=1000 exceeds the budget",
                }
            )
            continue
        cfg = sweep.experiment_config(t)
        if method == "mf_diffuser" and n == 1000 and seed == 2:
            failed = _trial(cfg, t, tracking_uri, parent, None)
            continue
        ret = float(rng.normal(2.0 if method == "mf_diffuser" else 1.0, 0.3))
        expl = float(rng.uniform(0.0, 0.5))
        logged.setdefault((n, method), {})[seed] = (ret, expl)
        _trial(cfg, t, tracking_uri, parent, {f"return/n{n}": ret, "exploitability": expl})
    # A reference solver's trial, one seed only (no interval: a warning).
    first = sweep.trials[0]
    fp_config = {**first.config, "method": {"name": "fp", "params": {}}}
    fp = Trial(axes={**first.axes, "method": "fp"}, key=first.key + ",fp", config=fp_config)
    _trial(sweep.experiment_config(fp), fp, tracking_uri, parent, {"return/n100": 9.0})
    logged[(100, "fp")] = {0: (9.0, None)}
    cells = tmp_path / "skipped.json"
    cells.write_text(json.dumps(skipped))
    tracking.log_artifact(tracking_uri, parent, cells, "sweep")

    r = _invoke("--sweep", parent, "--tracking-uri", tracking_uri, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["parent_run_id"] == parent and out["sweep_id"] == sweep.sweep_id
    settings = {s["n_agents"]: {m["method"]: m for m in s["methods"]} for s in out["settings"]}
    assert set(settings) == {100, 1000}
    for (n, method), by_seed in logged.items():
        row = settings[n][method]
        returns = [by_seed[s][0] for s in sorted(by_seed)]
        assert sorted(row["seeds"]) == sorted(by_seed)
        assert row["return"]["mean"] == pytest.approx(np.mean(returns))
        assert row["iqm_return"] == pytest.approx(stats.trim_mean(returns, 0.25))
        if len(returns) > 1:
            assert min(returns) <= row["return"]["low"] < row["return"]["mean"]
            assert row["return"]["mean"] < row["return"]["high"] <= max(returns)
            expl = [by_seed[s][1] for s in by_seed]
            assert row["exploitability"]["mean"] == pytest.approx(np.mean(expl))
        else:
            assert row["return"]["low"] is None and row["exploitability"] is None
        if method != "mf_diffuser":
            planner = [v[0] for v in logged[(n, "mf_diffuser")].values()]
            pairs = list(itertools.product(planner, returns))
            assert row["p_improvement"]["value"] == pytest.approx(
                np.mean([a > b for a, b in pairs])
            )
    assert settings[100]["fp"]["reference"]
    per_agent = settings[1000]["per_agent_diffuser"]
    assert per_agent["return"] is None and len(per_agent["skipped"]) == 3
    assert [m["run_id"] for m in out["missing"]] == [failed]
    assert out["missing"][0]["reason"] == "FAILED: RuntimeError: loss is NaN [epoch 1]"
    # Only N=100 has two trained methods with a return; fp is neither winner nor competitor.
    mf100, pa100 = (
        np.mean(list(v[0] for v in logged[(100, m)].values()))
        for m in ("mf_diffuser", "per_agent_diffuser")
    )
    best = "mf_diffuser" if mf100 > pa100 else "per_agent_diffuser"
    assert out["settings_compared"] == 1
    assert out["wins"][best]["highest_mean"] == 1 and "fp" not in out["wins"]
    assert any("fp: return: one seed" in w for w in out["warnings"])

    text = _invoke("--sweep", sweep.sweep_id, "--tracking-uri", tracking_uri)
    assert text.exit_code == 0, text.stderr
    lines = text.stdout.splitlines()
    row = settings[100]["mf_diffuser"]["return"]
    mf_line = next(ln for ln in lines if ln.strip().startswith("mf_diffuser "))
    assert f"{row['mean']:.4f} [{row['low']:.4f}, {row['high']:.4f}]" in mf_line
    assert "9.0000 [one seed]" in next(ln for ln in lines if "fp (reference)" in ln)
    assert any("n/a: per-agent planning at N=1000 exceeds the budget" in ln for ln in lines)
    assert f"missing: run {failed} mf_diffuser seed 2 (crowd_1d, expert, N=1000): FAILED" in (
        text.stdout
    )
    assert "warning: " in text.stderr and "one seed" in text.stderr


def test_table_refuses_what_is_not_a_finished_sweep(tmp_path: Path, tracking_uri: str) -> None:
    sweep, parent = _sweep(tmp_path, tracking_uri, "broken")
    t = sweep.trials[0]
    child = _trial(sweep.experiment_config(t), t, tracking_uri, parent, None)
    cases = [
        ("nope", "error: --sweep = 'nope': no such run or sweep id in"),
        (child, f"error: --sweep = '{child}': run {child} is not a sweep's parent run"),
        (
            parent,
            f"error: --sweep = '{parent}': sweep 'broken' has no finished trial "
            "(trial runs: 1 FAILED)",
        ),
    ]
    for ref, line in cases:
        r = _invoke("--sweep", ref, "--tracking-uri", tracking_uri)
        assert r.exit_code == 2 and r.stderr.startswith(line), r.stderr
        assert r.stderr.count("\n") == 1 and r.stdout == ""
    absent = tmp_path / "absent.db"
    r = _invoke("--sweep", parent, "--tracking-uri", f"sqlite:///{absent}")
    assert r.exit_code == 2 and "no such store" in r.stderr and not absent.exists()

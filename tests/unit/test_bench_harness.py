"""benchmarks/run.py --quick, as a user runs it, with the peers the dev extra installs (MFGLib).

Structure and agreement only: no timing is asserted (timings depend on the machine's load)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mfdiffuser.envs import exploitability
from mfdiffuser.envs.crowd_2d import make_crowd_2d

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {
    "measure",
    "unit",
    "ours",
    "theirs",
    "peer",
    "ratio_cpu",
    "ratio_wall",
    "limit",
    "fraction",
    "agreement",
    "note",
}


def _quick() -> dict:
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout)


def test_quick_harness_table_and_agreement() -> None:
    out = _quick()
    assert out["quick"] is True and out["repeats"] == 3 and out["torch_threads"] == 1
    assert len(out["load_before"]) == 3 and len(out["load_after"]) == 3
    rows = out["rows"]
    for row in rows:
        assert set(row) == FIELDS, row["measure"]
        assert math.isfinite(row["ours"]) and row["ours"] > 0, row["measure"]
    # every peer of the bench extra that is not importable is named as skipped
    for group, module in (("openspiel", "pyspiel"), ("battle", "magent2")):
        if importlib.util.find_spec(module) is None:
            assert any(s.startswith(group) for s in out["skipped"]), out["skipped"]

    mfglib = [r for r in rows if r["peer"].startswith("MFGLib") and "crowd_2d" in r["measure"]]
    assert len(mfglib) == 1
    # the mfglib family (--quick: beach_bar, random_linear, left_right), uniform and random
    family = [r for r in rows if r["measure"].startswith("mfglib family")]
    assert [r["measure"].split(", ")[1].split(" ")[0] for r in family] == [
        "beach_bar",
        "random_linear",
        "left_right",
    ]
    for r in family:
        assert r["theirs"] > 0 and r["peer"].startswith("MFGLib 0.3.0")
        for label in ("uniform", "random"):
            assert r["agreement"][f"{label}_abs_diff"] < 1e-10, r["measure"]
    assert "L_t" in family[1]["measure"] and "mu_t" in family[0]["measure"]
    # MFGLib's crowd_motion and building_evacuation as our games, and the tiny-game batches
    native = [r for r in rows if "as our game" in r["measure"]]
    assert [r["measure"].split(", ")[1].split(" ")[0] for r in native] == [
        "crowd_motion",
        "building_evacuation",
    ]
    for r in native:
        for label in ("uniform", "random"):
            assert r["agreement"][f"{label}_abs_diff"] < 1e-10, r["measure"]
    batches = [r for r in rows if "random policies" in r["measure"]]
    assert len(batches) == 2 and all(r["agreement"]["max_abs_diff"] < 1e-10 for r in batches)
    row = mfglib[0]
    assert row["theirs"] > 0 and row["ratio_cpu"] > 0 and row["ratio_wall"] > 0
    assert math.isclose(row["ratio_cpu"], row["theirs"] / row["ours"], rel_tol=1e-9)
    # the timed game is the one whose values agree: MFGLib's exploitability equals ours
    agree = row["agreement"]
    assert agree["abs_diff"] < 1e-9
    # and "ours" is the exploitability of the policy the harness names (seed 0 Dirichlet rows)
    game = make_crowd_2d(size=10, horizon=10)
    pol = np.random.default_rng(0).dirichlet(np.ones(game.n_actions), (10, game.n_states))
    assert math.isclose(agree["ours"], exploitability(game, pol), rel_tol=1e-12)
    assert agree["ours"] > 0.1  # a random policy is far from the equilibrium

    sims = [r for r in rows if r["measure"].startswith("crowd_1d simulator")]
    assert [r["measure"].split(", ")[1] for r in sims] == [
        "sample_actions + step",
        "act_and_step (fused)",
    ]
    for sim in sims:
        assert sim["limit"] > 0 and math.isclose(sim["fraction"], sim["ours"] / sim["limit"])

    planning = [r for r in rows if r["measure"].startswith("planning step")]
    assert len(planning) == 1 and planning[0]["ratio_cpu"] > 0
    c2f = [r for r in rows if r["measure"].startswith("coarse-to-fine vs flat")]
    assert len(c2f) == 2 and all("M_L=64" in r["measure"] for r in c2f)
    for r in c2f:
        assert r["theirs"] > 0 and r["ratio_cpu"] > 0 and r["ratio_wall"] > 0
        assert r["agreement"]["ideal_ratio"] > 1

    training = [r for r in rows if r["measure"].startswith("training throughput")]
    assert [r["measure"].split(", ")[1] for r in training] == ["torch 1 thread", "torch 2 threads"]
    for r in training:
        assert r["ours"] > 0 and r["agreement"]["particle_steps_per_cpu_s"] > 0, r["measure"]
    assert training[1]["theirs"] == training[0]["ours"] and training[1]["ratio_wall"] > 0
    assert out["torch_threads"] == 1  # the 2-thread row restores one thread

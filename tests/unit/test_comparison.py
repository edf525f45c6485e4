"""The comparison table's statistics (no Ray, no MLflow)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from mfdiffuser.evaluation.comparison import (
    SingleSeedWarning,
    comparison_table,
    mean_interval,
    probability_of_improvement,
)


def test_mean_interval_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    # 400 samples of 20 normal draws. A 95% percentile bootstrap covers the mean of 20 draws
    # about 93% of the time (3000 repetitions gave 0.930; it under-covers at small n, ~0.82 at
    # 5 draws). Binomial(400, 0.93) has sd 0.013: [0.89, 0.97] is 3 sd around 0.93 and holds
    # 0.95; a 90% interval (~0.87), a 68% one, or an sd-wide one (~1.0) falls outside.
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(400):
        x = rng.normal(1.0, 2.0, size=20)
        ci = mean_interval(x, seed=i)
        assert ci["mean"] == pytest.approx(x.mean())
        hits += ci["low"] <= 1.0 <= ci["high"]
    assert 0.89 <= hits / 400 <= 0.97


def test_probability_of_improvement_is_the_pairwise_fraction() -> None:
    x, y = [3.0, 1.0, 2.0], [2.0, 0.0, 5.0, 1.0]
    pairs = list(itertools.product(x, y))
    exact = (sum(a > b for a, b in pairs) + 0.5 * sum(a == b for a, b in pairs)) / len(pairs)
    out = probability_of_improvement(x, y)
    assert out["value"] == pytest.approx(exact) == pytest.approx(7.0 / 12.0)
    u = stats.mannwhitneyu(x, y, alternative="greater").statistic  # rliable's definition
    assert out["value"] == pytest.approx(u / 12)
    assert out["low"] <= out["value"] <= out["high"] and 0 <= out["low"] and out["high"] <= 1
    dominated = probability_of_improvement([5.0, 6.0], [1.0, 2.0])
    assert (dominated["value"], dominated["low"], dominated["high"]) == (1.0, 1.0, 1.0)
    assert probability_of_improvement([1.0, 1.0], [1.0, 1.0])["value"] == 0.5


def test_one_seed_gives_no_interval_and_a_warning() -> None:
    with pytest.warns(SingleSeedWarning, match="one seed"):
        ci = mean_interval([2.5], "return")
    assert ci == {"mean": 2.5, "low": None, "high": None}
    with pytest.warns(SingleSeedWarning):
        poi = probability_of_improvement([2.0], [1.0, 3.0])
    assert poi == {"value": 0.5, "low": None, "high": None}


def _records(setting: dict, method: str, returns: list[float], expl: float = 0.1) -> list[dict]:
    return [
        {**setting, "method": method, "seed": s, "return": r, "exploitability": expl}
        for s, r in enumerate(returns)
    ]


def test_win_counts_intervals_above_and_references_left_out() -> None:
    a = {"benchmark": "crowd_1d", "quality": "expert", "n_agents": 100}
    b = {**a, "n_agents": 1000}
    c = {**a, "quality": "medium"}
    records = (
        # a: mf_diffuser far above bc (intervals apart), fp higher still but a reference.
        _records(a, "mf_diffuser", [10.0, 10.1, 10.2, 9.9])
        + _records(a, "bc", [1.0, 1.1, 0.9, 1.2])
        + _records(a, "fp", [50.0, 50.0, 50.1, 49.9], expl=0.0)
        # b: bc has the higher mean, but the intervals overlap.
        + _records(b, "mf_diffuser", [1.0, 3.0, 2.0, 0.0])
        + _records(b, "bc", [2.0, 1.0, 3.0, 0.5])
        # c: only one trained method (omd is a reference): not compared.
        + _records(c, "mf_diffuser", [1.0, 2.0])
        + _records(c, "omd", [5.0, 6.0])
    )
    table = comparison_table(records)
    assert table["settings_compared"] == 2
    assert table["wins"] == {
        "bc": {"highest_mean": 1, "interval_above": 0},
        "mf_diffuser": {"highest_mean": 1, "interval_above": 1},
    }
    by_label = {s["label"]: s for s in table["settings"]}
    sa = by_label["crowd_1d, expert, N=100"]
    assert sa["highest_mean"] == ["mf_diffuser"] and sa["interval_above"] == "mf_diffuser"
    rows = {m["method"]: m for m in sa["methods"]}
    assert rows["fp"]["reference"] and not rows["bc"]["reference"]
    assert rows["bc"]["return"]["mean"] == pytest.approx(1.05)
    assert (
        rows["bc"]["p_improvement"]["value"] == 1.0 and rows["mf_diffuser"]["p_improvement"] is None
    )
    assert rows["fp"]["p_improvement"]["value"] == 0.0
    assert rows["fp"]["exploitability"]["mean"] == 0.0
    sb = by_label["crowd_1d, expert, N=1000"]
    assert sb["highest_mean"] == ["bc"] and sb["interval_above"] is None
    sc = by_label["crowd_1d, medium, N=100"]
    assert sc["highest_mean"] == [] and sc["interval_above"] is None
    # The IQM trims a quarter at each end: of 8 seeds, the middle 4.
    eight = comparison_table(_records(a, "bc", [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]))
    assert eight["settings"][0]["methods"][0]["iqm_return"] == pytest.approx(3.5)


def test_other_axes_split_settings_and_skipped_cells_are_rows() -> None:
    a = {"benchmark": "crowd_1d", "quality": "expert", "n_agents": 100}
    records = _records({**a, "extra": {"H": 4}}, "mf_diffuser", [1.0, 2.0]) + _records(
        {**a, "extra": {"H": 8}}, "mf_diffuser", [3.0, 4.0]
    )
    skipped = [
        {**a, "extra": {"H": 8}, "method": "bc", "seed": s, "reason": "N too large"} for s in (0, 1)
    ]
    table = comparison_table(records, skipped)
    labels = [s["label"] for s in table["settings"]]
    assert labels == ["crowd_1d, expert, N=100, H=4", "crowd_1d, expert, N=100, H=8"]
    bc = next(m for m in table["settings"][1]["methods"] if m["method"] == "bc")
    assert bc["return"] is None and bc["p_improvement"] is None
    assert bc["skipped"] == [
        {"seed": 0, "reason": "N too large"},
        {"seed": 1, "reason": "N too large"},
    ]
    with pytest.raises(ValueError, match="more than once"):
        comparison_table(records + records)


def test_a_team_game_also_compares_win_rate_and_kill_ratio_vs_the_scripted_opponents() -> None:
    """The figures a trial's metrics give (`tracking.team_figures`: not vs self or a
    checkpoint, only at its own N) become columns with intervals; a crowd's table keeps its
    columns."""
    from mfdiffuser.cli import _table_text
    from mfdiffuser.platform.tracking import team_figures

    n, figs = 64, ("kill_ratio", "win_rate")
    metrics = {"return/n64": -0.5, "win_rate/vs_self/n64": 0.5, "survival/vs_expert/n64": 0.3}
    metrics |= {"win_rate/vs_checkpoint_0a1b2c3d/n64": 1.0, "win_rate/vs_expert/n256": 0.9}
    battle = {"benchmark": "battle", "quality": "medium", "n_agents": n}
    records = []
    for method, wins in (("mf_diffuser", [0.5, 0.75, 1.0]), ("bc", [0.0, 0.25, 0.25])):
        for seed, w in enumerate(wins):
            figures = {f"win_rate/vs_{o}/n{n}": w for o in ("expert", "random")}
            figures |= {f"kill_ratio/vs_{o}/n{n}": 2 * w for o in ("expert", "random")}
            team = team_figures({**metrics, **figures}, n)
            assert list(team) == [f"{f}/vs_{o}" for f in figs for o in ("expert", "random")]
            rec = {**battle, "method": method, "seed": seed, "return": w, "exploitability": None}
            records.append({**rec, "team": team})
    crowd = _records({"benchmark": "crowd_1d", "quality": "expert", "n_agents": 100}, "bc", [1, 2])
    table = comparison_table(records + crowd)
    by_label = {s["label"]: s for s in table["settings"]}
    sb = by_label["battle, medium, N=64"]
    assert sb["team_figures"] == [f"{f}/vs_{o}" for f in figs for o in ("expert", "random")]
    rows = {m["method"]: m for m in sb["methods"]}
    wr = rows["mf_diffuser"]["team"]["win_rate/vs_expert"]
    assert wr["mean"] == pytest.approx(0.75) and 0.5 <= wr["low"] < wr["high"] <= 1.0
    assert rows["bc"]["team"]["kill_ratio/vs_random"]["mean"] == pytest.approx(1 / 3)
    assert by_label["crowd_1d, expert, N=100"]["team_figures"] == []
    text = _table_text(
        {"sweep": "s", "sweep_id": "i", "parent_run_id": "p", "missing": [], **table}
    )
    battle_part, crowd_part = text.split("crowd_1d, expert, N=100")
    assert "win_rate/vs_expert [95% CI]" in battle_part and "0.7500 [" in battle_part
    assert "vs_" not in crowd_part and "exploitability [95% CI]" in crowd_part

"""The comparison table: every method in every setting, over seeds (no Ray, no MLflow).

A record is one trial's outcome: `{benchmark, quality, n_agents, method, seed, return,
exploitability}` plus `extra`, the sweep axes that are neither of those (e.g. `{"H": 8}`), which
belong to the setting too, so methods are only compared at equal values of every other axis.

Per setting and method: the mean return and mean exploitability, each with a 95% percentile
bootstrap interval over seeds; the interquartile mean (IQM) of the return; and, for every other
method, the probability of improvement of `mf_diffuser` over it, P(X > Y) + ½·P(X = Y) over
pairs of seeds, with an interval from resampling both methods' seeds independently (the
definitions of rliable, Agarwal et al. 2021, computed with scipy). The summary counts, for each
trained method, the settings where its mean return is highest and those where its return
interval lies wholly above every other trained method's. `fp` and `omd` are solvers that know
the exact model: references, shown but neither winners nor competitors in those counts.

A team game's records also hold `team`, figures against fixed opponents (win rate and kill
ratio vs expert and random, `{"win_rate/vs_expert": …}`): each row gets their means with 95%
intervals over seeds (`team`), and the setting lists them (`team_figures`); the wins still
count the return.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import stats

PLANNER = "mf_diffuser"
REFERENCES = frozenset({"fp", "omd"})
CONFIDENCE = 0.95
SETTING = ("benchmark", "quality", "n_agents")


class SingleSeedWarning(UserWarning):
    """An interval over seeds was asked of one seed: it is left out, never zero-width."""


def _resample(values: tuple[np.ndarray, ...], statistic: Any, seed: int) -> tuple[float, float]:
    # percentile: rliable's default; BCa is undefined on tied data, common with few seeds.
    res = stats.bootstrap(
        values,
        statistic,
        confidence_level=CONFIDENCE,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_interval(values: Iterable[float], what: str = "mean", seed: int = 0) -> dict[str, Any]:
    """`{"mean", "low", "high"}`: the mean and its 95% bootstrap interval over the values
    (None with a SingleSeedWarning for a single value)."""
    x = np.asarray(list(values), dtype=np.float64)
    out: dict[str, Any] = {"mean": float(x.mean()), "low": None, "high": None}
    if len(x) < 2:
        warnings.warn(f"{what}: one seed, no interval", SingleSeedWarning, stacklevel=2)
        return out
    out["low"], out["high"] = _resample((x,), np.mean, seed)
    return out


def format_interval(cell: dict[str, Any] | None, key: str = "mean", missing: str = "-") -> str:
    """A table cell as text: `value [low, high]`, `value [one seed]`, or `missing`."""
    if cell is None:
        return missing
    if cell["low"] is None:
        return f"{cell[key]:.4f} [one seed]"
    return f"{cell[key]:.4f} [{cell['low']:.4f}, {cell['high']:.4f}]"


def _poi(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + ½·P(X = Y) over all pairs (the Mann-Whitney U over m·n); vectorised over the
    leading axes for the bootstrap."""
    x, y = np.moveaxis(x, axis, -1)[..., :, None], np.moveaxis(y, axis, -1)[..., None, :]
    return ((x > y) + 0.5 * (x == y)).mean(axis=(-2, -1))


def probability_of_improvement(
    x: Iterable[float], y: Iterable[float], what: str = "P(X > Y)", seed: int = 0
) -> dict[str, Any]:
    """`{"value", "low", "high"}`: the probability that a seed of X beats a seed of Y, with
    its 95% interval (None with a SingleSeedWarning when either has one seed)."""
    xa, ya = np.asarray(list(x), dtype=np.float64), np.asarray(list(y), dtype=np.float64)
    out: dict[str, Any] = {"value": float(_poi(xa, ya)), "low": None, "high": None}
    if min(len(xa), len(ya)) < 2:
        warnings.warn(f"{what}: one seed, no interval", SingleSeedWarning, stacklevel=2)
        return out
    out["low"], out["high"] = _resample((xa, ya), _poi, seed)
    return out


def _setting_key(item: dict[str, Any]) -> tuple[Any, ...]:
    extra = tuple(sorted((k, repr(v)) for k, v in (item.get("extra") or {}).items()))
    return (*(item[k] for k in SETTING), extra)


def _label(key: tuple[Any, ...]) -> str:
    benchmark, quality, n, extra = key
    return ", ".join([f"{benchmark}", f"{quality}", f"N={n}", *(f"{k}={v}" for k, v in extra)])


def _method_row(method: str, recs: list[dict[str, Any]], where: str) -> dict[str, Any]:
    recs = sorted(recs, key=lambda r: r["seed"])
    seeds = [r["seed"] for r in recs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(
            f"{where}: method {method} has seed {seeds} more than once; the table needs one "
            "trial per (setting, method, seed)"
        )
    row: dict[str, Any] = {
        "method": method,
        "reference": method in REFERENCES,
        "seeds": seeds,
        "return": None,
        "iqm_return": None,
        "exploitability": None,
        "team": {},
        "p_improvement": None,
        "skipped": [],
    }
    if recs:
        returns = [r["return"] for r in recs]
        row["return"] = mean_interval(returns, f"{where}, {method}: return")
        # rliable's IQM: the mean of the middle 50% (with under 4 seeds nothing is trimmed).
        row["iqm_return"] = float(stats.trim_mean(returns, 0.25))
        expl = [r["exploitability"] for r in recs if r.get("exploitability") is not None]
        if expl:
            row["exploitability"] = mean_interval(expl, f"{where}, {method}: exploitability")
        # a figure every seed has (an evaluation may have left an opponent out)
        shared = set.intersection(*(set(r.get("team") or {}) for r in recs))
        row["team"] = {
            k: mean_interval([r["team"][k] for r in recs], f"{where}, {method}: {k}")
            for k in sorted(shared)
        }
    return row


def _above(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["low"] is not None and b["high"] is not None and a["low"] > b["high"]


def comparison_table(
    records: Iterable[dict[str, Any]], skipped: Iterable[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The table: `settings` (each with its `methods` rows and the trained methods with the
    highest mean and the one whose interval is wholly above the others), `wins` per trained
    method and `settings_compared` (settings with at least two trained methods with a return).

    `skipped`: cells the sweep did not run (`{..setting.., method, seed, reason}`); their
    method's row lists them and has no figures when no seed of it ran."""
    groups: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    skips: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    extras: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        key = _setting_key(r)
        groups.setdefault(key, {}).setdefault(r["method"], []).append(r)
        extras.setdefault(key, dict(r.get("extra") or {}))
    for s in skipped:
        key = _setting_key(s)
        groups.setdefault(key, {}).setdefault(s["method"], [])
        skips.setdefault(key, {}).setdefault(s["method"], []).append(s)
        extras.setdefault(key, dict(s.get("extra") or {}))
    trained_methods = sorted({m for g in groups.values() for m in g} - REFERENCES)
    wins = {m: {"highest_mean": 0, "interval_above": 0} for m in trained_methods}
    settings, compared = [], 0
    for key in sorted(groups):
        where = _label(key)
        order = sorted(groups[key], key=lambda m: (m != PLANNER, m in REFERENCES, m))
        rows = [_method_row(m, groups[key][m], where) for m in order]
        for row in rows:
            row["skipped"] = [
                {"seed": s.get("seed"), "reason": s.get("reason")}
                for s in skips.get(key, {}).get(row["method"], [])
            ]
        planner = groups[key].get(PLANNER, [])
        for row in rows:
            other = groups[key][row["method"]]
            if planner and other and row["method"] != PLANNER:
                row["p_improvement"] = probability_of_improvement(
                    [r["return"] for r in planner],
                    [r["return"] for r in other],
                    f"{where}: P({PLANNER} > {row['method']})",
                )
        trained = [r for r in rows if not r["reference"] and r["return"] is not None]
        best: list[str] = []
        above: str | None = None
        if len(trained) >= 2:
            compared += 1
            top = max(r["return"]["mean"] for r in trained)
            best = [r["method"] for r in trained if r["return"]["mean"] == top]
            for r in trained:
                if all(_above(r["return"], o["return"]) for o in trained if o is not r):
                    above = r["method"]
            for m in best:
                wins[m]["highest_mean"] += 1
            if above is not None:
                wins[above]["interval_above"] += 1
        benchmark, quality, n, _ = key
        settings.append(
            {
                "benchmark": benchmark,
                "quality": quality,
                "n_agents": n,
                "extra": extras[key],
                "label": where,
                "methods": rows,
                "team_figures": sorted({k for r in rows for k in r["team"]}),
                "highest_mean": best,
                "interval_above": above,
            }
        )
    return {"settings": settings, "wins": wins, "settings_compared": compared}

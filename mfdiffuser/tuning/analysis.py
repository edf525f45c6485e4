"""Reading a sweep back from MLflow and fitting its scaling laws (issue 5's evidence).

`sweep_frame` turns the child runs of a sweep's parent run into one row per trial (axes as
columns, metrics as columns); `loglog_slope` fits log y = a + b·log N with a percentile bootstrap
interval that resamples trials within each N (seeds are the replicates).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd


def sweep_frame(uri: str, parent_run_id: str) -> pd.DataFrame:
    """One row per trial run of the sweep: status, axes (`axis.*`) and every metric."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=10_000,
    )
    rows: list[dict[str, Any]] = []
    for r in runs:
        row: dict[str, Any] = {"run_id": r.info.run_id, "status": r.info.status}
        for k, v in r.data.tags.items():
            if k.startswith("mfd.axis."):
                row["axis." + k.removeprefix("mfd.axis.")] = json.loads(v)
        row.update(r.data.metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def linear_slope(
    x: np.ndarray, y: np.ndarray, *, boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(slope, low, high): OLS slope of y on x, 95% percentile bootstrap interval.

    The bootstrap resamples the replicates at each x (so every x stays in every resample).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    levels = np.unique(x)
    if len(levels) < 2:
        raise ValueError("slope: need at least two distinct N")
    slope = float(np.polyfit(x, y, 1)[0])
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(x == v) for v in levels]
    draws = np.empty(boot)
    for i in range(boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        draws[i] = np.polyfit(x[idx], y[idx], 1)[0]
    low, high = np.percentile(draws, [2.5, 97.5])
    return slope, float(low), float(high)


def loglog_slope(
    n: np.ndarray, y: np.ndarray, *, boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """`linear_slope` of log y on log n; y must be positive (fit |y| for a signed quantity)."""
    y = np.asarray(y, dtype=np.float64)
    if np.any(y <= 0):
        raise ValueError("loglog_slope: y must be positive (fit |y| for a signed quantity)")
    return linear_slope(np.log(np.asarray(n, dtype=np.float64)), np.log(y), boot=boot, seed=seed)


def mean_slope(
    n: np.ndarray, y: np.ndarray, *, boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Slope of log |mean_seeds(y)| on log n (for a signed quantity's bias), bootstrap interval
    over the replicates at each n. Resamples whose mean is 0 at some n are dropped."""
    n = np.asarray(n, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    levels = np.unique(n)
    groups = [np.flatnonzero(n == v) for v in levels]

    def fit(idx_per_level: list[np.ndarray]) -> float:
        means = np.array([abs(y[idx].mean()) for idx in idx_per_level])
        if np.any(means == 0):
            return float("nan")
        return float(np.polyfit(np.log(levels), np.log(means), 1)[0])

    slope = fit(groups)
    rng = np.random.default_rng(seed)
    draws = np.array(
        [fit([rng.choice(g, size=len(g), replace=True) for g in groups]) for _ in range(boot)]
    )
    draws = draws[np.isfinite(draws)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return slope, float(low), float(high)

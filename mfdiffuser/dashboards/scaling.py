"""Scaling laws of a sweep: slopes against N with 95% bootstrap intervals (no Ray, no MLflow).

A fit is ordinary least squares of y on x; its interval is a percentile bootstrap that resamples
the replicates (seeds) within each x, so every x stays in every resample. Because the x values
of a resample are then those of the data, the OLS slope of every resample is one matrix product
(closed form), not a fit per resample. With one replicate per x there is nothing to resample:
the interval is left out (None) with a SingleSeedWarning, never a zero-width interval.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from mfdiffuser.evaluation.comparison import CONFIDENCE, SingleSeedWarning

BOOT = 2000


class Slope(NamedTuple):
    slope: float
    low: float | None
    high: float | None


def _groups(x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    levels = np.unique(x)
    if len(levels) < 2:
        raise ValueError("slope: need at least two distinct N")
    return levels, [np.flatnonzero(x == v) for v in levels]


def _resampled(groups: list[np.ndarray], boot: int, seed: int) -> np.ndarray | None:
    """(boot, n) indices, each row drawn with replacement within every group; None when no
    group has two replicates (one seed)."""
    if max(len(g) for g in groups) < 2:
        return None
    rng = np.random.default_rng(seed)
    return np.concatenate([g[rng.integers(0, len(g), size=(boot, len(g)))] for g in groups], 1)


def _interval(draws: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(draws[np.isfinite(draws)], [tail, 100 - tail])
    return float(low), float(high)


def _one_seed(what: str) -> None:
    warnings.warn(f"{what}: one seed per N, no interval", SingleSeedWarning, stacklevel=3)


def linear_slope(
    x: np.ndarray, y: np.ndarray, *, boot: int = BOOT, seed: int = 0, what: str = "slope"
) -> Slope:
    """The OLS slope of y on x with its bootstrap interval over the replicates at each x."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    _, groups = _groups(x)
    order = np.concatenate(groups)  # a resample's rows follow this order, so x[order] is theirs
    dx = x[order] - x.mean()
    weights = dx / (dx @ dx)  # the OLS slope of any y at these x is weights · y
    slope = float(weights @ y[order])
    idx = _resampled(groups, boot, seed)
    if idx is None:
        _one_seed(what)
        return Slope(slope, None, None)
    return Slope(slope, *_interval(y[idx] @ weights))


def loglog_slope(
    n: np.ndarray, y: np.ndarray, *, boot: int = BOOT, seed: int = 0, what: str = "slope"
) -> Slope:
    """`linear_slope` of log y on log n; y must be positive (fit |y| for a signed quantity)."""
    y = np.asarray(y, dtype=np.float64)
    if np.any(y <= 0):
        raise ValueError(f"{what}: y must be positive (fit |y| for a signed quantity)")
    return linear_slope(
        np.log(np.asarray(n, dtype=np.float64)), np.log(y), boot=boot, seed=seed, what=what
    )


def mean_slope(
    n: np.ndarray, y: np.ndarray, *, boot: int = BOOT, seed: int = 0, what: str = "slope"
) -> Slope:
    """Slope of log |mean over seeds of y| on log n (the bias of a signed quantity), bootstrap
    interval over the replicates at each n (resamples with a zero mean at some n are dropped)."""
    n = np.asarray(n, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    levels, groups = _groups(n)
    lx = np.log(levels)
    dx = lx - lx.mean()
    weights = dx / (dx @ dx)

    def fit(means: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(np.abs(means)) @ weights

    slope = float(fit(np.array([y[g].mean() for g in groups])))
    if max(len(g) for g in groups) < 2:
        _one_seed(what)
        return Slope(slope, None, None)
    rng = np.random.default_rng(seed)
    means = np.stack(
        [y[g[rng.integers(0, len(g), size=(boot, len(g)))]].mean(axis=1) for g in groups], axis=1
    )
    return Slope(slope, *_interval(fit(means)))

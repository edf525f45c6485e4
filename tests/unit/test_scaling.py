"""Scaling-law fits of `mfd report` (no Ray, no MLflow)."""

from __future__ import annotations

import numpy as np
import pytest

from mfdiffuser.dashboards.scaling import loglog_slope, mean_slope
from mfdiffuser.evaluation.comparison import SingleSeedWarning


def test_loglog_slope_recovers_a_known_power_law_with_an_interval() -> None:
    rng = np.random.default_rng(0)
    n = np.repeat([100.0, 1000.0, 10000.0], 10)
    y = 3.0 * n**-0.5 * np.exp(rng.normal(scale=0.1, size=n.size))
    slope, low, high = loglog_slope(n, y)
    assert low < -0.5 < high and abs(slope + 0.5) < 0.05 and high - low < 0.2
    exact, lo2, hi2 = loglog_slope(n, 3.0 * n**-1.0)
    assert exact == pytest.approx(-1.0) and lo2 == pytest.approx(-1.0) == hi2


def test_mean_slope_fits_the_bias_of_a_signed_quantity() -> None:
    rng = np.random.default_rng(1)
    n = np.repeat([100.0, 1000.0, 10000.0], 50)
    y = 5.0 / n + rng.normal(scale=0.02, size=n.size) / np.sqrt(n)  # bias 1/N, noise 1/sqrt(N)
    slope, low, high = mean_slope(n, y)
    assert low < -1.0 < high and abs(slope + 1.0) < 0.2


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="positive"):
        loglog_slope(np.array([1.0, 10.0]), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="two distinct N"):
        loglog_slope(np.array([10.0, 10.0]), np.array([1.0, 2.0]))


def test_one_seed_per_n_warns_and_gives_no_interval() -> None:
    n = np.array([100.0, 1000.0, 10000.0])
    with pytest.warns(SingleSeedWarning, match="one seed per N"):
        slope, low, high = loglog_slope(n, 3.0 * n**-0.5)
    assert slope == pytest.approx(-0.5) and low is None and high is None
    with pytest.warns(SingleSeedWarning):
        assert mean_slope(n, 1.0 / n).low is None

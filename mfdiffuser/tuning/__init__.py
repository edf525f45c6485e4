"""Ray Tune sweeps over N, H, data quality, method, β, M and seeds (`mfd sweep`)."""

"""Baselines of METHOD.md §7, each one readable file (CleanRL style). Core: no Ray, no MLflow."""

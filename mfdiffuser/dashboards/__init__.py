"""The platform's UI pieces: `mfd ui` (the MLflow UI on this platform's store)."""

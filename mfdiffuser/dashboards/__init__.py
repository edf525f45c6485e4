"""The platform's UI pieces: `mfd ui` (the MLflow UI on this platform's store) and `mfd report`
(figures and a static HTML report of a sweep)."""

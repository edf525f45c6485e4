"""Two commands starting at once against a new SQLite MLflow store (no Ray).

Each process does what every `mfd` command does first, `tracking.start_run`; without the lock
around the store's creation one of them crashed with `duplicate column name: step`.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _start(uri: str, barrier: object, results: object) -> None:
    from mfdiffuser.platform import tracking
    from mfdiffuser.platform.config import load_config

    barrier.wait()  # type: ignore[attr-defined]
    try:
        run_id = tracking.start_run(load_config(), uri, run_name="race")
        results.put(("ok", run_id))  # type: ignore[attr-defined]
    except Exception as err:
        results.put(("error", f"{type(err).__name__}: {err}"))  # type: ignore[attr-defined]


@pytest.mark.timeout(240)
def test_two_commands_create_one_new_store_at_once(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    # Without the lock, one try at this reproduced the crash (a failed schema migration).
    ctx = mp.get_context("spawn")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_start, args=(uri, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [kind for kind, _ in outcomes] == ["ok", "ok"], outcomes
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("crowd_1d")
    runs = MlflowClient(tracking_uri=uri).search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run for _, run in outcomes)

"""`mfd train` / `mfd run` with a Train worker group the cluster can never place: exit 2 right
after Ray starts, instead of Ray Train waiting for resources forever."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mfdiffuser.cli import app

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("command", "settings", "needle"),
    [
        (
            "train",
            ["train.cpus_per_worker=2"],
            "train.num_workers (2) x train.cpus_per_worker (2) = 4 CPUs, but the cluster has 2",
        ),
        ("run", ["train.use_gpu=true"], "train.use_gpu = True: 2 workers need a GPU each"),
    ],
)
def test_a_train_group_that_can_never_start_exits_2(
    ray_local: None, tmp_path: Path, command: str, settings: list[str], needle: str
) -> None:
    store = tmp_path / "store"
    args = [command, "--storage", str(store), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    r = CliRunner().invoke(app, [*args, *(a for s in settings for a in ("-s", s))])
    assert r.exit_code == 2, (r.exit_code, r.output)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]  # MLflow logs too
    assert len(errors) == 1 and needle in errors[0], r.stderr
    assert "Traceback" not in r.output
    assert not store.exists()  # failed before generating any data

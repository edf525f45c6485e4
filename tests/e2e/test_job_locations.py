"""Inside a Ray job, `mfd` refuses the locations Ray's temporary working directory would lose.

No cluster needed: the job is recognised by the variable Ray's job supervisor sets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.platform.jobs import JOB_ENV_VAR

PRESETS = Path(__file__).resolve().parents[2] / "mfdiffuser" / "presets"
RUN, SWEEP = str(PRESETS / "quickstart.yaml"), str(PRESETS / "sweep_quickstart.yaml")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["run", "-c", RUN, "--tracking-uri", "sqlite:////s/m.db"],
            "error: runtime.storage = mfd-work: inside a Ray job a relative path",
        ),
        (
            ["run", "-c", RUN, "--storage", "/shared/mfd"],
            "error: runtime.tracking_uri = None: inside a Ray job the default ./mlflow.db",
        ),
        (
            ["sweep", "-c", SWEEP, "--storage", "/s", "--tracking-uri", "sqlite:///mlflow.db"],
            "error: runtime.tracking_uri = sqlite:///mlflow.db: inside a Ray job a relative store",
        ),
        (
            ["generate", "crowd_1d", "--storage", "work"],
            "error: runtime.storage = work: inside a Ray job a relative path",
        ),
    ],
)
def test_relative_locations_refused_in_a_ray_job(
    args: list[str], line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(JOB_ENV_VAR, '{"runtime_env": {}, "metadata": {}}')
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert "pass --" in lines[0]  # names the fix
    assert list(tmp_path.iterdir()) == []  # nothing written: no store, no work directory


def test_relative_locations_allowed_outside_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    from mfdiffuser.platform import jobs

    monkeypatch.delenv(JOB_ENV_VAR, raising=False)
    jobs.check_storage("mfd-work")
    jobs.check_tracking_uri(None)
    jobs.check_tracking_uri("sqlite:///mlflow.db")

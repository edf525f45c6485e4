"""Progress of long steps: plain `progress:` lines on stderr when it is not a terminal (as under
CliRunner), none with `--quiet`, and `--json` stdout still exactly one object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mfdiffuser.cli import app

pytestmark = pytest.mark.integration

DATA = ["-s", "data.n_agents=20", "-s", "data.episodes=4", "-s", "data.shards=2"]


def test_generate_prints_progress_lines_and_json_stays_one_object(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MFD_PROGRESS_SECONDS", "0")  # a line per shard
    monkeypatch.setenv("MFD_QUIET", "0")  # restored when the test ends: --quiet sets it
    res = CliRunner().invoke(app, ["generate", "--storage", str(tmp_path / "a"), *DATA, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["episodes"] == 4  # the whole of stdout
    lines = [x for x in res.stderr.splitlines() if x.startswith("progress: generate crowd_1d-")]
    assert [x.rsplit(": ", 1)[1] for x in lines] == ["1/2 shards", "2/2 shards"], res.stderr
    quiet = CliRunner().invoke(
        app, ["--quiet", "generate", "--storage", str(tmp_path / "b"), *DATA, "--json"]
    )
    assert quiet.exit_code == 0, quiet.output
    assert "progress:" not in quiet.stderr
    assert json.loads(quiet.stdout)["episodes"] == 4

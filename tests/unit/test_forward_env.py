"""`runtime.forward_env` through the CLI: a name that is not set where `mfd` runs, or that is not
a variable name, exits 2 before any Ray work, naming the field and the name; a set one is taken
with its value. (That the values reach every worker of a cluster:
tests/integration/test_cluster.py.)"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.platform.config import ConfigError
from mfdiffuser.platform.jobs import forwarded_env

UNSET = "MFD_TEST_FORWARD_NEVER_SET"


def _generate(tmp_path, *settings: str):  # type: ignore[no-untyped-def]
    args = ["generate", "--storage", str(tmp_path / "s"), "-s", "data.episodes=1"]
    for s in settings:
        args += ["-s", s]
    return CliRunner().invoke(app, args)


def test_a_name_not_set_here_exits_2_before_ray(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(UNSET, raising=False)
    res = _generate(tmp_path, f"runtime.forward_env=[HOME, {UNSET}]")
    assert res.exit_code == 2, res.output
    assert f"runtime.forward_env: {UNSET} not set in this environment" in res.output
    assert not (tmp_path / "s").exists()  # nothing generated


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("[1BAD]", "'1BAD' is not an environment variable name"),
        ("[HOME, HOME]", "HOME listed twice"),
    ],
)
def test_a_bad_name_exits_2_naming_it(tmp_path, value: str, says: str) -> None:  # type: ignore[no-untyped-def]
    res = _generate(tmp_path, f"runtime.forward_env={value}")
    assert res.exit_code == 2, res.output
    assert "runtime.forward_env" in res.output and says in res.output, res.output


def test_the_values_are_those_of_this_process(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MFD_TEST_FORWARD_A", "a=1 b")
    assert forwarded_env(["MFD_TEST_FORWARD_A"]) == {"MFD_TEST_FORWARD_A": "a=1 b"}
    with pytest.raises(ConfigError, match=UNSET):
        forwarded_env([UNSET])

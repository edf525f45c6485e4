"""The plugin registries (`mfdiffuser.plugins.Registry`): entry points read from installed
distributions (written here as real `.dist-info` directories on a temporary sys.path entry), the
origin of each entry, and a clear error for each way a plugin can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfdiffuser.envs.registry import BENCHMARKS, BenchmarkSpec
from mfdiffuser.methods.base import MethodSpec
from mfdiffuser.methods.registry import METHODS, get_method
from mfdiffuser.plugins import PLUGIN_PATH_ENV, PluginError, Registry, plugin_dirs, plugin_env


def _distribution(root: Path, name: str, group: str, points: dict[str, str], code: str) -> None:
    """An installed distribution `name` 1.0 with a module `<name>_mod` and entry points."""
    module = f"{name}_mod"
    (root / f"{module}.py").write_text(code)
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {module}:{v}" for k, v in points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")


METHOD_CODE = """
from mfdiffuser.methods.base import MethodSpec
SPEC = MethodSpec("bc_again", 1, "trained", "behaviour cloning, from a plugin",
                  "mfdiffuser.baselines.bc")
def several():
    return [MethodSpec("bc_two", 1, "trained", "two", "mfdiffuser.baselines.bc"),
            MethodSpec("bc_three", 1, "trained", "three", "mfdiffuser.baselines.bc")]
CLASH = MethodSpec("bc", 1, "trained", "a second bc", "mfdiffuser.baselines.bc")
NOT_A_SPEC = {"name": "x"}
def broken():
    raise RuntimeError("the plugin's own bug")
"""


def _registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, points: dict[str, str]) -> Registry:
    group = f"mfdiffuser.test_{tmp_path.name}"  # a group of this test only
    _distribution(tmp_path, "mfd_test_plugin", group, points, METHOD_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    builtin = [get_method("bc"), get_method("fp")]
    return Registry("method", group, MethodSpec, builtin)


def test_entry_points_join_the_registry_with_their_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = _registry(tmp_path, monkeypatch, {"one": "SPEC", "many": "several"})
    assert list(reg) == ["bc", "fp", "bc_two", "bc_three", "bc_again"]  # built-in first
    assert reg.origin("bc") == "built-in"
    assert reg.origin("bc_again") == (
        "plugin mfd_test_plugin 1.0 (entry point one = mfd_test_plugin_mod:SPEC)"
    )
    assert reg.origin("bc_two") == reg.origin("bc_three")
    assert reg["bc_again"].params_model is get_method("bc").params_model  # a working spec
    assert set(reg.builtin()) == {"bc", "fp"}


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ("CLASH", "registers method 'bc', which the built-in method of that name already is"),
        ("NOT_A_SPEC", "gives a dict; allowed: a MethodSpec, a list of them, or a function"),
        ("broken", "failed to load: RuntimeError: the plugin's own bug"),
        ("MISSING", "failed to load: AttributeError"),
    ],
)
def test_a_wrong_plugin_is_named_with_what_is_wrong(
    point: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = _registry(tmp_path, monkeypatch, {"bad": point, "a_good_one": "SPEC"})
    with pytest.raises(PluginError) as err:
        list(reg)
    text = str(err.value)
    with pytest.raises(PluginError) as again:  # the same error again, nothing half-joined
        list(reg)
    assert str(again.value) == text
    assert f"plugin mfd_test_plugin 1.0 (entry point bad = mfd_test_plugin_mod:{point})" in text
    assert message in text


def test_the_plugin_path_is_checked_and_forwarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PLUGIN_PATH_ENV, raising=False)
    assert plugin_dirs() == [] and plugin_env() == {}
    monkeypatch.setenv(PLUGIN_PATH_ENV, f"{tmp_path}:{tmp_path / 'missing'}")
    with pytest.raises(PluginError, match=r"'.*missing' is not a directory; allowed: dir"):
        plugin_dirs()
    monkeypatch.setenv(PLUGIN_PATH_ENV, str(tmp_path))
    assert plugin_dirs() == [str(tmp_path)]
    assert plugin_env() == {PLUGIN_PATH_ENV: str(tmp_path)}


def test_the_platform_registries_read_the_two_groups() -> None:
    assert (BENCHMARKS.group, BENCHMARKS.kind) == ("mfdiffuser.benchmarks", "benchmark")
    assert (METHODS.group, METHODS.kind) == ("mfdiffuser.methods", "method")
    assert all(isinstance(s, BenchmarkSpec) for s in BENCHMARKS.values())
    assert BENCHMARKS.origin("crowd_1d") == METHODS.origin("mf_diffuser") == "built-in"


def test_an_entry_set_for_a_while_is_removed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    before = list(BENCHMARKS)
    with monkeypatch.context() as m:
        m.setitem(BENCHMARKS, "crowd_copy", BENCHMARKS["crowd_1d"])
        assert "crowd_copy" in BENCHMARKS and BENCHMARKS.origin("crowd_copy") == "set at run time"
    assert list(BENCHMARKS) == before

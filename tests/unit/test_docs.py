"""docs/ against the code: generated pages up to date, a section for every registered benchmark
and method, every documented `mfd` command and option real, the API example running, every
training figure in the metrics page, and no citation of a design file the repository lacks.
(The evaluation's metric keys are checked against a real evaluation in
tests/integration/test_ray_flow.py.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import typer.main
from test_methods import N_AGENTS, _build
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.windows import episodes_from_table
from mfdiffuser.envs.crowd_1d import Crowd1D, Crowd1DSim
from mfdiffuser.envs.registry import BENCHMARKS, get_benchmark
from mfdiffuser.methods.base import DataStats, ReferenceMethod, TrainedMethod
from mfdiffuser.methods.registry import METHODS
from mfdiffuser.methods.training import train_epochs
from mfdiffuser.platform.tracking import RLLIB_LEARNER_METRICS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GENERATED = {"cli.md", "parameters.md"}


def _pages(generated: bool = True) -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in sorted(DOCS.glob("*.md"))
        if generated or p.name not in GENERATED
    }


def test_generated_pages_are_up_to_date(gen_docs: ModuleType) -> None:
    for path, text in gen_docs.render().items():
        assert path.read_text() == text, (
            f"{path.relative_to(ROOT)} is out of date: run .venv/bin/python scripts/gen_docs.py"
        )


@pytest.mark.parametrize(
    "name", [*(f"benchmark {b}" for b in BENCHMARKS), *(f"method {m}" for m in METHODS)]
)
def test_every_registered_benchmark_and_method_has_a_section(name: str) -> None:
    """A `##`/`###` heading naming it in backticks, in any hand-written page of docs/ (a method
    may have a page of its own)."""
    kind, key = name.split()
    heading = re.compile(rf"^#{{2,3}} .*`{re.escape(key)}`", re.MULTILINE)
    found = [page for page, text in _pages(generated=False).items() if heading.search(text)]
    assert found, f"no section for the {kind} `{key}` in docs/*.md"


def _mfd_invocations() -> list[tuple[str, str, list[str]]]:
    """(page, command, options) of every `mfd …` in a code span or code block of docs/ (the
    README's are run by tests/e2e/test_readme_commands.py)."""
    out = []
    for page, text in _pages().items():
        blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
        lines = [ln.split(" #")[0] for b in blocks for ln in b.splitlines()] + spans
        for line in lines:
            for m in re.finditer(r"(?:^|[\s/])mfd ((?:--)?[a-z][\w-]*)(.*)", line):
                options = re.findall(r"(?<!\S)(--?[a-zA-Z][\w-]*)", m.group(2))
                out.append((page, m.group(1), options))
    return out


def test_every_documented_mfd_command_and_option_exists() -> None:
    group = typer.main.get_command(app)
    seen = _mfd_invocations()
    assert len({cmd for _, cmd, _ in seen}) >= len(group.commands)  # the scan finds them all
    runner = CliRunner()
    for cmd in sorted({c for _, c, _ in seen} - {"--version", "--help"}):
        assert cmd in group.commands, f"`mfd {cmd}` is documented but is no command"
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0, (cmd, result.output)
    for page, cmd, options in seen:
        if cmd.startswith("--"):
            continue
        params = group.commands[cmd].params
        known = {"--help"} | {o for p in params for o in (*p.opts, *p.secondary_opts)}
        unknown = [o for o in options if o not in known]
        assert not unknown, f"{page}: `mfd {cmd}` has no option {unknown}"


def test_the_api_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", (DOCS / "api.md").read_text(), re.M | re.S)
    assert blocks
    monkeypatch.chdir(ROOT)  # it reads configs/ as a user in the repository root does
    for code in blocks:
        exec(compile(code, "docs/api.md", "exec"), {})  # its own asserts check its values


def test_every_training_figure_of_every_method_is_in_the_metrics_page(
    gen_docs: ModuleType,
) -> None:
    """One step of the one training loop for every registered method (a reference method:
    its solve), in-process; every key it logs is in docs/metrics.md. An external method runs
    its library's loop under Ray (tests/integration/test_rllib.py); the names it logs are the
    tracking module's mapping of that library's figures."""
    game = Crowd1D(size=5, horizon=3)
    policy = get_benchmark("crowd_1d").behaviour(game, "medium").policies
    table, _ = generate_shard(lambda: Crowd1DSim(game, N_AGENTS), policy, range(2), seed=1)
    data = episodes_from_table(table, N_AGENTS)
    logged: list[dict[str, float]] = []  # one epoch of every trained method
    keys: set[str] = set(RLLIB_LEARNER_METRICS.values())
    for name, spec in METHODS.items():
        if spec.kind == "external":
            continue
        method = _build(name, game)
        if isinstance(method, ReferenceMethod):
            keys |= set(method.solve(game))
            continue
        assert isinstance(method, TrainedMethod)
        method.prepare(DataStats.of(data, game))
        train_epochs(
            method,
            method.batches(data, game, seed=0),
            epochs=1,
            steps_per_epoch=1,
            batch_size=2,
            lr=1e-3,
            on_epoch=lambda e, m, o: logged.append(m),
        )
    for figures in logged:
        assert all(np.isfinite(v) for v in figures.values()), figures
        keys |= set(figures)
    assert {"train/loss", "train/weight_max", "solve/exploitability"} <= keys
    assert gen_docs.undocumented_metrics(keys) == []


# A design document cited by name: an upper-case Markdown file name, or the shared folder beside
# the repository (spelt in two parts so that this file does not cite it itself).
DESIGN_CITATION = re.compile(r"\b[A-Z][A-Z0-9_]+\.md\b|" + re.escape("../" + "shared"))


def test_no_file_cites_a_design_file_the_repository_lacks() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    files = [f for f in listed if f and (ROOT / f).is_file()]
    names = {Path(f).name for f in files}
    bad = []
    for f in files:
        try:
            text = (ROOT / f).read_text()
        except UnicodeDecodeError:
            continue  # binary
        missing = {m for m in DESIGN_CITATION.findall(text) if m not in names}
        missing |= {d for d in re.findall(r"\bdocs/[\w.-]+\.md\b", text) if d not in files}
        if missing:
            bad.append(f"{f}: {', '.join(sorted(missing))}")
    assert not bad, "cites files the repository does not have:\n" + "\n".join(bad)

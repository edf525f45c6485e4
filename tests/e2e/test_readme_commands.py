"""The `mfd` commands README.md shows: every one parses as written, the quick ones run as written.

A command in the CLI table, in a fenced block (`mfd …`, `$ mfd …`) or in a job block is taken
from the README text itself, so a renamed option or command breaks this test, not a user. The
table's `[--flag]` parts and `a|b` alternatives are expanded; placeholders (CONFIG, DIR,
CHECKPOINT, URI, key=value) and `$VARIABLES` are only parsed. Commands that need no Ray run
verbatim, and a `$ mfd …` example followed by `error: …` must print exactly that line (unless
it elides with `…`). The long flows (quickstart, run, sweep, ray job) run in their own tests.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mfdiffuser.cli import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
CLI = typer.main.get_command(app)


def _table_commands() -> list[str]:
    out = []
    for cell in re.findall(r"^\| `(mfd [^`]*)` \|", README, flags=re.M):
        cell = cell.replace("\\|", "|").replace(" …", "")
        optional = re.findall(r" \[([^\]]+)\]", cell)
        base = re.sub(r" \[[^\]]+\]", "", cell)
        for keep in itertools.product([False, True], repeat=len(optional)):
            cmd = base + "".join(f" {o}" for o, k in zip(optional, keep, strict=True) if k)
            # `--algorithm a|b|c`: one command per alternative
            alts = re.search(r"(\S+)\|(\S+)", cmd)
            if alts:
                word = alts.group(0)
                out += [cmd.replace(word, w) for w in word.split("|")]
            else:
                out.append(cmd)
    return out


def _block_commands() -> list[str]:
    out = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", README, flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #", 1)[0].strip().removeprefix("$ ")
            if line.startswith("mfd "):
                out.append(line)
            elif line.startswith("ray job submit") and " -- " in line:
                out.append(line.split(" -- ", 1)[1].strip())
    return out


COMMANDS = sorted(set(_table_commands() + _block_commands()))
PLACEHOLDER = re.compile(r"\b(CONFIG|DIR|CHECKPOINT|URI|FILE)\b|key=value|\$|…")


def test_the_readme_shows_every_command() -> None:
    shown = {shlex.split(c)[1] for c in COMMANDS}
    assert shown == set(CLI.commands) | {"--version"}, shown  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses(command: str) -> None:
    args = shlex.split(command)[1:]
    if args == ["--version"]:
        return  # an eager option: it runs (below) rather than parses
    sub = CLI.commands[args[0]]  # type: ignore[attr-defined]
    # Parsing only: option names, counts and types as the CLI declares them; nothing runs.
    ctx = sub.make_context(args[0], args[1:], resilient_parsing=False)
    assert ctx.params, command  # every option and argument took its value


QUICK = [
    c
    for c in COMMANDS
    if not PLACEHOLDER.search(c)
    and c.split()[1] in ("benchmarks", "methods", "solve", "config", "--version")
]


@pytest.mark.parametrize("command", QUICK)
def test_quick_readme_commands_run_verbatim(command: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    assert result.exit_code == 0, (command, result.output[-2000:])
    assert result.stdout.strip()


EXAMPLES = [
    (cmd, expected)
    for cmd, expected in re.findall(r"^\$ (mfd [^\n]*)\n(error: [^\n]*)$", README, flags=re.M)
    if "…" not in cmd + expected
]


def test_the_readme_has_error_examples() -> None:
    assert EXAMPLES  # the README's bad-input example below must stay checkable


@pytest.mark.parametrize(("command", "expected"), EXAMPLES)
def test_readme_error_examples_print_what_the_readme_says(command: str, expected: str) -> None:
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    assert result.exit_code == 2
    assert result.stderr.strip() == expected

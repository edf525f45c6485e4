"""Fuzz every leaf setting through `mfd config` (in-process, no Ray): each value either gives exit 2
with one short line naming the field, or exit 0 where the value is legitimate for that field.

The expectation table below is written by hand, per field kind, so that a field whose bound or
type check is missing (or too loose) fails the test; a new field must be added to it.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.methods.registry import get_method
from mfdiffuser.platform.config import ExperimentConfig

MAX_MESSAGE = 400  # characters of the one error line

# Every leaf of the config tree (benchmark params: those of the default benchmark, crowd_1d).
FIELDS = {
    "name",
    "benchmark.name",
    "benchmark.params.size",
    "benchmark.params.horizon",
    "benchmark.params.crowd_aversion",
    *(f"data.{f}" for f in ("quality", "n_agents", "episodes", "shards", "seed", "path")),
    *(
        f"train.{f}"
        for f in (
            "epochs",
            "steps_per_epoch",
            "batch_size",
            "lr",
            "lr_schedule",
            "lr_min",
            "num_workers",
            "cpus_per_worker",
            "use_gpu",
            "seed",
            "max_failures",
            "data_path",
            "buffer_episodes",
            "resources_per_worker",
        )
    ),
    *(
        f"eval.{f}"
        for f in (
            "n_agents",
            "episodes",
            "seeds",
            "seed",
            "decomposition",
            "plan_windows",
            "held_out_episodes",
            "actor_cpus",
            "max_actors",
        )
    ),
    "method.name",
    *(
        f"runtime.{f}"
        for f in ("address", "num_cpus", "storage", "tracking_uri", "experiment", "forward_env")
    ),
    *(
        f"method.params.{f}"
        for f in (
            "window",
            "n_particles",
            "max_particles",
            "diffusion_steps",
            "hidden",
            "n_blocks",
            "kernel_size",
            "interaction",
            "clip_denoised",
            "stages",
            "growth",
            "stage_steps",
            "branch",
            "beta",
            "weight_clip",
            "advantage_shrinkage",
            "first_action_weight",
            "smoothing",
            "draws",
            "acting",
            "replan_every",
            "return_guidance",
            "cfg_dropout",
            "guidance",
            "guidance_quantile",
            "action_head",
            "inverse_hidden",
            "sampler",
            "sampling_steps",
            "ddim_eta",
            "ema_decay",
            "readout",
        )
    ),
}

BOOL = {
    "train.use_gpu",
    "eval.decomposition",
    "method.params.interaction",
    "method.params.clip_denoised",
    "method.params.return_guidance",
}
NULLABLE = {
    "data.path",
    "train.use_gpu",
    "eval.max_actors",
    "runtime.address",
    "runtime.num_cpus",
    "runtime.tracking_uri",
    "runtime.experiment",
    "method.params.stage_steps",
    "method.params.sampling_steps",
}
ZERO_OK = {  # seeds, counts that may be 0, and floats whose 0 means "off"
    "data.seed",
    "train.seed",
    "eval.seed",
    "train.max_failures",
    "eval.plan_windows",
    "benchmark.params.crowd_aversion",
    "method.params.beta",
    "method.params.advantage_shrinkage",
    "method.params.first_action_weight",
    "method.params.smoothing",
    "method.params.cfg_dropout",
    "method.params.guidance",
    "method.params.guidance_quantile",
    "method.params.ddim_eta",
    "method.params.ema_decay",
    "train.lr_min",
}
FLOAT_1_5_OK = {  # float fields whose range includes 1.5 (probabilities and η stop at 1)
    "benchmark.params.crowd_aversion",
    "train.lr",
    "train.cpus_per_worker",
    "eval.actor_cpus",
    "method.params.beta",
    "method.params.weight_clip",
    "method.params.advantage_shrinkage",
    "method.params.first_action_weight",
    "method.params.smoothing",
    "method.params.guidance",
}
NAMES = {"name", "runtime.experiment"}  # names that become paths: letters, digits, . _ -
FREE_TEXT = {"runtime.address", "runtime.storage", "runtime.tracking_uri"}  # printable text


NESTED = "[" * 40 + "1" + "]" * 40  # deeper than the nesting limit
# value (YAML text of `-s field=value`) -> the fields for which it is legitimate
LEGIT: dict[str, set[str]] = {
    "x": NAMES | FREE_TEXT,
    "'5'": NAMES | FREE_TEXT,  # the string "5", not the int 5
    "ñ中文": FREE_TEXT,
    "../../escaped": FREE_TEXT,  # fine as a path, never as a name
    "a" * 10_000: set(),
    "": set(),
    ".nan": set(),
    ".inf": set(),
    "-.inf": set(),
    "0": ZERO_OK,
    "-1": set(),
    "1000000000000": set(),
    "1e12": set(),
    "1.5": FLOAT_1_5_OK,
    "true": BOOL,
    "null": NULLABLE,
    "[1, 2]": {"eval.n_agents"},
    "{a: 1}": {"train.resources_per_worker"},  # a custom Ray resource
    NESTED: set(),
}


def leaf_fields(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> set[str]:
    """Dotted names of every leaf field, from the pydantic models themselves."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        if name == "params":
            owner = prefix.rstrip(".")
            spec = get_benchmark("crowd_1d") if owner == "benchmark" else get_method("mf_diffuser")
            out |= {f"{prefix}params.{p}" for p in spec.params_model.model_fields}
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out |= leaf_fields(info.annotation, f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def test_the_table_covers_every_leaf_field() -> None:
    assert leaf_fields() == FIELDS


def settings(field: str, value: str, where: Path) -> list[str]:
    """The `mfd config` arguments for one case: `-s field=value`, or for the top-level `name`
    (a bare `-s name=` is ambiguous with benchmark.name) a YAML file in `where`."""
    if "." in field:
        return ["-s", f"{field}={value}"]
    path = where / "case.yaml"
    path.write_text(f"{field}: {value}\n", encoding="utf-8")
    return ["-c", str(path)]


def outcome(invoke: Any, field: str, value: str) -> tuple[bool, str]:
    """(accepted, why-not-as-expected or '') for one case through `invoke(field, value)`."""
    code, text = invoke(field, value)
    lines = text.strip().splitlines()
    if code == 0:
        return True, ""
    if code != 2 or len(lines) != 1 or "Traceback" in text:
        return False, f"exit {code}, {len(lines)} lines: {text[:300]!r}"
    line = lines[0]
    named = field in line or "case.yaml" in line  # a YAML-level refusal names the file
    if not line.startswith("error: ") or not named or len(line) > MAX_MESSAGE:
        return False, f"unclear ({len(line)} chars): {line[:300]!r}"
    return False, ""


def test_every_field_times_every_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, files = tmp_path / "cwd", tmp_path / "files"
    cwd.mkdir()
    files.mkdir()
    monkeypatch.chdir(cwd)
    runner = CliRunner()
    # What CliRunner.invoke does, on the command built once: typer rebuilds the click command
    # from the app on every invoke, 30 of the 36 ms a case takes.
    command = typer.main.get_command(app)

    def invoke(field: str, value: str) -> tuple[int, str]:
        with runner.isolation() as (out, err, _):
            try:
                command.main(["config", *settings(field, value, files), "--json"], "mfd")
                code = 0
            except SystemExit as exit_:
                code = int(exit_.code or 0)
            except Exception:
                return 1, "Traceback\n" + traceback.format_exc()
            return code, (err if code else out).getvalue().decode()

    wrong = []
    for field in sorted(FIELDS):
        for value in LEGIT:
            accepted, why = outcome(invoke, field, value)
            if accepted != (field in LEGIT[value]) or why:
                wrong.append(f"{field}={value[:20]!r}: accepted={accepted} {why}")
    assert os.listdir(cwd) == []  # validating writes nothing
    assert not wrong, f"{len(wrong)} of {len(FIELDS) * len(LEGIT)} cases:\n" + "\n".join(wrong)

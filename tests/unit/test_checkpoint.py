"""Planner checkpoints: exact round trip, weights-only loading, clear errors on foreign files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mfdiffuser.methods.checkpoint import META, WEIGHTS, load_checkpoint, save_checkpoint
from mfdiffuser.methods.mf_diffuser import MFDiffuserMethod
from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser


def _planner() -> MFDiffuserMethod:
    torch.manual_seed(0)
    return MFDiffuserMethod.of(MFDiffuser.from_spec(PlannerConfig(hidden=16, n_blocks=1), 5, 3, 8))


def test_round_trip_is_exact_and_atomic(tmp_path: Path) -> None:
    method = _planner()
    planner = method.planner
    prior = np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 5))
    opt = torch.optim.Adam(planner.model.parameters())
    save_checkpoint(tmp_path, method, prior, {"epoch": 2, "run_id": "r"}, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == [META, WEIGHTS]  # no temp files left

    loaded_method, prior2, meta, opt_state = load_checkpoint(tmp_path)
    loaded = loaded_method.planner
    np.testing.assert_array_equal(prior2, prior)
    assert meta["epoch"] == 2 and meta["method"]["name"] == "mf_diffuser"
    assert loaded.dims() == planner.dims()
    assert loaded.cfg == planner.cfg and opt_state is not None
    x, k, ctx = torch.randn(2, 4, 4, 8), torch.tensor([0, 5]), torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, k, ctx), planner.model(x, k, ctx))


def test_foreign_schema_and_non_checkpoints_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, _planner(), np.full((4, 5, 3), 1 / 3), {})
    meta = json.loads((tmp_path / META).read_text())
    meta["checkpoint_schema"] = 99
    (tmp_path / META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="checkpoint_schema 99"):
        load_checkpoint(tmp_path)


class _RunsCode:
    """Unpickling this runs code: it creates the file named by `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.path),))  # type: ignore[return-value]


def test_weights_file_refuses_arbitrary_objects_with_one_clear_line(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, _planner(), np.full((4, 5, 3), 1 / 3), {})
    ran = tmp_path / "code-ran"
    torch.save({"model": {}, "prior": torch.zeros(1), "evil": _RunsCode(ran)}, ckpt / WEIGHTS)
    with pytest.raises(ValueError, match="holds objects other than tensors: refused") as err:
        load_checkpoint(ckpt)
    assert not ran.exists()  # nothing of the file's code ran
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)


def test_truncated_or_mismatched_weights_fail_clearly(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _planner(), np.full((4, 5, 3), 1 / 3), {})
    weights = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(weights[:100])
    with pytest.raises(ValueError, match=r"unreadable .*truncated or corrupt"):
        load_checkpoint(tmp_path)
    torch.save({"state": {}, "prior": torch.zeros(1)}, tmp_path / WEIGHTS)
    with pytest.raises(ValueError, match=r"does not match its meta\.json"):
        load_checkpoint(tmp_path)

"""Planner checkpoints: a directory with `weights.pt` (tensors only) and `meta.json`.

`weights.pt` holds the denoiser's state dict, the behaviour prior, the planner's optional parts
(under "extra": inverse-dynamics head, EMA weights, return normaliser of the guidance; each only
when the config enables it) and, optionally, the optimizer state; it is loaded with
`torch.load(weights_only=True)`, so a checkpoint can never execute code.
`meta.json` holds the full config, the planner's dimensions, the dataset id and the code version.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfdiffuser.planner.config import PlannerConfig
from mfdiffuser.planner.diffusion import MFDiffuser

# 2: "extra" (inverse-dynamics head, EMA weights, return normaliser) added to weights.pt.
CHECKPOINT_SCHEMA = 2
WEIGHTS, META = "weights.pt", "meta.json"


def save_checkpoint(
    directory: str | Path,
    planner: MFDiffuser,
    prior: np.ndarray,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write atomically: files go to a temporary name and are renamed into place."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = planner.state_dict()
    extra = {
        name: {k: v.detach().cpu() for k, v in state[name].items()}
        for name in ("inverse", "ema_model", "ema_inverse", "returns")
        if name in state
    }
    blob: dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in planner.model.state_dict().items()},
        "prior": torch.as_tensor(prior, dtype=torch.float64),
        "extra": extra,
    }
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    full_meta = {
        **meta,
        "checkpoint_schema": CHECKPOINT_SCHEMA,
        "planner": planner.cfg.model_dump(),
        "dims": planner.dims(),
    }
    for name, write in (
        (WEIGHTS, lambda f: torch.save(blob, f)),
        (META, lambda f: f.write(json.dumps(full_meta, indent=2, default=str).encode())),
    ):
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, d / name)
    return d


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(directory)!r}: no {META} (not a checkpoint)")
    meta: dict[str, Any] = json.loads(path.read_text())
    schema = meta.get("checkpoint_schema")
    if schema != CHECKPOINT_SCHEMA:
        raise ValueError(
            f"checkpoint {str(directory)!r}: checkpoint_schema {schema}, "
            f"this code reads {CHECKPOINT_SCHEMA}; re-train or use the matching mfdiffuser version"
        )
    return meta


def load_checkpoint(
    directory: str | Path, map_location: str = "cpu"
) -> tuple[MFDiffuser, np.ndarray, dict[str, Any], dict[str, Any] | None]:
    """(planner, prior[T, S, A], meta, optimizer_state or None)."""
    meta = read_meta(directory)
    where = f"checkpoint {str(directory)!r}: {WEIGHTS}"
    try:
        blob = torch.load(Path(directory) / WEIGHTS, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's code.
        raise ValueError(
            f"{where} holds objects other than tensors: refused (a checkpoint is only ever "
            "loaded as tensors, so it can never run code)"
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise ValueError(
            f"{where} is unreadable ({type(err).__name__}): truncated or corrupt"
        ) from None
    try:
        planner = MFDiffuser.from_spec(PlannerConfig(**meta["planner"]), **meta["dims"])
        planner.load_state_dict({"model": blob["model"], **blob.get("extra", {})})
        return planner, blob["prior"].numpy(), meta, blob.get("optimizer")
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{where} does not match its meta.json ({type(err).__name__})") from None

"""Method checkpoints: a directory with `weights.pt` (tensors only) and `meta.json`.

`weights.pt` holds the method's state (`Method.state_dict()`: nested dicts of tensors), the
behaviour prior and, optionally, the optimizer state; it is loaded with
`torch.load(weights_only=True)`, so a checkpoint can never execute code. `meta.json` holds the
method (name, version, parameters), the game's dimensions, the full config, the dataset and the
code version: provenance, never authority (where to connect comes from the user).

An external method's checkpoint (kind "external", e.g. RLlib's) is the same directory with the
library's own checkpoint beside them: `weights.pt` holds only the behaviour prior, and loading
dispatches on the recorded method's kind to the library's restore (`ExternalTrainer.load`), which
refuses a checkpoint of another library version. The weights-only rule is the platform's own
checkpoints'; the library's restore path is the library's.

A checkpoint may live on any URI `mfdiffuser.data.storage` resolves (`s3://bucket/prefix/...`):
it is written locally and uploaded with `meta.json` last, its commit marker (a directory
without one is not a checkpoint), and loaded by downloading it to a temporary directory first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from mfdiffuser.data import storage
from mfdiffuser.methods.base import Dims, Method
from mfdiffuser.methods.registry import METHODS

# 3: any registered method (meta.json "method" and "dims"; weights.pt "state").
# 2: MF-Diffuser only ("planner" in meta.json), refused with a clear message.
CHECKPOINT_SCHEMA = 3
WEIGHTS, META = "weights.pt", "meta.json"


def _cpu(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    return state.detach().cpu() if isinstance(state, torch.Tensor) else state


def save_checkpoint(
    directory: str | Path,
    method: Method,
    prior: np.ndarray,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> Path | str:
    """Write atomically: files go to a temporary name and are renamed into place (a URI: see
    the module docstring). Returns the directory (a str for a URI)."""
    blob: dict[str, Any] = {"state": _cpu(method.state_dict())}
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    return _write(directory, method.name, method.params, method.dims, prior, meta, blob)


def save_external_checkpoint(
    directory: str | Path,
    name: str,
    params: BaseModel,
    dims: Dims,
    prior: np.ndarray,
    meta: dict[str, Any],
) -> Path | str:
    """The platform's files beside an external method's own checkpoint in `directory`."""
    return _write(directory, name, params, dims, prior, meta, {})


def _write(
    directory: str | Path,
    method_name: str,
    params: BaseModel,
    dims: Dims,
    prior: np.ndarray,
    meta: dict[str, Any],
    blob: dict[str, Any],
) -> Path | str:
    if storage.is_uri(directory):  # written here, then uploaded: meta.json last, as the commit
        with tempfile.TemporaryDirectory(prefix="mfd-ckpt-") as tmp:
            _write(tmp, method_name, params, dims, prior, meta, blob)
            storage.upload_dir(tmp, str(directory), last=META)
        return str(directory)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    blob = {**blob, "prior": torch.as_tensor(prior, dtype=torch.float64)}
    spec = METHODS[method_name]
    full_meta = {
        **meta,
        "checkpoint_schema": CHECKPOINT_SCHEMA,
        "method": {"name": spec.name, "version": spec.version, "params": params.model_dump()},
        "dims": dataclasses.asdict(dims),
    }
    for file, write in (
        (WEIGHTS, lambda f: torch.save(blob, f)),
        (META, lambda f: f.write(json.dumps(full_meta, indent=2, default=str).encode())),
    ):
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{file}.")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, d / file)
    return d


def is_checkpoint(directory: str | Path) -> bool:
    """Whether `directory` (a path or URI) holds a committed checkpoint (its meta.json)."""
    fs, path = storage.resolve(directory)
    return storage.exists(fs, storage.join(path, META))


def read_meta(directory: str | Path) -> dict[str, Any]:
    fs, path = storage.resolve(directory)
    if not storage.exists(fs, storage.join(path, META)):
        raise FileNotFoundError(f"checkpoint {str(directory)!r}: no {META} (not a checkpoint)")
    meta: dict[str, Any] = json.loads(storage.read_bytes(fs, storage.join(path, META)))
    schema = meta.get("checkpoint_schema")
    if schema != CHECKPOINT_SCHEMA:
        raise ValueError(
            f"checkpoint {str(directory)!r}: checkpoint_schema {schema}, "
            f"this code reads {CHECKPOINT_SCHEMA}; re-train or use the matching mfdiffuser version"
        )
    return meta


def load_checkpoint(
    directory: str | Path, map_location: str = "cpu"
) -> tuple[Method, np.ndarray, dict[str, Any], dict[str, Any] | None]:
    """(method, prior[T, S, A], meta, optimizer_state or None). A URI is downloaded to a
    temporary directory first (removed after loading)."""
    if storage.is_uri(directory):
        read_meta(directory)  # not a (committed) checkpoint: refused before any download
        with tempfile.TemporaryDirectory(prefix="mfd-ckpt-") as tmp:
            storage.download_dir(str(directory), tmp)
            method, prior, meta, opt = _load_local(Path(tmp), map_location, str(directory))
        return method, prior, meta, opt
    return _load_local(Path(directory), map_location, str(directory))


def _load_local(
    directory: Path, map_location: str, name: str
) -> tuple[Method, np.ndarray, dict[str, Any], dict[str, Any] | None]:
    meta = read_meta(directory)
    where = f"checkpoint {name!r}"
    recorded = meta.get("method", {})
    spec = METHODS.get(str(recorded.get("name")))
    if spec is None:
        raise ValueError(f"{where}: method {recorded.get('name')!r} is not registered here")
    if recorded.get("version") != spec.version:
        raise ValueError(
            f"{where}: made by {spec.name} v{recorded.get('version')}, this code has "
            f"v{spec.version}; re-train or use the matching mfdiffuser version"
        )
    try:
        blob = torch.load(Path(directory) / WEIGHTS, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's code.
        raise ValueError(
            f"{where}: {WEIGHTS} holds objects other than tensors: refused (a checkpoint is only "
            "ever loaded as tensors, so it can never run code)"
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise ValueError(
            f"{where}: {WEIGHTS} is unreadable ({type(err).__name__}): truncated or corrupt"
        ) from None
    if spec.kind == "external":
        return spec.external.load(Path(directory), meta), blob["prior"].numpy(), meta, None
    try:
        method = spec.build(spec.params(recorded["params"]), Dims(**meta["dims"]))
        method.load_state_dict(blob["state"])
        return method, blob["prior"].numpy(), meta, blob.get("optimizer")
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"{where}: {WEIGHTS} does not match its meta.json ({type(err).__name__})"
        ) from None

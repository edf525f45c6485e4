"""Dataset manifests and content addressing.

A dataset is addressed by a hash of everything that determines its content (benchmark name,
version and parameters, quality, N, episodes, shard count, seed, schema version), so a sweep
generates each one once and every trial that needs it reuses it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mfdiffuser.data import storage
from mfdiffuser.data.schema import SCHEMA_VERSION

MANIFEST = "manifest.json"


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int
    file: str
    episodes: list[int]  # [first, last + 1)
    rows: int
    sha256: str
    mean_return: float  # mean per-agent episode return over the shard's episodes
    # team games: the shard's episodes, wins, draws and kills of each team (absent otherwise)
    outcomes: dict[str, float] | None = Field(default=None, exclude_if=lambda v: v is None)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int
    dataset_id: str
    spec: dict[str, Any]  # the generating config (what the id hashes)
    shards: list[ShardInfo]
    rows: int
    episodes: int
    behaviour: dict[str, Any]  # return, exploitability, how the policy was made
    code_version: str
    created: str
    # which row schema the shards use (`data.schema.ROW_SCHEMAS`); absent = "finite"
    row_schema: str = Field(default="finite", exclude_if=lambda v: v == "finite")


def dataset_spec(
    benchmark: dict[str, Any], quality: str, n_agents: int, episodes: int, shards: int, seed: int
) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "quality": quality,
        "n_agents": n_agents,
        "episodes": episodes,
        "shards": shards,
        "seed": seed,
        "schema_version": SCHEMA_VERSION,
    }


def dataset_id(spec: dict[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return f"{spec['benchmark']['name']}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def shard_ranges(episodes: int, shards: int) -> list[tuple[int, int]]:
    """Split episodes into contiguous, non-empty ranges (at most `shards` of them)."""
    shards = min(shards, episodes)
    bounds = [round(i * episodes / shards) for i in range(shards + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(shards)]


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def write_manifest(uri: str, manifest: Manifest) -> None:
    fs, path = storage.resolve(uri)
    data = manifest.model_dump_json(indent=2).encode()
    # Every shard is written: a temporary still here belongs to a writer that died mid-write
    # (its shard was written again elsewhere), so the committed dataset holds only its files.
    storage.remove_orphaned_temporaries(fs, path)
    storage.write_bytes_atomic(fs, storage.join(path, MANIFEST), data)


def read_manifest(uri: str) -> Manifest:
    fs, path = storage.resolve(uri)
    target = storage.join(path, MANIFEST)
    if not storage.exists(fs, target):
        raise FileNotFoundError(f"dataset {uri!r}: no {MANIFEST} (not a dataset, or unfinished)")
    m = Manifest.model_validate_json(storage.read_bytes(fs, target))
    if m.schema_version != SCHEMA_VERSION:
        raise ValueError(
            f"dataset {uri!r}: schema_version {m.schema_version}, this code reads {SCHEMA_VERSION}"
        )
    return m

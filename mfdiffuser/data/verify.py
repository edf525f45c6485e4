"""Verification of a dataset against its manifest, before anything reads it and as it is read.

Every shard's sha256 (hashed in chunks through the filesystem's input stream, so memory stays
flat whatever the dataset's size) and row count (from the Parquet footer, without reading the
table), and the manifest's own consistency: the shard list complete and in order, its total the
sum of the shards, its id the hash of its spec. A byte flipped inside a still-valid Parquet file,
a shard copied in from another dataset, an edited row count or a truncated file all fail here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mfdiffuser.data import storage
from mfdiffuser.data.manifest import (
    Manifest,
    ShardInfo,
    dataset_id,
    read_manifest,
    shard_file,
    shard_ranges,
)

CHUNK = 8 << 20  # bytes per read while hashing


class DatasetError(ValueError):
    """A dataset that does not match its manifest; `str()` is one line."""


@dataclass(frozen=True)
class Problem:
    file: str  # the shard file, or the manifest's own name
    kind: str  # short: "sha256 mismatch", "rows mismatch", "missing", "unreadable", ...
    detail: str  # expected vs actual

    def __str__(self) -> str:
        return f"{self.file}: {self.kind} ({self.detail})"


def file_sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def shard_problem(fs: pafs.FileSystem, root: str, shard: ShardInfo) -> Problem | None:
    """What is wrong with one shard file against its manifest entry (None: nothing)."""
    path = storage.join(root, shard.file)
    if not storage.exists(fs, path):
        return Problem(shard.file, "missing", "no such file")
    if problem := _sha_problem(shard, file_sha256(fs, path)):
        return problem
    # The bytes are the ones the manifest recorded; the row count guards the manifest itself.
    try:
        with fs.open_input_file(path) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as err:
        return Problem(shard.file, "unreadable", str(err).splitlines()[0])
    if rows != shard.rows:
        return Problem(shard.file, "rows mismatch", f"manifest {shard.rows}, file {rows}")
    return None


def read_shard(uri: str, shard: ShardInfo) -> pa.Table:
    """One shard's table, parsed from the very bytes whose sha256 and row count are checked
    against `shard` (one read: the driver's earlier verification leaves a window in which a file
    could be swapped before a Ray worker reads it); else DatasetError, as verify_dataset says it.
    """
    fs, root = storage.resolve(uri)
    try:
        with fs.open_input_stream(storage.join(root, shard.file)) as f:
            data = f.read_buffer()
    except FileNotFoundError:
        problem: Problem | None = Problem(shard.file, "missing", "no such file")
    else:
        sha = hashlib.sha256(data).hexdigest()
        problem = _sha_problem(shard, sha)
    if problem is None:
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError) as err:
            problem = Problem(shard.file, "unreadable", str(err).splitlines()[0])
        else:
            if table.num_rows == shard.rows:
                return table
            problem = Problem(
                shard.file, "rows mismatch", f"manifest {shard.rows}, file {table.num_rows}"
            )
    raise DatasetError(f"dataset {uri}: {problem}")


def _sha_problem(shard: ShardInfo, sha: str) -> Problem | None:
    if sha == shard.sha256:
        return None
    return Problem(shard.file, "sha256 mismatch", f"expected {shard.sha256[:12]}…, got {sha[:12]}…")


def manifest_problems(manifest: Manifest) -> list[Problem]:
    """The manifest against itself: shard list complete and in order, totals, id."""
    out = []
    ranges = shard_ranges(manifest.episodes, int(manifest.spec["shards"]))
    listed = [(s.index, s.file, tuple(s.episodes)) for s in manifest.shards]
    expected = [(i, shard_file(i), r) for i, r in enumerate(ranges)]
    if listed != expected:
        out.append(
            Problem(
                "manifest.json",
                "shard list",
                f"expected {len(expected)} shards {expected[0][1]}..{expected[-1][1]} covering "
                f"episodes 0..{manifest.episodes} in order, got {[s[1] for s in listed]}",
            )
        )
    total = sum(s.rows for s in manifest.shards)
    if total != manifest.rows:
        out.append(
            Problem("manifest.json", "rows mismatch", f"total {manifest.rows}, shards sum {total}")
        )
    if dataset_id(manifest.spec) != manifest.dataset_id:
        out.append(
            Problem(
                "manifest.json",
                "dataset_id mismatch",
                f"{manifest.dataset_id} is not the id of its spec ({dataset_id(manifest.spec)})",
            )
        )
    return out


def dataset_problems(uri: str, manifest: Manifest) -> list[Problem]:
    """Every problem of the dataset at `uri` against `manifest` (empty: it verifies)."""
    fs, root = storage.resolve(uri)
    shards = [p for s in manifest.shards if (p := shard_problem(fs, root, s))]
    return manifest_problems(manifest) + shards


def verify_dataset(uri: str) -> Manifest:
    """The manifest of a dataset that verifies; else DatasetError naming the first problem."""
    manifest = read_manifest(uri)
    problems = dataset_problems(uri, manifest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DatasetError(f"dataset {uri}: {problems[0]}{more}")
    return manifest

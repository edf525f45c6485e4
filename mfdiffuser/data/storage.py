"""Storage on any URI pyarrow understands (local paths, file://, s3://, gs://), written atomically.

Every write goes to a temporary name in the same directory and is then renamed over the target,
so a reader never sees half a file and an interrupted write leaves nothing behind but a temp file.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def resolve(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a URI; relative local paths become absolute."""
    s = str(uri)
    if "://" not in s:
        return pafs.LocalFileSystem(), str(Path(s).resolve())
    fs, path = pafs.FileSystem.from_uri(s)
    return fs, path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def makedirs(fs: pafs.FileSystem, path: str) -> None:
    fs.create_dir(path, recursive=True)


def _tmp_name(path: str) -> str:
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}.tmp-{uuid.uuid4().hex[:8]}"


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    tmp = _tmp_name(path)
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return bytes(f.read())


def write_table_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> bytes:
    """Write a Parquet file atomically; returns its bytes (for the checksum)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    write_bytes_atomic(fs, path, data)
    return data

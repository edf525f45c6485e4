"""Storage on any URI pyarrow understands (local paths, file://, s3://, gs://), written atomically.

Local filesystems: every write goes to a temporary name in the same directory and is then renamed
over the target, so a reader never sees half a file and an interrupted write leaves nothing behind
but a temp file. Object stores have no rename (pyarrow's "move" is a copy and a delete): there a
file is one upload of bytes already complete in memory, straight to its final key, and an object
exists only once its upload has completed, so a reader sees all of it or nothing. What makes a set
of files (a dataset, a checkpoint) valid is the file written last as its commit: a dataset's
manifest (with every shard's sha256), a checkpoint's meta.json.

S3 is configured by the standard AWS environment, which pyarrow reads itself:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE and a credentials file),
AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for an S3-compatible store that is not AWS.
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


class StorageError(ValueError):
    """A store that cannot be used as configured; `str()` is one line naming what is missing."""


def is_uri(uri: str | os.PathLike[str]) -> bool:
    return "://" in str(uri)


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def as_uri(fs: pafs.FileSystem, path: str) -> str:
    """The URI of `path` on `fs` (as `resolve` takes it back); local paths stay paths."""
    if is_local(fs):
        return path
    return f"{fs.type_name}://{path}"


# Where the AWS SDK finds credentials besides an instance role (which cannot be seen without
# asking the metadata service): any one of these is enough.
_CREDENTIAL_ENV = (
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    ("AWS_PROFILE",),
    ("AWS_WEB_IDENTITY_TOKEN_FILE",),
    ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",),
    ("AWS_CONTAINER_CREDENTIALS_FULL_URI",),
)
PROBE_TIMEOUT = 3.0  # seconds, for connecting and for the answer


def _has_s3_credentials() -> bool:
    if any(all(os.environ.get(k) for k in keys) for keys in _CREDENTIAL_ENV):
        return True
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
    return Path(shared).expanduser().is_file()


def check_store(uri: str, field: str = "runtime.storage") -> None:
    """Fail fast (StorageError) on an s3:// URI the store will not serve: no credentials in the
    environment, or an endpoint that does not answer (probed once, PROBE_TIMEOUT, no retries).
    Other schemes and local paths are left to their first use."""
    if not str(uri).startswith("s3://"):
        return
    bucket = str(uri)[len("s3://") :].split("/", 1)[0]
    if not bucket:
        raise StorageError(f"{field} = {uri!r}: no bucket; allowed: s3://BUCKET/PREFIX")
    if not _has_s3_credentials():
        raise StorageError(
            f"{field} = {uri!r}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with a credentials file), and AWS_ENDPOINT_URL "
            "for a store that is not AWS"
        )
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    # The constructor, unlike FileSystem.from_uri, does not read AWS_ENDPOINT_URL itself.
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint or None,
        region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None,
        connect_timeout=PROBE_TIMEOUT,
        request_timeout=PROBE_TIMEOUT,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
    )
    where = f"endpoint {endpoint}" if endpoint else "AWS S3"
    try:
        info = fs.get_file_info(bucket)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StorageError(
            f"{field} = {uri!r}: {where} does not answer or refuses access ({first}); check "
            "AWS_ENDPOINT_URL and the credentials"
        ) from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{field} = {uri!r}: bucket {bucket!r} does not exist at {where}")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def makedirs(fs: pafs.FileSystem, path: str) -> None:
    if is_local(fs):  # an object store has no directories (pyarrow would write a marker object)
        fs.create_dir(path, recursive=True)


def _tmp_name(path: str) -> str:
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}.tmp-{uuid.uuid4().hex[:8]}"


def is_temporary(name: str) -> bool:
    """A name `_tmp_name` makes: '.<file>.tmp-<8 hex>'."""
    head, sep, tag = name.rpartition(".tmp-")
    return (
        name.startswith(".")
        and bool(sep)
        and len(head) > 1
        and len(tag) == 8
        and all(c in "0123456789abcdef" for c in tag)
    )


def remove_orphaned_temporaries(fs: pafs.FileSystem, directory: str) -> list[str]:
    """Delete the temporaries of atomic writes left in `directory` (not below it) by a writer
    that died between writing and renaming (a process killed, a node lost); returns their
    names. Only for a directory whose writers have all finished: the dataset's manifest is
    written after its last shard. An object store has none (it writes the final key)."""
    if not is_local(fs):
        return []
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True)):
        name = info.path.rpartition("/")[2]
        if info.type == pafs.FileType.File and is_temporary(name):
            fs.delete_file(info.path)
            removed.append(name)
    return removed


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    if not is_local(fs):
        # One upload of complete bytes to the final key: the object appears whole or not at all
        # (a rename here would be a copy and a delete, neither atomic nor cheap).
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    tmp = _tmp_name(path)
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def upload_dir(local: str | os.PathLike[str], uri: str, last: str | None = None) -> None:
    """Copy the files of a local directory to `uri`, `last` (the commit marker) after the rest."""
    fs, root = resolve(uri)
    makedirs(fs, root)
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)  # stable: the marker goes last
    for p in files:
        write_bytes_atomic(fs, join(root, p.relative_to(local).as_posix()), p.read_bytes())


def download_dir(uri: str, local: str | os.PathLike[str]) -> None:
    """Copy every file under `uri` into the local directory `local`."""
    fs, root = resolve(uri)
    selector = pafs.FileSelector(root, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        target = Path(local) / info.path[len(root) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(fs, info.path))


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

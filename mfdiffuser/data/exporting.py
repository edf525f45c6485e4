"""`mfd export`: a dataset out to one plain Parquet, CSV or NumPy .npz file plus a dataset card
(pure numpy/pyarrow: no Ray, no MLflow).

The file holds the six row columns of docs/data.md, sorted by (episode, t, agent), which is what
`mfd import` reads back; the card (`<file stem>.card.md`, YAML front matter then a short text)
says what the data is so it can be shared and cited: benchmark, version, quality, N, episodes,
the behaviour's return and exploitability (or `unknown`, and the estimates, for imported data),
and the checksums (of the rows, of the file, of the source shards).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from mfdiffuser.data import storage
from mfdiffuser.data.importing import content_sha256, file_format
from mfdiffuser.data.manifest import Manifest
from mfdiffuser.data.schema import ROW_SCHEMA
from mfdiffuser.data.verify import read_shard, verify_dataset

CARD_SUFFIX = ".card.md"
BEHAVIOUR_FIGURES = (
    "return",
    "exploitability",
    "data_mean_return",
    "return_estimate",
    "exploitability_estimate",
    "estimated_policy",
    "welfare_gap",
)


def card_path(out: str) -> str:
    """`data/my.parquet` -> `data/my.card.md`."""
    head, _, name = out.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}/{stem}{CARD_SUFFIX}" if head else f"{stem}{CARD_SUFFIX}"


def encode(table: pa.Table, kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "parquet":
        pq.write_table(table, buf, compression="zstd")
    elif kind == "csv":
        pacsv.write_csv(table, buf)
    else:
        np.savez_compressed(buf, **{c: table[c].to_numpy() for c in table.column_names})
    return buf.getvalue()


def dataset_card(
    manifest: Manifest, content: str, file_sha: str, out: str, kind: str, code: str
) -> dict[str, Any]:
    spec, behaviour = manifest.spec, manifest.behaviour
    horizon = manifest.rows // max(manifest.episodes * int(spec["n_agents"]), 1)
    return {
        "dataset_id": manifest.dataset_id,
        "benchmark": spec["benchmark"],
        "quality": spec["quality"],
        "n_agents": spec["n_agents"],
        "episodes": manifest.episodes,
        "horizon": horizon,
        "rows": manifest.rows,
        "behaviour": {k: behaviour[k] for k in BEHAVIOUR_FIGURES if k in behaviour},
        "checksums": {
            "content_sha256": content,
            "file": Path(out).name if "://" not in out else out.rsplit("/", 1)[-1],
            "file_sha256": file_sha,
            "shards_sha256": [s.sha256 for s in manifest.shards],
        },
        "format": kind,
        "columns": {f.name: str(f.type) for f in ROW_SCHEMA},
        "schema_version": manifest.schema_version,
        "made_by_code": manifest.code_version,
        "dataset_created": manifest.created,
        "exported_by_code": code,
        "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def card_text(card: dict[str, Any]) -> str:
    b = card["benchmark"]
    figures = "\n".join(f"- {k}: {v}" for k, v in card["behaviour"].items())
    return (
        "---\n"
        + yaml.safe_dump(card, sort_keys=False)
        + "---\n\n"
        + f"# Dataset {card['dataset_id']}\n\n"
        + f"Offline data of the mean-field benchmark `{b['name']}` v{b['version']} "
        f"(family {b['family']}), quality `{card['quality']}`: {card['episodes']} episodes of "
        f"N = {card['n_agents']} agents over {card['horizon']} decision epochs, one row per "
        f"(episode, t, agent) in `{card['checksums']['file']}` ({card['format']}), sorted by "
        "(episode, t, agent).\n\n"
        f"Behaviour:\n{figures}\n\n"
        "`content_sha256` is a checksum of the sorted rows, not of the file's bytes: the same "
        "rows in another format or shard split have the same one (`mfd import` of this file "
        "gives a dataset with this checksum).\n"
    )


def export_dataset(uri: str, out: str, code: str) -> dict[str, Any]:
    """Write the verified dataset at `uri` to `out` (format from its suffix) and its card next
    to it, each atomically; returns the card and where both went."""
    kind = file_format(out)
    manifest = verify_dataset(uri)
    if manifest.row_schema != "finite":
        raise ValueError(
            f"dataset {uri}: {manifest.row_schema} rows; mfd export writes finite-state datasets "
            "(the six columns of docs/data.md)"
        )
    table = pa.concat_tables([read_shard(uri, s) for s in manifest.shards])
    table = table.sort_by([("episode", "ascending"), ("t", "ascending"), ("agent", "ascending")])
    table = table.select(list(ROW_SCHEMA.names)).replace_schema_metadata(None)
    data = encode(table, kind)
    content = content_sha256(table)
    card = dataset_card(manifest, content, hashlib.sha256(data).hexdigest(), out, kind, code)
    fs, path = storage.resolve(out)
    parent = path.rpartition("/")[0]
    if parent:
        storage.makedirs(fs, parent)
    storage.write_bytes_atomic(fs, path, data)
    card_at = card_path(out)
    cfs, cpath = storage.resolve(card_at)
    storage.write_bytes_atomic(cfs, cpath, card_text(card).encode())
    return {"file": out, "card": card_at, **card}

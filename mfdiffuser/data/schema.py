"""The dataset format: one row per (episode, agent, t), in Parquet shards plus a manifest.

Rows are per-agent transitions, the form both our window loader and RLlib's offline readers
consume. For finite-state benchmarks `state` is the state index; the mean field mu_t of an episode
is the histogram of `state` over its agents at t and is not stored twice.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

ROW_SCHEMA = pa.schema(
    [
        pa.field("episode", pa.int64(), nullable=False),
        pa.field("t", pa.int32(), nullable=False),
        pa.field("agent", pa.int32(), nullable=False),
        pa.field("state", pa.int32(), nullable=False),
        pa.field("action", pa.int32(), nullable=False),
        pa.field("reward", pa.float32(), nullable=False),
    ],
    metadata={"mfdiffuser.schema_version": str(SCHEMA_VERSION)},
)

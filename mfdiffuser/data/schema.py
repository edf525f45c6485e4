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

# Team games on a grid simulator (battle; `mfdiffuser.envs.team`), no finite state space: `state`
# is the cell index y * map_size + x, with the agent's `team` (0 plays the behaviour, 1 the fixed
# opponent), its `hp` at the start of the step and `dies` (it was killed in this step: the
# agent's terminal transition). Only agents alive at the start of a step have a row, and an
# episode has as many steps as it lasted.
TEAM_ROW_SCHEMA = pa.schema(
    [
        pa.field("episode", pa.int64(), nullable=False),
        pa.field("t", pa.int32(), nullable=False),
        pa.field("agent", pa.int32(), nullable=False),
        pa.field("team", pa.int8(), nullable=False),
        pa.field("state", pa.int32(), nullable=False),
        pa.field("hp", pa.float32(), nullable=False),
        pa.field("action", pa.int32(), nullable=False),
        pa.field("reward", pa.float32(), nullable=False),
        pa.field("dies", pa.bool_(), nullable=False),
    ],
    metadata={"mfdiffuser.schema_version": str(SCHEMA_VERSION), "mfdiffuser.rows": "team"},
)

# the manifest records which one a dataset uses (`Manifest.row_schema`, from the benchmark's
# registry entry), and the readers parse its shards by it
ROW_SCHEMAS = {"finite": ROW_SCHEMA, "team": TEAM_ROW_SCHEMA}

"""`mfd import`: a user's offline rows (Parquet, CSV or NumPy .npz) into a dataset the platform
trains on, validated against the benchmark first (pure numpy/pyarrow: no Ray, no MLflow).

Accepted columns (docs/data.md): `episode`, `t`, `agent`, `state`, `action` (integer types) and
`reward` (integer or floating). Other columns are ignored and reported. Every problem names the
column and the rows (0-based data rows: a CSV's header is not a row). The dataset it writes has
quality `imported`, a manifest whose behaviour section says `unknown` where the behaviour is not
known, and the estimates that can be made from the rows' (t, s, a) counts, each named as one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mfdiffuser.data import storage
from mfdiffuser.data.manifest import (
    Manifest,
    ShardInfo,
    dataset_id,
    dataset_spec,
    shard_file,
    shard_ranges,
    write_manifest,
)
from mfdiffuser.data.schema import ROW_SCHEMA, SCHEMA_VERSION
from mfdiffuser.data.verify import dataset_problems, read_manifest
from mfdiffuser.data.windows import EpisodeArrays, behaviour_prior
from mfdiffuser.envs import exploitability, policy_value
from mfdiffuser.envs.finite import FiniteMeanFieldGame

IMPORTED = "imported"  # the data quality of every imported dataset, and only of those
UNKNOWN = "unknown"  # what the behaviour section says where the behaviour is not known
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".npz": "npz"}
INT_COLUMNS = ("episode", "t", "agent", "state", "action")
COLUMNS = (*INT_COLUMNS, "reward")
SHOWN_ROWS = 5  # rows listed in one problem
ESTIMATED_POLICY = "empirical pi(a | s, t) from the rows' (t, s, a) counts, uniform where unseen"


class ImportProblem(ValueError):
    """Rows that cannot become a dataset of the benchmark; `str()` is one line per problem,
    each naming the column and the rows."""


def file_format(path: str | Path) -> str:
    suffix = Path(str(path)).suffix.lower()
    if suffix not in FORMATS:
        raise ImportProblem(
            f"{path}: unknown file type {suffix or '(none)'!r}; allowed: "
            f"{', '.join(sorted(FORMATS))}"
        )
    return FORMATS[suffix]


def read_rows(path: str | Path) -> pa.Table:
    """The file's columns as an Arrow table (types as stored: CSV types are inferred)."""
    kind = file_format(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if kind == "parquet":
            return pq.read_table(path)
        if kind == "csv":
            return pacsv.read_csv(path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (pa.ArrowInvalid, OSError, ValueError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImportProblem(f"{path}: not a readable {kind} file ({msg})") from None
    bad = [f"{k} has shape {v.shape}" for k, v in arrays.items() if v.ndim != 1]
    lengths = {len(v) for v in arrays.values() if v.ndim == 1}
    if bad or len(lengths) > 1:
        raise ImportProblem(
            f"{path}: every array must be one-dimensional and of one length "
            f"({'; '.join(bad) or f'lengths {sorted(lengths)}'})"
        )
    try:
        return pa.table({k: pa.array(v) for k, v in arrays.items()})
    except pa.ArrowInvalid as err:
        raise ImportProblem(f"{path}: {str(err).splitlines()[0]}") from None


def _rows(index: np.ndarray) -> str:
    index = np.sort(np.asarray(index).ravel())  # ascending, as the file holds them
    shown = ", ".join(str(int(i)) for i in index[:SHOWN_ROWS])
    more = f" and {len(index) - SHOWN_ROWS} more" if len(index) > SHOWN_ROWS else ""
    return f"row{'s' if len(index) > 1 else ''} {shown}{more}"


@dataclass(frozen=True)
class Imported:
    """Validated rows: `table` in the dataset's row schema, sorted by (episode, t, agent), with
    episodes renumbered 0..E-1 in ascending order of the file's ids and agents 0..N-1 in
    ascending order of theirs within each episode; `arrays` the same rows as [E, T, N]."""

    table: pa.Table
    arrays: EpisodeArrays
    ignored: list[str]  # columns of the file that were not used

    @property
    def episodes(self) -> int:
        return int(self.arrays.states.shape[0])


def validate_rows(
    table: pa.Table, n_states: int, n_actions: int, horizon: int, where: str = "rows"
) -> Imported:
    """Check the rows against a benchmark of `n_states`, `n_actions` and `horizon` decision
    epochs; ImportProblem listing every problem found (a column at a time, then the episodes)."""
    # a user's file checked for the columns it must have (not a row schema detected from them)
    present = set(table.column_names)
    missing = [c for c in COLUMNS if c not in present]
    if missing:
        raise ImportProblem(
            f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(all rows); required: {', '.join(COLUMNS)}; the file has "
            f"{', '.join(table.column_names) or 'none'}"
        )
    if table.num_rows == 0:
        raise ImportProblem(f"{where}: no rows")
    problems: list[str] = []
    cols: dict[str, np.ndarray] = {}
    bounds = {
        "t": (horizon, "the benchmark's horizon"),
        "state": (n_states, "the benchmark's states"),
        "action": (n_actions, "the benchmark's actions"),
    }
    for name in COLUMNS:
        arr = table[name].combine_chunks()
        kind = "an integer type" if name in INT_COLUMNS else "an integer or floating type"
        ok = pa.types.is_integer(arr.type) or (name == "reward" and pa.types.is_floating(arr.type))
        if not ok:
            problems.append(f"column {name}: type {arr.type} (all rows); allowed: {kind}")
            continue
        if arr.null_count:
            nulls = np.flatnonzero(np.asarray(arr.is_null().to_numpy(zero_copy_only=False)))
            problems.append(f"column {name}: empty values at {_rows(nulls)}")
            continue
        values = arr.to_numpy(zero_copy_only=False)
        if name == "reward":
            values = values.astype(np.float64)
            bad = np.flatnonzero(~np.isfinite(values) | (np.abs(values) > np.finfo("f4").max))
            if bad.size:
                problems.append(
                    f"column reward: {values[bad[0]]} at {_rows(bad)}; allowed: finite float32"
                )
                continue
        else:
            if values.dtype == np.uint64 and values.max() > np.iinfo(np.int64).max:
                bad = np.flatnonzero(values > np.iinfo(np.int64).max)
                problems.append(f"column {name}: {values[bad[0]]} at {_rows(bad)}; too large")
                continue
            values = values.astype(np.int64)
            if name in bounds:
                high, what = bounds[name]
                bad = np.flatnonzero((values < 0) | (values >= high))
                if bad.size:
                    problems.append(
                        f"column {name}: {values[bad[0]]} at {_rows(bad)}; allowed: "
                        f"0..{high - 1} ({what})"
                    )
                    continue
        cols[name] = values
    if problems:
        raise ImportProblem(f"{where}: " + f"\n{where}: ".join(problems))
    return _structure(cols, horizon, where, [c for c in table.column_names if c not in COLUMNS])


def _structure(
    cols: dict[str, np.ndarray], horizon: int, where: str, ignored: list[str]
) -> Imported:
    """Duplicates, complete episodes of one N each with the same agents at every t."""
    ep_ids, ep = np.unique(cols["episode"], return_inverse=True)
    t, agent = cols["t"], cols["agent"]
    order = np.lexsort((agent, t, ep))  # rows sorted by (episode, t, agent)
    key = np.stack([ep[order], t[order], agent[order]], axis=1)
    same = np.flatnonzero((key[1:] == key[:-1]).all(axis=1))
    if same.size:
        first = same[0]
        pairs = np.unique(np.concatenate([order[same], order[same + 1]]))
        raise ImportProblem(
            f"{where}: columns episode, t, agent: duplicate rows: {_rows(pairs)} repeat "
            f"(episode {ep_ids[key[first, 0]]}, t {key[first, 1]}, agent {key[first, 2]}); "
            "allowed: one row per (episode, t, agent)"
        )
    n_ep = len(ep_ids)
    per_t = np.bincount(ep * horizon + t, minlength=n_ep * horizon).reshape(n_ep, horizon)
    starts = np.searchsorted(ep[order], np.arange(n_ep))

    def episode_rows(e: int) -> str:
        return _rows(order[starts[e] : starts[e] + per_t[e].sum()])

    gaps = np.argwhere(per_t == 0)
    if gaps.size:
        e = int(gaps[0, 0])
        lost = np.flatnonzero(per_t[e] == 0)
        shown = ", ".join(str(int(x)) for x in lost[:SHOWN_ROWS])
        raise ImportProblem(
            f"{where}: column t: ragged episode {ep_ids[e]} ({episode_rows(e)}) has no rows at "
            f"t = {shown}{' …' if len(lost) > SHOWN_ROWS else ''}; every episode needs t = "
            f"0..{horizon - 1} (the benchmark's horizon {horizon})"
            + (f"; {len(np.unique(gaps[:, 0]))} episodes are ragged" if len(gaps) > 1 else "")
        )
    uneven = np.flatnonzero((per_t != per_t[:, :1]).any(axis=1))
    if uneven.size:
        e = int(uneven[0])
        at = int(np.flatnonzero(per_t[e] != per_t[e, 0])[0])
        raise ImportProblem(
            f"{where}: column agent: ragged episode {ep_ids[e]} ({episode_rows(e)}) has "
            f"{per_t[e, 0]} agents at t = 0 but {per_t[e, at]} at t = {at}; the agent count must "
            "be constant within an episode"
        )
    n_agents = int(per_t[0, 0])
    other = np.flatnonzero(per_t[:, 0] != n_agents)
    if other.size:
        e = int(other[0])
        raise ImportProblem(
            f"{where}: column agent: episode {ep_ids[e]} ({episode_rows(e)}) has {per_t[e, 0]} "
            f"agents, episode {ep_ids[0]} has {n_agents}; every episode must have the same N"
        )
    shape = (n_ep, horizon, n_agents)
    agents = agent[order].reshape(shape)
    moved = np.argwhere(agents != agents[:, :1, :])
    if moved.size:
        e, step, _ = (int(x) for x in moved[0])
        rows = order.reshape(shape)[e, step]
        raise ImportProblem(
            f"{where}: column agent: episode {ep_ids[e]} has other agents at t = {step} "
            f"({_rows(rows)}) than at t = 0; every agent of an episode needs a row at every t"
        )
    arrays = EpisodeArrays(
        states=cols["state"][order].reshape(shape),
        actions=cols["action"][order].reshape(shape),
        rewards=cols["reward"][order].astype(np.float32).reshape(shape),
    )
    return Imported(rows_table(arrays), arrays, ignored)


def rows_table(arrays: EpisodeArrays) -> pa.Table:
    """[E, T, N] arrays -> rows in the dataset's schema, sorted by (episode, t, agent)."""
    n_ep, horizon, n = arrays.states.shape
    return pa.table(
        {
            "episode": np.repeat(np.arange(n_ep, dtype=np.int64), horizon * n),
            "t": np.tile(np.repeat(np.arange(horizon, dtype=np.int32), n), n_ep),
            "agent": np.tile(np.arange(n, dtype=np.int32), n_ep * horizon),
            "state": arrays.states.reshape(-1).astype(np.int32),
            "action": arrays.actions.reshape(-1).astype(np.int32),
            "reward": arrays.rewards.reshape(-1).astype(np.float32),
        },
        schema=ROW_SCHEMA,
    )


def content_sha256(table: pa.Table) -> str:
    """A checksum of a dataset's rows, not of any file's bytes: the rows sorted by (episode, t,
    agent), then per column of the row schema in order its name and its values as little-endian
    bytes of the schema's type. Equal for the same rows in any file, format or shard split."""
    table = table.select(list(ROW_SCHEMA.names)).cast(ROW_SCHEMA)
    table = table.sort_by([("episode", "ascending"), ("t", "ascending"), ("agent", "ascending")])
    digest = hashlib.sha256()
    for field in ROW_SCHEMA:
        values = np.asarray(table[field.name].to_numpy())
        digest.update(field.name.encode())
        digest.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def behaviour_estimates(game: FiniteMeanFieldGame, arrays: EpisodeArrays) -> dict[str, Any]:
    """The behaviour section of imported rows: what is unknown said so, plus the data's own
    figures: `data_mean_return` (the mean per-agent episode return on the rows, measured) and
    the exact return and exploitability of the empirical policy of the (t, s, a) counts, which
    estimate the unknown behaviour's."""
    pi_hat = behaviour_prior(arrays, game.n_states, game.n_actions)
    return {
        "source": IMPORTED,
        "policies": UNKNOWN,
        "return": UNKNOWN,
        "exploitability": UNKNOWN,
        "made_by": UNKNOWN,
        "data_mean_return": float(arrays.rewards.astype(np.float64).sum(axis=1).mean()),
        "return_estimate": float(policy_value(game, pi_hat)),
        "exploitability_estimate": float(exploitability(game, pi_hat)),
        "estimated_policy": ESTIMATED_POLICY,
    }


def write_imported(
    rows: Imported,
    game: FiniteMeanFieldGame,
    benchmark: dict[str, Any],
    root: str,
    shards: int,
    source: dict[str, Any],
    code_version: str,
) -> tuple[str, Manifest, bool]:
    """The dataset of `rows` under `<root>/datasets/<id>`: (uri, manifest, reused).

    Its id hashes the benchmark, quality `imported`, N, episodes, shards and the content
    checksum, so the same rows imported again (from any format) are the same dataset: one that
    is already there and verifies is reused. Shards are written atomically, the manifest last.
    """
    arrays = rows.arrays
    n_ep, _, n_agents = arrays.states.shape
    checksum = content_sha256(rows.table)
    spec = {
        **dataset_spec(benchmark, IMPORTED, n_agents, n_ep, shards, 0),
        "content_sha256": checksum,
    }
    uri = storage.join(root, "datasets", dataset_id(spec))
    fs, path = storage.resolve(uri)
    if storage.exists(fs, storage.join(path, "manifest.json")):
        old = read_manifest(uri)
        if old.spec == spec and not dataset_problems(uri, old):
            return uri, old, True
    storage.makedirs(fs, path)
    per_episode = n_agents * arrays.states.shape[1]
    infos = []
    for index, (lo, hi) in enumerate(shard_ranges(n_ep, shards)):
        part = rows.table.slice(lo * per_episode, (hi - lo) * per_episode)
        buf = io.BytesIO()
        pq.write_table(part, buf, compression="zstd")
        data = buf.getvalue()
        storage.write_bytes_atomic(fs, storage.join(path, shard_file(index)), data)
        infos.append(
            ShardInfo(
                index=index,
                file=shard_file(index),
                episodes=[lo, hi],
                rows=part.num_rows,
                sha256=hashlib.sha256(data).hexdigest(),
                mean_return=float(arrays.rewards[lo:hi].astype(np.float64).sum(axis=1).mean()),
            )
        )
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        dataset_id=dataset_id(spec),
        spec=spec,
        shards=infos,
        rows=rows.table.num_rows,
        episodes=n_ep,
        behaviour={**behaviour_estimates(game, arrays), "imported_from": source},
        code_version=code_version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    write_manifest(uri, manifest)
    return uri, manifest, False

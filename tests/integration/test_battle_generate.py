"""battle datasets through the Ray actor pool: rows, outcomes in the manifest, resumption."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mfdiffuser import api
from mfdiffuser.data.manifest import read_manifest
from mfdiffuser.data.schema import TEAM_ROW_SCHEMA
from mfdiffuser.envs.battle import BattleParams
from mfdiffuser.envs.battle import generate_shard as generate_battle_shard
from mfdiffuser.envs.team import team_outcomes as battle_outcomes
from mfdiffuser.platform.config import ConfigError, load_config
from mfdiffuser.workers.datagen import generate_dataset

pytestmark = pytest.mark.integration


def test_battle_dataset_through_the_actor_pool(ray_local: None, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "benchmark.name=battle",
            "max_steps=12",
            "data.n_agents=16",  # agents per team: the map is derived (0.04·map² -> 20)
            "data.episodes=4",
            "data.shards=2",
            "data.quality=medium-expert",
            f"runtime.storage={tmp_path / 'store'}",
        ],
    )
    uri, manifest, _ = generate_dataset(cfg)
    root = Path(uri)
    assert manifest.row_schema == "team"
    params = manifest.spec["benchmark"]["params"]
    assert params["agents_per_team"] == 16 and params["map_size"] == 20
    assert [s.episodes for s in manifest.shards] == [[0, 2], [2, 4]]
    tables = []
    for s in manifest.shards:
        data = (root / s.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s.sha256
        table = pq.read_table(root / s.file)
        assert table.schema.equals(TEAM_ROW_SCHEMA, check_metadata=False)
        assert table.num_rows == s.rows
        tables.append(table)
    # the actors' rows are exactly what the shard function makes for those episodes
    expected, outcomes = generate_battle_shard(
        BattleParams(**params), "medium-expert", range(2, 4), cfg.data.seed
    )
    assert tables[1].equals(expected)
    assert manifest.shards[1].outcomes == pytest.approx(outcomes)
    rows = pa.concat_tables(tables)
    assert manifest.rows == rows.num_rows
    assert (rows["team"].to_numpy() >= 0).all() and (rows["t"].to_numpy() < 12).all()
    whole = battle_outcomes(rows, 16)
    b = manifest.behaviour
    assert b["exploitability"] is None and b["made_by"]["quality"] == "medium-expert"
    assert b["win_rate"] == pytest.approx(whole["wins"] / 4)
    assert b["draw_rate"] == pytest.approx(whole["draws"] / 4)
    assert b["kill_ratio"] == pytest.approx(whole["kills0"] / max(whole["kills1"], 1))
    assert b["return"] == pytest.approx(whole["return_sum"] / 4, rel=1e-5)
    team0 = rows["team"].to_numpy() == 0
    assert b["data_mean_return"] == pytest.approx(
        float(rows["reward"].to_numpy()[team0].astype(np.float64).sum()) / (4 * 16), rel=1e-5
    )

    # interrupted: manifest and one shard gone -> the same bytes again, nothing duplicated
    (root / "manifest.json").unlink()
    (root / manifest.shards[0].file).unlink()
    uri2, again, _ = generate_dataset(cfg)
    assert uri2 == uri and [s.sha256 for s in again.shards] == [s.sha256 for s in manifest.shards]
    assert again.behaviour["win_rate"] == b["win_rate"]
    assert read_manifest(uri).row_schema == "team"

    # n_agents too large for an explicit map: a clear error before any generation
    bad = load_config(
        None,
        ["benchmark.name=battle", "map_size=20", "data.n_agents=100", "max_steps=12"],
    )
    with pytest.raises(ConfigError, match=r"agents_per_team = 100: team larger .* 1\.\.27"):
        api.generate(bad)

"""Data generation through the Ray actor pool for a benchmark other than crowd_1d."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mfdiffuser.envs import exploitability
from mfdiffuser.envs.behaviour import occupancy_mixture
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.platform.config import load_config
from mfdiffuser.workers.datagen import generate_dataset

pytestmark = pytest.mark.integration


def test_predator_prey_dataset_through_the_actor_pool(ray_local: None, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "benchmark.name=predator_prey",
            "horizon=6",
            "planner.window=4",
            f"runtime.storage={tmp_path / 'store'}",
            "data.n_agents=30",
            "data.episodes=4",
            "data.shards=2",
            "data.quality=medium",
        ],
    )
    uri, manifest, _ = generate_dataset(cfg)
    assert manifest.rows == 4 * 30 * 6 and len(manifest.shards) == 2
    rows = sum(pq.read_metadata(Path(uri) / s.file).num_rows for s in manifest.shards)
    assert rows == manifest.rows
    table = pq.read_table(Path(uri) / manifest.shards[0].file)
    assert table.column("state").to_numpy().max() < 3 * 25  # (population, cell) states

    # the manifest's exploitability is the exact one of the behaviour policy
    spec = get_benchmark("predator_prey")
    game = spec.game({"horizon": 6})
    made = spec.behaviour(game, "medium")
    expected = exploitability(game, occupancy_mixture(game, made.policies))
    assert manifest.behaviour["exploitability"] == pytest.approx(expected, rel=1e-9)
    assert 0 < expected < exploitability(game, np.full((6, 75, 5), 0.2))

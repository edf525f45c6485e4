"""`train.data_path = ray_data`: the dataset streamed through Ray Data gives the local path's
statistics and windows exactly (buffer = whole dataset, one worker), a bounded buffer holds at
most K episodes and sees every episode each pass. A Ray Train fit on this path through the CLI
(2 DDP workers on 2 CPUs, read tasks on fractional CPUs: no deadlock) is crowd_1d's case of
tests/integration/test_every_benchmark_cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.data.advantages import advantage_sums
from mfdiffuser.data.verify import DatasetError
from mfdiffuser.data.windows import load_episodes, normalise_counts
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.methods.base import DataStats, Dims
from mfdiffuser.methods.registry import get_method
from mfdiffuser.planner.diffusion import returns_to_go
from mfdiffuser.platform.config import ConfigError, ExperimentConfig, load_config
from mfdiffuser.workers.datagen import generate_dataset
from mfdiffuser.workers.ray_data import StreamedShard, streamed_dataset

pytestmark = pytest.mark.integration

SETTINGS = [
    "data.n_agents=30",
    "data.episodes=6",
    "data.shards=3",
    "data.quality=random",
    "planner.n_particles=8",
    "planner.max_particles=16",
    "planner.diffusion_steps=5",
    "planner.beta=1.0",  # advantages in the batches
]


@pytest.fixture(scope="module")
def data(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("raydata")
    cfg = load_config(None, [f"runtime.storage={tmp / 'store'}", *SETTINGS])
    uri, manifest, _ = generate_dataset(cfg)
    return {"cfg": cfg, "uri": uri, "manifest": manifest, "tmp": tmp}


def _method(cfg: ExperimentConfig, game: Any) -> Any:
    spec = get_method(cfg.method.name)
    return spec.build(cfg.method.settings, Dims.of(game))


def test_streamed_statistics_and_windows_equal_the_local_path(data: dict[str, Any]) -> None:
    cfg, uri = data["cfg"], data["uri"]
    game = get_benchmark(cfg.benchmark.name).game(cfg.benchmark.params)
    arrays, manifest = load_episodes(uri)
    local = DataStats.of(arrays, game)
    sums, counts, squares = advantage_sums(arrays, game.n_states, game.n_actions)

    stream = StreamedShard(streamed_dataset(uri).iterator(), game, manifest)
    s_sums, s_counts, s_squares, s_rtg = stream.statistics(chunk=1000, world=1)
    np.testing.assert_array_equal(s_sums, sums)
    np.testing.assert_array_equal(s_squares, squares)
    np.testing.assert_array_equal(s_counts, counts)
    np.testing.assert_array_equal(normalise_counts(s_counts), local.prior)
    np.testing.assert_array_equal(s_rtg, returns_to_go(arrays.rewards))
    assert s_counts.sum() == manifest.rows == 6 * 30 * game.horizon
    # sums and counts are additive: two episodes at a time gives the same table
    c_sums, c_counts, c_squares, _ = stream.statistics(chunk=2, world=1)
    np.testing.assert_allclose(c_squares, squares, rtol=1e-12)
    np.testing.assert_allclose(c_sums, sums, rtol=1e-12)
    np.testing.assert_array_equal(c_counts, counts)

    reference, streamed = _method(cfg, game), _method(cfg, game)
    reference.prepare(local)
    streamed.prepare(local)
    want = reference.batches(arrays, game, seed=7)
    got = stream.batches(streamed, cfg.train.model_copy(update={"buffer_episodes": 6}), 7, 1)
    assert got.whole and got.buffered == 6
    for _ in range(3):
        a, b = want.sample(5), got.sample(5)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_small_buffer_holds_k_episodes_and_every_pass_reads_them_all(
    data: dict[str, Any],
) -> None:
    cfg, uri = data["cfg"], data["uri"]
    game = get_benchmark(cfg.benchmark.name).game(cfg.benchmark.params)
    arrays, manifest = load_episodes(uri)
    method = _method(cfg, game)
    method.prepare(DataStats.of(arrays, game))
    stream = StreamedShard(streamed_dataset(uri).iterator(), game, manifest)
    train = cfg.train.model_copy(update={"buffer_episodes": 4, "steps_per_epoch": 2})
    got = stream.batches(method, train, 3, 1)
    seen: list[set[int]] = []
    for _ in range(8):  # 4 refill periods of 2 batches
        batch = got.sample(16)
        # the sampler's episode index is into the buffer, which holds at most 4 episodes
        assert got.sampler.arrays.states.shape[0] == got.buffered <= 4
        assert batch["episode"].max() < got.buffered
        seen.append({int(e) for e in batch["episode"]})
    assert not got.whole and got.refills == 3
    # passes of 6 episodes in buffers of 4: 4, 2 | 4, 2 -> 12 episodes read over two passes
    assert got.episodes_read == 12


def test_a_corrupted_shard_fails_the_read(data: dict[str, Any]) -> None:
    copy = data["tmp"] / "corrupt"
    src = Path(data["uri"])
    copy.mkdir()
    for f in src.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    shard = copy / data["manifest"].shards[1].file
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    game = get_benchmark(data["cfg"].benchmark.name).game(data["cfg"].benchmark.params)
    stream = StreamedShard(streamed_dataset(str(copy)).iterator(), game, data["manifest"])
    with pytest.raises(DatasetError, match=r"shard-00001\.parquet: sha256 mismatch"):
        stream.statistics(chunk=10, world=1)


def test_team_games_are_refused_on_the_ray_data_path() -> None:
    with pytest.raises(ConfigError, match=r"train\.data_path = 'ray_data': battle is a team game"):
        load_config(None, ["benchmark.name=battle", "train.data_path=ray_data"])
    res = CliRunner().invoke(
        app, ["train", "-s", "benchmark.name=battle", "-s", "train.data_path=ray_data"]
    )
    assert res.exit_code == 2, res.output
    assert "train.data_path = 'ray_data': battle is a team game" in res.output
    res = CliRunner().invoke(app, ["train", "-s", "train.data_path=parquet"])
    assert res.exit_code == 2, res.output
    assert "train.data_path" in res.output and "parquet" in res.output

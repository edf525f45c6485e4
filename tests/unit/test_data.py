"""Dataset rows, shards, manifests and training windows (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mfdiffuser.data import storage
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.manifest import dataset_id, dataset_spec, shard_ranges
from mfdiffuser.data.windows import (
    EpisodeArrays,
    WindowSampler,
    behaviour_prior,
    encode_actions,
    episodes_from_table,
    mean_fields,
)
from mfdiffuser.envs import fictitious_play, uniform_policy
from mfdiffuser.envs.crowd_1d import Crowd1D, Crowd1DSim


@pytest.fixture(scope="module")
def game() -> Crowd1D:
    return Crowd1D(size=6, horizon=5)


def _arrays(table) -> EpisodeArrays:
    return episodes_from_table(table, int(table["agent"].to_numpy().max()) + 1)


def test_shard_rows_and_determinism(game: Crowd1D) -> None:
    policies = [uniform_policy(game)]
    a, ra = generate_shard(lambda: Crowd1DSim(game, 50), policies, range(3, 7), seed=11)
    b, rb = generate_shard(lambda: Crowd1DSim(game, 50), policies, range(3, 7), seed=11)
    assert a.num_rows == 4 * 50 * game.horizon
    assert a.equals(b) and np.array_equal(ra, rb)
    # An episode's content depends on (seed, episode) only, not on the shard that holds it.
    c, _ = generate_shard(lambda: Crowd1DSim(game, 50), policies, range(5, 6), seed=11)
    a_ep5 = a.filter(np.asarray(a["episode"].to_numpy() == 5))
    assert a_ep5.equals(c)
    d, _ = generate_shard(lambda: Crowd1DSim(game, 50), policies, range(3, 7), seed=12)
    assert not a.equals(d)


def test_round_robin_mixture_and_returns(game: Crowd1D) -> None:
    expert = fictitious_play(game, 30).policy
    table, returns = generate_shard(
        lambda: Crowd1DSim(game, 40), [uniform_policy(game), expert], range(4), seed=0
    )
    arr = _arrays(table)
    assert np.allclose(returns, arr.rewards.astype(np.float64).sum(axis=1).mean(axis=1), atol=1e-4)
    # Expert episodes (odd) follow the FP policy: its deterministic actions show up.
    prior_odd = behaviour_prior(
        EpisodeArrays(arr.states[1::2], arr.actions[1::2], arr.rewards[1::2]),
        game.n_states,
        game.n_actions,
    )
    assert np.allclose(prior_odd.sum(-1), 1.0)


def test_mean_fields_and_prior_are_distributions(game: Crowd1D) -> None:
    table, _ = generate_shard(lambda: Crowd1DSim(game, 30), [uniform_policy(game)], range(3), 1)
    arr = _arrays(table)
    mu = mean_fields(arr, game.n_states)
    assert mu.shape == (3, game.horizon, game.n_states)
    assert np.allclose(mu.sum(-1), 1.0)
    assert np.allclose(mu[1, 2], np.bincount(arr.states[1, 2], minlength=game.n_states) / 30)
    prior = behaviour_prior(arr, game.n_states, game.n_actions)
    assert prior.shape == (game.horizon, game.n_states, game.n_actions)
    assert np.allclose(prior.sum(-1), 1.0)


def test_window_sampler_shapes_and_content(game: Crowd1D) -> None:
    table, _ = generate_shard(lambda: Crowd1DSim(game, 20), [uniform_policy(game)], range(4), 2)
    arr = _arrays(table)
    s = WindowSampler(arr, game, window=3, n_particles=8, seed=0)
    b = s.sample(5)
    d_s = game.feature_dim
    assert b["x"].shape == (5, 8, 3, d_s + game.n_actions)
    assert b["ctx"].shape == (5, game.context_dim)
    # Each particle's first step encodes the recorded state and action of its agent.
    assert np.array_equal(b["x"][:, :, 0, :d_s], game.features(b["first_states"]))
    assert np.array_equal(b["x"][:, :, 0, d_s:], encode_actions(b["first_actions"], 3))
    # Context is (t, mu_t) of the sampled episode and start.
    mu = mean_fields(arr, game.n_states)
    for i in range(5):
        assert np.allclose(
            b["ctx"][i], game.context(int(b["t0"][i]), mu[b["episode"][i], b["t0"][i]])
        )
    # Same seed, same batches.
    again = WindowSampler(arr, game, window=3, n_particles=8, seed=0).sample(5)
    assert np.array_equal(again["x"], b["x"])
    with pytest.raises(ValueError, match="window"):
        WindowSampler(arr, game, window=6, n_particles=8, seed=0)


def test_window_starts_cover_every_decision_time_with_padding(game: Crowd1D) -> None:
    table, _ = generate_shard(lambda: Crowd1DSim(game, 20), [uniform_policy(game)], range(4), 2)
    arr = _arrays(table)
    horizon, h = arr.horizon, 3
    b = WindowSampler(arr, game, window=h, n_particles=8, seed=1).sample(400)
    # The planner acts at every t, so windows start at every t, also the last H - 1.
    assert set(b["t0"].tolist()) == set(range(horizon))
    steps = b["t0"][:, None] + np.arange(h)[None, :]
    assert np.array_equal(b["valid"], (steps < horizon).astype(np.float32))
    # A padded step repeats the episode's last step.
    d_s = game.feature_dim
    for i in np.flatnonzero(b["t0"] == horizon - 1):
        last = b["x"][i, :, 0]
        assert np.array_equal(b["x"][i, :, 1], last) and np.array_equal(b["x"][i, :, 2], last)
        assert np.array_equal(last[:, :d_s], game.features(b["first_states"][i]))


def test_dataset_ids_are_content_addresses() -> None:
    bench = {"name": "crowd_1d", "version": 1, "params": {"size": 10}}
    a = dataset_id(dataset_spec(bench, "expert", 100, 10, 2, 0))
    assert a == dataset_id(dataset_spec(dict(bench), "expert", 100, 10, 2, 0))
    assert a != dataset_id(dataset_spec(bench, "random", 100, 10, 2, 0))
    assert a != dataset_id(dataset_spec(bench, "expert", 1000, 10, 2, 0))
    assert a.startswith("crowd_1d-")


def test_shard_ranges_cover_every_episode_once() -> None:
    for episodes, shards in [(10, 3), (3, 8), (40, 4), (1, 1)]:
        ranges = shard_ranges(episodes, shards)
        covered = [e for lo, hi in ranges for e in range(lo, hi)]
        assert covered == list(range(episodes))
        assert all(hi > lo for lo, hi in ranges)


def test_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    fs, path = storage.resolve(tmp_path)
    storage.write_bytes_atomic(fs, storage.join(path, "a.json"), b"{}")
    storage.write_bytes_atomic(fs, storage.join(path, "a.json"), b"[1]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_bytes() == b"[1]"


def test_a_dead_writers_temporary_is_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "shard-00000.parquet").write_bytes(b"done")
    (tmp_path / ".shard-00001.parquet.tmp-5e9f73f5").write_bytes(b"half")
    (tmp_path / ".keep.tmp-notahex!").write_bytes(b"x")
    fs, path = storage.resolve(tmp_path)
    assert storage.remove_orphaned_temporaries(fs, path) == [".shard-00001.parquet.tmp-5e9f73f5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".keep.tmp-notahex!",
        "shard-00000.parquet",
    ]

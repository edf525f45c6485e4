"""RLlib's methods without Ray: the one mapping of the platform's rows to RLlib's offline
columns, on a small dataset, and the input refused before any Ray work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
from typer.testing import CliRunner

from mfdiffuser.cli import app
from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.windows import episodes_from_table, mean_fields
from mfdiffuser.envs.crowd_1d import Crowd1D, Crowd1DSim
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.workers.rllib.data import observation_dim, rllib_rows

N, EPISODES = 7, 3


def test_rllib_rows_one_per_agent_step_whole_agent_episodes_and_the_last_new_obs() -> None:
    game = Crowd1D(size=5, horizon=4)
    policies = get_benchmark("crowd_1d").behaviour(game, "medium").policies
    # episodes 5..7 of a dataset, rows shuffled: the mapping needs no order
    table, _ = generate_shard(lambda: Crowd1DSim(game, N), policies, range(5, 5 + EPISODES), 3)
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    rows = rllib_rows(shuffled, game, N)
    T = game.horizon
    assert rows.num_rows == table.num_rows == EPISODES * N * T
    assert set(rows.column_names) >= {
        "eps_id", "agent_id", "obs", "actions", "rewards", "new_obs", "terminateds", "truncateds"
    }  # fmt: skip
    df = rows.to_pandas()
    # one RLlib episode per (platform episode, agent): T steps, 0..T-1 in order, never crossing
    assert df["eps_id"].nunique() == EPISODES * N
    for eps_id, steps in df.groupby("eps_id", sort=False):
        episode, agent = map(int, str(eps_id).split("-"))
        assert 5 <= episode < 5 + EPISODES and (steps["agent_id"] == agent).all()
        assert steps["t"].tolist() == list(range(T))
        assert steps["terminateds"].tolist() == [False] * (T - 1) + [True]
        assert not steps["truncateds"].any()
        obs, new_obs = np.stack(steps["obs"]), np.stack(steps["new_obs"])
        np.testing.assert_array_equal(new_obs[:-1], obs[1:])  # the next step's observation
        np.testing.assert_array_equal(new_obs[-1], obs[-1])  # no state after the last epoch
    # obs = features(s_t) ⊕ context(t, μ_t), μ_t over the episode's N agents; actions, rewards
    arrays = episodes_from_table(table, N)
    mu = mean_fields(arrays, game.n_states)
    e, agent, t = 1, 4, 2  # platform episode 6
    row = df[df["eps_id"] == f"{5 + e}-{agent}"].iloc[t]
    s = arrays.states[e, t, agent]
    expected = np.concatenate([game.features(s), game.context(t, mu[e, t])])
    assert len(row["obs"]) == observation_dim(game) == game.n_states + game.context_dim
    np.testing.assert_array_equal(row["obs"], expected.astype(np.float32))
    assert row["actions"] == arrays.actions[e, t, agent]
    assert row["rewards"] == arrays.rewards[e, t, agent]
    assert rows.schema.field("obs").type == pa.list_(pa.float32(), observation_dim(game))


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        (
            ["method=rllib_bc", "benchmark=battle"],
            "error: method.name = 'rllib_bc': rllib_bc needs a finite state space",
        ),
        (
            ["method=rllib_marwil", "beta=-1"],
            "error: method.params.beta = -1: Input should be greater than 0\n",
        ),
        (
            ["method=rllib_bc", "train_batch_size=100000"],
            "error: method.params.train_batch_size = 100000: Input should be less than or "
            "equal to 65536\n",
        ),
    ],
    ids=["battle", "beta", "train_batch_size"],
)
def test_mfd_run_refuses_bad_rllib_input_before_any_ray_work(
    settings: list[str], line: str, tmp_path: Path
) -> None:
    ray_before = ray.is_initialized()  # the session's Ray may run already (integration tests)
    result = CliRunner().invoke(
        app,
        ["run", *(a for s in settings for a in ("-s", s)), "--storage", str(tmp_path / "s")],
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert ray.is_initialized() == ray_before and sorted(p.name for p in tmp_path.iterdir()) == []

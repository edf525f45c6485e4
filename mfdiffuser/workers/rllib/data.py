"""The platform's Parquet shards as RLlib's offline rows, through Ray Data.

RLlib's offline API (new API stack) reads one row per transition with the columns `eps_id`,
`agent_id`, `t`, `obs`, `actions`, `rewards`, `new_obs`, `terminateds`, `truncateds`. Every agent
of a platform episode is one RLlib episode (RLlib's offline reader is single-agent), and its
observation is what the platform's mean-field baselines see: the agent's state features ⊕ the
context c(t, μ_t) (time features and the population's distribution, `game.context`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mfdiffuser.data.windows import episodes_from_table, mean_fields
from mfdiffuser.envs.finite import FiniteMeanFieldGame


def observation_dim(game: FiniteMeanFieldGame) -> int:
    return int(game.feature_dim + game.context_dim)


def rllib_rows(table: pa.Table, game: FiniteMeanFieldGame, n_agents: int) -> pa.Table:
    """Rows of whole platform episodes (any order) -> RLlib's offline rows, one per
    (episode, agent, t), ordered by episode, agent, then t.

    - `eps_id` = "<episode>-<agent>" (one agent's trajectory; never spans two episodes),
      `agent_id` = the agent, `t` = the decision time;
    - `obs` = features(s_t) ⊕ context(t, μ_t), with μ_t the histogram of the episode's N agents
      at t; `new_obs` = the next step's `obs`;
    - the last step (t = T - 1) is `terminateds` (the finite horizon ends the game; there is no
      reward after it) and its `new_obs` repeats its `obs`: the data holds no state after the
      last epoch, and a terminated step is never bootstrapped from;
    - `truncateds` is always false.
    μ_t needs every agent of the episode at t, so `table` must hold whole episodes (a shard does).
    """
    arrays = episodes_from_table(table, n_agents)
    episodes = np.unique(table["episode"].to_numpy())  # the order episodes_from_table uses
    e, horizon, n = arrays.states.shape
    mu = mean_fields(arrays, game.n_states)  # [E, T, S]
    ctx = np.stack([[game.context(t, mu[i, t]) for t in range(horizon)] for i in range(e)])
    # [E, N, T, ...]: one agent's steps contiguous
    states = arrays.states.transpose(0, 2, 1)
    obs = np.concatenate(
        [
            game.features(states),
            np.broadcast_to(ctx[:, None], (e, n, horizon, ctx.shape[-1])),
        ],
        axis=-1,
    ).astype(np.float32)
    new_obs = np.concatenate([obs[:, :, 1:], obs[:, :, -1:]], axis=2)
    agent = np.broadcast_to(np.arange(n)[None, :, None], (e, n, horizon)).ravel()
    episode = np.broadcast_to(episodes[:, None, None], (e, n, horizon)).ravel()
    t = np.broadcast_to(np.arange(horizon)[None, None, :], (e, n, horizon)).ravel()
    dim = obs.shape[-1]

    def vectors(x: np.ndarray) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)

    return pa.table(
        {
            "eps_id": pa.array([f"{a}-{b}" for a, b in zip(episode, agent, strict=True)]),
            "agent_id": pa.array(agent, pa.int32()),
            "t": pa.array(t, pa.int32()),
            "obs": vectors(obs),
            "actions": pa.array(arrays.actions.transpose(0, 2, 1).ravel(), pa.int64()),
            "rewards": pa.array(arrays.rewards.transpose(0, 2, 1).ravel(), pa.float32()),
            "new_obs": vectors(new_obs),
            "terminateds": pa.array(t == horizon - 1),
            "truncateds": pa.array(np.zeros(t.shape, dtype=bool)),
        }
    )


# RLlib's offline pre-learner (a Ray Data actor pool): one actor of half a CPU. With RLlib's
# defaults (two actors of one CPU each) they take both CPUs of a 2-CPU machine, and RLlib's
# reader deadlocks. (RLlib merges these over its own `concurrency` default, hence that name.)
PRELEARNER_KWARGS: dict[str, Any] = {"concurrency": 1, "num_cpus": 0.5}


def write_rllib_input(dataset: str, game: FiniteMeanFieldGame, out: Path) -> Path:
    """Every shard of the dataset mapped by `rllib_rows` (one Ray Data task per shard, each
    read checked against the manifest as it is read), written as Parquet under `out`."""
    import ray.data
    from ray.data import TaskPoolStrategy

    from mfdiffuser.data.manifest import read_manifest
    from mfdiffuser.data.verify import read_shard

    manifest = read_manifest(dataset)
    n_agents = int(manifest.spec["n_agents"])

    def convert(batch: dict[str, np.ndarray]) -> pa.Table:
        shards = [manifest.shards[int(i)] for i in batch["shard"]]
        return pa.concat_tables(
            [rllib_rows(read_shard(dataset, s), game, n_agents) for s in shards]
        )

    items = [{"shard": i} for i in range(len(manifest.shards))]
    mapped = ray.data.from_items(items).map_batches(  # as the pre-learner: one task at a time
        convert, batch_size=1, batch_format="numpy", compute=TaskPoolStrategy(1), num_cpus=0.5
    )
    mapped.write_parquet(str(out))
    return out

"""Team games on a grid simulator (battle, and any other simulator-only team benchmark).

What such a benchmark shares with the platform, so that no layer outside its own module and its
registry entry needs its name:
- `TeamLayout`: the map, team size, episode cap, actions and the coarse density grid, from
  which the window reader (`mfdiffuser.data.team_windows`) and the rollouts
  (`mfdiffuser.evaluation.team`) are built;
- the rows of its datasets (`TEAM_ROW_SCHEMA`): one per living agent and step, made from a
  recorded episode by `episode_rows`; `team_outcomes` recomputes a shard's outcomes from them
  and `team_summary` turns summed outcomes into the behaviour's figures.

The simulator it plays has `n_team`, `n_agents` (both teams, team 0 first), `team[N]`,
`alive[N]`, `kills[2]`, `t`, `reset(seed)`, `agent_states()` (per-agent features in [0, 1]),
`mean_field()` ([2, G, G] per-team densities), `step(actions[N])` -> (states, rewards, done) and
`winner()` (0, 1, or -1 for a draw).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mfdiffuser.data.schema import TEAM_ROW_SCHEMA


@dataclass(frozen=True)
class TeamLayout:
    map_size: int  # cells per side; a row's `state` is the cell y * map_size + x
    team_size: int
    horizon: int  # the episode cap (episodes may end earlier)
    n_actions: int
    max_hp: float  # hp / max_hp is the third feature
    density_grid: int  # G: the context's density maps are [2, G, G]
    # action -> the same action mirrored left-right (x -> -x): a team-0 policy plays team 1
    mirror: tuple[int, ...]

    @property
    def feature_dim(self) -> int:
        return 3  # (x, y, hp), each in [0, 1]

    @property
    def context_dim(self) -> int:
        return 1 + 2 * self.density_grid**2  # t / T and both teams' density maps


def episode_rows(episode: int, rec: dict[str, np.ndarray], team: np.ndarray) -> pa.Table:
    """Rows of a recorded episode: cells, hp, alive (at each step's start), actions, rewards
    and alive_end[T, N] (after each step); only agents alive at a step's start have a row."""
    t_idx, agent = np.nonzero(rec["alive"])
    return pa.table(
        {
            "episode": np.full(len(t_idx), episode, dtype=np.int64),
            "t": t_idx.astype(np.int32),
            "agent": agent.astype(np.int32),
            "team": team[agent].astype(np.int8),
            "state": rec["cells"][t_idx, agent].astype(np.int32),
            "hp": rec["hp"][t_idx, agent].astype(np.float32),
            "action": rec["actions"][t_idx, agent].astype(np.int32),
            "reward": rec["rewards"][t_idx, agent].astype(np.float32),
            "dies": ~rec["alive_end"][t_idx, agent],
        },
        schema=TEAM_ROW_SCHEMA,
    )


def generate_team_shard(
    sim: Any,
    play: Callable[[Any, int, int], dict[str, Any]],
    episodes: range,
    seed: int,
) -> tuple[pa.Table, dict[str, float]]:
    """Rows and outcomes of the given episodes; `play(sim, episode, episode_seed)` records one
    episode (its arrays as `episode_rows` takes them, plus returns[N], kills[2], winner)."""
    from mfdiffuser.data.generate import episode_seed

    tables = []
    out = dict.fromkeys(("episodes", "wins", "draws", "kills0", "kills1", "return_sum"), 0.0)
    for e in episodes:
        ep = play(sim, e, episode_seed(seed, e))
        tables.append(episode_rows(e, ep, sim.team))
        out["episodes"] += 1
        out["wins"] += ep["winner"] == 0
        out["draws"] += ep["winner"] == -1
        out["kills0"] += int(ep["kills"][0])
        out["kills1"] += int(ep["kills"][1])
        out["return_sum"] += float(ep["returns"][: sim.n_team].mean())
    return pa.concat_tables(tables), {k: float(v) for k, v in out.items()}


def team_outcomes(table: pa.Table, n_team: int) -> dict[str, float]:
    """The outcomes `generate_team_shard` reports, recomputed from its rows (resumed shards)."""
    episode = table["episode"].to_numpy()
    team = table["team"].to_numpy()
    dies = table["dies"].to_numpy()
    reward = table["reward"].to_numpy().astype(np.float64)
    eps, inverse = np.unique(episode, return_inverse=True)
    # kills by team 0 are deaths of team 1 and the other way round
    k0 = np.bincount(inverse, weights=dies & (team == 1), minlength=len(eps))
    k1 = np.bincount(inverse, weights=dies & (team == 0), minlength=len(eps))
    ret = np.bincount(inverse, weights=reward * (team == 0), minlength=len(eps)) / n_team
    return {
        "episodes": float(len(eps)),
        "wins": float((k0 > k1).sum()),
        "draws": float((k0 == k1).sum()),
        "kills0": float(k0.sum()),
        "kills1": float(k1.sum()),
        "return_sum": float(ret.sum()),
    }


def team_summary(tot: dict[str, float], made_by: dict[str, Any]) -> dict[str, Any]:
    """The behaviour's figures measured on a dataset's own episodes (no exact model).

    `return`: mean over episodes of team 0's mean per-agent return; `win_rate`, `draw_rate`:
    fractions of episodes; `kill_ratio`: team 0's kills / team 1's (a zero denominator counts as
    1, so it stays finite). There is no exploitability (None).
    """
    episodes = max(tot.get("episodes", 0.0), 1.0)
    return {
        "return": tot.get("return_sum", 0.0) / episodes,
        "exploitability": None,
        "win_rate": tot.get("wins", 0.0) / episodes,
        "draw_rate": tot.get("draws", 0.0) / episodes,
        "kill_ratio": tot.get("kills0", 0.0) / max(tot.get("kills1", 0.0), 1.0),
        "kills": [tot.get("kills0", 0.0), tot.get("kills1", 0.0)],
        "made_by": made_by,
    }

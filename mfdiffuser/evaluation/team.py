"""Team games scored by play: return, win rate, kill ratio and survival against an opponent.

Team 0 is played by a policy (`methods.team.TeamPolicy`, or a named scripted one); team 1 by a
scripted opponent of the benchmark (`Simulator.scripted`: battle's `expert`, `random`) or by a
policy. Both teams share the dynamics and start mirrored left-right, so a team-0 policy plays
team 1 on mirrored inputs (x -> 1 − x, the density maps swapped to own-team-first and flipped)
and its actions are mirrored back (`TeamLayout.mirror`). There is no exact model: no
exploitability and no decomposition; the mean-field figure is the spread of J^N (team 0's mean
per-agent return) across episodes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from mfdiffuser.envs.team import TeamLayout


class Player(Protocol):
    def reset(self) -> None: ...

    def act(
        self, t: int, feats: np.ndarray, mu: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray: ...


def _moves(
    player: Player | str,
    sim: Any,
    team: int,
    layout: TeamLayout,
    scripted: dict[str, Any],
    rng: np.random.Generator,
) -> np.ndarray:
    agents = np.arange(team * sim.n_team, (team + 1) * sim.n_team)
    if isinstance(player, str):
        return np.asarray(scripted[player](sim, agents, rng), dtype=np.int64)
    out = np.zeros(len(agents), dtype=np.int64)  # the dead's actions are ignored
    live = agents[sim.alive[agents]]
    if len(live) == 0:
        return out
    feats = sim.agent_states()[live]
    mu = sim.mean_field()
    if team == 1:  # mirrored: own team first, x flipped
        feats = feats.copy()
        feats[:, 0] = 1.0 - feats[:, 0]
        mu = mu[::-1, :, ::-1]
    acts = np.asarray(player.act(sim.t, feats, mu, rng), dtype=np.int64)
    if team == 1:
        acts = np.asarray(layout.mirror)[acts]
    out[live - team * sim.n_team] = acts
    return out


def play(
    sim: Any,
    layout: TeamLayout,
    scripted: dict[str, Any],
    team0: Player | str,
    team1: Player | str,
    seed: int,
) -> dict[str, Any]:
    """One episode: team 0's mean per-agent return, kills[2], winner, survival, steps."""
    sim.reset(seed)
    rng = np.random.default_rng([seed, 2])
    for p in (team0, team1):
        if not isinstance(p, str):
            p.reset()
    returns = np.zeros(sim.n_agents)
    done = False
    while not done:
        actions = np.concatenate(
            [
                _moves(team0, sim, 0, layout, scripted, rng),
                _moves(team1, sim, 1, layout, scripted, rng),
            ]
        )
        _, rew, done = sim.step(actions)
        returns += rew
    return {
        "return": float(returns[: sim.n_team].mean()),
        "kills": [int(k) for k in sim.kills],
        "winner": int(sim.winner()),
        "survival": float(sim.alive[: sim.n_team].mean()),
        "steps": int(sim.t),
    }


def team_scores(
    sim: Any,
    layout: TeamLayout,
    scripted: dict[str, Any],
    team0: Player | str,
    team1: Player | str,
    episodes: int,
    seed: int,
) -> dict[str, Any]:
    """Over `episodes` seeded episodes: `return` (mean of J^N, team 0's mean per-agent return)
    and `return_spread` (its standard deviation across episodes: the mean-field figure),
    `win_rate`, `draw_rate`, `kill_ratio` (team 0's kills / team 1's, a zero denominator
    counted as 1), `survival` (mean fraction of team 0 alive at the end)."""
    eps = [
        play(
            sim,
            layout,
            scripted,
            team0,
            team1,
            int(np.random.SeedSequence([seed, e]).generate_state(1)[0]),
        )
        for e in range(episodes)
    ]
    rets = np.array([e["return"] for e in eps])
    kills = np.array([e["kills"] for e in eps]).sum(axis=0)
    return {
        "return": float(rets.mean()),
        "return_spread": float(rets.std()),
        "win_rate": float(np.mean([e["winner"] == 0 for e in eps])),
        "draw_rate": float(np.mean([e["winner"] == -1 for e in eps])),
        "kill_ratio": float(kills[0] / max(int(kills[1]), 1)),
        "survival": float(np.mean([e["survival"] for e in eps])),
        "episodes": episodes,
        "returns": rets.tolist(),
    }

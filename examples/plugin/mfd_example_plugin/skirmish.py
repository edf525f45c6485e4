"""skirmish: two teams on an open square grid; a simulator-only benchmark (no exact model).

What a simulator-only team game gives the platform (`mfdiffuser.envs.registry.Simulator`): a
simulator with the team contract of `mfdiffuser.envs.team` (`n_team`, `n_agents`, `team`,
`alive`, `kills`, `t`, `reset`, `agent_states`, `mean_field`, `step`, `winner`), its scripted
players, the behaviour of each data quality, and a `TeamLayout`. Data generation, the window
reader, training, the team rollouts and the scores are the platform's.

Rules: a `map_size` x `map_size` grid without walls; team 0 starts in the leftmost columns,
team 1 mirrored in the rightmost. Actions 0 stay, 1 left, 2 right, 3 up, 4 down, 5 strike.
Moves are clipped to the grid (cells may be shared). A striker hits one living enemy in its
3 x 3 neighbourhood (the lowest-numbered), taking `damage` of its hp (max 1); at hp <= 0 it
dies. Rewards: +0.1 per hit dealt, +1 per kill, -0.1 per hit taken. An episode ends when a team
is gone or after `max_steps`; the team with more kills wins.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mfdiffuser.envs.registry import BenchmarkSpec, Simulator
from mfdiffuser.envs.team import TeamLayout, generate_team_shard, team_outcomes, team_summary

N_ACTIONS = 6
STRIKE = 5
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]])  # (dx, dy) per action
MIRROR = (0, 2, 1, 3, 4, 5)  # left <-> right
NEIGHBOURS = np.array([(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
EPSILON = {"random": [1.0], "medium": [0.5], "expert": [0.0], "mixed": [1.0, 0.5, 0.0]}
EPSILON["medium-expert"] = [0.5, 0.0]


def capacity(map_size: int) -> int:
    """Agents per team the starting columns hold (a third of the map's width)."""
    return max(1, map_size // 3) * map_size


def map_for(n: int) -> int:
    """The smallest map whose starting columns hold `n` agents per team."""
    size = max(4, math.isqrt(3 * n))
    while capacity(size) < n:
        size += 1
    return size


class SkirmishParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    map_size: int | None = Field(
        default=None, ge=4, le=4096, description="cells per side; None = the smallest that fits"
    )
    agents_per_team: int | None = Field(
        default=None, ge=1, description="agents in each team; None = the dataset's n_agents (8)"
    )
    max_steps: int = Field(default=20, ge=1, le=10_000, description="episode length cap")
    damage: float = Field(default=0.5, gt=0.0, le=1.0, description="hp taken by one hit")
    density_grid: int = Field(default=4, ge=1, le=64, description="coarse mean-field grid side")

    @property
    def team_size(self) -> int:
        return self.agents_per_team if self.agents_per_team is not None else 8

    @property
    def size(self) -> int:
        return self.map_size if self.map_size is not None else map_for(self.team_size)

    def with_team_size(self, n: int) -> SkirmishParams:
        """These parameters with `n` agents per team (a dataset's or an evaluation's N), the
        map resolved and checked to hold them."""
        if self.agents_per_team is not None and self.agents_per_team != n:
            raise ValueError(
                f"n_agents = {n}: skirmish's agents_per_team is set to {self.agents_per_team}; "
                "they must agree (or leave agents_per_team unset)"
            )
        size = self.map_size if self.map_size is not None else map_for(n)
        if n > capacity(size):
            raise ValueError(
                f"n_agents = {n}: skirmish's map_size {size} starts at most {capacity(size)} "
                f"agents per team; allowed: 1..{capacity(size)} (or leave map_size unset)"
            )
        return SkirmishParams.model_validate(
            {**self.model_dump(), "agents_per_team": n, "map_size": size}
        )


class SkirmishSim:
    """The N-agent simulator (both teams, team 0 first): numpy, seeded, O(N) per step."""

    def __init__(self, params: SkirmishParams | dict[str, Any] | None = None) -> None:
        self.params = SkirmishParams.model_validate(params or {})
        self.map_size = self.params.size
        self.n_team = self.params.team_size
        self.n_agents = 2 * self.n_team
        self.team = np.repeat(np.array([0, 1], dtype=np.int64), self.n_team)
        self.reset(0)

    def reset(self, seed: int) -> np.ndarray:
        g, n = self.map_size, self.n_team
        k = np.arange(n)
        x0, y0 = k // g, k % g  # column by column from the left edge
        self.x = np.concatenate([x0, g - 1 - x0])
        self.y = np.concatenate([y0, y0])
        self.hp = np.ones(self.n_agents)
        self.alive = np.ones(self.n_agents, dtype=bool)
        self.kills = np.zeros(2, dtype=np.int64)
        self.t = 0
        self.rng = np.random.default_rng(seed)
        return self.agent_states()

    def cells(self) -> np.ndarray:
        return self.y * self.map_size + self.x

    def agent_states(self) -> np.ndarray:
        side = max(self.map_size - 1, 1)
        return np.stack([self.x / side, self.y / side, self.hp], axis=1).astype(np.float64)

    def mean_field(self) -> np.ndarray:
        grid = self.params.density_grid
        bx, by = self.x * grid // self.map_size, self.y * grid // self.map_size
        out = np.zeros((2, grid, grid))
        np.add.at(out, (self.team[self.alive], by[self.alive], bx[self.alive]), 1.0)
        return out / self.n_team

    def winner(self) -> int:
        return 0 if self.kills[0] > self.kills[1] else 1 if self.kills[1] > self.kills[0] else -1

    def _first_enemy_at(self) -> np.ndarray:
        """[2, cells]: the lowest-numbered living agent of each team in each cell, or -1."""
        first = np.full((2, self.map_size**2), -1, dtype=np.int64)
        live = np.flatnonzero(self.alive)[::-1]  # written last = lowest number wins
        first[self.team[live], self.cells()[live]] = live
        return first

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        actions = np.asarray(actions, dtype=np.int64)
        rewards = np.zeros(self.n_agents)
        strikers = np.flatnonzero(self.alive & (actions == STRIKE))
        first = self._first_enemy_at()
        target = np.full(len(strikers), -1, dtype=np.int64)
        for dx, dy in NEIGHBOURS:  # the first neighbour cell holding an enemy
            nx, ny = self.x[strikers] + dx, self.y[strikers] + dy
            inside = (nx >= 0) & (nx < self.map_size) & (ny >= 0) & (ny < self.map_size)
            cell = np.where(inside, ny * self.map_size + nx, 0)
            found = np.where(inside, first[1 - self.team[strikers], cell], -1)
            target = np.where(target < 0, found, target)
        hit = target >= 0
        attackers, victims = strikers[hit], target[hit]
        np.add.at(self.hp, victims, -self.params.damage)
        rewards[attackers] += 0.1
        np.add.at(rewards, victims, -0.1)
        dead = self.alive & (self.hp <= 1e-9)
        for a, v in zip(attackers, victims, strict=True):  # one kill per death, first striker
            if dead[v] and self.alive[v]:
                rewards[a] += 1.0
                self.kills[self.team[a]] += 1
                self.alive[v] = False
        movers = self.alive & (actions != STRIKE)
        self.x = np.where(movers, np.clip(self.x + MOVES[actions, 0], 0, self.map_size - 1), self.x)
        self.y = np.where(movers, np.clip(self.y + MOVES[actions, 1], 0, self.map_size - 1), self.y)
        self.t += 1
        gone = [not self.alive[self.team == k].any() for k in (0, 1)]
        return self.agent_states(), rewards, bool(self.t >= self.params.max_steps or any(gone))


def random_actions(sim: SkirmishSim, agents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, N_ACTIONS, size=len(agents))


def expert_actions(sim: SkirmishSim, agents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strike when an enemy is within reach, else step toward the enemies' centre."""
    out = np.zeros(len(agents), dtype=np.int64)
    for team in (0, 1):
        mine = agents[sim.team[agents] == team]
        enemies = np.flatnonzero(sim.alive & (sim.team != team))
        if len(mine) == 0 or len(enemies) == 0:
            continue
        dx = sim.x[enemies][None, :] - sim.x[mine][:, None]
        dy = sim.y[enemies][None, :] - sim.y[mine][:, None]
        near = (np.maximum(np.abs(dx), np.abs(dy)) <= 1).any(axis=1)
        cx, cy = sim.x[enemies].mean() - sim.x[mine], sim.y[enemies].mean() - sim.y[mine]
        along_x = np.abs(cx) >= np.abs(cy)
        move = np.where(along_x, np.where(cx < 0, 1, 2), np.where(cy < 0, 3, 4))
        out[np.searchsorted(agents, mine)] = np.where(near, STRIKE, move)
    return out


POLICIES = {"expert": expert_actions, "random": random_actions}


def _epsilons(quality: str) -> list[float]:
    if quality not in EPSILON:
        raise ValueError(f"quality = {quality!r}: allowed: {', '.join(EPSILON)}")
    return EPSILON[quality]


def play_episode(sim: SkirmishSim, eps: float, seed: int) -> dict[str, Any]:
    """Team 0 plays the expert with eps-uniform noise, team 1 the expert; recorded per step."""
    sim.reset(seed)
    rng = np.random.default_rng([seed, 1])
    team0, team1 = np.arange(sim.n_team), np.arange(sim.n_team, sim.n_agents)
    rec: dict[str, list[np.ndarray]] = {k: [] for k in ("cells", "hp", "alive", "actions")}
    rec["rewards"] = []
    returns = np.zeros(sim.n_agents)
    done = False
    while not done:
        own = expert_actions(sim, team0, rng)
        noisy = rng.random(len(own)) < eps
        own[noisy] = rng.integers(0, N_ACTIONS, size=int(noisy.sum()))
        actions = np.concatenate([own, expert_actions(sim, team1, rng)])
        for key, value in (("cells", sim.cells()), ("hp", sim.hp), ("alive", sim.alive)):
            rec[key].append(value.copy())
        rec["actions"].append(actions)
        _, rew, done = sim.step(actions)
        rec["rewards"].append(rew)
        returns += rew
    out: dict[str, Any] = {k: np.stack(v) for k, v in rec.items()}
    out["alive_end"] = np.concatenate([out["alive"][1:], sim.alive[None]])
    out.update(returns=returns, kills=sim.kills.copy(), winner=sim.winner())
    return out


def generate_shard(
    params: SkirmishParams, quality: str, episodes: range, seed: int
) -> tuple[Any, dict[str, float]]:
    mix = _epsilons(quality)
    play = lambda sim, e, s: play_episode(sim, mix[e % len(mix)], s)  # noqa: E731
    return generate_team_shard(SkirmishSim(params), play, episodes, seed)


def behaviour_info(quality: str) -> dict[str, Any]:
    return {"quality": quality, "epsilon": _epsilons(quality), "expert": expert_actions.__doc__}


def stats(params: SkirmishParams, quality: str, episodes: int) -> dict[str, Any]:
    """The scripted behaviour of `quality` against the expert, played `episodes` times: team 0's
    mean per-agent return (and its spread across episodes), win and draw rates, kill ratio."""
    if episodes < 1:
        raise ValueError(f"episodes = {episodes}: must be >= 1")
    mix, sim = _epsilons(quality), SkirmishSim(params)
    eps = [play_episode(sim, mix[e % len(mix)], seed=e) for e in range(episodes)]
    rets = np.array([ep["returns"][: sim.n_team].mean() for ep in eps])
    kills = np.sum([ep["kills"] for ep in eps], axis=0)
    return {
        "return": float(rets.mean()),
        "return_std": float(rets.std()),
        "win_rate": float(np.mean([ep["winner"] == 0 for ep in eps])),
        "draw_rate": float(np.mean([ep["winner"] == -1 for ep in eps])),
        "kill_ratio": float(kills[0] / max(int(kills[1]), 1)),
        "episodes": episodes,
    }


def layout(params: SkirmishParams) -> TeamLayout:
    return TeamLayout(
        map_size=params.size,
        team_size=params.team_size,
        horizon=params.max_steps,
        n_actions=N_ACTIONS,
        max_hp=1.0,
        density_grid=params.density_grid,
        mirror=MIRROR,
    )


def _no_game(params: Any) -> Any:
    raise ValueError("skirmish has no exact mean-field model")


SPEC = BenchmarkSpec(
    name="skirmish",
    version=1,
    family="example-plugin",
    description="two teams strike and chase on an open grid; simulator only (mfd-example-plugin)",
    params_model=SkirmishParams,
    make_game=_no_game,
    make_sim=lambda p, n: SkirmishSim(p.with_team_size(n)),
    episode_length=lambda p: p.max_steps,
    populations="teams",
    state_space="continuous",
    row_schema="team",
    simulator=Simulator(
        with_agents=lambda p, n: p.with_team_size(n),
        generate_shard=generate_shard,
        outcomes=team_outcomes,
        summary=lambda out, q: team_summary(out, behaviour_info(q)),
        stats=stats,
        layout=layout,
        make_sim=SkirmishSim,
        scripted=POLICIES,
    ),
)

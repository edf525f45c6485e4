"""The numpy battle engine the fused one replaced (imported by tests/unit/test_battle.py, not
collected): the same rules, step by step in vectorised numpy, drawing the same random
priorities. The fused engine (`mfdiffuser.envs.battle.BattleSim`) must agree with it on every
array of every step under a seed, observations included."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mfdiffuser.envs.battle import (
    ATTACK_PENALTY,
    ATTACKS,
    DAMAGE,
    DEATH_PENALTY,
    FREE,
    HIT_REWARD,
    KILL_REWARD,
    MAX_HP,
    MOVES,
    N_ACTIONS,
    N_CHANNELS,
    N_MOVES,
    RECOVER,
    STEP_REWARD,
    WALL,
    BattleParams,
    initial_positions,
)

FloatArray = np.ndarray
IntArray = np.ndarray
_NO_KEY = np.iinfo(np.int64).max
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class NumpyBattleSim:
    """Both teams' agents, batched: `step(actions[2n])` with team 0's actions first.

    O(N) per step (scatter-adds and gathers on the map; no loop over agents). Every random draw
    comes from the generator seeded by `reset(seed)`, so an episode is a function of the seed and
    the actions.
    """

    def __init__(self, params: BattleParams | dict[str, Any] | None = None) -> None:
        self.params = params if isinstance(params, BattleParams) else BattleParams(**(params or {}))
        p = self.params
        self.map_size = m = p.size
        self.n_team = n = p.team_size
        self.n_agents = 2 * n
        self.max_steps = p.max_steps
        self.radius = p.view_range // 2
        self.team = np.repeat(np.arange(2, dtype=np.int64), n)  # [N]
        self.team_offset = np.array([0, n])
        self._x0, self._y0 = initial_positions(m, n)
        # walls, padded by the view radius so every view is one slice (off-map = wall)
        r = self.radius
        self.wall = np.ones((m, m), dtype=bool)
        self.wall[1:-1, 1:-1] = False
        self._pad = m + 2 * r
        # Per-team observation grids [pad, pad, 5] in the observer's channel order; the border
        # (wall channel) is written once, interiors every call. Not allocated without
        # observations (they dominate memory at large maps).
        self._obs_grid = np.zeros((2, 1, 1, N_CHANNELS), dtype=np.float32)
        self._views: list[np.ndarray] = []
        if p.observations:
            self._init_views()
        # per action: the offset of its target in `occ` (moves for 0..12, attacks for 13..20;
        # the other kind's entries are never read)
        dxy = np.concatenate([MOVES, ATTACKS])
        self._dcell = dxy[:, 1] * m + dxy[:, 0]  # [21]
        # scratch for move resolution: the best priority key per cell, reset after use
        self._best = np.full((m + 2) * m, _NO_KEY, dtype=np.int64)
        self._index = np.arange(self.n_agents)
        # per index into occ: the cell's column, row and normalised (x, y) for the states, the
        # latter as one complex64 so a move updates both with one 1-D scatter (a 2-D fancy
        # assignment costs ~10x more per step)
        self._cell_x = np.tile(np.arange(m), m + 2)
        self._cell_y = np.repeat(np.arange(-1, m + 1), m)
        self._cell_xy = ((self._cell_x + 1j * self._cell_y) / (m - 1)).astype(np.complex64)
        self.reset(0)

    def _init_views(self) -> None:
        m, r, v = self.map_size, self.radius, self.params.view_range
        self._obs_grid = np.zeros((2, self._pad, self._pad, N_CHANNELS), dtype=np.float32)
        self._obs_grid[:, :, :, 0] = 1.0
        self._obs_grid[:, r : r + m, r : r + m, 0] = self.wall
        # each [m, m, V, V, 5]: a strided view (no copy), indexed by the agent's (y, x)
        self._views = [
            sliding_window_view(self._obs_grid[k], (v, v, N_CHANNELS))[:, :, 0] for k in range(2)
        ]

    # -- state --------------------------------------------------------------------------------
    def reset(self, seed: int) -> FloatArray:
        m = self.map_size
        self.rng = np.random.default_rng(seed)
        self.hp = np.full(self.n_agents, MAX_HP)
        self.alive = np.ones(self.n_agents, dtype=bool)
        # occ: FREE, WALL or the agent in each cell, on the map with one extra wall row above and
        # below, so that pos + offset of any move or attack (|d| <= 2) stays inside the array and
        # an off-map x wraps onto the wall column of a neighbouring row.
        self.occ = np.full((m + 2) * m, WALL, dtype=np.int64)
        self.occ[m:-m][~self.wall.ravel()] = FREE
        self.pos = (self._y0 + 1) * m + self._x0  # [N] index into occ
        self.occ[self.pos] = np.arange(self.n_agents)
        self.kills = np.zeros(2, dtype=np.int64)  # kills made by team 0, team 1
        self.n_alive = np.array([self.n_team, self.n_team])
        self.t = 0
        self._xy = self._cell_xy[self.pos]  # [N] complex64: normalised x + i·y
        return self.agent_states()

    @property
    def x(self) -> IntArray:
        """Column of every agent [N] (the dead: where they died)."""
        return self._cell_x[self.pos]

    @property
    def y(self) -> IntArray:
        """Row of every agent [N]."""
        return self._cell_y[self.pos]

    def place(self, x: IntArray, y: IntArray, hp: FloatArray | None = None) -> FloatArray:
        """Put the agents at (x[N], y[N]) with hp[N] (default full; hp < 0 = dead): a scenario.

        Raises ValueError for a wall cell or two living agents in one cell.
        """
        m = self.map_size
        x, y = np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)
        hp = np.full(self.n_agents, MAX_HP) if hp is None else np.asarray(hp, dtype=np.float64)
        alive = hp >= 0
        if x.shape != (self.n_agents,) or y.shape != x.shape or hp.shape != x.shape:
            raise ValueError(f"place: x, y, hp must have shape ({self.n_agents},)")
        if ((x < 1) | (x > m - 2) | (y < 1) | (y > m - 2)).any():
            raise ValueError(f"place: cells must be inside the walls, 1..{m - 2}")
        pos = (y + 1) * m + x
        if len(np.unique(pos[alive])) != alive.sum():
            raise ValueError("place: two living agents in one cell")
        self.occ[self.occ >= 0] = FREE
        self.pos = pos
        self.occ[pos[alive]] = np.flatnonzero(alive)
        self.hp, self.alive = np.minimum(hp, MAX_HP), alive
        self.n_alive = np.bincount(self.team[alive], minlength=2)
        self._xy = self._cell_xy[pos]
        return self.agent_states()

    def cells(self) -> IntArray:
        """Cell index y * map_size + x of every agent [N] (the dead: where they died)."""
        return self.pos - self.map_size

    def agent_states(self) -> FloatArray:
        """Per-agent (x, y, hp) normalised to [0, 1], [N, 3] float32 (dead: hp < 0)."""
        out = np.empty((self.n_agents, 3), dtype=np.float32)
        out[:, :2] = self._xy.view(np.float32).reshape(-1, 2)
        np.multiply(self.hp, 1.0 / MAX_HP, out=out[:, 2], casting="unsafe")
        return out

    def alive_counts(self) -> IntArray:
        return self.n_alive.copy()

    @property
    def done(self) -> bool:
        return self.t >= self.max_steps or bool(self.n_alive.min() == 0)

    def winner(self) -> int:
        """0 or 1 for the team with more kills, -1 for a draw."""
        if self.kills[0] == self.kills[1]:
            return -1
        return int(np.argmax(self.kills))

    def mean_field(self) -> FloatArray:
        """Coarse density maps [2, G, G] (row = y): living agents per coarse cell / team size."""
        g, m = self.params.density_grid, self.map_size
        coarse = (self.y * g // m) * g + (self.x * g // m)
        idx = self.team * (g * g) + coarse
        counts = np.bincount(idx[self.alive], minlength=2 * g * g)
        return (counts / self.n_team).reshape(2, g, g)

    def observations(self, agents: IntArray | None = None) -> FloatArray:
        """Local views [len(agents), V, V, 5] float32 of the given (default: all) agents."""
        if not self._views:
            raise ValueError("observations: this battle was made with observations = False")
        agents = np.arange(self.n_agents) if agents is None else np.asarray(agents)
        r, m = self.radius, self.map_size
        live = np.flatnonzero(self.alive)
        py, px = self._cell_y[self.pos[live]] + r, self._cell_x[self.pos[live]] + r
        own0 = self.team[live] == 0
        hp = (self.hp[live] / MAX_HP).astype(np.float32)
        for k in range(2):
            grid = self._obs_grid[k]
            grid[r : r + m, r : r + m, 1:] = 0.0
            # team k's view: channels 1, 2 hold team k, channels 3, 4 the other team
            ch = np.where(own0 == (k == 0), 1, 3)
            grid[py, px, ch] = 1.0
            grid[py, px, ch + 1] = hp
        out = np.empty((len(agents), 2 * r + 1, 2 * r + 1, N_CHANNELS), dtype=np.float32)
        for k in range(2):
            sel = self.team[agents] == k
            pos = self.pos[agents[sel]]
            out[sel] = self._views[k][self._cell_y[pos], self._cell_x[pos]]
        return out

    def _priorities(self, k: int) -> IntArray:
        """k distinct random keys: 39 random high bits, the position as low bits (no ties).

        Raw generator output: `integers` with a bound costs ~3x more per step.
        """
        raw = self.rng.bit_generator.random_raw(k) >> np.uint64(25)
        return (raw.astype(np.int64) << 24) | self._index[:k]

    # -- dynamics -----------------------------------------------------------------------------
    def step(self, actions: IntArray) -> tuple[FloatArray, FloatArray, bool]:
        """actions[N], team 0 first (the dead's are ignored) -> (states[N, 3], rewards[N], done)."""
        actions = np.asarray(actions)
        if actions.shape != (self.n_agents,):
            raise ValueError(
                f"actions: shape {actions.shape}, expected ({self.n_agents},) (team 0 then team 1)"
            )
        # one pass: as unsigned, negative actions are huge
        if actions.dtype.kind not in "iu" or (
            actions.size and actions.view(_UNSIGNED[actions.itemsize]).max() >= N_ACTIONS
        ):
            raise ValueError(f"actions: values must be in 0..{N_ACTIONS - 1}")
        occ, alive, team = self.occ, self.alive, self.team
        # Every action's target cell and its occupant at the start of the step, for all agents at
        # once (cheaper than per-kind subsets): "stay" targets the agent's own cell.
        target = self.pos + self._dcell[actions]
        occupant = occ[target]
        attacking = alive & (actions >= N_MOVES)
        rewards = alive * STEP_REWARD + attacking * ATTACK_PENALTY

        # 1. attacks on opponents
        hit = np.flatnonzero(attacking & (occupant >= 0))
        hit = hit[team[occupant[hit]] != team[hit]]
        newly_dead = hit[:0]
        if len(hit):
            victim = occupant[hit]
            order = np.lexsort((self._priorities(len(hit)), victim))  # by victim, then priority
            attackers, victim = hit[order], victim[order]
            first = np.ones(len(victim), dtype=bool)
            first[1:] = victim[1:] != victim[:-1]
            starts = np.flatnonzero(first)
            # rank k of each hit on its victim (1-based); the k-th hit kills when hp - 2k < 0
            rank = np.arange(1, len(victim) + 1) - np.repeat(
                starts, np.diff(starts, append=len(victim))
            )
            lethal = np.floor(self.hp[victim] / DAMAGE).astype(np.int64) + 1
            landed = rank <= lethal
            rewards[attackers[landed]] += HIT_REWARD
            killer = rank == lethal
            rewards[attackers[killer]] += KILL_REWARD
            self.kills += np.bincount(team[attackers[killer]], minlength=2)
            np.subtract.at(self.hp, victim[landed], DAMAGE)
            newly_dead = victim[killer]
            if len(newly_dead):
                rewards[newly_dead] += DEATH_PENALTY
                alive[newly_dead] = False
                self.n_alive -= np.bincount(team[newly_dead], minlength=2)

        # 2. moves of the survivors into cells free at the start of the step ("stay" never is)
        movers = np.flatnonzero((occupant == FREE) & (actions < N_MOVES) & alive)
        if len(movers):
            target = target[movers]
            key = self._priorities(len(movers))
            np.minimum.at(self._best, target, key)
            win = self._best[target] == key
            self._best[target] = _NO_KEY
            movers, target = movers[win], target[win]
            occ[self.pos[movers]] = FREE
            occ[target] = movers
            self.pos[movers] = target
            self._xy[movers] = self._cell_xy[target]

        # 3. recovery of the living and removal of the dead
        np.add(self.hp, RECOVER, out=self.hp, where=alive)
        np.minimum(self.hp, MAX_HP, out=self.hp)
        if len(newly_dead):
            occ[self.pos[newly_dead]] = FREE
        self.t += 1
        return self.agent_states(), rewards, self.done

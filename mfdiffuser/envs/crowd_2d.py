"""crowd_2d: OpenSpiel's crowd_modelling_2d on a 2-D torus with walls, with exact value semantics.

Grid and indices. A size x size torus; cell (x, y) has state index s = y * size + x, so x is the
column and y the row of an ASCII map (row 0 is the map's first line). Wall cells are states too
(index arithmetic stays trivial) but never hold mass.

Actions (OpenSpiel's order): 0 = (dx, dy) = (0, -1), 1 = (-1, 0), 2 = (0, 0) stay (neutral),
3 = (+1, 0), 4 = (0, +1). Every action is legal everywhere: a move into a wall leaves the agent
where it is (OpenSpiel instead removes such actions from the legal set).

Dynamics at epoch t: the agent at c_t moves by its action to m (or stays if the target is a wall),
then noise moves it again by one of the 5 displacements, drawn, as in OpenSpiel's chance node,
only among those landing on a free cell at m (stay always does): with k such displacements and
noise intensity p (OpenSpiel's noise_intensity, default 1), each non-stay one has probability
p / k and stay has 1 - p + p / k. So with the default p = 1 noise is uniform over the k legal
displacements, stay included (on an open grid: 1/5 each).

Reward at t = 0..H-1, as in OpenSpiel's CrowdModelling2dState::Rewards, for an agent at (x, y):

    r_t = r_x + r_y - (|dx(a_{t-1})| + |dy(a_{t-1})|) / size
          - crowd_aversion * log(mu_t(x, y) + 1e-25),
    r_x = 1 - sum_i 2 w_i / size * |x - px_i|,   r_y = 1 - sum_i 2 w_i / size * |y - py_i|,

with positional targets (px_i, py_i) and weights w_i (default: the single target
(size // 2, size // 2) with weight 1; the distance terms are not circular) and a_{-1} = stay.
With only_distribution_reward the reward is the crowd term alone. A blocked move still pays its
movement cost (OpenSpiel never has one). OpenSpiel's with_congestion option (cost scaled by
mu_{t+1} at the landing cell) is not supported: it would need mu_{t+1} inside an epoch-t reward.

Exact model over the cell alone. The true state is (cell, previous action) because of the
movement cost. Charging the cost of a_t at epoch t instead of t+1, and not at all for a_{H-1}
(whose cost is never paid, the game ends first), gives the epoch reward

    r'_t(s, a, mu) = r_x(s) + r_y(s) - crowd_aversion * log(mu(s) + 1e-25)
                     - [t < H-1] * (|dx(a)| + |dy(a)|) / size.

Along every trajectory sum_t r_t = sum_t r'_t (same terms, each cost shifted one epoch earlier;
the a_{-1} cost is 0 and the a_{H-1} cost is dropped in both), so for a policy pi(a | s, t) and any
population flow both forms have the same expected return. Over the true state,
V_t(s, a_prev) = V'_t(s) - cost(a_prev) for t >= 1, and at t = 0, a_prev is stay, so values agree
exactly; the cost of a_prev does not depend on the current action, so the best response over
(s, a_prev) is the best response over s. OpenSpiel's evaluators cache values keyed on (x, y, t)
only, keeping whichever a_prev reached the cell first, so its values differ from these exact ones.

Deviations from OpenSpiel's code, on purpose: x and y are never transposed (its initial
distribution is merged as x * size + y but decoded as (index % size, index // size), which swaps
x and y for asymmetric starts); the default mu0 is uniform over free cells (OpenSpiel's is uniform
over all cells, walls included); every action is legal (see above).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mfdiffuser.envs.finite import FiniteMeanFieldGame, FloatArray, IntArray, LinearDynamics
from mfdiffuser.envs.simulate import LastActionSim

MOVE_X = np.array([0, -1, 0, 1, 0], dtype=np.int64)  # dx(a) for actions a = 0..4
MOVE_Y = np.array([-1, 0, 0, 0, 1], dtype=np.int64)  # dy(a)
NEUTRAL_ACTION = 2
N_ACTIONS = len(MOVE_X)
LOG_EPS = 1e-25
WALL = "#"
FREE = (".", " ")

# OpenSpiel's four-rooms map (crowd_modelling_2d.py, FOUR_ROOMS), with '.' for its ' ' cells.
FOUR_ROOMS_MAP = "\n".join(
    [
        "#############",
        "#.....#.....#",
        "#.....#.....#",
        "#...........#",
        "#.....#.....#",
        "#.....#.....#",
        "###.#####.###",
        "#.....#.....#",
        "#.....#.....#",
        "#...........#",
        "#.....#.....#",
        "#.....#.....#",
        "#############",
    ]
)


def parse_map(walls: str) -> list[str]:
    """Rows of an ASCII map: '#' wall, '.' or ' ' free; leading/trailing empty lines dropped."""
    rows = walls.split("\n")
    while rows and rows[0] == "":
        rows.pop(0)
    while rows and rows[-1] == "":
        rows.pop()
    return rows


Cell = tuple[int, int]  # (x, y): column, row


class Crowd2DParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    size: int = Field(
        default=10,
        ge=2,
        le=1000,
        description="torus side, 2..1000; set from the map when `walls` is given",
    )
    horizon: int = Field(default=10, ge=1, le=10_000, description="decision epochs H, 1..1e4")
    crowd_aversion: float = Field(
        default=1.0, ge=0.0, description="coefficient of -log(mu(x, y) + 1e-25)"
    )
    noise_intensity: float = Field(
        default=1.0, ge=0.0, le=1.0, description="OpenSpiel's noise_intensity p (see module doc)"
    )
    only_distribution_reward: bool = Field(
        default=False, description="reward = crowd term only (no position terms, no move cost)"
    )
    positional_reward: list[Cell] = Field(
        default_factory=list, description="target cells (x, y); empty = the centre cell"
    )
    positional_reward_value: list[float] = Field(
        default_factory=list, description="weights w_i of the targets (same length)"
    )
    walls: str | None = Field(
        default=None,
        description="square ASCII map, rows = y, columns = x: '#' wall, '.' or ' ' free",
    )
    initial: Literal["uniform"] | list[Cell] = Field(
        default="uniform", description="mu0: uniform over free cells, or mass on cells (x, y)"
    )
    initial_weights: list[float] | None = Field(
        default=None, description="mass per `initial` cell (normalised); default equal"
    )

    @field_validator("walls")
    @classmethod
    def _check_walls(cls, walls: str | None) -> str | None:
        if walls is None:
            return None
        rows = parse_map(walls)
        if not rows:
            raise ValueError("walls: the map has no rows")
        widths = {len(row) for row in rows}
        if len(widths) != 1:
            raise ValueError(f"walls: rows must all have the same length, got {sorted(widths)}")
        width = widths.pop()
        if width != len(rows):
            raise ValueError(f"walls: the map must be square, got {width} x {len(rows)}")
        if width < 2:
            raise ValueError("walls: the map must be at least 2 x 2")
        bad = set("".join(rows)) - {WALL, *FREE}
        if bad:
            raise ValueError(f"walls: allowed characters are '#', '.', ' '; got {sorted(bad)}")
        if all(ch == WALL for row in rows for ch in row):
            raise ValueError("walls: the map has no free cell")
        return "\n".join(rows)

    @model_validator(mode="after")
    def _check_consistency(self) -> Crowd2DParams:
        if self.walls is not None:
            n = len(parse_map(self.walls))
            if "size" in self.model_fields_set and self.size != n:
                raise ValueError(f"size: {self.size} contradicts the {n} x {n} map in walls")
            self.size = n
        n = self.size
        wall = _wall_mask(self.walls, n)

        def check_cell(name: str, cell: Cell, free: bool) -> None:
            x, y = cell
            if not (0 <= x < n and 0 <= y < n):
                raise ValueError(f"{name}: cell {cell} is off the map (x, y in 0..{n - 1})")
            if free and wall[y, x]:
                raise ValueError(f"{name}: cell {cell} is a wall")

        if self.initial != "uniform":
            if not self.initial:
                raise ValueError("initial: give at least one cell, or 'uniform'")
            for cell in self.initial:
                check_cell("initial", cell, free=True)
            if self.initial_weights is not None:
                weights = self.initial_weights
                if len(weights) != len(self.initial):
                    raise ValueError("initial_weights: need one weight per initial cell")
                if min(weights) < 0 or sum(weights) <= 0:
                    raise ValueError("initial_weights: must be >= 0 with a positive sum")
        elif self.initial_weights is not None:
            raise ValueError("initial_weights: only with a list of initial cells")
        if len(self.positional_reward) != len(self.positional_reward_value):
            raise ValueError("positional_reward_value: need one value per positional_reward cell")
        for cell in self.positional_reward:
            check_cell("positional_reward", cell, free=False)
        return self


def _wall_mask(walls: str | None, size: int) -> npt.NDArray[np.bool_]:
    """wall[y, x]: True on wall cells."""
    if walls is None:
        return np.zeros((size, size), dtype=bool)
    return np.array([[ch == WALL for ch in row] for row in parse_map(walls)], dtype=bool)


def four_rooms_params() -> dict[str, Any]:
    """The `four_rooms` setting of crowd_2d: OpenSpiel's 13x13 map, H = 40, all mass at (1, 1),
    reward = -log mu(x, y) only (OpenSpiel's own FOUR_ROOMS keeps the position terms)."""
    return {
        "walls": FOUR_ROOMS_MAP,
        "horizon": 40,
        "initial": [(1, 1)],
        "only_distribution_reward": True,
    }


class FourRoomsParams(Crowd2DParams):
    """Crowd2DParams whose defaults are the four_rooms setting (see `four_rooms_params`)."""

    horizon: int = Field(default=40, ge=1, le=10_000, description="decision epochs H, 1..1e4")
    only_distribution_reward: bool = Field(
        default=True, description="reward = crowd term only (no position terms, no move cost)"
    )
    walls: str | None = Field(
        default=FOUR_ROOMS_MAP,
        description="square ASCII map, rows = y, columns = x: '#' wall, '.' or ' ' free",
    )
    initial: Literal["uniform"] | list[Cell] = Field(
        default_factory=lambda: [(1, 1)],
        description="mu0: uniform over free cells, or mass on cells (x, y)",
    )


def _inverse(targets: IntArray, weights: FloatArray, n: int) -> tuple[IntArray, FloatArray]:
    """Gather form of a scatter: sources[n, K] and source_weights[n, K] such that

        sum_k values[sources[j, k]] * source_weights[j, k]
            = sum_{i: targets[i] = j} weights[i] * values[i].

    Padding points at index 0 with weight 0.
    """
    order = np.argsort(targets, kind="stable")
    counts = np.bincount(targets, minlength=n)
    width = max(int(counts.max()), 1)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(targets)) - starts[targets[order]]
    sources = np.zeros((n, width), dtype=np.int64)
    source_weights = np.zeros((n, width))
    sources[targets[order], rank] = order
    source_weights[targets[order], rank] = weights[order]
    return sources, source_weights


class Crowd2D(FiniteMeanFieldGame):
    """Exact mean-field model of crowd_2d; dynamics are gathers, never dense transition tensors."""

    def __init__(self, params: Crowd2DParams | None = None, **overrides: Any) -> None:
        if params is None:
            params = Crowd2DParams(**overrides)
        elif overrides:
            raise TypeError("Crowd2D: pass either a Crowd2DParams or keyword parameters")
        self.params = params
        n = self.size = params.size
        self.crowd_aversion = params.crowd_aversion
        self.n_states = n * n
        self.n_actions = N_ACTIONS
        self.horizon = params.horizon
        self.wall = _wall_mask(params.walls, n).ravel()  # wall[S]
        free = ~self.wall
        xs = np.arange(self.n_states) % n  # x[S]
        ys = np.arange(self.n_states) // n  # y[S]

        if params.initial == "uniform":
            mu0 = free / free.sum()
        else:
            weights = params.initial_weights or [1.0] * len(params.initial)
            mu0 = np.zeros(self.n_states)
            for (x, y), w in zip(params.initial, weights, strict=True):
                mu0[self.cell_index(x, y)] += w
            mu0 /= mu0.sum()
        self.mu0 = mu0.astype(np.float64)

        if params.only_distribution_reward:
            self.position_reward = np.zeros(self.n_states)  # [S]
            self.move_cost = np.zeros(N_ACTIONS)  # [A]
        else:
            targets = params.positional_reward or [(n // 2, n // 2)]
            values = params.positional_reward_value or [1.0]
            r_x = np.ones(self.n_states)
            r_y = np.ones(self.n_states)
            for (px, py), w in zip(targets, values, strict=True):
                r_x -= 2.0 * w / n * np.abs(xs - px)
                r_y -= 2.0 * w / n * np.abs(ys - py)
            self.position_reward = r_x + r_y
            self.move_cost = (np.abs(MOVE_X) + np.abs(MOVE_Y)) / n

        # One-cell displacements on the torus: neighbour[S, 5] for the 5 (dx, dy) of the actions.
        neighbour = ((ys[:, None] + MOVE_Y) % n) * n + (xs[:, None] + MOVE_X) % n
        blocked = self.wall[neighbour]  # [S, 5]
        # The agent's move: into a wall (or out of one: walls never hold mass) it stays put.
        stay = blocked | self.wall[:, None]
        self.move_target = np.where(stay, np.arange(self.n_states)[:, None], neighbour)  # [S, A]
        # Noise at the post-move cell m: only displacements onto free cells (stay always is).
        legal = ~stay
        legal[:, NEUTRAL_ACTION] = True
        p = params.noise_intensity
        per_move = p / legal.sum(axis=1, keepdims=True)
        noise_prob = np.where(legal, per_move, 0.0)
        noise_prob[:, NEUTRAL_ACTION] += 1.0 - p
        self.noise_prob = noise_prob  # [S, 5]
        self.noise_target = self.move_target  # [S, 5]: the same one-cell rule as a move
        self.noise_cdf = np.cumsum(noise_prob, axis=1)  # [S, 5]
        self.noise_cdf /= self.noise_cdf[:, -1:]

        # The simulators' sparse dynamics: row s * A + a lands on noise_target[m, e] with
        # probability noise_prob[m, e], m = move_target[s, a] (illegal noise has probability 0).
        moved = self.move_target.reshape(-1)  # [S * A]
        support = self.noise_target[moved]  # [S * A, 5]
        probs = noise_prob[moved]
        support.flags.writeable = probs.flags.writeable = False
        self._support = (support, probs)

        # push = move stage then noise stage, each a fixed-width gather (in-degree is 5 here).
        self._move_sources, self._move_weights = _inverse(
            self.move_target.ravel(), np.ones(self.n_states * N_ACTIONS), self.n_states
        )
        self._noise_sources, self._noise_weights = _inverse(
            self.noise_target.ravel(), noise_prob.ravel(), self.n_states
        )

        # Every epoch's movement cost [T, A] (none charged at the last epoch), for flow_rewards.
        self._charged_costs = np.tile(self.move_cost, (self.horizon, 1))
        self._charged_costs[-1] = 0.0
        self._linear: LinearDynamics | None = None

    def linear_dynamics(self) -> LinearDynamics:
        """The move-then-noise dynamics as one operator P[a, s, s'] (built on first use)."""
        if self._linear is None:
            self._linear = LinearDynamics.factored(
                self.move_target.T, self.noise_target, self.noise_prob
            )
        return self._linear

    def flow_rewards(self, flow: FloatArray) -> FloatArray:
        """R[..., T, A, S]: the cell's position and crowd terms minus the charged move cost."""
        cell = self.position_and_crowd_reward(flow)  # [..., T, S]
        return cell[..., None, :] - self._charged_costs[:, :, None]  # type: ignore[no-any-return]

    def cell_index(self, x: int, y: int) -> int:
        """State index of cell (x, y): y * size + x."""
        return y * self.size + x

    def position_and_crowd_reward(self, mu: FloatArray) -> FloatArray:
        """The action-free part of the reward, per cell: [S]."""
        return self.position_reward - self.crowd_aversion * np.log(np.asarray(mu) + LOG_EPS)

    def reward(self, t: int, mu: FloatArray) -> FloatArray:
        """Epoch reward r'_t(s, a, mu) [S, A] (movement cost charged when the move is made)."""
        charged_cost = self.move_cost if t < self.horizon - 1 else np.zeros(N_ACTIONS)
        return self.position_and_crowd_reward(mu)[:, None] - charged_cost[None, :]

    def push(self, t: int, mu: FloatArray, mass: FloatArray) -> FloatArray:
        # after_move[m] = sum_{(s, a): move_target = m} mass[s, a]
        flat = np.asarray(mass).reshape(-1)
        after_move = (flat[self._move_sources] * self._move_weights).sum(axis=1)
        # next[y] = sum_{(m, e): noise_target = y} after_move[m] * noise_prob[m, e]
        noise_flat = np.repeat(after_move, N_ACTIONS)
        return (noise_flat[self._noise_sources] * self._noise_weights).sum(axis=1)

    def pull(self, t: int, mu: FloatArray, v_next: FloatArray) -> FloatArray:
        # out[s, a] = sum_e noise_prob[m, e] v_next[noise_target[m, e]], m = move_target[s, a]
        after_move = (np.asarray(v_next)[self.noise_target] * self.noise_prob).sum(axis=1)
        return after_move[self.move_target]

    def transition_support(self, t: int, mu: FloatArray) -> tuple[IntArray, FloatArray]:
        """Row s * A + a: the move, then the 5 noise displacements (mu-independent)."""
        return self._support


def make_crowd_2d(**params: Any) -> Crowd2D:
    """Build crowd_2d from keyword parameters, rejecting unknown ones (pydantic names them)."""
    return Crowd2D(Crowd2DParams(**params))


def make_four_rooms(**overrides: Any) -> Crowd2D:
    """The four_rooms setting (see `four_rooms_params`), with keyword overrides."""
    return Crowd2D(Crowd2DParams(**{**four_rooms_params(), **overrides}))


class Crowd2DSim(LastActionSim):
    """N-agent crowd_2d simulator: the generic fused step (`simulate.FiniteGameSim`), O(N) per
    step, seeded.

    Rewards are the literal per-step rewards r_t at the current cell (movement cost of the previous
    action, mean field = the empirical histogram), so an agent's summed rewards equal its return
    under the exact model's epoch reward.
    """

    game: Crowd2D

    def __init__(self, game: Crowd2D, n_agents: int) -> None:
        super().__init__(game, n_agents, NEUTRAL_ACTION)

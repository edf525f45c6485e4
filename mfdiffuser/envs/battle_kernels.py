"""Fused kernels of the battle engine (numba, compiled once and cached, as `kernels.py`).

`step` resolves one whole step of `battle.BattleSim` (docs/battle.md: attacks, moves, recovery,
rewards, the next states) in a few passes over the agents, with no per-step temporaries beyond
its outputs; `observe` writes the local views of the given agents straight into the caller's
float32 buffer. Both read the one occupancy map `occ` (int32, the map padded by the view radius
on every side: FREE, WALL or the agent in each cell), so a view is `V` runs of `V` cells.

Random priorities. The priorities that order the hits on one victim and pick the winner among
the movers to one cell are drawn inside `step` from the caller's numpy bit generator (its
`next_uint64`, called through its ctypes function pointer and state address: for PCG64, the
generator `reset` makes, the function numpy's `random_raw` calls; the caller holds the
generator's lock meanwhile), in the order the numpy engine drew them: one per hit in agent
order, then one per mover in agent order. The key of the k-th draw of a kind is
(raw >> 25) << 24 | k: 39 random bits over the draw's position, so no two keys tie. A seeded
episode is therefore the same draw for draw as the numpy engine's (tests/unit/test_battle.py
plays both and compares every array).

Compilation: `cache=True` writes the machine code next to this module; `warm()` (called by
`battle.warm_kernels`) compiles or loads every specialisation the engine uses, so the first
step is not a compile.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

_jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")

FREE, WALL = -1, -2  # occupancy codes; agents are >= 0
CLAIM = -3  # during the move pass, occ[cell] = CLAIM - i: mover i holds the best priority
N_MOVES, N_ACTIONS = 13, 21
MAX_HP, RECOVER, DAMAGE = 10.0, 0.1, 2.0
STEP_REWARD, ATTACK_PENALTY, HIT_REWARD = -0.005, -0.1, 0.2
KILL_REWARD, DEATH_PENALTY = 5.0, -0.1
# per-agent flags of one step
_HIT, _MOVE, _LANDED, _KILLER, _DIED = 1, 2, 4, 8, 16


@intrinsic
def _next_uint64(typingctx, fnptr, state):  # type: ignore[no-untyped-def]
    """next_uint64(state) through a bit generator's C function pointer (both as integers)."""
    sig = types.uint64(types.uintp, types.uintp)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        fnty = ir.FunctionType(ir.IntType(64), (cgutils.voidptr_t,))
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(fn, (builder.inttoptr(args[1], cgutils.voidptr_t),))

    return sig, codegen


@_jit
def _write_state(states, i, p, hp_i, width, pad, scale):  # type: ignore[no-untyped-def]
    """states[i] = (x, y) / (m - 1), hp / MAX_HP of the agent at padded cell p."""
    y = p // width - pad
    x = p - (p // width) * width - pad
    states[i, 0] = np.float32(x * scale)
    states[i, 1] = np.float32(y * scale)
    states[i, 2] = np.float32(hp_i * 0.1)


@_jit
def step(
    actions: np.ndarray,  # int32[N] or int64[N], team 0 first
    pos: np.ndarray,  # int32[N]: index into occ (the dead: where they died), updated
    team: np.ndarray,  # int64[N]
    hp: np.ndarray,  # float64[N], updated
    alive: np.ndarray,  # bool[N], updated
    occ: np.ndarray,  # int32[(m + 2P)^2], updated
    dcell: np.ndarray,  # int64[21]: each action's target offset in occ
    datt: np.ndarray,  # int64[8]: the 8 neighbour offsets
    fnptr: int,  # the bit generator's next_uint64
    state: int,  # and its state address
    keys: np.ndarray,  # int64[N] scratch
    occupant: np.ndarray,  # int32[N] scratch
    flags: np.ndarray,  # uint8[N] scratch
    rewards: np.ndarray,  # float64[N] out
    states: np.ndarray,  # float32[N, 3] out: (x, y) / (m - 1), hp / MAX_HP
    kills: np.ndarray,  # int64[2], updated
    n_alive: np.ndarray,  # int64[2], updated
    width: int,  # m + 2P
    pad: int,  # P
    scale: float,  # 1 / (m - 1)
) -> int:
    """One step in place; -1 (nothing changed, nothing drawn) when an action is outside
    0..20, else the number of agents killed."""
    n = actions.shape[0]
    for i in range(n):
        a = actions[i]
        if a < 0 or a >= N_ACTIONS:
            return -1
    # 1. every living agent's action against the occupancy at the start of the step; the
    # priority of each hit on an opponent, in agent order
    n_hits = 0
    for i in range(n):
        f = 0
        if alive[i]:
            a = actions[i]
            c = occ[pos[i] + dcell[a]]
            if a >= N_MOVES:
                rewards[i] = STEP_REWARD + ATTACK_PENALTY
                if c >= 0 and team[c] != team[i]:
                    raw = _next_uint64(fnptr, state) >> np.uint64(25)  # type: ignore[call-arg]
                    keys[i] = (np.int64(raw) << 24) | n_hits
                    n_hits += 1
                    occupant[i] = c
                    f = _HIT
            else:
                rewards[i] = STEP_REWARD + -0.0
                if c == FREE:
                    f = _MOVE
        else:
            rewards[i] = -0.0  # False * STEP_REWARD + False * ATTACK_PENALTY, as numpy
        flags[i] = f
    # 2. each hit's rank among the hits on its victim (its attackers are its neighbours): the
    # first floor(hp / DAMAGE) + 1 land, the last of them kills
    dead = 0
    if n_hits:
        for i in range(n):
            if not flags[i] & _HIT:
                continue
            v = occupant[i]
            k = keys[i]
            rank = 1
            pv = pos[v]
            for j in range(8):
                b = occ[pv + datt[j]]
                if b >= 0 and flags[b] & _HIT and occupant[b] == v and keys[b] < k:
                    rank += 1
            lethal = np.int64(np.floor(hp[v] / DAMAGE)) + 1
            if rank <= lethal:
                rewards[i] += HIT_REWARD
                flags[i] |= _LANDED
                if rank == lethal:
                    rewards[i] += KILL_REWARD
                    flags[i] |= _KILLER
        for i in range(n):
            f = flags[i]
            if f & _LANDED:
                v = occupant[i]
                hp[v] -= DAMAGE
                if f & _KILLER:
                    kills[team[i]] += 1
                    rewards[v] += DEATH_PENALTY
                    alive[v] = False
                    flags[v] |= _DIED
                    n_alive[team[v]] -= 1
                    dead += 1
    # 3. moves of the survivors into cells free at the start: the lowest key per cell wins
    n_movers = 0
    for i in range(n):
        if flags[i] & _MOVE and alive[i]:
            raw = _next_uint64(fnptr, state) >> np.uint64(25)  # type: ignore[call-arg]
            k = (np.int64(raw) << 24) | n_movers
            n_movers += 1
            keys[i] = k
            t = pos[i] + dcell[actions[i]]
            c = occ[t]
            if c == FREE or k < keys[CLAIM - c]:
                occ[t] = CLAIM - i
    if n_movers:
        for i in range(n):
            if flags[i] & _MOVE and alive[i]:
                t = pos[i] + dcell[actions[i]]
                if occ[t] == CLAIM - i:
                    occ[pos[i]] = FREE
                    occ[t] = i
                    pos[i] = t
    # 4. recovery of the living, removal of the dead, the next states
    for i in range(n):
        if alive[i]:
            hp[i] = min(hp[i] + RECOVER, MAX_HP)
        elif flags[i] & _DIED:
            occ[pos[i]] = FREE
        _write_state(states, i, pos[i], hp[i], width, pad, scale)
    return dead


@_jit
def fill_states(pos: np.ndarray, hp: np.ndarray, width: int, pad: int, scale: float, states):  # type: ignore[no-untyped-def]
    """states[N, 3] float32 = (x, y) / (m - 1), hp / MAX_HP (as `step` writes them)."""
    for i in range(pos.shape[0]):
        _write_state(states, i, pos[i], hp[i], width, pad, scale)


@_jit
def observe(
    agents: np.ndarray,  # int64[k], each in 0..N-1
    pos: np.ndarray,  # int32[N]
    team: np.ndarray,  # int64[N]
    hp: np.ndarray,  # float64[N]
    alive: np.ndarray,  # bool[N]
    occ: np.ndarray,  # int32[(m + 2P)^2]
    width: int,
    pad: int,  # P = the view radius
    table: np.ndarray,  # float32[2, N + 2, 5] scratch: rows 0 and 1 hold WALL's and FREE's
    out: np.ndarray,  # float32[k, V, V, 5]
) -> None:
    """out[q] = the view of agents[q]: row r, column c is the cell (y + r - P, x + c - P),
    channels wall, own team presence, own hp / MAX_HP, other team presence, other hp."""
    for j in range(pos.shape[0]):
        if alive[j]:
            h = np.float32(hp[j] / MAX_HP)
            own, other = team[j], 1 - team[j]
            table[own, j + 2, 0] = 0.0
            table[own, j + 2, 1] = 1.0
            table[own, j + 2, 2] = h
            table[own, j + 2, 3] = 0.0
            table[own, j + 2, 4] = 0.0
            table[other, j + 2, 0] = 0.0
            table[other, j + 2, 1] = 0.0
            table[other, j + 2, 2] = 0.0
            table[other, j + 2, 3] = 1.0
            table[other, j + 2, 4] = h
    v = out.shape[1]
    for q in range(agents.shape[0]):
        i = agents[q]
        tab = table[team[i]]
        base = pos[i] - pad * width - pad
        for r in range(v):
            row = base + r * width
            for c in range(v):
                # all five loads before the stores: out may alias the table as far as the
                # compiler knows, and this order lets it move 4 + 1 floats, not 5 + 5
                code = occ[row + c] + 2
                a0, a1, a2 = tab[code, 0], tab[code, 1], tab[code, 2]
                a3, a4 = tab[code, 3], tab[code, 4]
                out[q, r, c, 0] = a0
                out[q, r, c, 1] = a1
                out[q, r, c, 2] = a2
                out[q, r, c, 3] = a3
                out[q, r, c, 4] = a4

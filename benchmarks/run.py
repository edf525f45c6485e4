"""The fair benchmark harness: every comparison with a public library, measured one way.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run.py [--quick] [--json] [--only NAME ...]

Rules every row follows (docs/benchmarks.md, "Measuring"):
- both sides run the same game, policy, horizon, observation content and one thread;
- each side is called once untimed (warm-up), then the repeats are interleaved (ours, theirs,
  ours, ...), so a burst of load from other processes hits both sides alike;
- the figures are the medians of this process's CPU time (time.process_time) and of wall time;
  ratios are given for both, and the load average is printed beside the table;
- the peer runs in its best documented configuration (MFGLib with opt_einsum when it is
  importable; MAgent2 with the observation content that matches ours, and also its default);
- memory is measured the same way on both sides: RSS growth in a fresh interpreter while the
  simulator is built, stepped once and every agent's observation is held (the engine's code,
  MAgent2's shared library or our compiled kernels, is loaded before and not counted);
- the timed game is the one whose values agree, and the agreement check is printed beside it.

Peers that are not importable (OpenSpiel and MAgent2 live in the `bench` extra) are skipped and
named. `--quick` uses small sizes and 3 repeats (what tests/unit/test_bench_harness.py runs);
`--json` prints one JSON object instead of the table. Timings are never asserted in tests.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread on both sides; magent2 reads it at import

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Row:
    """One line of the table. ours/theirs are in `unit`; ratio says which way is better."""

    measure: str
    unit: str
    ours: float
    theirs: float | None = None
    peer: str = ""
    ratio_cpu: float | None = None  # our advantage by median process CPU time
    ratio_wall: float | None = None  # our advantage by median wall time
    limit: float | None = None  # the machine's limit for this work, where measured
    fraction: float | None = None  # ours / limit
    agreement: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class Timing:
    cpu: float  # median process CPU seconds per call
    wall: float  # median wall seconds per call


def peer_row(
    measure: str, peer: str, t: dict[str, Timing], ours: float, theirs: float, **extra: Any
) -> Row:
    """A row timing one call of ours against one of the peer's (`t["ours"]`, `t["theirs"]`, in
    ms), with the two values the calls computed side by side (`agreement`, unless given)."""
    extra.setdefault("agreement", {"ours": ours, "theirs": theirs, "abs_diff": abs(ours - theirs)})
    return Row(
        measure=measure,
        unit="ms per call",
        ours=t["ours"].cpu * 1e3,
        theirs=t["theirs"].cpu * 1e3,
        peer=peer,
        ratio_cpu=t["theirs"].cpu / t["ours"].cpu,
        ratio_wall=t["theirs"].wall / t["ours"].wall,
        **extra,
    )


def interleaved(
    sides: dict[str, Callable[[], object]],
    repeats: int,
    prepare: dict[str, Callable[[], object]] | None = None,
) -> dict[str, Timing]:
    """Warm each side once, then run the repeats round-robin; medians of CPU and wall time.

    prepare[name], when given, runs untimed before every call of that side (a fresh episode)."""
    prepare = prepare or {}
    for name, fn in sides.items():
        prepare.get(name, lambda: None)()
        fn()
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    wall: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            prepare.get(name, lambda: None)()
            c, w = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {k: Timing(statistics.median(cpu[k]), statistics.median(wall[k])) for k in sides}


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------- exploitability vs MFGLib


def mfglib_env(game: Any) -> Any:
    """The same game as an MFGLib Environment: dense transition[S', S, A], reward[S, A]."""
    from mfglib.env import Environment

    n_s, n_a = game.n_states, game.n_actions
    dense = np.zeros((n_s, n_s, n_a))  # dense[s', s, a]
    unit = np.zeros((n_s, n_a))
    for s in range(n_s):
        for a in range(n_a):
            unit[s, a] = 1.0
            dense[:, s, a] = game.push(0, game.mu0, unit)  # crowd_2d dynamics ignore t and mu
            unit[s, a] = 0.0
    prob = torch.tensor(dense)

    def transition_fn(env: object, t: int, big_l: torch.Tensor) -> torch.Tensor:
        return prob

    def reward_fn(env: object, t: int, big_l: torch.Tensor) -> torch.Tensor:
        return torch.tensor(game.reward(t, big_l.sum(dim=-1).numpy()))

    return Environment(
        T=game.horizon - 1,
        S=(n_s,),
        A=(n_a,),
        mu0=torch.tensor(game.mu0),
        r_max=float(np.abs(game.reward(0, game.mu0 + 1e-3)).max()),
        reward_fn=reward_fn,
        transition_fn=transition_fn,
    )


def rows_mfglib(sizes: list[int], repeats: int) -> list[Row]:
    import mfglib.alg  # noqa: F401 (mfglib.scoring alone hits a circular import in 0.3.0)
    from mfglib.scoring import exploitability_score

    from mfdiffuser.envs import exploitability
    from mfdiffuser.envs.crowd_2d import make_crowd_2d

    einsum = "opt_einsum" if have("opt_einsum") else "torch.einsum without opt_einsum"
    out = []
    for size in sizes:
        game = make_crowd_2d(size=size, horizon=10)
        env = mfglib_env(game)
        pol = np.random.default_rng(0).dirichlet(np.ones(game.n_actions), (10, game.n_states))
        pi = torch.tensor(pol)
        ours = exploitability(game, pol)
        theirs = float(exploitability_score(env, pi))
        t = interleaved(
            {
                "ours": lambda g=game, p=pol: exploitability(g, p),
                "theirs": lambda e=env, p=pi: exploitability_score(e, p),
            },
            repeats,
        )
        out.append(
            peer_row(
                f"exact exploitability, crowd_2d {size}x{size} H=10, random policy",
                f"MFGLib 0.3.0 exploitability_score ({einsum})",
                t,
                ours,
                theirs,
            )
        )
    return out


def against_mfglib(
    game: Any, env: Any, repeats: int, prepare: dict[str, Callable[[], object]] | None = None
) -> tuple[dict[str, Timing], float, float, dict[str, float]]:
    """Our exploitability of a seeded random policy against MFGLib's exploitability_score on
    `env` (the same game), interleaved: (timings, ours, theirs, agreement), the agreement on
    the uniform and on the timed random policy."""
    import mfglib.alg  # noqa: F401 (mfglib.scoring alone hits a circular import in 0.3.0)
    from mfglib.scoring import exploitability_score

    from mfdiffuser.envs import exploitability, uniform_policy

    shape = (game.horizon, game.n_states)
    rand = np.random.default_rng(0).dirichlet(np.ones(game.n_actions), shape)
    agreement: dict[str, float] = {}
    for label, pol in (("uniform", uniform_policy(game)), ("random", rand)):
        pi = torch.tensor(pol).reshape(env.T + 1, *env.S, *env.A)
        ours, theirs = exploitability(game, pol), float(exploitability_score(env, pi))
        agreement |= {f"{label}_ours": ours, f"{label}_theirs": theirs}
        agreement[f"{label}_abs_diff"] = abs(ours - theirs)
    pi = torch.tensor(rand).reshape(env.T + 1, *env.S, *env.A)
    t = interleaved(
        {
            "ours": lambda: exploitability(game, rand),
            "theirs": lambda: exploitability_score(env, pi),
        },
        repeats,
        prepare=prepare,
    )
    return t, ours, theirs, agreement


def rows_mfglib_envs(names: list[str], repeats: int) -> list[Row]:
    """The `mfglib` family: each MFGLib environment at its default sizes, our exact
    exploitability (the adapter calling MFGLib's own reward/prob) against exploitability_score.
    Our per-epoch tensors are cleared untimed before every call, so both sides evaluate MFGLib's
    callables afresh. Agreement: uniform and a seeded random policy."""
    import mfglib.alg  # noqa: F401 (mfglib.scoring alone hits a circular import in 0.3.0)
    from mfglib.env import Environment

    from mfdiffuser.envs.registry import get_benchmark

    einsum = "opt_einsum" if have("opt_einsum") else "torch.einsum without opt_einsum"
    spec = get_benchmark("mfglib")
    out = []
    for name in names:
        game = spec.game({"env": name})
        with torch.random.fork_rng(devices=[]):
            env = getattr(Environment, name)()
        t, ours, theirs, agreement = against_mfglib(
            game, env, repeats, prepare={"ours": game.clear_cache}
        )
        kind = "L_t" if game.state_action_mean_field else "mu_t"
        out.append(
            peer_row(
                f"mfglib family: exact exploitability, {name} (S={game.n_states}, "
                f"A={game.n_actions}, H={game.horizon}, {kind}), random policy",
                f"MFGLib 0.3.0 exploitability_score ({einsum})",
                t,
                ours,
                theirs,
                agreement=agreement,
            )
        )
    return out


def rows_mfglib_native(quick: bool, repeats: int) -> list[Row]:
    """MFGLib's crowd_motion and building_evacuation written as our games (native benchmarks,
    sparse dynamics) against exploitability_score on MFGLib's own Environment of the same
    instance, large enough that computation, not call overhead, dominates. Agreement: the
    timed random policy and the uniform one."""
    import mfglib.alg  # noqa: F401 (mfglib.scoring alone hits a circular import in 0.3.0)
    from mfglib.env import Environment

    from mfdiffuser.envs.registry import get_benchmark

    einsum = "opt_einsum" if have("opt_einsum") else "torch.einsum without opt_einsum"
    cases: list[tuple[str, dict[str, Any], str]] = (
        [
            ("crowd_motion", {"T": 3, "torus_l": 6, "torus_w": 6}, "6x6"),
            ("building_evacuation", {"T": 3, "n_floor": 2, "floor_l": 4, "floor_w": 4}, "2x4x4"),
        ]
        if quick
        else [
            ("crowd_motion", {"T": 9, "torus_l": 30, "torus_w": 30}, "30x30"),
            (
                "building_evacuation",
                {"T": 9, "n_floor": 4, "floor_l": 15, "floor_w": 15},
                "4 floors x 15x15",
            ),
        ]
    )
    out = []
    for name, kwargs, size in cases:
        params = {k: v for k, v in kwargs.items() if k != "T"} | {"horizon": kwargs["T"] + 1}
        game = get_benchmark(name).game(params)
        with torch.random.fork_rng(devices=[]):
            env = getattr(Environment, name)(**kwargs)
        t, ours, theirs, agreement = against_mfglib(game, env, repeats)
        out.append(
            peer_row(
                f"exact exploitability, {name} {size} (S={game.n_states}, A={game.n_actions}, "
                f"H={game.horizon}) as our game, random policy",
                f"MFGLib 0.3.0 exploitability_score on Environment.{name} ({einsum})",
                t,
                ours,
                theirs,
                agreement=agreement,
            )
        )
    return out


def rows_mfglib_batch(n_policies: int, repeats: int) -> list[Row]:
    """Tiny games, a batch of seeded random policies: our exploitability_batch (one vectorised
    evaluation of the batch) against MFGLib's exploitability_score given the list of policies
    (its own batch form: one call per policy). Agreement: the largest difference in the batch."""
    import mfglib.alg  # noqa: F401 (mfglib.scoring alone hits a circular import in 0.3.0)
    from mfglib.env import Environment
    from mfglib.scoring import exploitability_score

    from mfdiffuser.envs.finite import exploitability_batch
    from mfdiffuser.envs.stage_games import LeftRight, RockPaperScissors

    einsum = "opt_einsum" if have("opt_einsum") else "torch.einsum without opt_einsum"
    out = []
    for name, game in (("left_right", LeftRight()), ("rock_paper_scissors", RockPaperScissors())):
        env = getattr(Environment, name)()
        shape = (n_policies, game.horizon, game.n_states)
        pols = np.random.default_rng(0).dirichlet(np.ones(game.n_actions), shape)
        pis = [torch.tensor(p) for p in pols]
        ours = exploitability_batch(game, pols)
        theirs = np.array(exploitability_score(env, pis))
        t = interleaved(
            {
                "ours": lambda g=game, p=pols: exploitability_batch(g, p),
                "theirs": lambda e=env, p=pis: exploitability_score(e, p),
            },
            repeats,
        )
        out.append(
            peer_row(
                f"exact exploitability of {n_policies:,} random policies, {name}",
                f"MFGLib 0.3.0 exploitability_score on the list of policies ({einsum})",
                t,
                float(ours.mean()),
                float(theirs.mean()),
                agreement={
                    "mean_ours": float(ours.mean()),
                    "mean_theirs": float(theirs.mean()),
                    "max_abs_diff": float(np.abs(ours - theirs).max()),
                },
                note="ms per batch",
            )
        )
    return out


# ---------------------------------------------------------------- NashConv vs OpenSpiel


def rows_openspiel(repeats: int) -> list[Row]:
    import pyspiel
    from open_spiel.python import policy as policy_std
    from open_spiel.python.mfg.algorithms import nash_conv
    from open_spiel.python.mfg.games import predator_prey as _registers  # noqa: F401

    from mfdiffuser.envs import exploitability, uniform_policy
    from mfdiffuser.envs.crowd_2d import make_crowd_2d
    from mfdiffuser.envs.predator_prey import PredatorPrey

    # The timed crowd_2d game is the one whose values agree: no movement cost (OpenSpiel's value
    # cache keyed on (x, y, t) cannot see the previous move), mass starting at (3, 3).
    game = make_crowd_2d(size=10, horizon=10, only_distribution_reward=True, initial=[(3, 3)])
    pol = uniform_policy(game)
    os_game = pyspiel.load_game(
        "mfg_crowd_modelling_2d",
        {
            "size": 10,
            "horizon": 10,
            "only_distribution_reward": True,
            "initial_distribution": "[3|3]",
            "initial_distribution_value": "[1.0]",
        },
    )

    def theirs_crowd() -> float:
        return float(
            nash_conv.NashConv(os_game, policy_std.UniformRandomPolicy(os_game)).nash_conv()
        )

    ours, theirs = exploitability(game, pol), theirs_crowd()
    t = interleaved({"ours": lambda: exploitability(game, pol), "theirs": theirs_crowd}, repeats)
    out = [
        peer_row(
            "exact exploitability, crowd_2d 10x10 H=10 (no move cost, start (3,3)), uniform",
            "OpenSpiel 2.0.2 NashConv",
            t,
            ours,
            theirs,
        )
    ]
    # With the movement cost the values differ by design (docs/benchmarks.md): shown, not timed.
    cost_game = make_crowd_2d(size=10, horizon=10)
    cost_os = pyspiel.load_game("mfg_crowd_modelling_2d", {"size": 10, "horizon": 10})
    cost_theirs = nash_conv.NashConv(cost_os, policy_std.UniformRandomPolicy(cost_os)).nash_conv()
    out[0].note = (
        f"with the movement cost (untimed): ours {exploitability(cost_game, pol):.6f}, OpenSpiel "
        f"{float(cost_theirs):.6f}; they differ by design (its value cache keyed on (x, y, t))"
    )
    pp = PredatorPrey()
    pp_pol = uniform_policy(pp)
    pp_os = pyspiel.load_game("python_mfg_predator_prey")

    def theirs_pp() -> float:
        return float(nash_conv.NashConv(pp_os, policy_std.UniformRandomPolicy(pp_os)).nash_conv())

    def ours_pp() -> float:
        return float(np.sum(pp.exploitability_per_population(pp_pol)))

    ours, theirs = ours_pp(), theirs_pp()
    t = interleaved({"ours": ours_pp, "theirs": theirs_pp}, repeats)
    out.append(
        peer_row(
            "NashConv, predator_prey 5x5 H=10, uniform", "OpenSpiel 2.0.2 NashConv", t, ours, theirs
        )
    )
    return out


# ---------------------------------------------------------------- battle vs MAgent2


def magent_env(map_size: int, seed: int, minimap: bool) -> tuple[Any, int]:
    """MAgent2's battle (its builtin config, minimap on or off) in battle_v4's layout."""
    import math

    import magent2
    from magent2.builtin.config.battle import get_config

    cfg = get_config(map_size)
    cfg.set({"minimap_mode": minimap})
    env = magent2.gridworld.GridWorld(cfg, map_size=map_size)
    env.set_seed(seed)
    handles = env.get_handles()
    env.reset()
    env.add_walls(method="custom", pos=[])
    n, gap = map_size * map_size * 0.04, 3
    side = int(math.sqrt(n)) * 2
    lo = (map_size - side) // 2
    inside = range(1, map_size - 1)
    left = [
        [x, y, 0]
        for x in range(map_size // 2 - gap - side, map_size // 2 - gap, 2)
        for y in range(lo, lo + side, 2)
        if x in inside and y in inside
    ]
    right = [
        [x, y, 0]
        for x in range(map_size // 2 + gap, map_size // 2 + gap + side, 2)
        for y in range(lo, lo + side, 2)
        if x in inside and y in inside
    ][: len(left)]
    env.add_agents(handles[0], method="custom", pos=left)
    env.add_agents(handles[1], method="custom", pos=right)
    return env, len(left) + len(right)


Episode = tuple[Callable[[], object], Callable[[], int]]  # (untimed fresh start, timed steps)


def battle_episode_ours(map_size: int, steps: int, obs: bool) -> Episode:
    from mfdiffuser.envs.battle import N_ACTIONS, BattleParams, BattleSim

    sim = BattleSim(BattleParams(map_size=map_size, max_steps=10**5, observations=obs))
    plan = np.random.default_rng(0).integers(0, N_ACTIONS, (steps, sim.n_agents), dtype=np.int32)

    def start() -> None:
        sim.reset(0)

    def run() -> int:
        # the views go into one buffer reused across the episode's steps, as MAgent2's
        # get_observation reuses its own; both are allocated inside the timed episode
        v = sim.params.view_range
        buf = np.empty((sim.n_agents, v, v, 5), dtype=np.float32) if obs else None
        done = 0
        for t in range(steps):
            k = int(sim.n_alive.sum())
            done += k
            if buf is not None:
                sim.observations(np.flatnonzero(sim.alive), out=buf[:k])
            sim.step(plan[t])
        return done

    return start, run


def battle_episode_magent(map_size: int, steps: int, obs: bool, minimap: bool) -> Episode:
    from mfdiffuser.envs.battle import N_ACTIONS

    holder: dict[str, Any] = {}

    def start() -> None:
        holder["env"], total = magent_env(map_size, 0, minimap)  # a fresh battle, untimed
        holder["plan"] = np.random.default_rng(0).integers(
            0, N_ACTIONS, (steps, total), dtype=np.int32
        )

    def run() -> int:
        env, plan = holder["env"], holder["plan"]
        done = 0
        handles = env.get_handles()
        for t in range(steps):
            offset = 0
            for h in handles:
                k = env.get_num(h)
                done += k
                if obs:
                    env.get_observation(h)
                env.set_action(h, np.ascontiguousarray(plan[t, offset : offset + k]))
                offset += k
            env.step()
            for h in handles:
                env.get_reward(h)
            env.clear_dead()
        return done

    return start, run


def battle_memory_here(side: str, map_size: int, obs: bool, minimap: bool) -> float:
    """Bytes per agent by RSS growth: build, one step, every agent's observation held."""
    from mfdiffuser.envs.battle import BattleParams, BattleSim, warm_kernels

    # The engines' code is loaded first and not counted, on both sides: MAgent2's shared library
    # is loaded when it is imported, our numba kernels when they are first called (warm_kernels
    # loads them from the cache; the numba runtime is about 68 MB of RSS once per process).
    if side == "magent2":
        import magent2  # noqa: F401
    else:
        warm_kernels()
    before = _rss()
    if side == "ours":
        sim = BattleSim(BattleParams(map_size=map_size, max_steps=10**5, observations=obs))
        sim.reset(0)
        sim.step(np.zeros(sim.n_agents, dtype=np.int64))
        held = sim.observations() if obs else None
        total = sim.n_agents
    else:
        env, total = magent_env(map_size, 0, minimap)
        held = [env.get_observation(h) for h in env.get_handles()] if obs else None
        env.step()
    grown = _rss() - before
    del held
    return grown / total


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def battle_memory(side: str, map_size: int, obs: bool, minimap: bool = False) -> float:
    """In a fresh interpreter: in this one, memory freed by earlier rows hides the growth."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import run; "
        f"print(run.battle_memory_here({side!r}, {map_size}, {obs}, {minimap}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return float(done.stdout.strip().splitlines()[-1])


def rows_battle(maps: list[int], steps: int, repeats: int) -> list[Row]:
    out = []
    for m in maps:
        n_team = int(m * m * 0.04)
        for obs, minimap in ((True, False), (True, True), (False, False)):
            ours_start, ours = battle_episode_ours(m, steps, obs)
            theirs_start, theirs = battle_episode_magent(m, steps, obs, minimap)
            ours_start()
            theirs_start()
            agent_steps = {"ours": ours(), "theirs": theirs()}  # the same every repeat
            t = interleaved(
                {"ours": ours, "theirs": theirs},
                repeats,
                prepare={"ours": ours_start, "theirs": theirs_start},
            )
            rate = {k: agent_steps[k] / t[k].cpu for k in t}
            content = (
                "no observations"
                if not obs
                else "observations, equal content (5 channels, no minimap)"
                if not minimap
                else "observations, MAgent2's default (minimap on)"
            )
            out.append(
                Row(
                    measure=f"battle map {m} ({n_team}/team), {content}, random actions",
                    unit="agent-steps per CPU-second",
                    ours=rate["ours"],
                    theirs=rate["theirs"],
                    peer="MAgent2 0.3.4",
                    ratio_cpu=rate["ours"] / rate["theirs"],
                    ratio_wall=(agent_steps["ours"] / t["ours"].wall)
                    / (agent_steps["theirs"] / t["theirs"].wall),
                    note=f"{steps} steps; agent-steps count agents alive at each step",
                )
            )
        for minimap in (False, True):
            ours_b = battle_memory("ours", m, True)
            theirs_b = battle_memory("magent2", m, True, minimap)
            out.append(
                Row(
                    measure=f"battle map {m}: memory per agent incl. observations"
                    + (" (MAgent2 minimap on)" if minimap else " (equal content)"),
                    unit="bytes per agent (RSS growth)",
                    ours=ours_b,
                    theirs=theirs_b,
                    peer="MAgent2 0.3.4",
                    ratio_cpu=theirs_b / ours_b,
                    note="ratio = theirs / ours (above 1: we use less)",
                )
            )
    return out


# ---------------------------------------------------------------- simulator vs machine limit


def rows_simulator(n: int, repeats: int) -> list[Row]:
    """crowd_1d at N agents: policy sampling, moves, noise, rewards, histogram, per CPU-second,
    against a loop doing only the same random draws and the same array writes.

    Two rows, one episode of 10 epochs per timed call (reset untimed, before each call):
    `sample_actions` then `sim.step` (two passes over the agents, fresh output arrays), and the
    fused `sim.act_and_step` writing into reused episode arrays (one pass; what data generation
    does). Both are the generic finite-game step (envs/simulate.py, envs/kernels.py), not a
    crowd_1d special case.
    """
    from mfdiffuser.envs import Crowd1D, Crowd1DSim, fictitious_play, sample_actions

    game = Crowd1D(size=10, horizon=10)
    expert = fictitious_play(game, 50).policy
    sim = Crowd1DSim(game, n)
    fused_sim = Crowd1DSim(game, n)
    rng = np.random.default_rng(0)

    def steps() -> None:
        states = sim.states
        for t in range(game.horizon):
            states, _, _ = sim.step(sample_actions(expert[t], states, rng))

    # as data generation plays an episode (data/generate.py, play_episode): the outputs go
    # straight into the episode's [T, N] arrays, reused from one episode to the next
    episode = (
        np.zeros((game.horizon, n), dtype=np.int64),
        np.zeros((game.horizon + 1, n), dtype=np.int64),
        np.zeros((game.horizon, n)),
    )

    def fused() -> None:
        actions, states, rewards = episode
        for t in range(game.horizon):
            fused_sim.act_and_step(expert[t], rng, out=(actions[t], states[t + 1], rewards[t]))

    # The work an agent-step cannot avoid: one float32 uniform for the action and one for the
    # next state (the simulator draws exactly these), then three 8-byte values written per agent
    # (the action, the next state, the reward: what step hands back). Buffers are preallocated;
    # nothing else is computed. The simulator writes more than this (it also updates its own
    # state and previous-action arrays in place and hands back fresh arrays), so the limit is
    # stricter than an exact replay of its writes.
    lim_rng = np.random.default_rng(0)
    u = np.empty(n, dtype=np.float32)
    v = np.empty(n, dtype=np.float32)
    st, prev, rew = (np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n))

    def limit() -> None:
        for _ in range(game.horizon):
            lim_rng.random(out=u, dtype=np.float32)
            lim_rng.random(out=v, dtype=np.float32)
            np.copyto(st, prev)
            np.copyto(prev, st)
            np.copyto(rew, u)

    t = interleaved(
        {"ours": steps, "fused": fused, "limit": limit},
        repeats,
        prepare={"ours": lambda: sim.reset(0), "fused": lambda: fused_sim.reset(0)},
    )
    work = n * game.horizon
    lim_rate = work / t["limit"].cpu
    out = []
    for key, what in (("ours", "sample_actions + step"), ("fused", "act_and_step (fused)")):
        rate = work / t[key].cpu
        out.append(
            Row(
                measure=f"crowd_1d simulator, {what}, N={n:,}",
                unit="M agent-steps per CPU-second",
                ours=rate / 1e6,
                limit=lim_rate / 1e6,
                fraction=rate / lim_rate,
                agreement={
                    "ours_cpu_s": t[key].cpu,
                    "ours_wall_s": t[key].wall,
                    "limit_cpu_s": t["limit"].cpu,
                    "limit_wall_s": t["limit"].wall,
                },
                note="limit: a loop doing only the same random draws and array writes",
            )
        )
    return out


# ---------------------------------------------------------------- planning step vs N


def rows_planning(sizes: list[int], repeats: int) -> list[Row]:
    """One planning step (FiniteStatePlannerPolicy.act) at several N, M_L fixed, interleaved."""
    from mfdiffuser.envs import Crowd1D, uniform_policy
    from mfdiffuser.planner import FiniteStatePlannerPolicy, MFDiffuser, PlannerConfig

    game = Crowd1D(size=10, horizon=10)
    cfg = PlannerConfig()
    torch.manual_seed(0)
    planner = MFDiffuser.from_spec(cfg, game.feature_dim, game.n_actions, game.context_dim)
    policy = FiniteStatePlannerPolicy(planner, game, uniform_policy(game), cfg)
    gen = torch.Generator().manual_seed(0)
    sides = {}
    for n in sizes:
        states = np.random.default_rng(0).integers(0, game.n_states, n)
        rng = np.random.default_rng(0)
        sides[f"N={n}"] = lambda s=states, r=rng: policy.act(0, s, r, gen)
    t = interleaved(sides, repeats)
    base = t[f"N={sizes[0]}"]
    return [
        Row(
            measure=f"planning step (act), N={n:,} vs N={sizes[0]:,}, M={cfg.max_particles}",
            unit="ms per step (CPU)",
            ours=t[f"N={n}"].cpu * 1e3,
            theirs=base.cpu * 1e3,
            peer=f"ours at N={sizes[0]:,}",
            ratio_cpu=t[f"N={n}"].cpu / base.cpu,
            ratio_wall=t[f"N={n}"].wall / base.wall,
            note="ratio = step at N / step at the smallest N (target <= 1.5)",
        )
        for n in sizes[1:]
    ]


def rows_c2f(m: int, repeats: int) -> list[Row]:
    """Coarse-to-fine (L = 3, b = 4, default stage_steps) against the flat sampler on one
    particle set (B = 1) at M_L = m, the same K, untrained weights (the cost does not depend on
    them): the default planner (PlannerConfig(): H = 4, K = 20, width 64) and the size of the
    trained crowd_1d planner of benchmarks/evidence_value_weighting.py (H = 1, K = 10, width
    32). The calls are evidence_coarse_to_fine.py's `sampler_fns` (c2f includes plan_stages)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence_coarse_to_fine import ideal, sampler_fns

    from mfdiffuser.envs import Crowd1D
    from mfdiffuser.planner import MFDiffuser, PlannerConfig

    game = Crowd1D(size=10, horizon=10)
    out = []
    for name, cfg in (
        ("default planner (H=4 K=20 w64)", PlannerConfig(max_particles=m)),
        (
            "crowd_1d evidence planner (H=1 K=10 w32)",
            PlannerConfig(window=1, diffusion_steps=10, hidden=32, max_particles=m),
        ),
    ):
        torch.manual_seed(0)
        planner = MFDiffuser.from_spec(cfg, game.feature_dim, game.n_actions, game.context_dim)
        planner.model.eval()
        flat, c2f = sampler_fns(planner, m, 1)
        t = interleaved({"ours": c2f, "theirs": flat}, repeats)
        best, counts, steps = ideal(cfg, m)
        out.append(
            peer_row(
                f"coarse-to-fine vs flat, one particle set at M_L={m}, {name}",
                "flat sampler (stages=1), same K",
                t,
                0.0,
                0.0,
                agreement={"ideal_ratio": best},
                note=f"c2f M_l {'/'.join(map(str, counts))}, K_l {'/'.join(map(str, steps))}; "
                "ratio = flat / c2f (target >= 2); ideal = M_L·K / Σ M_l·K_l",
            )
        )
    return out


# ---------------------------------------------------------------- training throughput


def rows_training(steps: int, repeats: int) -> list[Row]:
    """The pure training loop of benchmarks/training_throughput.py (its data, planner and
    optimizer step, imported), torch on 1 and on 2 threads, interleaved: each timed call is
    `steps` optimizer steps; the thread count is set untimed before each call. ours: particle·
    steps per wall second (batch x M particles x H window steps per optimizer step); the
    2-thread row's ratios are its speedup over 1 thread (CPU: 1-thread CPU s / 2-thread CPU s)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from training_throughput import BATCH, CELLS, CFG, make_step, setup

    data = setup()
    step = {1: make_step(*data), 2: make_step(*data)}
    sides = {f"threads={k}": (lambda f=f: [f() for _ in range(steps)]) for k, f in step.items()}
    prepare = {f"threads={k}": (lambda k=k: torch.set_num_threads(k)) for k in step}
    try:
        t = interleaved(sides, repeats, prepare=prepare)
    finally:
        torch.set_num_threads(1)
    one = t["threads=1"]
    out = []
    for k in step:
        tk = t[f"threads={k}"]
        out.append(
            Row(
                measure=f"training throughput, torch {k} thread{'s' if k > 1 else ''}, crowd_1d "
                f"H={CFG.window} M={CFG.n_particles} K={CFG.diffusion_steps} batch={BATCH}",
                unit="particle·steps per wall second",
                ours=CELLS * steps / tk.wall,
                theirs=CELLS * steps / one.wall if k > 1 else None,
                peer="ours on 1 thread" if k > 1 else "",
                ratio_cpu=one.cpu / tk.cpu if k > 1 else None,
                ratio_wall=one.wall / tk.wall if k > 1 else None,
                agreement={
                    "cpu_s_per_opt_step": tk.cpu / steps,
                    "wall_s_per_opt_step": tk.wall / steps,
                    "particle_steps_per_cpu_s": CELLS * steps / tk.cpu,
                },
                note=f"{CELLS:,} particle·steps per optimizer step, {steps} steps per call",
            )
        )
    return out


# ---------------------------------------------------------------- the table


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.3e}"


def print_table(result: dict[str, Any]) -> None:
    head = ["measure", "unit", "ours", "theirs", "ratio CPU", "ratio wall", "limit", "fraction"]
    lines = [head]
    for r in result["rows"]:
        lines.append(
            [
                r["measure"],
                r["unit"],
                fmt(r["ours"]),
                fmt(r["theirs"]),
                fmt(r["ratio_cpu"]),
                fmt(r["ratio_wall"]),
                fmt(r["limit"]),
                fmt(r["fraction"]),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    print()
    for r in result["rows"]:
        extra = [r["peer"]] if r["peer"] else []
        if r["agreement"]:
            extra.append(", ".join(f"{k} {v:.12g}" for k, v in r["agreement"].items()))
        if r["note"]:
            extra.append(r["note"])
        print(f"- {r['measure']}: " + "; ".join(extra))
    print(f"\nload average before {result['load_before']}, after {result['load_after']}")
    print(f"skipped: {', '.join(result['skipped']) or 'none'}")


GROUPS = (
    "mfglib",
    "mfglib_envs",
    "mfglib_native",
    "mfglib_batch",
    "openspiel",
    "battle",
    "simulator",
    "planning",
    "training",
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 3 repeats (the test's run)")
    ap.add_argument("--json", action="store_true", help="print one JSON object, not the table")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats per row")
    ap.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    reps = args.repeats or (3 if args.quick else 7)
    result: dict[str, Any] = {"load_before": load(), "quick": args.quick, "repeats": reps}
    rows: list[Row] = []
    skipped: list[str] = []
    peers = {
        "mfglib": "mfglib",
        "mfglib_envs": "mfglib",
        "mfglib_native": "mfglib",
        "mfglib_batch": "mfglib",
        "openspiel": "pyspiel",
        "battle": "magent2",
    }
    for group in args.only:
        mod = peers.get(group)
        if mod is not None and not have(mod):
            skipped.append(f"{group} ({mod} is not importable: the bench extra)")
            continue
        if group == "mfglib":
            # MFGLib builds its tensors with the default dtype; our planner wants float32
            torch.set_default_dtype(torch.float64)
            try:
                rows += rows_mfglib([10] if args.quick else [20, 40], reps)
            finally:
                torch.set_default_dtype(torch.float32)
        elif group == "mfglib_envs":
            from mfdiffuser.envs.mfglib_env import ENV_NAMES

            names = ["beach_bar", "random_linear", "left_right"] if args.quick else ENV_NAMES
            torch.set_default_dtype(torch.float64)  # MFGLib's side in float64, as ours
            try:
                rows += rows_mfglib_envs(list(names), reps)
            finally:
                torch.set_default_dtype(torch.float32)
        elif group in ("mfglib_native", "mfglib_batch"):
            torch.set_default_dtype(torch.float64)  # MFGLib's side in float64, as ours
            try:
                if group == "mfglib_native":
                    rows += rows_mfglib_native(args.quick, reps)
                else:
                    rows += rows_mfglib_batch(50 if args.quick else 1000, reps)
            finally:
                torch.set_default_dtype(torch.float32)
        elif group == "openspiel":
            rows += rows_openspiel(reps)
        elif group == "battle":
            rows += rows_battle([40] if args.quick else [160, 320], 10 if args.quick else 50, reps)
        elif group == "simulator":
            rows += rows_simulator(10**5 if args.quick else 10**6, reps)
        elif group == "planning":
            sizes = [10**3, 10**4] if args.quick else [10**3, 10**5, 10**6]
            rows += rows_planning(sizes, reps)
            rows += rows_c2f(64, reps)
        elif group == "training":
            rows += rows_training(2 if args.quick else 10, reps)
    uses_mfglib = {"mfglib", "mfglib_envs", "mfglib_native", "mfglib_batch"} & set(args.only)
    if uses_mfglib and have("mfglib") and not have("opt_einsum"):
        skipped.append("opt_einsum (not importable: MFGLib timed with plain torch.einsum)")
    result["rows"] = [asdict(r) for r in rows]
    result["skipped"] = skipped
    result["load_after"] = load()
    result["torch_threads"] = torch.get_num_threads()
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return result


if __name__ == "__main__":
    main()

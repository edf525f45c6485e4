"""Side by side with the reference libraries, in one run: exact exploitability against OpenSpiel's
NashConv and MFGLib's exploitability_score, and crowd_1d simulator throughput.

    .venv/bin/pip install -e '.[bench]'        # open_spiel==2.0.2, mfglib==0.3.0, magent2
    .venv/bin/python benchmarks/vs_libraries.py [--quick]

Prints one table (ours, theirs, ratio) and the agreement checks. One process, torch and numpy on
one thread (set OMP/MKL/OPENBLAS_NUM_THREADS=1 before numpy loads). Timings depend on the machine
and its load; they are never asserted in tests.

(a) crowd_2d 10x10, horizon 10, uniform policy: our exploitability vs OpenSpiel's NashConv
    (open_spiel.python.mfg.algorithms.nash_conv) on mfg_crowd_modelling_2d. Values agree exactly
    only where the semantics coincide: with only_distribution_reward there is no movement cost,
    so OpenSpiel's value cache keyed on (x, y, t) (docs/benchmarks.md) loses nothing (its horizon H
    is our H). With the movement cost the difference is printed (OpenSpiel keeps whichever
    previous action reached a cell first; our values are exact over (cell, previous action)).
    Also predator_prey: the sum of our per-population gains vs OpenSpiel's NashConv on
    python_mfg_predator_prey (defaults: 5x5, H = 10, three populations), same semantics.
(b) crowd_2d 20x20, horizon 10: MFGLib 0.3.0's exploitability_score on an Environment built from
    our tensors (dense transition [S', S, A], reward [S, A] from our epoch reward) vs ours: the
    same game, so the values must agree to rounding (a correctness check).
(c) crowd_1d simulator with action sampling at N = 10^6: agent-steps per second on one core
    (wall clock, and per CPU second of this process, which is what load from other processes on
    a shared machine distorts least).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mfdiffuser.envs import (  # noqa: E402
    Crowd1D,
    Crowd1DSim,
    exploitability,
    fictitious_play,
    sample_actions,
    uniform_policy,
)
from mfdiffuser.envs.crowd_2d import Crowd2D, make_crowd_2d  # noqa: E402
from mfdiffuser.envs.predator_prey import PredatorPrey  # noqa: E402

Row = tuple[str, str, str, str]


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median seconds, last result) over `repeats` calls after one warm-up."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def openspiel_nash_conv(
    horizon: int, only_distribution_reward: bool, start: int | None = None
) -> tuple[float, float]:
    """(NashConv of OpenSpiel's uniform policy on crowd_modelling_2d 10x10, seconds for one).

    start: all mass at cell (start, start) (x = y, so OpenSpiel's x/y transposition of the
    initial distribution does not matter); None: OpenSpiel's default (uniform)."""
    import pyspiel
    from open_spiel.python import policy as policy_std
    from open_spiel.python.mfg.algorithms import nash_conv

    params: dict[str, object] = {
        "size": 10,
        "horizon": horizon,
        "only_distribution_reward": only_distribution_reward,
    }
    if start is not None:
        params["initial_distribution"] = f"[{start}|{start}]"
        params["initial_distribution_value"] = "[1.0]"
    game = pyspiel.load_game("mfg_crowd_modelling_2d", params)
    start = time.perf_counter()
    value = nash_conv.NashConv(game, policy_std.UniformRandomPolicy(game)).nash_conv()
    return float(value), time.perf_counter() - start


def part_a(rows: list[Row], notes: list[str], repeats: int) -> None:
    game = make_crowd_2d(size=10, horizon=10)
    ours_s, ours = timed(lambda: exploitability(game, uniform_policy(game)), repeats)
    theirs, theirs_s = openspiel_nash_conv(10, False)
    rows.append(
        (
            "(a) exploitability, crowd_2d 10x10 H=10, uniform",
            f"{ours_s * 1e3:.2f} ms",
            f"{theirs_s * 1e3:.0f} ms (NashConv)",
            f"{theirs_s / ours_s:.0f}x",
        )
    )
    notes.append(
        f"(a) values with movement cost: ours {ours:.6f} (H=10); OpenSpiel NashConv "
        f"{theirs:.6f} (its H=10); differ by design (value cache keyed on (x, y, t))"
    )
    # Where the semantics coincide (no movement cost; a start cell (3, 3) so that the uniform
    # policy is not an equilibrium).
    g = make_crowd_2d(size=10, horizon=10, only_distribution_reward=True, initial=[(3, 3)])
    e = exploitability(g, uniform_policy(g))
    os_value, _ = openspiel_nash_conv(10, True, start=3)
    notes.append(
        f"(a) only_distribution_reward, start (3, 3), H=10: ours {e:.12f}, OpenSpiel "
        f"{os_value:.12f}, |diff| {abs(e - os_value):.2e}"
    )
    predator_prey_check(rows, notes, repeats)


def predator_prey_check(rows: list[Row], notes: list[str], repeats: int) -> None:
    import pyspiel
    from open_spiel.python import policy as policy_std
    from open_spiel.python.mfg.algorithms import nash_conv
    from open_spiel.python.mfg.games import predator_prey as _registers  # noqa: F401

    game = PredatorPrey()
    pol = uniform_policy(game)
    ours_s, gains = timed(lambda: game.exploitability_per_population(pol), repeats)
    os_game = pyspiel.load_game("python_mfg_predator_prey")
    start = time.perf_counter()
    theirs = nash_conv.NashConv(os_game, policy_std.UniformRandomPolicy(os_game)).nash_conv()
    theirs_s = time.perf_counter() - start
    rows.append(
        (
            "(a') NashConv, predator_prey 5x5 H=10, uniform",
            f"{ours_s * 1e3:.2f} ms",
            f"{theirs_s * 1e3:.0f} ms (NashConv)",
            f"{theirs_s / ours_s:.0f}x",
        )
    )
    ours = float(np.sum(gains))  # type: ignore[arg-type]
    notes.append(
        f"(a') predator_prey: sum of our per-population gains {ours:.12f}, OpenSpiel NashConv "
        f"{theirs:.12f}, |diff| {abs(ours - theirs):.2e}"
    )


def mfglib_env(game: Crowd2D) -> object:
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
        mu = big_l.sum(dim=-1).numpy()
        return torch.tensor(game.reward(t, mu))

    return Environment(
        T=game.horizon - 1,
        S=(n_s,),
        A=(n_a,),
        mu0=torch.tensor(game.mu0),
        r_max=float(np.abs(game.reward(0, game.mu0 + 1e-3)).max()),
        reward_fn=reward_fn,
        transition_fn=transition_fn,
    )


def part_b(rows: list[Row], notes: list[str], repeats: int) -> None:
    import mfglib.alg  # noqa: F401 (mfglib.scoring alone hits a circular import in 0.3.0)
    from mfglib.scoring import exploitability_score

    game = make_crowd_2d(size=20, horizon=10)
    env = mfglib_env(game)
    rng = np.random.default_rng(0)
    random_pol = rng.dirichlet(np.ones(game.n_actions), size=(game.horizon, game.n_states))
    for label, pol in (("uniform", uniform_policy(game)), ("random", random_pol)):
        ours_s, ours = timed(lambda p=pol: exploitability(game, p), repeats)
        pi = torch.tensor(pol)
        theirs_s, theirs = timed(lambda p=pi: float(exploitability_score(env, p)), 1)
        rows.append(
            (
                f"(b) exploitability, crowd_2d 20x20 H=10, {label}",
                f"{ours_s * 1e3:.2f} ms",
                f"{theirs_s * 1e3:.0f} ms (MFGLib)",
                f"{theirs_s / ours_s:.0f}x",
            )
        )
        notes.append(
            f"(b) {label}: ours {ours:.12f}, MFGLib {theirs:.12f}, "
            f"|diff| {abs(float(ours) - float(theirs)):.2e}"  # type: ignore[arg-type]
        )


def part_c(rows: list[Row], notes: list[str], n: int, repeats: int) -> None:
    game = Crowd1D(size=10, horizon=10)
    expert = fictitious_play(game, 100).policy
    sim = Crowd1DSim(game, n)
    rng = np.random.default_rng(0)

    def episode() -> None:
        states = sim.reset(0)
        for step in range(game.horizon):
            states, _, _ = sim.step(sample_actions(expert[step], states, rng))

    episode()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        episode()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    steps = n * game.horizon
    rows.append(
        (
            f"(c) crowd_1d sim + sampling, N={n:,}",
            f"{steps / statistics.median(wall) / 1e6:.1f} M/s wall, "
            f"{steps / statistics.median(cpu) / 1e6:.1f} M/s per CPU-s",
            "target 30 M/s",
            f"{steps / statistics.median(cpu) / 30e6:.2f}x of target",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, N = 10^5 in (c)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # MFGLib builds its tensors with the default dtype
    reps = 3 if args.quick else 7
    rows: list[Row] = []
    notes: list[str] = []
    part_a(rows, notes, reps)
    part_b(rows, notes, reps)
    part_c(rows, notes, 10**5 if args.quick else 10**6, reps)
    head: Row = ("what", "ours", "theirs", "ratio")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)))
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()

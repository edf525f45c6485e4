"""Total-variation distance between the frozen policy tables of the flat and the coarse-to-fine
sampler on one trained planner (crowd_1d), at M_L = 64.

    .venv/bin/python benchmarks/c2f_table_tv.py [--planner evidence|quickstart] [--quick]
        [--steps S] [--seeds 0 1 2] [--draws 16 512] [--branch renoise ancestral]
        [-s stage_steps=[3,3,4] ...]

Planners (trained in-process; no model file is read, so the weights are exactly those of the
seed):
- `evidence` (default): evidence_value_weighting.py's (crowd_1d 10x10, `medium` data, H = 1,
  K = 10, width 32, EMA, β = 0), trained with its `train` (S steps per epoch, 5 epochs;
  default S = 240).
- `quickstart`: configs/quickstart.yaml's method params (window 4, n_particles 32,
  max_particles 64, K = 20, hidden 64, 2 blocks; the planner whose coarse-to-fine speed-up
  `benchmarks/run.py --only planning` reports), on the quickstart's `expert` data, trained as
  exploitability_curve.py trains it: the platform's `train_epochs`, batch 16, lr 3e-3, S steps
  in all (default S = 3,000, the quickstart's budget).
Both tables are `FiniteStatePlannerPolicy.expected_table` (each `--draws`; M_max = 64, the
same seed) with the same weights: flat = stages 1, c2f = stages 3, growth 4, one table per
`--branch` (renoise, the config's default, and/or ancestral; the config's stage_steps unless `-s`
overrides them, e.g. `-s stage_steps=[3,3,4]`).
Reported, each Σ_t Σ_s μ_t(s)·TV(π_t(s), π'_t(s)) / T with μ the flat table's own flow
(`mean_tv`):
- flat vs c2f (the figure the target TV <= 0.02 is about);
- flat vs flat with another table seed: the tables' own sampling noise, the floor of the first
  (it falls as 1/sqrt(draws): on the evidence planner 0.014 at 512 draws (seed 0) and 0.006
  at 2048, so the target 0.02 is resolved from 512 draws on).
Prints the CPU time of each table and the load average. Not part of the test pass/fail.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evidence_value_weighting as vw

from mfdiffuser.envs import propagate
from mfdiffuser.planner.acting import FiniteStatePlannerPolicy
from mfdiffuser.planner.diffusion import MFDiffuser, returns_to_go

M_L, STAGES, GROWTH = 64, 3, 4
QUICKSTART = {"window": 4, "n_particles": 32, "max_particles": 64, "diffusion_steps": 20}
QUICKSTART |= {"hidden": 64, "n_blocks": 2}


def train_quickstart(data: vw.Data, seed: int, steps: int) -> MFDiffuser:
    """The quickstart's planner trained as exploitability_curve.py trains it (S steps)."""
    from mfdiffuser.methods.base import DataStats, Dims
    from mfdiffuser.methods.registry import get_method
    from mfdiffuser.methods.training import train_epochs

    spec = get_method("mf_diffuser")
    torch.manual_seed(seed)
    method = spec.build(spec.params(QUICKSTART), Dims.of(data.game))
    stats = DataStats(data.prior, data.advantage, returns_to_go(data.arrays.rewards))
    method.prepare(stats)  # type: ignore[attr-defined]
    train_epochs(
        method,  # type: ignore[arg-type]
        method.batches(data.arrays, data.game, seed=seed),  # type: ignore[attr-defined]
        epochs=1,
        steps_per_epoch=steps,
        batch_size=16,
        lr=3e-3,
        on_epoch=lambda *_: None,
    )
    planner: MFDiffuser = method.planner  # type: ignore[attr-defined]
    planner.model.eval()
    return planner


def table(
    planner: MFDiffuser, data: vw.Data, stages: int, seed: int, draws: int, over: dict
) -> tuple[object, float]:
    """The frozen table (stages 1 = flat) and its CPU seconds."""
    update = {"max_particles": M_L, "stages": stages, "growth": GROWTH, "draws": draws}
    cfg = planner.cfg.model_copy(update=update | (over if stages > 1 else {}))
    if stages > 1 and cfg.stage_steps is not None:
        cfg = cfg.model_copy(update={"stages": len(cfg.stage_steps)})
    policy = FiniteStatePlannerPolicy(planner, data.game, data.prior, cfg)
    trained, planner.cfg = planner.cfg, cfg  # the sampler's own settings (branch) are the planner's
    t0 = time.process_time()
    out = policy.expected_table(lambda p: propagate(data.game, p), seed)
    secs = time.process_time() - t0
    planner.cfg = trained
    return out, secs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planner", choices=("evidence", "quickstart"), default="evidence")
    parser.add_argument("--quick", action="store_true", help="few training steps, seed 0")
    parser.add_argument("--steps", type=int, default=None, help="training steps (see above)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=int, nargs="+", default=[16, 512])
    parser.add_argument("--branch", nargs="+", default=["renoise"],
                        choices=("renoise", "ancestral"), help="c2f tables, one per branch")  # fmt: skip
    parser.add_argument("-s", "--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a PlannerConfig field of the c2f table only")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    over = {}
    for item in args.set:
        key, _, value = item.partition("=")
        over[key] = yaml.safe_load(value)
    evidence = args.planner == "evidence"
    steps = args.steps or (240 if evidence else 3000)
    if args.quick:
        steps, seeds = (40 if evidence else 300), [0]
    else:
        seeds = args.seeds
    data = vw.make_data("medium" if evidence else "expert")
    what = (
        f"crowd_1d medium, planner H=1 K=10 w32 trained {steps} steps x 5 epochs"
        if evidence
        else f"crowd_1d expert, quickstart planner H=4 K=20 w64 trained {steps} steps"
    )
    print(f"# {what}; expected_table draws={args.draws} M_L={M_L}; c2f L={STAGES} b={GROWTH} "
          f"{over or ''}")  # fmt: skip
    heads = "".join(f" {'flat-c2f ' + b:>18} {'cpu s':>6}" for b in args.branch)
    print(f"{'seed':>4} {'draws':>5} {'TV flat-flat':>13}{heads} {'train s':>8} {'flat cpu s':>10}"
          "  load")
    for seed in seeds:
        t0 = time.process_time()
        planner = vw.train(data, 0.0, seed, steps) if evidence else train_quickstart(data, seed, steps)
        secs = time.process_time() - t0
        for draws in args.draws:
            flat, t_flat = table(planner, data, 1, seed, draws, over)
            flat2, _ = table(planner, data, 1, seed + 100, draws, over)
            tv_noise = vw.mean_tv(data.game, flat2, flat)  # type: ignore[arg-type]
            cols = ""
            for branch in args.branch:
                c2f, t_c2f = table(planner, data, STAGES, seed, draws, over | {"branch": branch})
                tv_c2f = vw.mean_tv(data.game, c2f, flat)  # type: ignore[arg-type]
                cols += f" {tv_c2f:>18.4f} {t_c2f:>6.1f}"
            load = "/".join(f"{v:.2f}" for v in os.getloadavg())
            print(f"{seed:>4} {draws:>5} {tv_noise:>13.4f}{cols} {secs:>8.1f} {t_flat:>10.1f}"
                  f"  {load}", flush=True)


if __name__ == "__main__":
    main()

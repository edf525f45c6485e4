"""The generated policy against its data on every finite-state benchmark: behaviour, MF-Diffuser
before and after the planner-quality options, and behaviour cloning, over seeds.

    .venv/bin/python benchmarks/planner_quality.py [--benchmarks crowd_1d sis ...]
        [--qualities expert medium mixed] [--seeds 0 1 2] [--steps 600]
        [--variants before shrink after bc] [--out results.jsonl]
        [-s after:first_action_weight=4 ...]

For each benchmark (its default params) and quality, one dataset on the pure path (the registry's
behaviour, `generate_shard`, N = `--agents` agents × `--episodes` episodes, data seed 0), and per
training seed each variant trained in-process on one torch thread with the platform's one
training loop (`train_epochs`, batch `--batch`, lr `--lr`, `--steps` steps), then frozen into its
table along its own exact flow (`Policy.expected_table`, docs/method.md) and scored exactly:
exploitability (the welfare gap for the cooperative gaussian_squeeze) and J^∞, beside the
behaviour π_b's and the data policy π̂_b's. Variants (planner params: `PLANNER` below, the
quick comparison table's planner, the window cut to the horizon of a shorter game):

- `before`: MF-Diffuser as it was before the planner-quality work: raw Â (`advantage_shrinkage`
  0), every loss cell alike (`first_action_weight` 1);
- `shrink`: the shrunk Â (`advantage_shrinkage` at its default), every loss cell alike;
- `after`: MF-Diffuser with the package's defaults (and any `-s after:field=value`);
- `bc`: behaviour cloning (`bc`, its defaults).

Each finished run is one JSON line appended to `--out`; a rerun with the same `--out` skips the
runs already there (an interrupted table resumes without repeating or losing one). The summary
is a markdown table of mean ± std over the seeds, with process CPU time and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from beta_choice import BENCHMARKS, QUALITIES, score  # the same benchmarks and measure

from mfdiffuser.data.generate import generate_shard
from mfdiffuser.data.windows import episodes_from_table
from mfdiffuser.envs import policy_value, propagate
from mfdiffuser.envs.behaviour import occupancy_mixture
from mfdiffuser.envs.registry import get_benchmark
from mfdiffuser.methods.base import DataStats, Dims
from mfdiffuser.methods.registry import get_method
from mfdiffuser.methods.training import train_epochs

PLANNER = {"window": 4, "n_particles": 16, "max_particles": 32, "diffusion_steps": 10}
PLANNER |= {"hidden": 32, "n_blocks": 2}
BEFORE = {"advantage_shrinkage": 0.0, "first_action_weight": 1.0}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "before": ("mf_diffuser", PLANNER | BEFORE),
    "shrink": ("mf_diffuser", PLANNER | {"first_action_weight": 1.0}),
    "after": ("mf_diffuser", dict(PLANNER)),
    "bc": ("bc", {}),
}


def dataset(name: str, quality: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = get_benchmark(name)
    game = spec.game({})
    made = spec.behaviour(game, quality)
    table, _ = generate_shard(
        lambda: spec.make_sim(game, args.agents), made.policies, range(args.episodes), 0
    )
    arrays = episodes_from_table(table, args.agents)
    stats = DataStats.of(arrays, game)
    behaviour = occupancy_mixture(game, made.policies)
    ref = {
        "behaviour": score(spec, game, behaviour),
        "behaviour_return_mf": float(policy_value(game, behaviour)),
        "data_policy": score(spec, game, stats.prior),
    }
    return {"spec": spec, "game": game, "arrays": arrays, "stats": stats, "ref": ref}


def fit(data: dict[str, Any], variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant on one seed and score its frozen table."""
    method_name, params = VARIANTS[variant]
    params = params | (args.after if variant == "after" else {})
    spec, game, arrays, stats = data["spec"], data["game"], data["arrays"], data["stats"]
    if "window" in params:  # the stage games' episodes are shorter than the window
        params["window"] = min(int(params["window"]), game.horizon)
    torch.manual_seed(seed)
    method_spec = get_method(method_name)
    method = method_spec.build(method_spec.params(params), Dims.of(game))
    cpu0 = time.process_time()
    method.prepare(stats)  # type: ignore[attr-defined]
    train_epochs(
        method,  # type: ignore[arg-type]
        method.batches(arrays, game, seed=seed),  # type: ignore[attr-defined]
        epochs=1,
        steps_per_epoch=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        on_epoch=lambda *_: None,
    )
    policy = method.policy(game, stats.prior, seed)
    frozen = policy.expected_table(lambda p: propagate(game, p), seed)
    return {
        "score": score(spec, game, frozen),
        "return_mf": float(policy_value(game, frozen)),
        "cpu_s": time.process_time() - cpu0,
        "params": method.params.model_dump(mode="json"),  # what was actually used
    }


def _override(text: str) -> dict[str, Any]:
    """'after:first_action_weight=4' -> {'first_action_weight': 4}."""
    variant, _, pair = text.partition(":")
    if variant != "after" or "=" not in pair:
        raise SystemExit(f"-s {text!r}: expected after:<field>=<value>")
    key, _, value = pair.partition("=")
    return {key: yaml.safe_load(value)}


def summary(rows: list[dict[str, Any]], variants: list[str]) -> str:
    """Markdown: benchmark × quality, behaviour and each variant's score and J^∞ (mean ± std)."""
    head = "| benchmark | data | measure | behaviour | π̂_b | " + " | ".join(variants) + " |"
    lines = [head, "|" + " --- |" * (5 + len(variants))]
    keys = sorted({(r["benchmark"], r["quality"]) for r in rows}, key=lambda k: (
        BENCHMARKS.index(k[0]) if k[0] in BENCHMARKS else 99, QUALITIES.index(k[1])
    ))  # fmt: skip
    for bench, quality in keys:
        mine = [r for r in rows if (r["benchmark"], r["quality"]) == (bench, quality)]
        ref = mine[0]["ref"]
        cells = []
        for v in variants:
            got = [r for r in mine if r["variant"] == v]
            if not got:
                cells.append("–")
                continue
            s, j = np.array([r["score"] for r in got]), np.array([r["return_mf"] for r in got])
            sd = float(s.std(ddof=1)) if len(s) > 1 else 0.0
            jd = float(j.std(ddof=1)) if len(j) > 1 else 0.0
            cells.append(f"{s.mean():.3f} ± {sd:.3f} (J {j.mean():.2f} ± {jd:.2f}, n={len(s)})")
        lines.append(
            f"| {bench} | {quality} | {mine[0]['measure']} | {ref['behaviour']:.3f} "
            f"(J {ref['behaviour_return_mf']:.2f}) | {ref['data_policy']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    parser.add_argument("--qualities", nargs="+", default=list(QUALITIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=Path("planner_quality.jsonl"))
    parser.add_argument("-s", "--set", action="append", default=[], metavar="after:FIELD=VALUE")
    args = parser.parse_args()
    args.after = {}
    for item in args.set:
        args.after |= _override(item)
    torch.set_num_threads(1)
    done: list[dict[str, Any]] = []
    if args.out.exists():
        done = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    have = {(r["benchmark"], r["quality"], r["variant"], r["seed"], r["steps"]) for r in done}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for name in args.benchmarks:
        for quality in args.qualities:
            todo = [
                (v, s)
                for v in args.variants
                for s in args.seeds
                if (name, quality, v, s, args.steps) not in have
            ]
            if not todo:
                continue
            data = dataset(name, quality, args)
            cooperative = data["spec"].reference_value is not None
            measure = "welfare_gap" if cooperative else "exploitability"
            for variant, seed in todo:
                row = {"benchmark": name, "quality": quality, "variant": variant, "seed": seed}
                row |= {"steps": args.steps, "measure": measure, "ref": data["ref"]}
                row |= fit(data, variant, seed, args)
                with args.out.open("a") as f:  # one whole line per finished run
                    f.write(json.dumps(row) + "\n")
                done.append(row)
                print(
                    f"{name:<20} {quality:<7} {variant:<7} seed {seed}: {row['score']:.4f} "
                    f"(behaviour {data['ref']['behaviour']:.4f}) J {row['return_mf']:.3f} "
                    f"{row['cpu_s']:.0f} s CPU",
                    flush=True,
                )
    rows = [r for r in done if r["steps"] == args.steps and r["benchmark"] in args.benchmarks]
    print(summary(rows, args.variants))
    print(
        f"{time.perf_counter() - wall0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU; "
        f"load {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()

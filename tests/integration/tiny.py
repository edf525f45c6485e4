"""The smallest settings a whole generate -> train -> evaluate flow runs with through `mfd`
(seconds each), shared by the tests that run such a flow: join them with the test's own
(`n_agents`, `data.*`, `benchmark.params.*`) and pass them as `-s` options (`sets`)."""

from __future__ import annotations

TRAIN = ["train.epochs=1", "train.steps_per_epoch=3", "train.batch_size=2"]
PLANNER = [
    "planner.diffusion_steps=2",
    "planner.stages=1",
    "planner.n_particles=4",
    "planner.max_particles=4",
    "planner.hidden=16",
    "planner.n_blocks=1",
]
EVAL = ["eval.episodes=1", "eval.plan_windows=1", "eval.held_out_episodes=1"]


def sets(settings: list[str]) -> list[str]:
    """`-s key=value` options of the settings."""
    return [x for s in settings for x in ("-s", s)]

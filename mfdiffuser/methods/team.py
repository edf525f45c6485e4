"""Methods on team games (`TeamView`, `TeamWindowSampler`): their batches, training and policy.

A method plays team 0 from per-agent features (x, y, hp) and the context (t / T, both teams'
density maps, own team first); it acts for any team size with the same weights. Which methods
can:
- the MF-Diffuser family, acting by the matching rule (`MatchingPlannerPolicy`) whatever the
  config's `acting`, since there is no finite state space for a per-state table; no value
  weights: there is no tabular advantage of a continuous state;
- madiff, the same way with every agent of the team a particle (its joint model), up to its
  agent limit (`MethodSpec.max_agents`, agents per team);
- bc, and mf_iql from per-agent transitions t -> t + 1 of team 0 (an agent's last living step
  is done); both act with their policy network.
The others need a finite state space (mf_cql acts by a softmax of Q over every state) and are
refused (`cannot_play`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mfdiffuser.data.team_windows import TeamEpisodes, TeamView, TeamWindowSampler
from mfdiffuser.envs.team import TeamLayout
from mfdiffuser.methods.base import Dims, Method, TrainedMethod

# The method modules whose models read per-agent features and a context only.
_TEAM_MODULES = (
    "mfdiffuser.methods.mf_diffuser",
    "mfdiffuser.baselines.madiff",
    "mfdiffuser.baselines.bc",
    "mfdiffuser.baselines.mf_iql",
)


def dims_of(layout: TeamLayout) -> Dims:
    return Dims(layout.feature_dim, layout.n_actions, layout.context_dim, 0, layout.horizon)


def cannot_play(spec: Any) -> str | None:
    """Why a method (`MethodSpec`) cannot play team games, or None."""
    if spec.module in _TEAM_MODULES and not spec.fixed.get("return_guidance"):
        return None
    return (
        f"{spec.name} needs a finite state space; on a team game allowed: mf_diffuser, "
        "mf_diffuser_flat, mf_diffuser_unweighted, per_agent_diffuser, madiff, bc, mf_iql"
    )


def team_batches(method: TrainedMethod, arrays: TeamEpisodes, seed: int) -> TeamWindowSampler:
    from mfdiffuser.baselines.madiff import MADiffMethod
    from mfdiffuser.baselines.q_learning import QLearning

    # madiff's joint model: every agent of team 0 is a particle (those alive at a window's
    # start, repeated when fewer are alive)
    m = arrays.n_agents if isinstance(method, MADiffMethod) else int(method.params.n_particles)
    if isinstance(method, QLearning):  # transitions t -> t + 1
        return TeamWindowSampler(arrays, 2, m, seed, next_context=True)
    window = int(getattr(method.params, "window", 1))  # bc: one step
    return TeamWindowSampler(arrays, window, m, seed)


def fit(
    method: TrainedMethod,
    arrays: TeamEpisodes,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    """Fit in-process with the platform's one loop (`train_epochs`); the loss of each step."""
    import torch

    from mfdiffuser.methods.training import train_epochs

    torch.manual_seed(seed)
    losses: list[float] = []
    train_epochs(
        method,
        team_batches(method, arrays, seed),
        epochs=1,
        steps_per_epoch=steps,
        batch_size=batch_size,
        lr=lr,
        on_epoch=lambda epoch, metrics, opt: losses.append(metrics["train/loss"]),
    )
    return losses


class TeamPolicy:
    """A method playing one team: `reset()`, then `act(t, feats[n, 3], mu[2, G, G], rng)`."""

    def __init__(self, method: Method, layout: TeamLayout, seed: int) -> None:
        import torch

        self.view = TeamView(layout)
        self.method = method
        planner = getattr(method, "planner", None)
        self.live: Any = None
        if planner is not None:
            from mfdiffuser.planner.acting import PlannerPolicy

            cfg = planner.cfg.model_copy(update={"acting": "matching"})
            self.live = PlannerPolicy(
                planner, self.view, None, cfg, torch.Generator().manual_seed(seed)
            )

        self._n_planned = -1

    def reset(self) -> None:
        self._n_planned = -1
        if self.live is not None:
            self.live.reset()

    def act(
        self, t: int, feats: np.ndarray, mu: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Actions of the living agents of the team, feats[n, 3] in the simulator's order."""
        if self.live is not None:
            # a plan matches the agents alive when it was made: after a death, plan again
            if len(feats) != self._n_planned:
                self.live.reset()
                self._n_planned = len(feats)
            return np.asarray(self.live.act(t, feats, rng, mu), dtype=np.int64)
        import torch

        net = self.method.nets["policy"]  # type: ignore[attr-defined]
        device = next(net.parameters()).device
        with torch.no_grad():
            x = torch.as_tensor(self.view.features(feats), device=device)[None]
            c = torch.as_tensor(self.view.context(t, mu), device=device)[None]
            probs = torch.softmax(net(x, c)[0].double(), dim=-1).cpu().numpy()
        # inverse-CDF draws: one uniform per agent
        u = rng.random(len(probs))[:, None]
        return np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), probs.shape[1] - 1)


def load_player(checkpoint: str, benchmark: str, layout: TeamLayout, seed: int) -> TeamPolicy:
    """A checkpoint (any method that plays team games) as a player of `benchmark`: the
    opponent of self-play and cross-play. One trained on another benchmark is refused."""
    from mfdiffuser.methods.checkpoint import load_checkpoint, read_meta

    made_on = read_meta(checkpoint).get("config", {}).get("benchmark", {}).get("name")
    if made_on != benchmark:
        raise ValueError(
            f"opponent = {checkpoint!r}: a checkpoint trained on {made_on}; allowed: "
            f"expert, random, or a checkpoint trained on {benchmark}"
        )
    method = load_checkpoint(checkpoint)[0]
    return TeamPolicy(method, layout, seed)

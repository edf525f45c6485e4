"""Evaluation by Ray actors: each actor loads a checkpoint once and plays its method at a given N.

Any registered method: the actor asks the method for its policy (`Method.policy`). Rollouts at
several N and seeds run in parallel. One more actor freezes the policy into its table and computes
the exact parts of the evaluation at the same time: the table's exploitability and J^∞, the
N-free terms of the suboptimality decomposition (with the method's value tilt β, 0 for methods
without one) and, for generative planners, the quality of the generated plans. The table is then
also played by N agents ("table rollouts"): the pure mean-field error of a fixed policy, next to
the live policy's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError

from mfdiffuser.platform import tracking
from mfdiffuser.platform.config import ExperimentConfig
from mfdiffuser.platform.errors import ACTOR_RESTARTS, WorkerError, worker_failure
from mfdiffuser.platform.names import RESTS_ON_BEHAVIOUR, estimate_key
from mfdiffuser.platform.progress import progress


# Every method is a pure function of its arguments and the checkpoint the constructor loads
# again on a restart, so a retried task returns what the lost one would have.
@ray.remote(num_cpus=1, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
class RolloutActor:
    def __init__(self, checkpoint: str) -> None:
        import torch

        from mfdiffuser.envs.registry import get_benchmark
        from mfdiffuser.methods.checkpoint import load_checkpoint

        torch.set_num_threads(1)
        method, prior, meta, _ = load_checkpoint(checkpoint)
        self.cfg = ExperimentConfig.model_validate(meta["config"])
        self.meta = meta
        self.method, self.prior = method, prior
        self.spec = get_benchmark(self.cfg.benchmark.name)
        self.game = self.spec.game(self.cfg.benchmark.params)

    def returns(self, n_agents: int, episodes: int, seed: int) -> dict[str, Any]:
        """Per-episode J^N of the method's live policy (for a planner: one call per step)."""
        from mfdiffuser.evaluation.rollout import table_act
        from mfdiffuser.methods.policies import TablePolicy

        policy = self.method.policy(self.game, self.prior, seed)
        if type(policy) is TablePolicy:  # a fixed table: the simulator's fused path, same draws
            act = table_act(policy.table)
        else:

            def act(t: int, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
                return np.asarray(policy.act(t, states, rng))

        act.reset = policy.reset  # type: ignore[attr-defined]  # called by episode_return
        return self._play(act, n_agents, episodes, seed)

    def table_returns(
        self, table: list[list[list[float]]], n_agents: int, episodes: int, seed: int
    ) -> dict[str, Any]:
        """Per-episode J^N of the frozen table played by N agents (no planner noise)."""
        from mfdiffuser.evaluation.rollout import table_act

        return self._play(table_act(np.asarray(table)), n_agents, episodes, seed)

    def _play(self, act: Any, n_agents: int, episodes: int, seed: int) -> dict[str, Any]:
        from mfdiffuser.evaluation.rollout import rollout_returns

        rets = rollout_returns(
            lambda: self.spec.make_sim(self.game, n_agents), act, self.game.horizon, episodes, seed
        )
        return {"n_agents": n_agents, "seed": seed, "returns": rets}

    def table(self, seed: int) -> dict[str, Any]:
        from mfdiffuser.evaluation.rollout import propagate_fn, table_metrics

        policy = self.method.policy(self.game, self.prior, seed)
        table = policy.expected_table(propagate_fn(self.game), seed)
        return {"table": table, **table_metrics(self.game, table)}

    def diagnostics(self, table: list[list[list[float]]], seed: int) -> dict[str, Any]:
        """Exact decomposition values (J^∞ of π_ref, π_β*, π_β^D, π̂) and plan quality."""
        from mfdiffuser.data.advantages import dataset_statistics
        from mfdiffuser.data.generate import generate_shard
        from mfdiffuser.data.importing import IMPORTED
        from mfdiffuser.data.windows import episodes_from_table
        from mfdiffuser.envs import policy_value
        from mfdiffuser.envs.behaviour import occupancy_mixture
        from mfdiffuser.evaluation.decomposition import exact_terms
        from mfdiffuser.evaluation.plan_quality import plan_quality

        game, cfg = self.game, self.cfg
        beta, weight_clip = self.method.tilt
        # shard by shard: a dataset larger than this actor's memory is scored too
        advantage, data_prior = dataset_statistics(
            self.meta["dataset"], game.n_states, game.n_actions
        )
        advantage = self.method.tilt_advantage(advantage)  # as the method's training tilted
        # Imported data: the behaviour is unknown; the empirical policy of the data's (t, s, a)
        # counts stands in for π_b, and what rests on it is named an estimate.
        imported = cfg.data.quality == IMPORTED
        made = None if imported else self.spec.behaviour(game, cfg.data.quality)
        if made is None:
            pi_b = data_prior
        else:
            pi_b = occupancy_mixture(game, made.policies)
        if self.spec.reference_value is not None:
            j_ref = float(self.spec.reference_value(game))
        else:
            expert = made if cfg.data.quality == "expert" else self.spec.behaviour(game, "expert")
            assert expert is not None
            j_ref = policy_value(game, expert.policies[0])
        values = exact_terms(
            game,
            j_ref=j_ref,
            behaviour=pi_b,
            prior=self.prior,
            advantage=advantage,
            table=np.asarray(table, dtype=np.float64),
            beta=beta,
            weight_clip=weight_clip,
        )
        out: dict[str, Any] = {"values": values, "metrics": {}, "estimated": imported}
        window = getattr(self.method.params, "window", None)
        # plan quality compares plans with fresh episodes of the behaviour: none when unknown
        held_out = made is not None and cfg.eval.plan_windows > 0
        if held_out and self.method.generative and window is not None:
            assert made is not None
            import torch

            # Held-out episodes: the behaviour policies again, from a seed the dataset never used.
            held, _ = generate_shard(
                lambda: self.spec.make_sim(game, cfg.data.n_agents),
                made.policies,
                range(cfg.eval.held_out_episodes),
                seed=cfg.data.seed + 1_000_003,
            )
            ho = episodes_from_table(held, cfg.data.n_agents, "held-out episodes")

            def sample(t: int, mu: np.ndarray, first: np.ndarray, s: int) -> np.ndarray:
                gen = torch.Generator().manual_seed(s)
                ctx = torch.as_tensor(np.asarray(game.context(t, mu), dtype=np.float32))[None]
                fs = torch.as_tensor(np.asarray(game.features(first), dtype=np.float32))[None]
                # Data layout states ⊕ actions for any action head (inverse dynamics included).
                return self.method.sample_transitions(ctx, fs, gen, t=t)[0].cpu().numpy()

            out["metrics"] = plan_quality(
                game,
                sample,
                ho.states,
                ho.actions,
                window=int(window),
                n_particles=int(getattr(self.method.params, "n_particles", 1)),
                n_windows=cfg.eval.plan_windows,
                seed=seed,
            )
        return out


def _gather(refs: list[Any], jobs: list[tuple[int, int]], episodes: int) -> list[Any]:
    """`ray.get(refs)`, showing the episodes played per N as the rollouts finish."""
    from collections import Counter

    total = Counter(n for n, _ in jobs)
    done: Counter[int] = Counter()
    at = {ref: n for ref, (n, _) in zip(refs, jobs, strict=True)}
    pending = list(refs)
    with progress("evaluate", len(refs) * episodes, "episodes") as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done[at[ready[0]]] += 1
            note = ", ".join(f"N={n}: {done[n] * episodes}/{total[n] * episodes}" for n in total)
            bar.advance(episodes, note)
    return ray.get(refs)


def evaluate_checkpoint(
    checkpoint: str | Path,
    n_agents: list[int],
    *,
    episodes: int,
    seeds: int,
    seed: int = 0,
    decomposition: bool = True,
    actor_cpus: float = 1.0,
    max_actors: int | None = None,
    opponents: list[str] | None = None,
) -> dict[str, Any]:
    """Returns metrics named by the MLflow scheme plus the raw per-episode returns (team
    games: `evaluate_team_checkpoint`, against `opponents`)."""
    from mfdiffuser.envs.registry import get_benchmark
    from mfdiffuser.evaluation.decomposition import Decomposition
    from mfdiffuser.methods.checkpoint import read_meta

    cfg = ExperimentConfig.model_validate(read_meta(checkpoint)["config"])
    if get_benchmark(cfg.benchmark.name).simulator is not None:
        return evaluate_team_checkpoint(
            checkpoint,
            n_agents,
            episodes=episodes,
            seeds=seeds,
            seed=seed,
            actor_cpus=actor_cpus,
            opponents=opponents,
        )

    jobs = [(n, seed + s) for n in n_agents for s in range(seeds)]
    # As many actors as the CPUs free right now hold (at least one): work is bound to actors
    # up front, so an actor that could never be placed (e.g. inside a Tune trial, which holds
    # part of a CPU itself) would stall the evaluation forever.
    free = max(1, int(ray.available_resources().get("CPU", 0.0) / actor_cpus + 1e-9))
    n_actors = min(len(jobs) + 1, free, max_actors or free)
    actors = [
        # "DEFAULT": outside the caller's placement group (a Tune trial's holds only its own
        # 0.01 CPU); the actors ask the cluster for their CPUs like any other work.
        RolloutActor.options(  # type: ignore[attr-defined]
            num_cpus=actor_cpus, scheduling_strategy="DEFAULT"
        ).remote(str(checkpoint))
        for _ in range(n_actors)
    ]
    try:
        table_ref = actors[-1].table.remote(seed)
        refs = [
            actors[i % len(actors)].returns.remote(n, episodes, s) for i, (n, s) in enumerate(jobs)
        ]
        table = ray.get(table_ref)
        frozen = table["table"].tolist()
        diag_ref = actors[-1].diagnostics.remote(frozen, seed) if decomposition else None
        table_refs = [
            actors[i % len(actors)].table_returns.remote(frozen, n, episodes, s)
            for i, (n, s) in enumerate(jobs)
        ]
        results = _gather(refs, jobs, episodes)
        table_results = ray.get(table_refs)
        diag = ray.get(diag_ref) if diag_ref is not None else None
    except RayError as err:
        raise WorkerError(f"evaluation of {checkpoint}: {worker_failure(err)}") from err
    finally:  # a failed rollout must not leave actors holding CPUs
        for a in actors:
            ray.kill(a)

    metrics: dict[str, float] = {
        "exploitability": float(table["exploitability"]),
        "return_mf": float(table["return_mf"]),
    }

    def by_n(rs: list[dict[str, Any]]) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for r in rs:
            out.setdefault(r["n_agents"], []).extend(r["returns"])
        return dict(sorted(out.items()))

    per_n, per_n_table = by_n(results), by_n(table_results)
    for n, rets in per_n.items():
        metrics[tracking.return_key(n)] = float(np.mean(rets))
        metrics[f"return/n{n}_std"] = float(np.std(rets))
        metrics[f"return/table_n{n}"] = float(np.mean(per_n_table[n]))
    j_hat = float(table["return_mf"])
    for n, rets in per_n_table.items():
        # The frozen table's own mean-field error: N-agent fluctuation only, no planner noise.
        metrics[f"subopt/mf_error_table/n{n}"] = j_hat - float(np.mean(rets))
        metrics[f"subopt/mf_abs_dev_table/n{n}"] = float(np.mean(np.abs(np.asarray(rets) - j_hat)))
    if diag is not None:
        v = diag["values"]
        dec = Decomposition(
            j_ref=v["j_ref"],
            j_beta_star=v["j_beta_star"],
            j_beta_data=v["j_beta_data"],
            j_hat=v["j_hat"],
            episode_returns=per_n,
        )
        terms = dec.metrics()
        if diag.get("estimated"):  # imported data: π_β* rests on the estimated behaviour
            for key in RESTS_ON_BEHAVIOUR:
                terms[estimate_key(key)] = terms.pop(key)
        metrics.update(terms)
        metrics.update(diag["metrics"])
    return {
        "metrics": metrics,
        "returns": {str(n): r for n, r in per_n.items()},
        "table_returns": {str(n): r for n, r in per_n_table.items()},
        "table": table["table"].tolist(),
    }


@ray.remote(num_cpus=1, max_retries=ACTOR_RESTARTS)
def _team_scores(checkpoint: str, n_agents: int, opponent: str, episodes: int, seed: int) -> Any:
    """One (N, opponent, seed) of a team game: the checkpoint plays team 0 (a pure function of
    its arguments, so a retried task returns what the lost one would have)."""
    import torch

    from mfdiffuser.envs.registry import get_benchmark
    from mfdiffuser.evaluation.team import team_scores
    from mfdiffuser.methods import team
    from mfdiffuser.methods.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    method, _, meta, _ = load_checkpoint(checkpoint)
    bench = get_benchmark(meta["config"]["benchmark"]["name"])
    sim_spec = bench.simulator
    assert sim_spec is not None
    params = sim_spec.with_agents(bench.params(meta["config"]["benchmark"]["params"]), n_agents)
    layout = sim_spec.layout(params)
    player = team.TeamPolicy(method, layout, seed)
    other: Any = opponent
    if opponent == "self":
        other = team.TeamPolicy(load_checkpoint(checkpoint)[0], layout, seed + 1)
    elif opponent not in sim_spec.scripted:
        other = team.load_player(opponent, bench.name, layout, seed + 1)
    sim = sim_spec.make_sim(params)
    return team_scores(sim, layout, sim_spec.scripted, player, other, episodes, seed)


def evaluate_team_checkpoint(
    checkpoint: str | Path,
    n_agents: list[int],
    *,
    episodes: int,
    seeds: int,
    seed: int = 0,
    actor_cpus: float = 1.0,
    opponents: list[str] | None = None,
) -> dict[str, Any]:
    """A team game (no exact model): the checkpoint against every scripted opponent of the
    benchmark and against itself (`self`), or the given ones (a name or a checkpoint), at each
    N (agents per team). Metrics (`tracking.team_key`, …): `win_rate/vs_<opp>/n{N}`,
    `kill_ratio/…`, `survival/…`, `return/vs_<opp>/n{N}`, a checkpoint opponent named
    `checkpoint_<id>` (`tracking.opponent_name`; `opponents` maps each name to what was asked);
    `return/n{N}` and `jn_spread/n{N}` (the spread of J^N across episodes, the only mean-field
    figure) against the data's opponent."""
    from mfdiffuser.envs.registry import get_benchmark
    from mfdiffuser.methods.checkpoint import read_meta

    bench_cfg = read_meta(checkpoint)["config"]["benchmark"]
    bench = get_benchmark(bench_cfg["name"])
    assert bench.simulator is not None
    data_opponent = str(bench.params(bench_cfg["params"]).model_dump().get("opponent", "expert"))
    opponents = opponents or [*bench.simulator.scripted, "self"]
    jobs = [(n, o, seed + s) for n in n_agents for o in opponents for s in range(seeds)]
    try:
        results = ray.get(
            [
                _team_scores.options(num_cpus=actor_cpus, scheduling_strategy="DEFAULT").remote(
                    str(checkpoint), n, o, episodes, s
                )
                for n, o, s in jobs
            ]
        )
    except RayError as err:
        raise WorkerError(f"evaluation of {checkpoint}: {worker_failure(err)}") from err
    metrics: dict[str, float] = {}
    returns: dict[str, list[float]] = {}
    grouped: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for (n, o, _), r in zip(jobs, results, strict=True):
        grouped.setdefault((n, o), []).append(r)
    names = {o: tracking.opponent_name(o, [*bench.simulator.scripted, "self"]) for o in opponents}
    for (n, o), rs in grouped.items():
        rets = [x for r in rs for x in r["returns"]]
        for key in ("win_rate", "kill_ratio", "survival"):
            metrics[tracking.team_key(key, names[o], n)] = float(np.mean([r[key] for r in rs]))
        metrics[tracking.team_key("return", names[o], n)] = float(np.mean(rets))
        returns[f"{n}/vs_{names[o]}"] = rets
        if o == data_opponent:
            metrics[tracking.return_key(n)] = float(np.mean(rets))
            metrics[tracking.jn_spread_key(n)] = float(np.std(rets))
    return {
        "metrics": metrics,
        "returns": returns,
        "table_returns": {},
        "table": [],
        "opponents": {name: o for o, name in names.items()},
    }

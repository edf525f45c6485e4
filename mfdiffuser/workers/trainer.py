"""Fit a trained method with Ray Train: `TorchTrainer`, DDP on every worker (gloo or NCCL).

Each worker reads its share of the dataset's shards, rank 0 writes a checkpoint every epoch and
logs `train/*` metrics to MLflow; a failed worker group restarts from the last checkpoint
(`train.max_failures`). The loop itself is `mfdiffuser.methods.training.train_epochs`; the
method comes from the registry (`cfg.method`), built for the game's dimensions.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import ray
from pydantic import ValidationError
from ray.train import TrainingFailedError, WorkerGroupError
from ray.train.torch import TorchConfig, TorchTrainer

# Ray Train 2.60 has no public hook for these (checked against 2.60.0): a failure policy
# (FailureConfig only counts retries) and a torch backend whose rendezvous is not a TCPStore
# (TorchConfig.init_method is "env" or "tcp", both a TCPStore on rank 0). They are private, so
# tests/unit/test_ray_private_api.py fails, naming the symbol, when an upgrade changes them.
from ray.train.torch.config import _TorchBackend
from ray.train.v2._internal.execution.failure_handling import (
    DefaultFailurePolicy,
    FailureDecision,
)

from mfdiffuser.platform.config import ConfigError, ExperimentConfig, validation_lines
from mfdiffuser.platform.errors import WorkerError, one_line, verbose
from mfdiffuser.platform.progress import line as progress_line
from mfdiffuser.workers.ray_data import EpisodeSplit, StreamedShard, streamed_dataset


def quiet_report_log() -> None:
    """Ray Train 2.60 logs every `ray.train.report` call at INFO ("Reporting training result
    N: TrainingReport(...)", one long line per epoch and rank) through a logger named by its
    file's path, outside `ray.train`, so `LoggingConfig` does not reach it. Off unless
    MFD_VERBOSE=1: the epoch's progress line already says what it says."""
    import logging

    from ray.train.v2._internal.execution import context

    if not verbose():
        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _train_worker(loop_cfg: dict[str, Any]) -> None:
    quiet_report_log()
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from mfdiffuser.data.advantages import advantage_from_sums, advantage_sums
    from mfdiffuser.data.windows import load_episodes, normalise_counts
    from mfdiffuser.envs.registry import get_benchmark
    from mfdiffuser.methods.base import DataStats, Dims, TrainedMethod
    from mfdiffuser.methods.checkpoint import load_checkpoint, save_checkpoint
    from mfdiffuser.methods.registry import get_method
    from mfdiffuser.methods.training import train_epochs
    from mfdiffuser.planner.diffusion import returns_to_go
    from mfdiffuser.platform import tracking

    cfg = ExperimentConfig.model_validate(loop_cfg["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    device = ray.train.torch.get_device()

    bench = get_benchmark(cfg.benchmark.name)
    streamed = cfg.train.data_path == "ray_data"
    if streamed:
        from mfdiffuser.data.manifest import read_manifest

        manifest = read_manifest(loop_cfg["dataset"])
        arrays = None
    else:
        n_shards = int(loop_cfg["n_shards"])
        mine = list(range(rank, n_shards, world)) or list(range(n_shards))
        arrays, manifest = load_episodes(loop_cfg["dataset"], mine)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    spec = get_method(cfg.method.name)
    if bench.simulator is not None:
        # Team games: per-agent features and a context, no finite state space, so no behaviour
        # prior or tabular advantage (`mfdiffuser.methods.team`).
        from mfdiffuser.methods import team

        layout = bench.simulator.layout(bench.params(manifest.spec["benchmark"]["params"]))
        method = spec.build(cfg.method.settings, team.dims_of(layout))
        prior = np.zeros(0)

        def make_batches(method: Any, seed: int) -> Any:
            return team.team_batches(method, arrays, seed)
    else:
        game = bench.game(cfg.benchmark.params)
        # Whole-dataset statistics from every rank's shards: action counts (the behaviour
        # prior), return-to-go sums (the advantages) and every episode's population return-to-go.
        if streamed:
            stream = StreamedShard(ray.train.get_dataset_shard("train"), game, manifest)
            sums, counts, squares, rtg = stream.statistics(cfg.train.buffer_episodes, world)
        else:
            sums, counts, squares = advantage_sums(arrays, game.n_states, game.n_actions)
            rtg = returns_to_go(arrays.rewards)
        stats = torch.as_tensor(np.stack([sums, counts, squares]))
        if world > 1:
            dist.all_reduce(stats)
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rtg)
            rtg = np.concatenate(gathered)
        sums, counts, squares = stats[0].numpy(), stats[1].numpy(), stats[2].numpy()
        prior = normalise_counts(counts)
        method = spec.build(cfg.method.settings, Dims.of(game))

        def make_batches(method: Any, seed: int) -> Any:
            if streamed:
                return stream.batches(method, cfg.train, seed, world)
            return method.batches(arrays, game, seed=seed)

    if not isinstance(method, TrainedMethod):
        raise TypeError(f"method {spec.name!r} is not trained (kind {spec.kind!r})")
    if bench.simulator is None:
        method.prepare(DataStats(prior, advantage_from_sums(sums, counts, squares), rtg))
    start_epoch, opt_state, logged_upto = 0, None, 0
    if rank == 0 and loop_cfg.get("run_id"):
        # A run that was interrupted (or restarted after a failure) may have logged epochs past
        # its last checkpoint, or before any: they are trained again but logged once.
        logged_upto = tracking.last_step(loop_cfg["tracking_uri"], loop_cfg["run_id"], "train/loss")
    if rank == 0 and loop_cfg.get("run_id"):
        here = ray.get_runtime_context()
        tracking.record_train_node(
            loop_cfg["tracking_uri"],
            loop_cfg["run_id"],
            here.get_node_id(),
            ray.util.get_node_ip_address(),
        )
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            loaded, _, meta, opt_state = load_checkpoint(d)
            method.load_state_dict(loaded.state_dict())
            start_epoch = int(meta["epoch"])
        if rank == 0 and loop_cfg.get("run_id"):
            # Visible in MLflow: this run survived a failure and went on from this epoch.
            tracking.log_metrics(
                loop_cfg["tracking_uri"],
                loop_cfg["run_id"],
                {"train/resumed_from_epoch": float(start_epoch)},
                step=start_epoch,
            )
    method.to(device)
    model = ray.train.torch.prepare_model(method.train_module())
    batches = make_batches(
        method,
        int(np.random.SeedSequence([cfg.train.seed, rank, start_epoch]).generate_state(1)[0]),
    )

    def reduce_mean(x: float) -> float:
        if world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item() / world)

    def on_epoch(epoch: int, metrics: dict[str, float], optimizer: torch.optim.Optimizer) -> None:
        loss = metrics.get("train/loss", 0.0)
        if not np.isfinite(loss):
            # Diverged: a checkpoint of these weights is worthless, and a restart repeats it.
            raise FloatingPointError(
                f"train/loss = {loss} in epoch {epoch + 1}: training diverged; "
                f"lower train.lr (now {cfg.train.lr})"
            )
        metrics = {**metrics, "train/world_size": float(world)}
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        steps = cfg.train.steps_per_epoch
        progress_line(
            f"train {cfg.name}: epoch {epoch + 1}/{cfg.train.epochs}, step "
            f"{(epoch + 1) * steps}/{cfg.train.epochs * steps}, loss {loss:.4f}"
        )
        if loop_cfg.get("run_id") and epoch + 1 > logged_upto:
            tracking.log_metrics(
                loop_cfg["tracking_uri"], loop_cfg["run_id"], metrics, step=epoch + 1
            )
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(
                tmp, method, prior, _meta(loop_cfg, cfg, manifest, epoch, metrics), optimizer
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    train_epochs(
        method,
        batches,
        epochs=cfg.train.epochs,
        steps_per_epoch=cfg.train.steps_per_epoch,
        batch_size=cfg.train.batch_size,
        lr=cfg.train.lr,
        lr_schedule=cfg.train.lr_schedule,
        lr_min=cfg.train.lr_min,
        on_epoch=on_epoch,
        model=model,
        optimizer_state=opt_state,
        start_epoch=start_epoch,
        device=device,
        reduce_mean=reduce_mean,
    )


def _meta(
    loop_cfg: dict[str, Any],
    cfg: ExperimentConfig,
    manifest: Any,
    epoch: int,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """A checkpoint's provenance: where it was made, from what, after how many epochs."""
    return {
        "epoch": epoch + 1,
        "config": cfg.model_dump(),
        "dataset_id": manifest.dataset_id,
        "dataset": loop_cfg["dataset"],
        "run_id": loop_cfg.get("run_id"),
        "tracking_uri": loop_cfg.get("tracking_uri"),
        "code_version": loop_cfg["code_version"],
        "metrics": metrics,
    }


# Errors of the training loop that a restart would only repeat: a bad value (our own
# ValueError, ConfigError, DatasetError) or a diverged loss. Ray Train V2 retries every worker
# error up to `max_failures` and has no setting for this, hence FailFastPolicy.
UNRECOVERABLE = (ValueError, FloatingPointError)


def unrecoverable(err: BaseException) -> BaseException | None:
    """The first worker error of a failed Ray Train run that no retry can fix, if any."""
    if not isinstance(err, WorkerGroupError):
        return None
    for failure in err.worker_failures.values():
        # Ray wraps an error of the loop with its traceback text; `_base_exc` is the error.
        base = getattr(failure, "_base_exc", failure)
        if isinstance(base, UNRECOVERABLE):
            return base
    return None


class FailFastPolicy(DefaultFailurePolicy):
    """Ray Train's default failure policy, except that an unrecoverable error is not retried."""

    def make_decision(self, training_failed_error: TrainingFailedError) -> FailureDecision:
        if unrecoverable(training_failed_error) is not None:
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


def _join_on_loopback(backend: str, init_method: str, timeout_s: int) -> None:
    """One rank joins the process group through `init_method` (a FileStore), gloo on loopback;
    the environment torch.distributed documents, as Ray's own backend sets it."""
    import torch.distributed as dist

    ctx = ray.train.get_context()
    os.environ.update(
        GLOO_SOCKET_IFNAME="lo",
        RANK=str(ctx.get_world_rank()),
        WORLD_SIZE=str(ctx.get_world_size()),
        LOCAL_RANK=str(ctx.get_local_rank()),
        LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()),
        NODE_RANK=str(ctx.get_node_rank()),
    )
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        timeout=timedelta(seconds=timeout_s),
    )


class LoopbackBackend(_TorchBackend):
    """Ray's torch backend puts torch's TCPStore on rank 0, listening on every interface
    (MASTER_ADDR does not change that). When every worker runs on a 127.0.0.1 node (a local
    Ray: one machine, the controller's), the ranks meet through a FileStore instead and gloo
    binds the loopback interface, so nothing listens beyond loopback. On a real cluster Ray's
    default stays."""

    store: Path | None = None

    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        if set(worker_group.execute(ray.util.get_node_ip_address)) != {"127.0.0.1"}:
            super().on_start(worker_group, backend_config)
            return
        # A fresh file per attempt: a FileStore file must not be reused by another group. The
        # directory is the driver's, removed after fit() whatever happened to the workers.
        self.store = Path(backend_config.store_dir) / f"rendezvous-{uuid.uuid4().hex}"
        worker_group.execute(
            _join_on_loopback,
            backend=backend_config.backend,  # set by TorchTrainer: gloo, or nccl on GPUs
            init_method=f"file://{self.store}",
            timeout_s=backend_config.timeout_s,
        )

    def on_shutdown(self, worker_group: Any, backend_config: Any) -> None:
        try:
            super().on_shutdown(worker_group, backend_config)
        finally:
            if self.store is not None:  # torch removes it unless a rank died
                self.store.unlink(missing_ok=True)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    store_dir: str = ""  # where the ranks' FileStore files go (one machine: a local directory)

    @property
    def backend_cls(self) -> type:
        return LoopbackBackend


class Trainer(TorchTrainer):
    """TorchTrainer with FailFastPolicy (`fit` builds the default policy; this is its hook)."""

    def _initialize_and_run_controller(self, **kwargs: Any) -> Any:
        kwargs["failure_policy"] = FailFastPolicy(self.run_config.failure_config)
        return super()._initialize_and_run_controller(**kwargs)


def train_planner(
    cfg: ExperimentConfig,
    dataset: str,
    n_shards: int,
    *,
    tracking_uri: str | None,
    run_id: str | None,
    run_name: str | None = None,
) -> Path | str:
    """Run the TorchTrainer; returns the final checkpoint directory: a local path, or its URI
    when `runtime.storage` is one."""
    from mfdiffuser.data import storage
    from mfdiffuser.methods.checkpoint import read_meta
    from mfdiffuser.platform.provenance import code_version
    from mfdiffuser.platform.runtime import cluster_gpus

    use_gpu = cfg.train.use_gpu if cfg.train.use_gpu is not None else cluster_gpus() > 0
    # Ray Train wants an absolute path or a URI (relative paths fail).
    if "://" in cfg.runtime.storage:
        storage_path = storage.join(cfg.runtime.storage, "train")
    else:
        storage_path = str(Path(cfg.runtime.storage).resolve() / "train")
    streamed = {}
    if cfg.train.data_path == "ray_data":
        streamed = {
            "datasets": {"train": streamed_dataset(dataset)},
            "dataset_config": EpisodeSplit(),
        }
    rendezvous = tempfile.mkdtemp(prefix="mfd-ddp-")  # removed after fit (see LoopbackBackend)
    trainer = Trainer(
        _train_worker,
        train_loop_config={
            "config": cfg.model_dump(),
            "dataset": dataset,
            "n_shards": n_shards,
            "tracking_uri": tracking_uri,
            "run_id": run_id,
            "code_version": code_version(),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={
                "CPU": cfg.train.cpus_per_worker,
                **cfg.train.resources_per_worker,
            },
        ),
        torch_config=LoopbackTorchConfig(store_dir=rendezvous),
        run_config=ray.train.RunConfig(
            # A unique name: re-using one with the same storage silently resumes the old run.
            name=run_name or f"{cfg.name}-{uuid.uuid4().hex[:8]}",
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Ray Train's own console lines (worker group events, and each worker's traceback of
            # an error the driver reports in one line, traceback in MLflow) only with
            # MFD_VERBOSE; its log files in Ray's session directory (logs/train/) keep them all.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose() else "CRITICAL"),
        ),
        **streamed,
    )
    # Ray Train 2.60 starts a PreemptionWatcher actor (max_restarts=-1) whose constructor gets the
    # workers' actor handles, and Ray's core worker logs that as an error on every run (actor
    # arguments in the object store with restarts; ray-project/ray#53727). The watcher only
    # reacts to drained nodes, and on a one-node cluster a drain ends the run anyway: there its
    # feature flag turns it off, unless the user set the flag.
    watcher = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
    unwatched = watcher not in os.environ and len([n for n in ray.nodes() if n["Alive"]]) == 1
    if unwatched:
        os.environ[watcher] = "0"  # read at fit() and passed to the Train controller
    on_sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except TrainingFailedError as err:
        # One line for the user; the workers' tracebacks stay in the chained error (and so in
        # the MLflow run's mfd.traceback tag).
        base = unrecoverable(err)
        if isinstance(base, ValidationError):  # pydantic's text spans lines
            raise ConfigError(validation_lines(base)) from err
        if base is not None:
            raise base from err
        failures = list(getattr(err, "worker_failures", {}).values())  # none: the controller's
        first = getattr(failures[0], "_base_exc", failures[0]) if failures else err
        raise WorkerError(f"training failed: {one_line(first)}") from err
    finally:
        if unwatched:
            os.environ.pop(watcher, None)
        # fit() installs a SIGINT handler that aborts its (by then finished) controller
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, on_sigint)
        shutil.rmtree(rendezvous, ignore_errors=True)
    if result.error is not None:
        raise result.error
    # On a URI store the checkpoint's URI (Ray Train returns it only once fully uploaded).
    done = (
        storage.as_uri(result.checkpoint.filesystem, result.checkpoint.path)
        if result.checkpoint is not None
        else None
    )
    epoch = read_meta(done)["epoch"] if done is not None else 0
    if done is None or epoch < cfg.train.epochs:
        # No error but not every epoch: Ray Train's SIGINT handler aborted the run (Ctrl-C).
        raise KeyboardInterrupt(f"training interrupted after epoch {epoch} of {cfg.train.epochs}")
    return done if storage.is_uri(done) else Path(done)


def _checkpoint_dir(cfg: ExperimentConfig, run_name: str, leaf: str) -> str:
    """Where a checkpoint made outside Ray Train goes: a local path, or a URI (uploaded)."""
    from mfdiffuser.data import storage

    if storage.is_uri(cfg.runtime.storage):
        return storage.join(cfg.runtime.storage, "train", run_name, leaf)
    return str(Path(cfg.runtime.storage).resolve() / "train" / run_name / leaf)


LOG_EVERY = 50  # external iterations per MLflow request (x 3 metrics: within its 1000 per batch)


def train_external(
    cfg: ExperimentConfig, dataset: str, run_name: str, *, tracking_uri: str, run_id: str
) -> Path | str:
    """An external method (RLlib's): its library's own loop, here in the driver (or the sweep
    trial), its per-iteration figures logged into the run; its checkpoint beside the platform's
    meta.json and the data's behaviour prior, so evaluation treats it like any other."""
    from mfdiffuser.data import storage
    from mfdiffuser.data.windows import behaviour_prior, load_episodes
    from mfdiffuser.envs.registry import get_benchmark
    from mfdiffuser.methods.base import Dims
    from mfdiffuser.methods.checkpoint import META, save_external_checkpoint
    from mfdiffuser.methods.registry import get_method
    from mfdiffuser.platform import tracking
    from mfdiffuser.platform.provenance import code_version

    target = _checkpoint_dir(cfg, run_name, "checkpoint_external")
    # The library writes a local directory: on a URI store, a temporary one, uploaded at the end.
    staging = tempfile.mkdtemp(prefix="mfd-external-") if storage.is_uri(target) else None
    out = Path(staging or target)
    shutil.rmtree(out, ignore_errors=True)  # an interrupted fit starts again from scratch
    logged_upto = tracking.last_step(tracking_uri, run_id, "train/loss")  # ... logged once
    # An RLlib iteration takes milliseconds, one MLflow request (SQLite: a locked write) far
    # longer: iterations are logged LOG_EVERY at a time.
    pending: list[tuple[dict[str, float], int]] = []

    def flush() -> None:
        if pending:
            tracking.log_steps(tracking_uri, run_id, pending)
            pending.clear()

    def log(metrics: dict[str, float], step: int) -> None:
        if step > logged_upto:
            pending.append((metrics, step))
        if len(pending) >= LOG_EVERY:
            flush()

    try:
        extras = get_method(cfg.method.name).external.fit(cfg, dataset, out, log)
    finally:
        flush()  # what was trained before an interruption stays visible
    game = get_benchmark(cfg.benchmark.name).game(cfg.benchmark.params)
    arrays, manifest = load_episodes(dataset)
    meta = {
        "epoch": cfg.train.epochs,  # the library's loop ran to its end: complete
        "config": cfg.model_dump(),
        "dataset_id": manifest.dataset_id,
        "dataset": dataset,
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "code_version": code_version(),
        **extras,
    }
    prior = behaviour_prior(arrays, game.n_states, game.n_actions)
    saved = save_external_checkpoint(
        out, cfg.method.name, cfg.method.settings, Dims.of(game), prior, meta
    )
    if staging is None:
        return saved
    try:
        storage.upload_dir(out, target, last=META)  # meta.json last: the commit marker
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def solve_reference(cfg: ExperimentConfig, dataset: str, run_name: str) -> Path | str:
    """A reference method (no data, no Ray Train): solved here, saved as a checkpoint.

    The checkpoint holds the dataset's behaviour prior like a trained one, so the evaluation
    (decomposition included) treats both alike."""
    from mfdiffuser.data.windows import behaviour_prior, load_episodes
    from mfdiffuser.envs.registry import get_benchmark
    from mfdiffuser.methods.base import Dims, ReferenceMethod
    from mfdiffuser.methods.checkpoint import save_checkpoint
    from mfdiffuser.methods.registry import get_method
    from mfdiffuser.platform.provenance import code_version

    out = _checkpoint_dir(cfg, run_name, "checkpoint_solved")
    game = get_benchmark(cfg.benchmark.name).game(cfg.benchmark.params)
    method = get_method(cfg.method.name).build(cfg.method.settings, Dims.of(game))
    assert isinstance(method, ReferenceMethod)
    figures = method.solve(game)
    arrays, manifest = load_episodes(dataset)
    prior = behaviour_prior(arrays, game.n_states, game.n_actions)
    meta = {
        "epoch": cfg.train.epochs,  # nothing to train: complete
        "config": cfg.model_dump(),
        "dataset_id": manifest.dataset_id,
        "dataset": dataset,
        "code_version": code_version(),
        "metrics": figures,
    }
    return save_checkpoint(out, method, prior, meta)

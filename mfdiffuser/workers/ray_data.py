"""The trainer's Ray Data path (`train.data_path = "ray_data"`, docs/data.md): the dataset's
shards as a Ray Data dataset read by small tasks that verify each shard's checksum, split to the
Train workers whole shard by whole shard, and each worker's streamed share as passes of whole
episodes (`mfdiffuser.data.stream`): the advantage statistics from a first pass, then training
batches from a bounded buffer."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import ray.train

READ_CPUS = 0.25  # each Ray Data read task: Train workers holding whole CPUs must not starve it
READ_BATCH_ROWS = 65_536  # rows per batch a worker takes from its stream


def _dataset_errors(batches: Any) -> Any:
    """Ray Data 2.60 wraps a read task's error in UserCodeException inside a RayTaskError whose
    cause chain does not keep the original (only its traceback text does): a bad shard's
    DatasetError comes out as itself, so the trainer fails fast with its one line."""
    import re

    from mfdiffuser.data.verify import DatasetError

    try:
        yield from batches
    except ray.exceptions.RayError as err:
        found = re.search(r"DatasetError: (.+)", str(err))
        if found is not None:
            raise DatasetError(found.group(1).strip()) from err
        raise


class StreamedShard:
    """A Train worker's share of the dataset through Ray Data (`train.data_path = "ray_data"`):
    streamed passes of whole episodes (`mfdiffuser.data.stream`), never the whole share at once."""

    def __init__(self, shard: Any, game: Any, manifest: Any) -> None:
        self.shard, self.game, self.manifest = shard, game, manifest
        self.n_agents = int(manifest.spec["n_agents"])

    def one_pass(self) -> Any:
        from mfdiffuser.data.stream import episode_stream

        batches = self.shard.iter_batches(batch_size=READ_BATCH_ROWS, batch_format="numpy")
        return episode_stream(_dataset_errors(batches), self.game.horizon, self.n_agents)

    def statistics(
        self, chunk: int, world: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A first pass: advantage sums, counts and squares [T, S, A] (additive) and every episode's
        population return-to-go [E, T] in episode order, `chunk` episodes at a time; the row
        count over every worker is checked against the manifest."""
        import torch
        import torch.distributed as dist

        from mfdiffuser.data.advantages import advantage_sums
        from mfdiffuser.data.stream import stack_episodes
        from mfdiffuser.planner.diffusion import returns_to_go

        g = self.game
        shape = (g.horizon, g.n_states, g.n_actions)
        sums, counts, squares = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        ids: list[int] = []
        rtgs: list[np.ndarray] = []
        held: list[Any] = []

        def flush() -> None:
            if held:
                arrays = stack_episodes(held)
                s, c, q = advantage_sums(arrays, g.n_states, g.n_actions)
                sums[...] += s
                counts[...] += c
                squares[...] += q
                ids.extend(sorted(e[0] for e in held))
                rtgs.append(returns_to_go(arrays.rewards))
                held.clear()

        for episode in self.one_pass():
            held.append(episode)
            if len(held) >= chunk:
                flush()
        flush()
        rows = torch.tensor([float(counts.sum())], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(rows)
        if int(rows.item()) != self.manifest.rows:
            raise ValueError(
                f"dataset: {int(rows.item())} rows streamed, the manifest has "
                f"{self.manifest.rows}: a shard changed after its checksum was verified"
            )
        rtg = np.concatenate(rtgs) if rtgs else np.zeros((0, g.horizon))
        order = np.argsort(np.asarray(ids), kind="stable")
        return sums, counts, squares, rtg[order]

    def batches(self, method: Any, train: Any, seed: int, world: int) -> Any:
        import torch
        import torch.distributed as dist

        from mfdiffuser.data.stream import BufferedBatches

        def agree(flag: bool) -> bool:
            t = torch.tensor([1.0 if flag else 0.0])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return bool(t.item() > 0)

        return BufferedBatches(
            self.one_pass,
            lambda arrays, s: method.batches(arrays, self.game, seed=s),
            capacity=train.buffer_episodes,
            refill_every=train.steps_per_epoch,
            seed=seed,
            agree=agree if world > 1 else None,
            episodes=self.manifest.episodes if world == 1 else None,
        )


class _ReadShards:
    """A Ray Data map over shard indices: each shard's table, parsed from the very bytes whose
    sha256 and row count are checked against the manifest (`read_shard`; `DatasetError`)."""

    def __init__(self, dataset: str, manifest: Any) -> None:
        self.dataset, self.manifest = dataset, manifest

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        from mfdiffuser.data.verify import read_shard

        return pa.concat_tables(
            [read_shard(self.dataset, self.manifest.shards[int(i)]) for i in batch["shard"]]
        )


def streamed_dataset(dataset: str) -> Any:
    """The dataset's shards as a Ray Data dataset, one block per shard (so whole episodes), read
    lazily by tasks of READ_CPUS each, each checking its shard's checksum as it reads it.

    Not `ray.data.read_parquet`: in Ray 2.60 it plans a file-listing task of 1 whole CPU with no
    setting to lower it, which cannot start while Train workers hold every CPU of a small node;
    the manifest already lists the files and their checksums."""
    from mfdiffuser.data.manifest import read_manifest

    manifest = read_manifest(dataset)
    shards = [{"shard": s.index} for s in manifest.shards]
    return ray.data.from_items(shards, override_num_blocks=len(shards)).map_batches(
        _ReadShards(dataset, manifest),
        batch_size=1,
        batch_format="numpy",
        num_cpus=READ_CPUS,
    )


class EpisodeSplit(ray.train.DataConfig):
    """Ray Train's DataConfig splits a dataset with `streaming_split(equal=True)`, which cuts
    blocks to give every worker the same number of rows and so can cut an episode between two
    workers. Here whole blocks go to the workers (`equal=False`): a block is one shard
    (`streamed_dataset`), and shards hold whole episodes."""

    def configure(
        self,
        datasets: dict[str, Any],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            hints = worker_node_ids if self._enable_shard_locality else None
            for i, split in enumerate(
                ds.streaming_split(world_size, equal=False, locality_hints=hints)
            ):
                output[i][name] = split
        return output

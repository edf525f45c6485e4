"""Whole episodes out of a stream of row batches, and window batches from a bounded buffer.

The Ray Data path of the trainer (`train.data_path = "ray_data"`, docs/data.md) streams a
dataset's rows in batches of any size and order; `EpisodeAssembler` collects each episode's rows
until it has all T x N of them and hands the episode on whole. `BufferedBatches` holds at most
K of those episodes, draws training batches from them through the method's own sampler (the same
`method.batches` the local path uses) and replaces them with the next K once per refill period.
Pure numpy: the stream is any iterable of column dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from mfdiffuser.data.windows import EpisodeArrays

Episode = tuple[int, np.ndarray, np.ndarray, np.ndarray]  # (id, states[T, N], actions, rewards)


class EpisodeAssembler:
    """Row batches {episode, t, agent, state, action, reward} -> complete episodes."""

    def __init__(self, horizon: int, n_agents: int) -> None:
        self.horizon, self.n_agents = horizon, n_agents
        self.pending: dict[int, list[dict[str, np.ndarray]]] = {}
        self.counts: dict[int, int] = {}

    def feed(self, batch: dict[str, np.ndarray]) -> list[Episode]:
        """Take one batch of rows; return the episodes it completed (ascending id)."""
        eps = np.asarray(batch["episode"])
        if eps.size == 0:
            return []
        order = np.argsort(eps, kind="stable")
        sorted_eps = eps[order]
        ids, starts = np.unique(sorted_eps, return_index=True)
        bounds = [*starts[1:], len(sorted_eps)]
        done: list[Episode] = []
        size = self.horizon * self.n_agents
        for ep, lo, hi in zip(ids.tolist(), starts, bounds, strict=True):
            idx = order[lo:hi]
            self.pending.setdefault(ep, []).append(
                {k: np.asarray(batch[k])[idx] for k in ("t", "agent", "state", "action", "reward")}
            )
            self.counts[ep] = self.counts.get(ep, 0) + (hi - lo)
            if self.counts[ep] > size:
                raise ValueError(
                    f"episode {ep}: {self.counts[ep]} rows, more than horizon x n_agents = "
                    f"{self.horizon} x {self.n_agents}: duplicated rows"
                )
            if self.counts[ep] == size:
                done.append(self._episode(ep))
        return done

    def _episode(self, ep: int) -> Episode:
        parts = self.pending.pop(ep)
        del self.counts[ep]
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        flat = cols["t"].astype(np.int64) * self.n_agents + cols["agent"]
        if not np.array_equal(np.sort(flat), np.arange(self.horizon * self.n_agents)):
            raise ValueError(f"episode {ep}: its rows are not every (t, agent) exactly once")
        order = np.argsort(flat)
        shape = (self.horizon, self.n_agents)
        return (
            ep,
            cols["state"][order].reshape(shape),
            cols["action"][order].reshape(shape),
            cols["reward"][order].reshape(shape),
        )

    @property
    def incomplete(self) -> list[int]:
        """Episodes begun but not finished (at the end of a pass: cut by the split)."""
        return sorted(self.pending)


def episode_stream(
    batches: Iterable[dict[str, np.ndarray]], horizon: int, n_agents: int
) -> Iterator[Episode]:
    """Every complete episode of one pass over `batches`; ValueError naming the episodes left
    incomplete at its end (their rows went elsewhere, or are missing)."""
    assembler = EpisodeAssembler(horizon, n_agents)
    for batch in batches:
        yield from assembler.feed(batch)
    if assembler.incomplete:
        cut = assembler.incomplete
        raise ValueError(
            f"episodes {cut[:5]}{'...' if len(cut) > 5 else ''}: rows missing at the end of the "
            "stream (an episode's rows must all reach the same worker)"
        )


def stack_episodes(episodes: list[Episode]) -> EpisodeArrays:
    """Episodes -> EpisodeArrays [E, T, N], in ascending episode id (as `load_episodes`)."""
    episodes = sorted(episodes, key=lambda e: e[0])
    return EpisodeArrays(
        np.stack([e[1] for e in episodes]),
        np.stack([e[2] for e in episodes]),
        np.stack([e[3] for e in episodes]),
    )


class BufferedBatches:
    """Training batches from a buffer of at most `capacity` whole episodes, refilled from a
    stream every `refill_every` batches.

    `next_pass()` starts a new pass over this worker's episodes (an iterator of `Episode`);
    `make_sampler(arrays, seed)` is the method's batch source (`method.batches`). If the first
    fill takes every episode of a pass (capacity >= this worker's episodes) the buffer is the whole
    data and never changes: the batches are then exactly the local path's under the same seed.
    Otherwise each refill takes the next `capacity` episodes of the stream (a new pass when one
    ends), and the sampler is rebuilt on them with seed (seed, refill number).

    `episodes` (one worker: the dataset's episode count) lets a buffer of exactly that many know
    it holds them all. `agree(flag)` (several workers: an all-reduce MAX) makes every worker
    start a new pass at the same refill: a pass is a collective over the workers (Ray Data's
    split) that starts only when all of them ask for it."""

    def __init__(
        self,
        next_pass: Callable[[], Iterator[Episode]],
        make_sampler: Callable[[EpisodeArrays, int], Any],
        capacity: int,
        refill_every: int,
        seed: int,
        agree: Callable[[bool], bool] | None = None,
        episodes: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity = {capacity}: allowed: >= 1")
        self.next_pass, self.make_sampler = next_pass, make_sampler
        self.capacity, self.refill_every, self.seed = capacity, refill_every, seed
        self.agree, self.episodes = agree, episodes
        self.calls, self.refills, self.episodes_read = 0, 0, 0
        self.whole = False
        self.current = self.next_pass()
        self.exhausted = False
        self._fill(first=True)

    def _take(self) -> list[Episode]:
        taken: list[Episode] = []
        while len(taken) < self.capacity:
            try:
                taken.append(next(self.current))
            except StopIteration:
                self.exhausted = True
                break
        self.episodes_read += len(taken)
        return taken

    def _fill(self, first: bool = False) -> None:
        if not first:
            restart = self.agree(self.exhausted) if self.agree else self.exhausted
            if restart:
                self.current, self.exhausted = self.next_pass(), False
        taken = self._take()
        known_all = self.episodes is not None and len(taken) == self.episodes
        if first and (self.exhausted or known_all) and self.agree is None:
            self.whole = True  # one worker, every episode in the buffer: never refilled
        if not taken:
            if first:
                raise ValueError("this worker's share of the dataset holds no episode")
            return  # keep the buffer; the next refill starts a new pass
        seed = (
            self.seed
            if first
            else int(np.random.SeedSequence([self.seed, self.refills]).generate_state(1)[0])
        )
        self.buffered = len(taken)
        self.sampler = self.make_sampler(stack_episodes(taken), seed)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        if self.calls and self.calls % self.refill_every == 0 and not self.whole:
            self.refills += 1
            self._fill()
        self.calls += 1
        out: dict[str, np.ndarray] = self.sampler.sample(batch_size)
        return out

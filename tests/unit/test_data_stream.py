"""Whole episodes out of row batches cut anywhere and in any order (`mfdiffuser.data.stream`)."""

from __future__ import annotations

import numpy as np
import pytest

from mfdiffuser.data.stream import BufferedBatches, episode_stream, stack_episodes

T, N, E = 4, 3, 5


def _rows(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ep, t, agent = np.meshgrid(np.arange(E), np.arange(T), np.arange(N), indexing="ij")
    states = rng.integers(0, 7, size=(E, T, N))
    return {
        "episode": ep.ravel(),
        "t": t.ravel(),
        "agent": agent.ravel(),
        "state": states.ravel(),
        "action": (states.ravel() + 1) % 3,
        "reward": rng.normal(size=E * T * N).astype(np.float32),
    }


def _batches(rows: dict[str, np.ndarray], order: np.ndarray, cuts: list[int]):
    for lo, hi in zip([0, *cuts], [*cuts, len(order)], strict=True):
        yield {k: v[order[lo:hi]] for k, v in rows.items()}


def test_shuffled_rows_cut_anywhere_give_the_dense_episodes() -> None:
    rows = _rows()
    order = np.random.default_rng(1).permutation(E * T * N)
    episodes = list(episode_stream(_batches(rows, order, [1, 7, 8, 30, 31]), T, N))
    arrays = stack_episodes(episodes)
    assert sorted(e[0] for e in episodes) == list(range(E))
    np.testing.assert_array_equal(arrays.states, rows["state"].reshape(E, T, N))
    np.testing.assert_array_equal(arrays.actions, rows["action"].reshape(E, T, N))
    np.testing.assert_array_equal(arrays.rewards, rows["reward"].reshape(E, T, N))


def test_missing_and_duplicated_rows_are_refused() -> None:
    rows = _rows()
    order = np.arange(E * T * N - 1)  # the last row of episode 4 never arrives
    with pytest.raises(ValueError, match=r"episodes \[4\]: rows missing at the end"):
        list(episode_stream(_batches(rows, order, [20]), T, N))
    dup = np.concatenate([np.arange(T * N - 1), [0]])  # episode 0: (t=0, agent=0) twice
    with pytest.raises(ValueError, match=r"episode 0: its rows are not every \(t, agent\)"):
        list(episode_stream(_batches(rows, dup, []), T, N))


def test_a_buffer_never_holds_more_than_k_and_refills_on_schedule() -> None:
    rows = _rows()
    passes = 0

    def next_pass():
        nonlocal passes
        passes += 1
        return episode_stream(_batches(rows, np.arange(E * T * N), [13]), T, N)

    held: list[int] = []

    def make_sampler(arrays, seed):
        held.append(arrays.states.shape[0])
        return type("S", (), {"sample": lambda self, b: {"n": arrays.states.shape[0]}})()

    buf = BufferedBatches(next_pass, make_sampler, capacity=2, refill_every=3, seed=0)
    for _ in range(3 * 6):
        buf.sample(1)
    # 5 episodes in buffers of 2: 2, 2, 1 | 2, 2, 1 (a new pass after each end)
    assert held == [2, 2, 1, 2, 2, 1] and passes == 2 and buf.episodes_read == 10
    whole = BufferedBatches(next_pass, make_sampler, capacity=E, refill_every=1, seed=0, episodes=E)
    for _ in range(4):
        whole.sample(1)
    assert whole.whole and whole.refills == 0

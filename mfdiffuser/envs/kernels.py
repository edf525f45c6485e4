"""Fused per-agent kernels of the finite-game simulators (numba, compiled once and cached).

Every finite game's N-agent step is the same work per agent: draw an action from its state's
policy row, draw a next state from the sparse transition support of its (state, action), look
up its reward and count it into the next histogram. Here that is one loop over the agents that
reads each agent's state once and writes each output once; the per-(state, action) tables it
reads are built per epoch in numpy (O(S A K), independent of N).

Inverse-CDF draws, the same rule everywhere: a row with probabilities p_0..p_{K-1} is held as
its thresholds c_k = p_0 + .. + p_k (k < K-1, the full sum normalised to 1 and not stored) in
float32, and a uniform u in [0, 1) picks index #{k : c_k <= u}. Entry j is drawn iff
c_{j-1} <= u < c_j, so a zero-probability entry (c_j = c_{j-1}) is never drawn. The uniforms
are float32 multiples of 2^-24 (numpy's Generator.random(dtype=float32)), so each realised
probability differs from p_j by less than 2^-24 plus the float32 rounding of the thresholds.
The count is branch-free (a compare added as 0 or 1): random uniforms defeat branch prediction.

Row layout: each row's thresholds take `stride` float32 slots. A row with at most 2
thresholds (K <= 3: crowd_1d's moves and noise, sis, the two-action stage games) is padded to
2 slots, one with at most 4 (K <= 5: crowd_2d's and predator_prey's moves and noise) to 4, with
2.0, which no uniform reaches, so the kernels compare against a number of thresholds known when
they are compiled: a loop the compiler unrolls (half the time of a loop whose length is only
known at run time). Longer rows use stride K - 1 and the general loop. Indices are unsigned
(numba adds a negative-index wrap to every signed index).

Uniforms are drawn in bulk by the caller from a numpy Generator (one float32 per agent per
draw), so a seeded run is reproducible and the kernels hold no random state.

Compilation: `cache=True` writes the machine code next to this module (`__pycache__`), so only
the first process after an install or a change compiles (docs/benchmarks.md gives the cold
compile time); each kernel is called with one set of argument types (the wrappers in
simulate.py and finite.py convert), so each compiles once.
"""

from __future__ import annotations

import numba
import numpy as np

SMALL, PAD = 2, 4  # thresholds per row in the two padded layouts (rows of up to 3, 5 entries)
PAD_VALUE = np.float32(2.0)  # a padding threshold: no uniform in [0, 1) reaches it

_jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
_inline = numba.njit(
    cache=True, nogil=True, boundscheck=False, error_model="numpy", inline="always"
)
_U = np.uint64


def stride_for(n_thresholds: int) -> int:
    """Slots per row for rows of n_thresholds thresholds (SMALL or PAD when they fit)."""
    if n_thresholds <= SMALL:
        return SMALL
    return PAD if n_thresholds <= PAD else n_thresholds


def pad_thresholds(cdf: np.ndarray) -> np.ndarray:
    """cdf[R, W] float thresholds -> float32[R * stride] in the kernels' row layout."""
    rows, width = cdf.shape
    stride = stride_for(width)
    out = np.full((rows, stride), PAD_VALUE, dtype=np.float32)
    out[:, :width] = cdf
    return out.reshape(-1)


@_inline
def _pick(thresholds: np.ndarray, row: np.uint64, stride: int, u: np.float32) -> np.uint64:
    """#{k < stride : thresholds[row * stride + k] <= u}, branch-free."""
    base = row * _U(stride)
    k = _U(0)
    for j in range(stride):
        k += _U(thresholds[base + _U(j)] <= u)
    return k


@_inline
def _draw_actions_body(
    thresholds: np.ndarray,
    stride: int,
    n_states: int,
    states: np.ndarray,
    u: np.ndarray,
    out: np.ndarray,
) -> bool:
    bad = False
    for i in range(states.shape[0]):
        s = states[i]
        outside = (s < 0) | (s >= n_states)
        bad |= outside
        out[i] = _pick(thresholds, _U(0) if outside else _U(s), stride, u[i])
    return bad


@_jit
def draw_actions(
    thresholds: np.ndarray,  # float32[S * stride]: row s holds policy_t[s]'s thresholds
    stride: int,
    n_states: int,
    states: np.ndarray,  # int64[N]
    u: np.ndarray,  # float32[N]
    out: np.ndarray,  # int64[N]
) -> bool:
    """out[i] = inverse-CDF action of states[i]'s row for uniform u[i]; True when some state is
    outside 0..S-1 (read as state 0 meanwhile: the caller raises)."""
    if stride == SMALL:
        return _draw_actions_body(thresholds, SMALL, n_states, states, u, out)
    if stride == PAD:
        return _draw_actions_body(thresholds, PAD, n_states, states, u, out)
    return _draw_actions_body(thresholds, stride, n_states, states, u, out)


@_jit
def draw_next(
    pairs: np.ndarray,  # int64[N]: s * A + a
    u: np.ndarray,  # float32[N]
    support: np.ndarray,  # int64[S * A * K]
    width: int,  # K
    cdf: np.ndarray,  # float32[S * A * stride]
    stride: int,
    out: np.ndarray,  # int64[N]
) -> bool:
    """out[i] = inverse-CDF next state of row pairs[i] for u[i]; True when some pair is outside
    the table (read as pair 0 meanwhile: the caller raises)."""
    n_pairs = support.shape[0] // width
    bad = False
    for i in range(pairs.shape[0]):
        pair = pairs[i]
        outside = (pair < 0) | (pair >= n_pairs)
        bad |= outside
        row = _U(0) if outside else _U(pair)
        out[i] = support[row * _U(width) + _pick(cdf, row, stride, u[i])]
    return bad


@_jit
def count_pairs(states: np.ndarray, actions: np.ndarray, n_actions: int, out: np.ndarray) -> None:
    """out[s * A + a] += #{i : (states[i], actions[i]) = (s, a)} (a state-action histogram)."""
    for i in range(states.shape[0]):
        out[_U(states[i]) * _U(n_actions) + _U(actions[i])] += 1


@_inline
def _epoch_body(
    states: np.ndarray,
    actions: np.ndarray,
    draw: bool,
    thresholds: np.ndarray,
    a_stride: int,
    u_action: np.ndarray,
    u: np.ndarray,
    support: np.ndarray,
    width: int,
    cdf: np.ndarray,
    stride: int,
    reward: np.ndarray,
    prev: np.ndarray,
    out_states: np.ndarray,
    out_rewards: np.ndarray,
    counts: np.ndarray,
) -> None:
    n_a = _U(reward.shape[0] // counts.shape[0])
    k_width = _U(width)
    use_prev = prev.shape[0] > 0
    for i in range(states.shape[0]):
        s = _U(states[i])
        if draw:
            a = _pick(thresholds, s, a_stride, u_action[i])
            actions[i] = a
        else:
            a = _U(actions[i])
        pair = s * n_a + a
        nxt = support[pair * k_width + _pick(cdf, pair, stride, u[i])]
        if use_prev:
            out_rewards[i] = reward[s * n_a + _U(prev[i])]
            prev[i] = a
        else:
            out_rewards[i] = reward[pair]
        states[i] = nxt
        out_states[i] = nxt
        counts[_U(nxt)] += 1


@_jit
def advance(
    states: np.ndarray,  # int64[N], replaced in place by the next states
    actions: np.ndarray,  # int64[N]: given (draw False, validated) or written (draw True)
    draw: bool,  # True: draw each agent's action from `thresholds` first
    thresholds: np.ndarray,  # float32[S * a_stride]: the policy rows (as draw_actions)
    a_stride: int,
    u_action: np.ndarray,  # float32[N] (read when draw)
    u: np.ndarray,  # float32[N]: the transition uniforms
    support: np.ndarray,  # int64[S * A * K]: row s * A + a holds its K next states
    width: int,  # K
    cdf: np.ndarray,  # float32[S * A * stride]: the thresholds of those rows
    stride: int,
    reward: np.ndarray,  # float64[S * A]: r[s, a], or r[s, previous action] when prev is used
    prev: np.ndarray,  # int64[N] previous actions (replaced by actions), or int64[0]: none
    out_states: np.ndarray,  # int64[N]: a copy of the next states (what step returns)
    out_rewards: np.ndarray,  # float64[N]
    counts: np.ndarray,  # int64[S], zeroed: the histogram of the next states
) -> None:
    """One epoch in one pass: (the action,) the next state, the reward, the next histogram.
    The branches are the same loop with the strides known at compile time or not."""
    if draw:
        if a_stride == SMALL and stride == SMALL:
            _epoch_body(
                states, actions, True, thresholds, SMALL, u_action, u, support, width, cdf,
                SMALL, reward, prev, out_states, out_rewards, counts,
            )  # fmt: skip
        elif a_stride == PAD and stride == PAD:
            _epoch_body(
                states, actions, True, thresholds, PAD, u_action, u, support, width, cdf, PAD,
                reward, prev, out_states, out_rewards, counts,
            )  # fmt: skip
        else:
            _epoch_body(
                states, actions, True, thresholds, a_stride, u_action, u, support, width, cdf,
                stride, reward, prev, out_states, out_rewards, counts,
            )  # fmt: skip
    elif stride == SMALL:
        _epoch_body(
            states, actions, False, thresholds, a_stride, u_action, u, support, width, cdf,
            SMALL, reward, prev, out_states, out_rewards, counts,
        )  # fmt: skip
    elif stride == PAD:
        _epoch_body(
            states, actions, False, thresholds, a_stride, u_action, u, support, width, cdf, PAD,
            reward, prev, out_states, out_rewards, counts,
        )  # fmt: skip
    else:
        _epoch_body(
            states, actions, False, thresholds, a_stride, u_action, u, support, width, cdf,
            stride, reward, prev, out_states, out_rewards, counts,
        )  # fmt: skip


# ---------------------------------------------------------------- exact exploitability


@_jit
def factored_forward(
    pol: np.ndarray,
    mu0: np.ndarray,
    move_flat: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    moved: np.ndarray,
    flow: np.ndarray,
    mass: np.ndarray,
) -> None:
    """The forward pass of a policy pi[T, S, A] (the caller's layout) on factored dynamics (a
    move, then a spread held as the CSR rows of spread^T: indptr, indices, data): flow[T, S]
    and the state-action masses mass[T, A, S] = mu_t(s)·pi_t(a | s), written in place
    (moved[S] is scratch). The masses are added into their move's target in the numpy form's
    order (a-major).

    The same operations in the same order as the numpy form (tests/unit/test_envs_crowd_2d.py:
    multiply, bincount of the masses by their move's target, then the CSR product summing each
    row in storage order), so the values are bit for bit those of numpy and scipy."""
    n_t, n_s, n_a = pol.shape
    for s in range(n_s):
        flow[0, s] = mu0[s]
    for t in range(n_t):
        for s in range(n_s):
            for a in range(n_a):
                mass[t, a, s] = pol[t, s, a] * flow[t, s]
        if t < n_t - 1:
            for m in range(n_s):
                moved[m] = 0.0
            for a in range(n_a):
                for s in range(n_s):
                    moved[move_flat[a * n_s + s]] += mass[t, a, s]
            for i in range(n_s):
                acc = 0.0
                for j in range(indptr[i], indptr[i + 1]):
                    acc += data[j] * moved[indices[j]]
                flow[t + 1, i] = acc


@_jit
def factored_backward(
    rewards: np.ndarray,
    move_flat: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    after: np.ndarray,
    v_best: np.ndarray,
) -> None:
    """The best response's backward pass on factored dynamics (the spread's CSR rows: indptr,
    indices, data) against rewards R[T, A, S]: V*_{T-1} = max_a R_{T-1}, then V*_t(s) = max_a
    (R_t(a, s) + spread·V*_{t+1} at move(a, s)), V*_0 written to v_best[S] (after[S] is
    scratch). Bit for bit the numpy form's values (each CSR row summed in storage order; a max
    does not depend on the order)."""
    n_t, n_a, n_s = rewards.shape
    for s in range(n_s):
        best = rewards[n_t - 1, 0, s]
        for a in range(1, n_a):
            if rewards[n_t - 1, a, s] > best:
                best = rewards[n_t - 1, a, s]
        v_best[s] = best
    for t in range(n_t - 2, -1, -1):
        for i in range(n_s):
            acc = 0.0
            for j in range(indptr[i], indptr[i + 1]):
                acc += data[j] * v_best[indices[j]]
            after[i] = acc
        for s in range(n_s):
            best = after[move_flat[s]] + rewards[t, 0, s]
            for a in range(1, n_a):
                q = after[move_flat[a * n_s + s]] + rewards[t, a, s]
                if q > best:
                    best = q
            v_best[s] = best

"""Dataset-estimated advantages for the value-weighted objective (docs/method.md) and
π_β^D (docs/metrics.md).

Finite-S benchmarks use tabular Monte Carlo estimates over (t, s, a):

    Q̂(s, a, t) = mean return-to-go (to the episode end) over data samples with (t, s, a),
    V̂(s, t)    = mean return-to-go over data samples with (t, s)
               = Σ_a counts(t, s, a)·Q̂(s, a, t) / Σ_a counts(t, s, a)  (behaviour policy's value),
    A(s, a, t) = Q̂ − V̂, and A = 0 wherever counts(t, s, a) == 0.

mu_t is not an input here. In a dataset of one behaviour policy (or one fixed round-robin mixture)
and one mu0, the mean-field flow is determined by t (up to the N-agent fluctuation of mu^N_t, which
the average over episodes integrates out), so conditioning on t is conditioning on mu_t. Datasets
whose episodes follow different flows at the same t (e.g. mixed policies with per-episode flows) are
where a value estimate with mu as an input (a small network) would matter; that is future work.

Shrinkage (`advantage_shrinkage` = z, docs/method.md): Â is soft-thresholded toward 0 by z standard
errors of Q̂, sign(Â)·max(0, |Â| − z·se(t, s, a)), se² = the returns-to-go's variance at (t, s, a) /
(counts − 1); a (t, s, a) seen once or never gets Â = 0. The tilt then moves the policy only where
the data shows an advantage above its own noise, so on data already near an equilibrium (whose
true advantages are small) it stays near the data.

Reward alignment: a simulator may record at row t a reward that contains a term caused by the
previous action (crowd_1d charges the move cost of a_{t-1} at x_t). Such a term depends on (t, s_t)
only given the behaviour policy, not on a_t, so it shifts Q̂ and V̂ equally and cancels in A.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mfdiffuser.data.windows import EpisodeArrays


def returns_to_go(rewards: npt.ArrayLike) -> np.ndarray:
    """rtg[E, T, N] (float64): sum of rewards[e, t', n] over t' = t..T-1 (to the episode end)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 3:
        raise ValueError(f"rewards: expected shape [E, T, N], got {r.shape}")
    return np.flip(np.cumsum(np.flip(r, axis=1), axis=1), axis=1).copy()


@dataclass(frozen=True)
class TabularAdvantage:
    """Tabular estimates: q[T, S, A], v[T, S], counts[T, S, A] (float64)."""

    q: np.ndarray  # [T, S, A] mean rtg per (t, s, a); 0 where unseen
    v: np.ndarray  # [T, S] mean rtg per (t, s); 0 where unseen
    counts: np.ndarray  # [T, S, A] number of samples per (t, s, a)
    se: np.ndarray | None = None  # [T, S, A] standard error of Q̂; inf where counts <= 1

    @property
    def table(self) -> np.ndarray:
        """A[T, S, A] = Q̂ − V̂, 0 where counts == 0."""
        return np.where(self.counts > 0, self.q - self.v[:, :, None], 0.0)

    def advantage(self, t: npt.ArrayLike, s: npt.ArrayLike, a: npt.ArrayLike) -> np.ndarray:
        """A[...] at broadcastable integer indices t[...], s[...], a[...] (float64)."""
        return self.table[np.asarray(t), np.asarray(s), np.asarray(a)]

    def shrunk(self, z: float) -> TabularAdvantage:
        """Â soft-thresholded by z standard errors of Q̂ (module doc); z = 0 returns self."""
        if z == 0:
            return self
        if self.se is None:
            raise ValueError("advantage shrinkage needs the returns-to-go's squares (se is None)")
        a = self.table  # se is inf where counts <= 1, so those shrink to exactly 0
        kept = np.sign(a) * np.maximum(0.0, np.abs(a) - z * self.se)
        return TabularAdvantage(q=self.v[:, :, None] + kept, v=self.v, counts=self.counts)


def advantage_sums(
    arrays: EpisodeArrays, n_states: int, n_actions: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sufficient statistics: (sum of returns-to-go, count, sum of squared returns-to-go) per
    (t, s, a), each [T, S, A].

    All three add across data shards, so DDP ranks all-reduce them and every rank fits the same
    table (and the same standard errors, for the shrinkage) from the whole dataset.
    """
    _, horizon, _ = arrays.states.shape
    rtg = returns_to_go(arrays.rewards)
    t_idx = np.broadcast_to(np.arange(horizon)[None, :, None], arrays.states.shape)
    ts = (t_idx * n_states + np.asarray(arrays.states)).ravel()
    tsa = ts * n_actions + np.asarray(arrays.actions).ravel()
    size = horizon * n_states * n_actions
    counts = np.bincount(tsa, minlength=size).astype(np.float64)
    sums = np.bincount(tsa, weights=rtg.ravel(), minlength=size)
    squares = np.bincount(tsa, weights=np.square(rtg).ravel(), minlength=size)
    shape = (horizon, n_states, n_actions)
    return sums.reshape(shape), counts.reshape(shape), squares.reshape(shape)


def advantage_from_sums(
    sums: np.ndarray, counts: np.ndarray, squares: np.ndarray | None = None
) -> TabularAdvantage:
    """Q̂ = sums / counts per (t, s, a); V̂ = the same per (t, s), pooled over actions; with the
    squares, se(Q̂) = sqrt(sample variance / counts) (inf where counts <= 1)."""
    q = np.divide(sums, counts, out=np.zeros_like(sums, dtype=np.float64), where=counts > 0)
    s_counts, s_sums = counts.sum(axis=-1), sums.sum(axis=-1)
    v = np.divide(s_sums, s_counts, out=np.zeros_like(s_sums, dtype=np.float64), where=s_counts > 0)
    se = None
    if squares is not None:
        # se² = (sample variance)/n = (E[G²] − Q̂²)/(n − 1)
        n = np.asarray(counts, dtype=np.float64)
        spread = np.maximum(np.divide(squares, n, out=np.zeros_like(q), where=n > 1) - q * q, 0.0)
        se = np.full_like(q, np.inf)
        np.sqrt(np.divide(spread, n - 1.0, out=se, where=n > 1), out=se, where=n > 1)
    return TabularAdvantage(q=q, v=v, counts=np.asarray(counts, dtype=np.float64), se=se)


def fit_tabular_advantage(arrays: EpisodeArrays, n_states: int, n_actions: int) -> TabularAdvantage:
    """Fit Q̂, V̂ by averaging returns-to-go over (t, s, a) and (t, s) (vectorised, bincount)."""
    return advantage_from_sums(*advantage_sums(arrays, n_states, n_actions))


def dataset_statistics(
    uri: str, n_states: int, n_actions: int
) -> tuple[TabularAdvantage, np.ndarray]:
    """The tabular advantage and the behaviour prior π_b(a | s, t) [T, S, A] of a whole
    finite-state dataset, read one shard at a time (a shard holds whole episodes): the sums and
    counts over all its episodes, so memory is one shard's, whatever the dataset's size. Each
    shard's bytes are checked against the manifest as it is read."""
    from mfdiffuser.data.manifest import read_manifest
    from mfdiffuser.data.windows import load_episodes, normalise_counts

    total: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for i in range(len(read_manifest(uri).shards)):
        arrays, _ = load_episodes(uri, [i])
        part = advantage_sums(arrays, n_states, n_actions)
        total = (
            part if total is None else (total[0] + part[0], total[1] + part[1], total[2] + part[2])
        )
    if total is None:
        raise ValueError(f"dataset {uri!r}: no shards")
    return advantage_from_sums(*total), normalise_counts(total[1])


def _advantage_table(adv: TabularAdvantage | npt.ArrayLike) -> np.ndarray:
    if isinstance(adv, TabularAdvantage):
        return adv.table
    return np.asarray(adv, dtype=np.float64)


def expected_log_normaliser(adv: TabularAdvantage, beta: float) -> float:
    """log E[exp(β·A)] over the first (t0, s, a) of training windows (the batch mean's limit).

    The window start t0 is uniform on 0..T-1 (`WindowSampler`) and the M particles are agents of
    the episode, so (s, a) at t0 follows the data's counts at t0. Pass the result as
    `log_normaliser` to `tilted_policy` to clip exactly where the training weights clip
    (w = exp(β·A) / batch mean, clipped at w_max), up to the batch mean's finite-sample error.
    """
    counts = adv.counts
    logits = beta * adv.table  # [T, S, A]
    p = counts / np.maximum(counts.sum(axis=(1, 2), keepdims=True), 1.0)
    shift = float(logits.max()) if logits.size else 0.0
    per_t = (p * np.exp(logits - shift)).sum(axis=(1, 2))  # [T]
    return float(np.log(per_t.mean()) + shift)


def tilted_policy(
    prior: npt.ArrayLike,
    adv: TabularAdvantage | npt.ArrayLike,
    beta: float,
    weight_clip: float,
    log_normaliser: float | None = None,
) -> np.ndarray:
    """π_β(a | s, t) ∝ π_b(a | s, t)·min(exp(β·A(s, a, t)) / Z, w_max): policy[T, S, A].

    prior[T, S, A] is π_b; adv is a TabularAdvantage (the dataset estimate, giving π_β^D of
    docs/metrics.md) or a table A[T, S, A] (e.g. the true advantage, giving π_β*).

    Clipping. Training weights are exp(β·A_j) divided by their batch mean, then clipped at w_max;
    the first-action marginal they induce at (t, s) is π_b·min(exp(β·A)/Z, w_max), renormalised.
    Z is the normaliser the clip is measured against:
      * default (log_normaliser=None): the per-(t, s) behaviour-weighted mean
        Z(t, s) = Σ_a π_b(a | s, t)·exp(β·A(s, a, t)), so w_max bounds how far the tilt can raise
        an action's probability over π_b at that state (the tilted probability is at most
        w_max·π_b before renormalisation);
      * a scalar log Z (e.g. `expected_log_normaliser`): the clip of the training weights
        themselves, whose batch mean pools every (t, s) in the batch.
    Without clipping both give exactly π_b·exp(β·A) normalised. β = 0 returns the prior exactly.
    Computed in log space (no overflow for large β).
    """
    pi_b = np.asarray(prior, dtype=np.float64)
    if beta == 0.0:
        return pi_b.copy()
    a_table = _advantage_table(adv)
    if a_table.shape != pi_b.shape:
        raise ValueError(f"advantage: expected shape {pi_b.shape}, got {a_table.shape}")
    logits = beta * a_table
    if log_normaliser is None:
        with np.errstate(divide="ignore"):
            log_prior = np.log(pi_b)
        joint = log_prior + logits
        row_max = np.max(joint, axis=-1, keepdims=True)
        log_z = row_max + np.log(np.exp(joint - row_max).sum(axis=-1, keepdims=True))
    else:
        log_z = np.asarray(log_normaliser, dtype=np.float64)
    log_w = np.minimum(logits - log_z, np.log(weight_clip))
    # Renormalising per row is shift-invariant: subtract the row max of log_w before exp.
    # (the max over actions the prior can take, so the row never underflows to all zeros).
    support_max = np.max(np.where(pi_b > 0, log_w, -np.inf), axis=-1, keepdims=True)
    log_w = log_w - np.where(np.isfinite(support_max), support_max, 0.0)
    unnorm = pi_b * np.exp(log_w)
    total = unnorm.sum(axis=-1, keepdims=True)
    return np.where(total > 0, unnorm / np.where(total > 0, total, 1.0), pi_b)

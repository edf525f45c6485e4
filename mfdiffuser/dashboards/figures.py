"""The sweep's figures and each run's own, from the records `tracking.sweep_results` reads.

A record is one finished trial: `benchmark`, `quality`, `n_agents`, `method`, `seed` and its
logged `metrics`; a per-N quantity is read at the trial's own N (`subopt/mf_abs_dev/n{N}`).
Figures are matplotlib `Figure`s made without pyplot (no global state, no display needed) and
saved as PNG and SVG. No Ray, no MLflow here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mfdiffuser.dashboards.scaling import Slope, linear_slope, loglog_slope, mean_slope
from mfdiffuser.evaluation.comparison import SingleSeedWarning, mean_interval
from mfdiffuser.platform.tracking import TEAM_SCORE

Record = dict[str, Any]

# The decomposition's terms against N: (label, metric, how it is fitted, reference slope).
# "abs": log |y| on log N; "bias": log |mean over seeds| on log N (a signed term's bias).
TERMS: tuple[tuple[str, str, str, float | None], ...] = (
    ("|mean-field deviation| per episode", "subopt/mf_abs_dev/n{N}", "abs", -0.5),
    ("mean-field bias |mean over seeds|", "subopt/mf_error/n{N}", "bias", -1.0),
    ("distribution shift", "subopt/distribution_shift", "abs", 0.0),
    ("regularisation gap", "subopt/regularisation_gap", "abs", None),
    ("generative error", "subopt/generative_error", "abs", None),
)
# A run's four signed terms, which sum to the total suboptimality at N.
RUN_TERMS = (
    ("regularisation gap", "subopt/regularisation_gap"),
    ("distribution shift", "subopt/distribution_shift"),
    ("generative error", "subopt/generative_error"),
    ("mean-field error", "subopt/mf_error/n{N}"),
)


def value(rec: Record, metric: str, n: int | None = None) -> float | None:
    v = rec["metrics"].get(metric.replace("{N}", str(n or rec["n_agents"])))
    return None if v is None or not np.isfinite(v) else float(v)


def _by(records: Iterable[Record], *keys: str) -> dict[tuple[Any, ...], list[Record]]:
    out: dict[tuple[Any, ...], list[Record]] = {}
    for r in records:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: [str(k) for k in kv[0]]))


def _series(recs: list[Record], metric: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r["n_agents"], value(r, metric)) for r in recs]
    pairs = [(n, v) for n, v in pairs if v is not None]
    return np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs])


def _quiet_interval(values: np.ndarray) -> dict[str, Any]:
    with warnings.catch_warnings():  # one seed: the figure shows the mean without a band
        warnings.simplefilter("ignore", SingleSeedWarning)
        return mean_interval(values)


def _per_n_band(n: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    levels = np.unique(n)
    cells = [_quiet_interval(y[n == v]) for v in levels]
    mean = np.array([c["mean"] for c in cells])
    low = np.array([c["low"] if c["low"] is not None else c["mean"] for c in cells])
    high = np.array([c["high"] if c["high"] is not None else c["mean"] for c in cells])
    return levels, mean, low, high


def fmt_slope(s: Slope | None) -> str:
    if s is None:
        return "no fit"
    if s.low is None:
        return f"{s.slope:+.3f} [one seed]"
    return f"{s.slope:+.3f} [{s.low:+.3f}, {s.high:+.3f}]"


def fit_term(n: np.ndarray, y: np.ndarray, how: str, what: str) -> Slope | None:
    """The term's slope against N, None where it cannot be fitted (one N, or a zero value on a
    log axis)."""
    if len(np.unique(n)) < 2:
        return None
    if how == "bias":
        return mean_slope(n, y, what=what)
    if np.any(y == 0):
        return None
    return loglog_slope(n, np.abs(y), what=what)


def laws(records: list[Record]) -> list[dict[str, Any]]:
    """Every term's fitted slope per (benchmark, method, quality), with its reference, plus the
    shift's change per decade of N (its linear slope on log10 N, where 0 is flat)."""
    out = []
    for (bench, method, quality), recs in _by(records, "benchmark", "method", "quality").items():
        where = f"{bench}, {method}, {quality}"
        for label, metric, how, ref in TERMS:
            n, y = _series(recs, metric)
            s = fit_term(n, y, how, f"{where}: {label}")
            if s is not None:
                out.append(_law(bench, method, quality, label, "log-log", s, ref))
        n, y = _series(recs, "subopt/distribution_shift")
        if len(np.unique(n)) >= 2:
            s = linear_slope(np.log10(n), y, what=f"{where}: shift per decade")
            out.append(_law(bench, method, quality, "distribution shift", "per decade", s, 0.0))
    return out


def _law(
    bench: str, method: str, quality: str, term: str, fit: str, s: Slope, ref: float | None
) -> dict[str, Any]:
    return {
        "benchmark": bench,
        "method": method,
        "quality": quality,
        "term": term,
        "fit": fit,
        "slope": s.slope,
        "low": s.low,
        "high": s.high,
        "reference": ref,
    }


def _panels(n: int, width: float = 5.0, height: float = 3.8) -> tuple[Figure, list[Any]]:
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def return_vs_n(records: list[Record]) -> Figure:
    """Return J^N against N per method, a 95% bootstrap band over seeds, per (benchmark,
    quality)."""
    groups = _by(records, "benchmark", "quality")
    fig, axes = _panels(len(groups))
    for ax, ((bench, quality), recs) in zip(axes, groups.items(), strict=True):
        for (method,), mrecs in _by(recs, "method").items():
            n, y = _series(mrecs, "return/n{N}")
            levels, mean, low, high = _per_n_band(n, y)
            (line,) = ax.plot(levels, mean, marker="o", label=method)
            ax.fill_between(levels, low, high, alpha=0.25, color=line.get_color())
        ax.set_xscale("log")
        ax.set(title=f"{bench}, {quality} data", xlabel="N (agents)", ylabel="return $J^N$")
        ax.legend(fontsize=8)
    fig.suptitle("Return against N\n(95% bootstrap band over seeds)", fontsize=10)
    return fig


def _has(records: list[Record], *metrics: str) -> bool:
    return any(value(r, m) is not None for r in records for m in metrics)


def terms_vs_n(records: list[Record]) -> Figure | None:
    """Every decomposition term against N on log-log axes: seeds as points, the mean as a line,
    the fitted slope and its interval in the legend, the reference slope dashed.

    None without the terms (a benchmark with no exact model)."""
    if not _has(records, *(metric for _, metric, _, _ in TERMS)):
        return None
    fig, axes = _panels(len(TERMS))
    for ax, (label, metric, how, ref) in zip(axes, TERMS, strict=True):
        for (bench, method, quality), recs in _by(
            records, "benchmark", "method", "quality"
        ).items():
            n, y = _series(recs, metric)
            if len(n) == 0:
                continue
            levels = np.unique(n)
            mean = np.array(
                [
                    abs(y[n == v].mean()) if how == "bias" else np.abs(y[n == v]).mean()
                    for v in levels
                ]
            )
            s = fit_term(n, y, how, f"{bench}, {method}, {quality}: {label}")
            (line,) = ax.plot(
                levels, mean, marker="o", label=f"{method}, {quality}: slope {fmt_slope(s)}"
            )
            if how == "abs":
                ax.scatter(n, np.abs(y), s=10, alpha=0.5, color=line.get_color())
            if ref is not None and np.all(mean > 0):
                anchor = np.exp(np.mean(np.log(mean)) - ref * np.mean(np.log(levels)))
                ax.plot(levels, anchor * levels**ref, "--", color=line.get_color(), alpha=0.6)
        ax.set_xscale("log")
        if any(line.get_ydata().size and np.all(line.get_ydata() > 0) for line in ax.lines):
            ax.set_yscale("log")
        reference = "" if ref is None else f" (dashed: reference slope {ref:+g})"
        ax.set(title=label + reference, xlabel="N (agents)", ylabel=f"|{label}|")
        ax.title.set_fontsize(9)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle("Suboptimality terms against N, log-log, slope [95% bootstrap interval]")
    return fig


def shift_vs_n_and_quality(records: list[Record]) -> Figure | None:
    """The distribution-shift term against N (per quality) and against data quality (per N).

    None without the term."""
    if not _has(records, "subopt/distribution_shift"):
        return None
    fig, (by_n, by_q) = _panels(2)
    qualities = sorted({r["quality"] for r in records})
    for (quality,), recs in _by(records, "quality").items():
        n, y = _series(recs, "subopt/distribution_shift")
        if len(n):
            levels, mean, low, high = _per_n_band(n, y)
            by_n.errorbar(
                levels,
                mean,
                yerr=[mean - low, high - mean],
                marker="o",
                capsize=3,
                label=f"{quality} data",
            )
    by_n.set_xscale("log")
    by_n.set(title="against N", xlabel="N (agents)", ylabel="distribution shift")
    by_n.legend(fontsize=8)
    ns = sorted({r["n_agents"] for r in records})
    for i, n_value in enumerate(ns):
        xs, ys = [], []
        for j, quality in enumerate(qualities):
            vals = [
                value(r, "subopt/distribution_shift")
                for r in records
                if r["quality"] == quality and r["n_agents"] == n_value
            ]
            vals = [v for v in vals if v is not None]
            xs += [j + (i - (len(ns) - 1) / 2) * 0.12] * len(vals)
            ys += vals
        by_q.scatter(xs, ys, label=f"N = {n_value}")
    by_q.set_xticks(range(len(qualities)), qualities)
    by_q.set(title="against data quality", xlabel="data quality", ylabel="distribution shift")
    by_q.legend(fontsize=8)
    fig.suptitle("Distribution-shift term (seeds as points)")
    return fig


def exploitability_grid(records: list[Record]) -> Figure | None:
    """Mean exploitability per method × data quality (over seeds and N), annotated.

    None when no trial has one."""
    if all(r.get("exploitability") is None for r in records):
        return None
    methods = sorted({r["method"] for r in records})
    qualities = sorted({r["quality"] for r in records})
    grid = np.full((len(methods), len(qualities)), np.nan)
    for (method, quality), recs in _by(records, "method", "quality").items():
        vals = [r["exploitability"] for r in recs if r.get("exploitability") is not None]
        if vals:
            grid[methods.index(method), qualities.index(quality)] = np.mean(vals)
    fig = Figure(
        figsize=(2.0 + 1.6 * len(qualities), 1.5 + 0.5 * len(methods)), layout="constrained"
    )
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(
            j,
            i,
            "n/a" if np.isnan(v) else f"{v:.3g}",
            ha="center",
            va="center",
            color="white" if np.isfinite(v) and v > np.nanmean(grid) else "black",
        )
    ax.set_xticks(range(len(qualities)), qualities)
    ax.set_yticks(range(len(methods)), methods)
    ax.set(xlabel="data quality", ylabel="method", title="Exploitability (mean over seeds, N)")
    fig.colorbar(image, ax=ax, label="exploitability")
    return fig


SCORE_LABELS = {"win_rate": "win rate", "kill_ratio": "kill ratio (own kills / opponent's)"}


def team_scores(records: list[Record]) -> list[dict[str, Any]]:
    """A team game's win rate and kill ratio per (benchmark, quality, score, opponent, method,
    N agents per team): the mean over seeds with its 95% bootstrap interval (None: one seed).
    Empty when no trial logged team scores at its own N."""
    values: dict[tuple[Any, ...], list[float]] = {}
    for r in records:
        for key, v in r["metrics"].items():
            m = TEAM_SCORE.fullmatch(key)
            if m is not None and int(m["n"]) == r["n_agents"] and np.isfinite(v):
                cell = (r["benchmark"], r["quality"], m["score"], m["opponent"], r["method"])
                values.setdefault((*cell, r["n_agents"]), []).append(float(v))
    keys = ("benchmark", "quality", "score", "opponent", "method", "n_agents")
    return [
        {**dict(zip(keys, cell, strict=True)), "seeds": len(v), **_quiet_interval(np.array(v))}
        for cell, v in sorted(values.items())
    ]


def team_scores_vs_n(records: list[Record]) -> Figure | None:
    """A team game's win rate and kill ratio against N (agents per team) per method, one panel
    per opponent, a 95% bootstrap band over seeds.

    None without team scores."""
    panels = _by(team_scores(records), "benchmark", "quality", "score", "opponent")
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, ((bench, quality, score, opponent), pcells) in zip(axes, panels.items(), strict=True):
        for (method,), mcells in _by(pcells, "method").items():
            n = [c["n_agents"] for c in mcells]
            mean = [c["mean"] for c in mcells]
            (line,) = ax.plot(n, mean, marker="o", label=method)
            low = [c["mean"] if c["low"] is None else c["low"] for c in mcells]
            high = [c["mean"] if c["high"] is None else c["high"] for c in mcells]
            ax.fill_between(n, low, high, alpha=0.25, color=line.get_color())
        ax.set_xscale("log")
        if score == "win_rate":
            ax.set_ylim(-0.05, 1.05)
        ax.set(
            title=f"{bench}, {quality} data: vs {opponent}",
            xlabel="N (agents per team)",
            ylabel=SCORE_LABELS[score],
        )
        ax.legend(fontsize=8)
    fig.suptitle("Team game: win rate and kill ratio against N\n(95% bootstrap band over seeds)")
    return fig


def training_curves(histories: dict[str, dict[str, list[tuple[int, float]]]]) -> Figure:
    """Weighted (`train/loss`) and unweighted (`train/loss_unweighted`) loss per epoch, one line
    per run (label -> key -> [(epoch, value)])."""
    fig, axes = _panels(2)
    for ax, key, title in zip(
        axes,
        ("train/loss", "train/loss_unweighted"),
        ("weighted loss", "unweighted loss"),
        strict=True,
    ):
        for label, hist in histories.items():
            points = hist.get(key) or []
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        ax.set(title=title, xlabel="epoch", ylabel=key)
        if 0 < len(ax.lines) <= 12:
            ax.legend(fontsize=7)
    fig.suptitle("Training curves")
    return fig


def run_decomposition(rec: Record) -> Figure | None:
    """One run's four signed suboptimality terms at its N as bars (None without them)."""
    vals = [value(rec, metric) for _, metric in RUN_TERMS]
    if any(v is None for v in vals):
        return None
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    colors = ["tab:red" if v < 0 else "tab:blue" for v in vals]  # type: ignore[operator]
    ax.bar([label for label, _ in RUN_TERMS], vals, color=colors)
    ax.axhline(0, color="black", linewidth=0.8)
    total = value(rec, "subopt/total/n{N}")
    ax.set(
        ylabel="contribution to suboptimality",
        title=(
            f"Decomposition at N = {rec['n_agents']}"
            + (f" (total {total:+.4f})" if total is not None else "")
        ),
    )
    ax.tick_params(axis="x", labelsize=8)
    return fig


def comparison(table: dict[str, Any]) -> Figure:
    """The comparison table as a figure: per setting, each method's mean return with its 95%
    bootstrap interval over seeds (a point without a bar: one seed)."""
    settings = [s for s in table["settings"] if any(m["return"] for m in s["methods"])]
    fig, axes = _panels(
        max(1, len(settings)),
        width=5.5,
        height=1.2 + 0.35 * max(len(s["methods"]) for s in settings),
    )
    for ax, setting in zip(axes, settings, strict=False):
        rows = [m for m in setting["methods"] if m["return"] is not None]
        for i, m in enumerate(rows):
            r = m["return"]
            err = None if r["low"] is None else [[r["mean"] - r["low"]], [r["high"] - r["mean"]]]
            ax.errorbar(
                r["mean"],
                i,
                xerr=err,
                fmt="s" if m["reference"] else "o",
                capsize=3,
                color="grey" if m["reference"] else "tab:blue",
            )
        ax.set_yticks(range(len(rows)), [m["method"] for m in rows])
        ax.invert_yaxis()
        ax.set(title=setting["label"], xlabel="mean return (95% interval over seeds)")
        ax.title.set_fontsize(9)
    fig.suptitle("Method comparison (grey squares: exact-solver references)")
    return fig


def save(fig: Figure, folder: Path, name: str) -> list[Path]:
    """`name.png` and `name.svg` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    fig.savefig(paths[0], dpi=110)
    fig.savefig(paths[1])
    return paths

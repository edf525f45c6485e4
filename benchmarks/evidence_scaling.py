"""Read a finished sweep back from MLflow and print its scaling-law evidence (issue 5).

    python benchmarks/evidence_scaling.py --tracking-uri sqlite:///PATH/mlflow.db \
        [--sweep evidence-crowd-1d | --parent RUN_ID]

Made for `configs/sweep_evidence_crowd_1d.yaml` (axes N, quality, seed; each trial evaluated at
its own N). Prints, per quality and N, mean ± std over seeds of the decomposition terms, then:
- the log-log slope against N of the absolute per-episode mean-field deviation (live planner and
  frozen table), with a 95% bootstrap interval (claim: -0.5 or steeper);
- the slope of the signed mean-field term's bias |mean over seeds| (expected about -1);
- the distribution-shift term against N (claim: flat; slope of the term against log10 N) and
  against quality;
- exploitability of the generated policies; the sweep's wall time and concurrency.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from mfdiffuser.tuning.analysis import linear_slope, loglog_slope, mean_slope, sweep_frame


def _parent(uri: str, sweep: str | None, parent: str | None) -> tuple[str, dict[str, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if parent:
        return parent, dict(client.get_run(parent).data.metrics)
    exps = [e.experiment_id for e in client.search_experiments()]
    where = "tags.`mfd.role` = 'sweep'" + (f" and tags.`mfd.sweep` = '{sweep}'" if sweep else "")
    runs = client.search_runs(exps, filter_string=where, order_by=["attributes.start_time DESC"])
    if not runs:
        raise SystemExit(f"no sweep parent run in {uri} (sweep={sweep!r})")
    return runs[0].info.run_id, dict(runs[0].data.metrics)


def _per_n(df: pd.DataFrame, name: str) -> pd.Series:
    """The metric `name/n{N}` of each trial at its own N."""
    return pd.Series(
        [row.get(f"{name}/n{int(row['N'])}", np.nan) for _, row in df.iterrows()],
        index=df.index,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--sweep", default=None, help="sweep name (latest parent run with it)")
    ap.add_argument("--parent", default=None, help="the sweep's parent run id")
    args = ap.parse_args()

    parent, pm = _parent(args.tracking_uri, args.sweep, args.parent)
    df = sweep_frame(args.tracking_uri, parent)
    n_col = "axis.N" if "axis.N" in df else "axis.n_agents"
    df = df[df["status"] == "FINISHED"].copy()
    df["N"] = df[n_col].astype(int)
    df["quality"] = df["axis.quality"]
    for name in ("subopt/mf_abs_dev", "subopt/mf_error", "subopt/mf_abs_dev_table"):
        df[name.split("/")[1]] = _per_n(df, name)
    df["mf_error_table"] = _per_n(df, "subopt/mf_error_table")
    df["return"] = _per_n(df, "return")
    cols = {
        "return": "return J^N",
        "exploitability": "exploitability",
        "subopt/regularisation_gap": "reg. gap",
        "subopt/distribution_shift": "shift",
        "subopt/generative_error": "generative",
        "mf_error": "mf (signed)",
        "mf_abs_dev": "|mf| per ep.",
        "mf_error_table": "mf table (signed)",
        "mf_abs_dev_table": "|mf table| per ep.",
        "behaviour/exploitability": "behaviour expl.",
    }
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    print(f"sweep parent run {parent}: {len(df)} finished trials")
    print(
        f"wall time {pm.get('sweep/wall_seconds', float('nan')):.0f} s, "
        f"{pm.get('sweep/concurrency', float('nan')):.0f} trials at a time, "
        f"{pm.get('sweep/trials_failed', float('nan')):.0f} failed\n"
    )
    table = df.groupby(["quality", "N"])[list(cols)].agg(["mean", "std"])
    for key, label in cols.items():
        sub = table[key]
        print(f"{label}:")
        print(
            sub.apply(lambda r: f"{r['mean']:+.4f} ± {r['std']:.4f}", axis=1)
            .unstack("N")
            .to_string()
        )
        print()

    print("log-log slopes against N (95% bootstrap interval over seeds):")
    for q, g in [("all", df), *df.groupby("quality")]:
        n = g["N"].to_numpy(float)
        if len(np.unique(n)) < 2:
            print(f"  {q:>8} only N = {sorted(set(n.astype(int)))}: no slope")
            continue
        for label, col in (
            ("|mf| per episode, live planner", "mf_abs_dev"),
            ("|mf| per episode, frozen table", "mf_abs_dev_table"),
        ):
            s, lo, hi = loglog_slope(n, g[col].to_numpy(float))
            print(f"  {q:>8} {label:<34} slope {s:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        for label, col in (
            ("bias |mean signed mf|, live", "mf_error"),
            ("bias |mean signed mf|, table", "mf_error_table"),
        ):
            s, lo, hi = mean_slope(n, g[col].to_numpy(float))
            print(f"  {q:>8} {label:<34} slope {s:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        s, lo, hi = linear_slope(np.log10(n), g["subopt/distribution_shift"].to_numpy(float))
        print(f"  {q:>8} {'shift term per decade of N':<34} slope {s:+.4f} [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main()

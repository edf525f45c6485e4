"""`mfd report`: a sweep's figures into MLflow and a static HTML report into a directory.

The sweep's figures go on its parent run (`figures/`), each finished trial's own (training
curve, decomposition) on that trial's run; the report directory holds `index.html`, the
figures beside it (`figures/*.png`, `*.svg`) and `report.json`. It is built in a temporary
directory next to `--out` and moved into place only when complete, so a failure leaves nothing
half-written there; `--out` may be new, empty, or a previous report (which it replaces).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from mfdiffuser.dashboards import figures
from mfdiffuser.evaluation.comparison import (
    SingleSeedWarning,
    comparison_table,
    format_interval,
)
from mfdiffuser.platform import tracking
from mfdiffuser.platform.config import ConfigError

MARKER = "report.json"  # what makes a directory a previous report, safe to replace
SWEEP_FIGURES = {
    "return_vs_n": figures.return_vs_n,
    "terms_vs_n": figures.terms_vs_n,
    "shift": figures.shift_vs_n_and_quality,
    "exploitability": figures.exploitability_grid,
    "team_scores": figures.team_scores_vs_n,
}


def check_out(out: Path) -> Path:
    """`--out` resolved, refused unless a report can be moved into it without losing data."""
    out = out.expanduser().resolve()
    allowed = "allowed: a new or empty directory, or a previous report's, in a writable directory"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out = {out}: is a file; {allowed}")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(f"--out = {out}: holds files that are not a report; {allowed}")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out = {out}: {out.parent} is not a writable directory; {allowed}")
    return out


def write_report(
    uri: str, *, sweep: str | None, experiment: str | None, out: Path, log_to_mlflow: bool = True
) -> dict[str, Any]:
    start = time.perf_counter()
    out = check_out(out)
    parent = (
        tracking.find_sweep(uri, sweep) if sweep else tracking.latest_sweep(uri, str(experiment))
    )
    found = tracking.sweep_results(uri, parent.info.run_id)
    tracking.check_finished(sweep or str(experiment), found)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SingleSeedWarning)
        table = comparison_table(found["records"], found["skipped"])
        laws = figures.laws(found["records"])
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, SingleSeedWarning)})
    records = found["records"]
    histories = {
        r["run_id"]: {k: tracking.metric_history(uri, r["run_id"], k) for k in LOSSES}
        for r in records
    }
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        raise ConfigError(f"--out = {out}: cannot write beside it: {err.strerror}") from None
    try:
        made, runs = _figures(tmp / "figures", records, table, histories)
        page = _html(parent, found, table, laws, notes, made, runs)
        (tmp / "index.html").write_text(page, encoding="utf-8")
        summary = {
            "parent_run_id": found["parent_run_id"],
            "sweep": found["sweep"],
            "sweep_id": found["sweep_id"],
            "tracking_uri": uri,
            "trials": len(records),
            "missing": len(found["missing"]),
            "laws": laws,
            "team_scores": figures.team_scores(records),
            "warnings": notes,
            "figures": sorted(made),
            "run_figures": runs,
        }
        (tmp / MARKER).write_text(json.dumps(summary, indent=2, default=str))
        if log_to_mlflow:
            _log(uri, found["parent_run_id"], records, tmp / "figures", made)
        _replace(out, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        **summary,
        "out": str(out),
        "html": str(out / "index.html"),
        "seconds": time.perf_counter() - start,
    }


LOSSES = ("train/loss", "train/loss_unweighted")


def _figures(
    folder: Path,
    records: list[dict[str, Any]],
    table: dict[str, Any],
    histories: dict[str, dict[str, list[tuple[int, float]]]],
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Every figure as PNG and SVG in `folder`; returns the sweep's (name -> caption) and each
    trial's (run id -> names, in `runs/<run id>/`)."""
    with warnings.catch_warnings():  # one seed: already among the report's warnings
        warnings.simplefilter("ignore", SingleSeedWarning)
        return _make_figures(folder, records, table, histories)


def _make_figures(
    folder: Path,
    records: list[dict[str, Any]],
    table: dict[str, Any],
    histories: dict[str, dict[str, list[tuple[int, float]]]],
) -> tuple[dict[str, str], dict[str, list[str]]]:
    made: dict[str, str] = {}
    for name, make in SWEEP_FIGURES.items():
        fig = make(records)
        if fig is not None:  # a sweep without what it draws (battle has no exact model)
            figures.save(fig, folder, name)
            made[name] = (make.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    figures.save(figures.comparison(table), folder, "comparison")
    made["comparison"] = "The comparison table: mean return per method per setting, 95% interval."
    curves = {
        _label(r): histories[r["run_id"]] for r in records if histories[r["run_id"]]["train/loss"]
    }
    if curves:
        figures.save(figures.training_curves(curves), folder, "training_curves")
        made["training_curves"] = "Weighted and unweighted training loss per epoch, every trial."
    runs: dict[str, list[str]] = {}
    for r in records:
        run_dir = folder / "runs" / r["run_id"]
        own: dict[str, Any] = {}
        if histories[r["run_id"]]["train/loss"]:
            own["training"] = figures.training_curves({_label(r): histories[r["run_id"]]})
        own["decomposition"] = figures.run_decomposition(r)
        for name, fig in own.items():
            if fig is not None:
                figures.save(fig, run_dir, name)
                runs.setdefault(r["run_id"], []).append(name)
    return made, runs


def _label(r: dict[str, Any]) -> str:
    return f"{r['method']} {r['quality']} N={r['n_agents']} seed {r['seed']}"


def _log(
    uri: str, parent: str, records: list[dict[str, Any]], folder: Path, made: dict[str, str]
) -> None:
    """The sweep's figures on its parent run, each trial's own on its run (`figures/`)."""
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = Path(tmp)
        for name in made:
            for ext in ("png", "svg"):
                shutil.copy(folder / f"{name}.{ext}", sweep_dir)
        tracking.log_artifact(uri, parent, sweep_dir, "figures")
    for r in records:
        run_dir = folder / "runs" / r["run_id"]
        if run_dir.is_dir():
            tracking.log_artifact(uri, r["run_id"], run_dir, "figures")


def _replace(out: Path, tmp: Path) -> None:
    """Move the finished report into `out`; a previous report there is replaced as a whole."""
    old = None
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / "report")
    tmp.rename(out)  # rename(2) also replaces an empty directory
    if old is not None:
        shutil.rmtree(old)


def _cell(cell: dict[str, Any] | None, key: str = "mean") -> str:
    return format_interval(cell, key, missing="–")


def _html(
    parent: Any,
    found: dict[str, Any],
    table: dict[str, Any],
    laws: list[dict[str, Any]],
    notes: list[str],
    made: dict[str, str],
    runs: dict[str, list[str]],
) -> str:
    e = html.escape
    params = dict(parent.data.params)
    tags = parent.data.tags
    settings = [
        ("sweep", found["sweep"]),
        ("sweep id", found["sweep_id"]),
        ("parent run", found["parent_run_id"]),
        ("benchmark", tags.get("mfd.benchmark")),
        ("grid", params.get("grid")),
        ("finished trials", len(found["records"])),
        ("missing trials", len(found["missing"])),
        ("skipped cells", len(found["skipped"])),
    ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>mfd report: {e(str(found['sweep']))}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:80em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
        "padding:.25em .6em;text-align:left}img{max-width:100%;border:1px solid #ddd}"
        "figcaption{color:#444;margin-bottom:2em}</style></head><body>",
        f"<h1>Sweep {e(str(found['sweep']))}</h1><h2>Settings</h2><table id='settings'>",
        *(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in settings),
        "</table><h2>Comparison</h2>",
    ]
    for s in table["settings"]:
        parts.append(
            f"<h3>{e(s['label'])}</h3><table class='comparison'><tr><th>method</th>"
            "<th>seeds</th><th>return [95% CI]</th><th>IQM return</th>"
            "<th>exploitability [95% CI]</th><th>P(mf_diffuser &gt; method)</th></tr>"
        )
        for m in s["methods"]:
            iqm = "–" if m["iqm_return"] is None else f"{m['iqm_return']:.4f}"
            parts.append(
                f"<tr class='method'><td>{e(m['method'])}</td><td>{len(m['seeds'])}</td>"
                f"<td>{_cell(m['return'])}</td><td>{iqm}</td>"
                f"<td>{_cell(m['exploitability'])}</td>"
                f"<td>{_cell(m['p_improvement'], 'value')}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        "<h2>Scaling laws</h2><table id='laws'><tr><th>benchmark</th><th>method</th>"
        "<th>quality</th><th>term</th><th>fit</th><th>slope [95% CI]</th>"
        "<th>reference</th></tr>"
    )
    for law in laws:
        slope = figures.fmt_slope(figures.Slope(law["slope"], law["low"], law["high"]))
        ref = "–" if law["reference"] is None else f"{law['reference']:+g}"
        parts.append(
            "<tr>"
            + "".join(
                f"<td>{e(str(v))}</td>"
                for v in (
                    law["benchmark"],
                    law["method"],
                    law["quality"],
                    law["term"],
                    law["fit"],
                    slope,
                    ref,
                )
            )
            + "</tr>"
        )
    parts.append("</table>")
    if notes:
        parts.append("<h3>Warnings</h3><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Figures</h2>")
    for name, caption in made.items():
        parts.append(
            f"<figure><img src='figures/{name}.png' alt='{e(name)}'><figcaption>{e(caption)} "
            f"(<a href='figures/{name}.svg'>SVG</a>)</figcaption></figure>"
        )
    if runs:
        parts.append(
            "<h2>Trials</h2><p>Each trial's training curve and its four signed suboptimality "
            "terms at its N (where it has them).</p>"
        )
    for r in sorted(found["records"], key=_label):
        if r["run_id"] not in runs:
            continue
        parts.append(
            f"<details class='trial'><summary>{e(_label(r))} (run {e(r['run_id'])})</summary>"
        )
        for name in runs[r["run_id"]]:
            src = f"figures/runs/{r['run_id']}/{name}"
            parts.append(
                f"<figure><img src='{src}.png' alt='{e(name)}'><figcaption>{e(name)} "
                f"(<a href='{src}.svg'>SVG</a>)</figcaption></figure>"
            )
        parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)

"""A study's ``report.html``: the search at a glance, drawn as inline SVG (no plotting
library, nothing fetched).

* the optimisation history: each trial's value (pruned trials at their last reported
  epoch), and the best so far;
* the parameter importances (Optuna's fANOVA) where enough trials completed;
* the fold spread of the best trials: every fold's value and their mean;
* the fresh-seed confirmation: the best and the base settings on new folds, the corrected
  t-test and the selection bias;
* the table of the trials, best first.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from digitcnn._io import atomic_write_text
from digitcnn.config import RunConfig
from digitcnn.reporting.page import CSS
from digitcnn.reporting.svg import PALETTE, Figure

__all__ = ["write_study_report", "history_chart", "importance_chart", "spread_chart"]

TOP_TRIALS = 10


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, "%") if metric == "accuracy" else (1.0, "")


def history_chart(rows: list[dict], metric: str, direction: str) -> str:
    """Each finished trial's value against its number, and the best so far."""
    scale, unit = _scale(metric)
    points = []
    for row in rows:
        value = row["value"]
        if value is None and row["intermediate"]:
            value = row["intermediate"][max(row["intermediate"])]
        if value is not None and math.isfinite(value):
            points.append((row["trial"], scale * value, row["state"]))
    figure = Figure(760, 330, "Optimisation history", name="history")
    if not points:
        return figure.to_svg()
    values = [p[1] for p in points]
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or 0.5
    last = max(p[0] for p in points)
    panel = figure.panel(
        60,
        36,
        670,
        240,
        (-0.5, last + 0.5),
        (low - pad, high + pad),
        xlabel="trial",
        ylabel=f"fold-mean validation {metric}{f' ({unit})' if unit else ''}",
    )
    for state, colour, shape in (("complete", PALETTE[0], "circle"), ("pruned", "#999999", "down")):
        chosen = [p for p in points if p[2] == state]
        if chosen:
            panel.markers(
                [p[0] for p in chosen],
                [p[1] for p in chosen],
                colour,
                shape,
                label=state,
                tooltips=[f"trial {p[0]} ({state}): {p[1]:.4g}{unit}" for p in chosen],
            )
    complete = sorted((p[0], p[1]) for p in points if p[2] == "complete")
    if complete:
        best = np.maximum.accumulate if direction == "maximize" else np.minimum.accumulate
        panel.line(
            [p[0] for p in complete],
            best(np.array([p[1] for p in complete])),
            PALETTE[3],
            label="best so far",
            step=True,
        )
    figure.legend(panel, "lower right" if direction == "maximize" else "upper right")
    return figure.to_svg()


def importance_chart(importances: dict[str, float]) -> str:
    """The settings' importances (fANOVA), as bars, largest first."""
    names = list(importances)
    figure = Figure(760, 60 + 28 * max(len(names), 1), "Parameter importances", name="importance")
    if not names:
        return figure.to_svg()
    panel = figure.panel(
        170,
        36,
        560,
        28 * len(names),
        (0.0, 1.0),
        (-0.5, len(names) - 0.5),
        xlabel="share of the variance of the value",
        y_ticks=list(range(len(names))),
        y_labels=names,
        y_down=True,
        grid=False,
    )
    for index, name in enumerate(names):
        share = importances[name]
        panel.elements.append(
            f'<rect class="mark" x="{panel.x([0])[0]:.1f}" y="{panel.y([index - 0.35])[0]:.1f}" '
            f'width="{panel.x([share])[0] - panel.x([0])[0]:.1f}" '
            f'height="{panel.y([index + 0.35])[0] - panel.y([index - 0.35])[0]:.1f}" '
            f'fill="{PALETTE[0]}"><title>{_e(name)}: {share:.3f}</title></rect>'
        )
    return figure.to_svg()


def spread_chart(rows: list[dict], metric: str, direction: str) -> str:
    """Every fold's value of the best complete trials (best first), with their mean."""
    scale, unit = _scale(metric)
    complete = [r for r in rows if r["state"] == "complete" and r["fold_values"]]
    complete.sort(key=lambda r: r["value"], reverse=direction == "maximize")
    top = complete[:TOP_TRIALS]
    figure = Figure(760, 330, f"Fold spread of the best {len(top)} trials", name="spread")
    if not top:
        return figure.to_svg()
    folds = [np.array(r["fold_values"], dtype=float) * scale for r in top]
    low = min(float(f.min()) for f in folds)
    high = max(float(f.max()) for f in folds)
    pad = (high - low) * 0.08 or 0.5
    panel = figure.panel(
        60,
        36,
        670,
        240,
        (-0.5, len(top) - 0.5),
        (low - pad, high + pad),
        xlabel="trial (best first)",
        ylabel=f"validation {metric}{f' ({unit})' if unit else ''}",
        x_ticks=list(range(len(top))),
        x_labels=[str(r["trial"]) for r in top],
    )
    for index, (row, values) in enumerate(zip(top, folds)):
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
        panel.markers(
            index + jitter,
            values,
            PALETTE[0],
            "circle",
            size=3.5,
            label="a fold" if index == 0 else None,
            tooltips=[
                f"trial {row['trial']}, fold {k}: {v:.4g}{unit}" for k, v in enumerate(values)
            ],
        )
        panel.markers(
            [index],
            [float(values.mean())],
            PALETTE[3],
            "cross",
            size=6,
            label="fold mean" if index == 0 else None,
            tooltips=[f"trial {row['trial']}: mean {values.mean():.4g}{unit}"],
        )
    figure.legend(panel, "lower left" if direction == "maximize" else "upper left")
    return figure.to_svg()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4f}"


def _confirmation_section(confirmation: dict | None, metric: str) -> str:
    if confirmation is None:
        return "<p>No confirmation was run (<code>--confirm-seeds 0</code>).</p>"
    test = confirmation["comparison"]
    seeds = confirmation["seeds"]
    rows = [
        [seed, _number(b, metric), _number(a, metric), _number(b - a, metric)]
        for seed, b, a in zip(
            seeds, confirmation["fold_mean"]["best"], confirmation["fold_mean"]["base"]
        )
    ]
    table = _table(["seed", "best settings", "base settings", "difference"], rows)
    folds_note = (
        ""
        if confirmation["fresh_folds"]
        else '<p class="note">These seeds did not give new folds (the base settings do not '
        "shuffle, or use a fixed split): only the initialisation changed.</p>"
    )
    return (
        f"{table}{folds_note}<p>Best settings on fresh seeds: "
        f"{_number(confirmation['best_fresh_mean'], metric)} against "
        f"{_number(confirmation['best_tuning_value'], metric)} on the study's folds: a "
        f"selection bias of {_number(confirmation['selection_bias'], metric)}. Against the "
        f"base settings: mean accuracy difference {100 * test['mean_difference']:+.2f} points, "
        f"t = {test['t']:.3f}, df = {test['df']}, p = {test['p']:.4g} ({_e(test['test'])}).</p>"
    )


def write_study_report(
    result: Any, settings: Any, base: RunConfig, importances: dict[str, float]
) -> None:
    """``report.html`` of a :class:`~digitcnn.tuning.runner.TuneResult`."""
    rows = result.trials
    metric, direction = settings.metric, settings.direction
    states = {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned")}
    epochs = sum(r["epochs_trained"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    ranked = sorted(
        (r for r in rows if r["state"] == "complete"),
        key=lambda r: r["value"],
        reverse=direction == "maximize",
    )
    names = list(result.best_settings)
    trials_table = _table(
        ["trial", "value", *names, "epochs", "seconds"],
        [
            [r["trial"], _number(r["value"], metric)]
            + [r["settings"].get(n) for n in names]
            + [r["epochs_trained"], f"{r['seconds']:.1f}"]
            for r in ranked[:20]
        ],
    )
    best = _table(["setting", "value"], [[k, v] for k, v in result.best_settings.items()])
    summary = _table(
        [
            "study",
            "dataset",
            "metric",
            "pruner",
            "finished trials",
            "pruned",
            "epochs trained",
            "trial seconds",
        ],
        [
            [
                result.study_name,
                base.dataset,
                f"fold-mean validation {metric}",
                settings.pruner,
                states["complete"] + states["pruned"],
                states["pruned"],
                epochs,
                f"{seconds:.0f}",
            ]
        ],
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>digitcnn study {_e(result.study_name)}</title><style>{CSS}</style></head><body>
<h1>Study {_e(result.study_name)}</h1>
<p class="subtitle">Best trial {result.best_trial}: {_number(result.best_value, metric)}
fold-mean validation {metric}; reproduce it with
<code>python -m digitcnn.kfold --config {_e(result.out / "best.toml")}</code></p>
{summary}
<h2>Best settings</h2>{best}
<h2>Fresh-seed confirmation</h2>{_confirmation_section(result.confirmation, metric)}
<h2>Search</h2>
<figure>{history_chart(rows, metric, direction)}<figcaption>Each trial's fold-mean value
(a pruned trial's at the last epoch it reported) and the best so far.</figcaption></figure>
<figure>{importance_chart(importances)}<figcaption>How much of the value's variance each
setting explains (Optuna's fANOVA over the complete trials).</figcaption></figure>
<figure>{spread_chart(rows, metric, direction)}<figcaption>Every fold's value of the best
trials: a recipe whose folds agree is a safer pick than one with the same mean and a wide
spread.</figcaption></figure>
<h2>Trials, best first</h2>{trials_table}
</body></html>
"""
    atomic_write_text(result.out / "report.html", page)

"""A sweep's outputs: one summary row per cell, the paired comparison of the best cell with
each other, and the files ``sweep.csv``, ``comparisons.csv``, ``sweep.md`` and ``sweep.svg``.

The comparison is :func:`digitcnn.metrics.corrected_resampled_ttest` on the per-fold
accuracies; ``sweep.md`` is written last, so that a folder holding it is a finished sweep.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from digitcnn._io import atomic_write_text
from digitcnn.errors import ConfigError
from digitcnn.metrics import corrected_resampled_ttest
from digitcnn.reporting.page import flag_text
from digitcnn.reporting.plots import plot_sweep
from digitcnn.settings import flag_name
from digitcnn.sweep.grid import Cell, value_label

__all__ = ["summarize_cell", "compare_cells", "sweep_table", "write_sweep_outputs"]


def summarize_cell(cell: Cell, metrics: dict) -> dict:
    """One row of the sweep table from a cell's ``metrics.json``."""
    folds = metrics["folds"]
    last_train = [f["train_accuracy"][-1] for f in folds if f.get("train_accuracy")]
    return {
        "cell": cell.name,
        "settings": cell.settings,
        "fold_accuracy": [_nan(f["accuracy"]) for f in folds],
        "accuracy_mean": _nan(metrics["accuracy_mean"]),
        "accuracy_std": _nan(metrics["accuracy_std"]),
        "accuracy": _nan(metrics["accuracy"]),
        "train_accuracy": float(np.mean(last_train)) if last_train else float("nan"),
        "wall_s": float(metrics["wall_s"]),
        "n_train": float(np.mean([f["n_train"] for f in folds])),
        "n_test": float(np.mean([f["n_val"] for f in folds])),
    }


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def compare_cells(summaries: Sequence[dict]) -> tuple[int, list[dict]]:
    """(index of the best cell, its paired comparison with every other cell).

    The best cell has the highest mean per-fold accuracy (the first of equals). Each
    comparison holds the per-fold differences best - other and the
    :func:`~digitcnn.metrics.corrected_resampled_ttest` of them.
    """
    means = np.array([s["accuracy_mean"] for s in summaries])
    if np.isnan(means).all():
        raise ConfigError(
            "no cell has validation rows to compare; sweeps need --cv kfold, "
            "stratified, writers or holdout, not full"
        )
    best = int(np.nanargmax(means))
    comparisons = []
    for index, other in enumerate(summaries):
        if index == best:
            continue
        d = np.asarray(summaries[best]["fold_accuracy"]) - np.asarray(other["fold_accuracy"])
        test = corrected_resampled_ttest(d, summaries[best]["n_train"], summaries[best]["n_test"])
        comparisons.append(
            {
                "best": summaries[best]["cell"],
                "other": other["cell"],
                "differences": d.tolist(),
                "mean": test.mean,
                "std": test.std,
                "t": test.t,
                "df": test.df,
                "p": test.p,
                "n_train": summaries[best]["n_train"],
                "n_test": summaries[best]["n_test"],
            }
        )
    return best, comparisons


def _axes_of(cells: Sequence[Cell]) -> list[str]:
    names: list[str] = []
    for cell in cells:
        names += [n for n in cell.settings if n not in names]
    return names


def _fmt(value: float, digits: int = 2, scale: float = 100.0) -> str:
    return "nan" if value is None or math.isnan(value) else f"{scale * value:.{digits}f}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.3g}" if value >= 1e-4 else f"{value:.1e}"


def sweep_table(
    cells: Sequence[Cell], summaries: Sequence[dict], best: int, comparisons: Sequence[dict]
) -> str:
    """The Markdown table of ``sweep.md`` (one row per cell, S2's train % / test % shape)."""
    by_other = {c["other"]: c for c in comparisons}
    axes = _axes_of(cells)
    folds = len(summaries[0]["fold_accuracy"])
    header = (
        ["cell"]
        + [flag_name(a) for a in axes]
        + [
            f"val acc % (mean ± std, {folds} folds)",
            "val acc % (pooled)",
            "train acc % (last epoch)",
            "wall s",
            "best − cell (pp)",
            "t",
            "p",
        ]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, (cell, s) in enumerate(zip(cells, summaries)):
        values = [value_label(cell.settings.get(a, getattr(cell.config, a, ""))) for a in axes]
        if index == best:
            comparison = ["**best**", "", ""]
        else:
            c = by_other[cell.name]
            comparison = [_fmt(c["mean"]), f"{c['t']:.2f}", _p(c["p"])]
        name = f"**{cell.name}**" if index == best else cell.name
        lines.append(
            "| "
            + " | ".join(
                [name]
                + values
                + [
                    f"{_fmt(s['accuracy_mean'])} ± {_fmt(s['accuracy_std'])}",
                    _fmt(s["accuracy"]),
                    _fmt(s["train_accuracy"]),
                    f"{s['wall_s']:.1f}",
                ]
                + comparison
            )
            + " |"
        )
    return "\n".join(lines)


def _csv(rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def write_sweep_outputs(
    out: Path, cells: Sequence[Cell], summaries: Sequence[dict], plots: bool = True
) -> None:
    """``sweep.csv``, ``comparisons.csv``, ``sweep.md`` and (with ``plots``) ``sweep.svg``."""
    best, comparisons = compare_cells(summaries)
    by_other = {c["other"]: c for c in comparisons}
    axes = _axes_of(cells)
    folds = len(summaries[0]["fold_accuracy"])
    rows = [
        [
            "cell",
            *axes,
            "folds",
            "accuracy_mean",
            "accuracy_std",
            "accuracy_pooled",
            "train_accuracy",
            "wall_s",
            *[f"accuracy_fold{k}" for k in range(folds)],
            "difference_best_minus_cell",
            "t",
            "df",
            "p",
        ]
    ]
    for cell, s in zip(cells, summaries):
        c = by_other.get(cell.name)
        test = (
            [_number(c["mean"]), _number(c["t"]), str(c["df"]), _number(c["p"])]
            if c
            else ["0.0", "", "", ""]
        )
        rows.append(
            [
                cell.name,
                *[value_label(cell.settings.get(a)) for a in axes],
                str(folds),
                *(
                    _number(s[k])
                    for k in (
                        "accuracy_mean",
                        "accuracy_std",
                        "accuracy",
                        "train_accuracy",
                        "wall_s",
                    )
                ),
                *(_number(v) for v in s["fold_accuracy"]),
                *test,
            ]
        )
    atomic_write_text(out / "sweep.csv", _csv(rows))
    comparison_rows = [
        [
            "best",
            "other",
            *[f"difference_fold{k}" for k in range(folds)],
            "mean_difference",
            "std_difference",
            "t",
            "df",
            "p",
            "n_train",
            "n_test",
        ]
    ]
    for c in comparisons:
        comparison_rows.append(
            [
                c["best"],
                c["other"],
                *(_number(v) for v in c["differences"]),
                _number(c["mean"]),
                _number(c["std"]),
                _number(c["t"]),
                c["df"],
                _number(c["p"]),
                _number(c["n_train"]),
                _number(c["n_test"]),
            ]
        )
    atomic_write_text(out / "comparisons.csv", _csv(comparison_rows))
    if plots:
        plot_sweep(
            [c.name for c in cells],
            [s["fold_accuracy"] for s in summaries],
            [s["accuracy"] for s in summaries],
            best,
            out / "sweep.svg",
            _title(cells, folds),
        )
    # written last: a sweep folder with sweep.md is a finished sweep (see digitcnn.runstore.folder)
    atomic_write_text(out / "sweep.md", _markdown(cells, summaries, best, comparisons))


def _title(cells: Sequence[Cell], folds: int) -> str:
    config = cells[0].config
    return (
        f"sweep: {config.dataset} / {config.model} / {folds} fold{'s' if folds != 1 else ''} "
        f"({config.cv}) / {len(cells)} cells"
    )


def _markdown(cells, summaries, best, comparisons) -> str:
    config = cells[0].config
    base = {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if f.name not in _axes_of(cells)
        and f.name not in ("out", "quiet")
        and getattr(config, f.name) != f.default
    }
    return "\n".join(
        [
            f"# {_title(cells, len(summaries[0]['fold_accuracy']))}",
            "",
            "Settings shared by every cell (other than the defaults): "
            + (", ".join(f"`{flag_text(k, v)}`" for k, v in base.items()) or "none")
            + ".",
            "",
            sweep_table(cells, summaries, best, comparisons),
            "",
            f"Every cell ran on the same folds. *val acc* is the validation accuracy of each fold "
            f"(mean ± std, ddof=1) and of all validation rows together (pooled); *train acc* is "
            f"the training accuracy of the last epoch (dropout and augmentation on), averaged over "
            f"the folds. *best − cell* is the best cell's mean per-fold accuracy minus the cell's, "
            f"in percentage points; t and p are the corrected resampled t-test of Nadeau and "
            f"Bengio (2003) on the per-fold differences (t = mean(d) / sqrt((1/k + "
            f"n_test/n_train) var(d)), k - 1 degrees of freedom, two-sided), each comparison on "
            f"its own, not corrected for the {len(comparisons)} comparisons. Per-fold differences: "
            f"`comparisons.csv`; each cell's run: `cells/<cell>/report.html`.",
            "",
        ]
    )

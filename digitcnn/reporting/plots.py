"""Figures for a run directory, drawn with matplotlib's Agg backend and written atomically.

Drawing is kept cheap because a person waits for it (``python -m benchmarks --cases
startup`` measures it): matplotlib alone (the heatmaps need no seaborn, whose import pulls in
pandas and scipy), one axes for the grid of misclassified digits instead of one per digit,
and each figure laid out once with fixed margins instead of ``bbox_inches="tight"``, which
draws every figure twice.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digitcnn._io import atomic_write_bytes
from digitcnn.metrics import normalize_confusion

__all__ = [
    "plot_confusion",
    "plot_loss_curves",
    "plot_training_curves",
    "plot_roc",
    "plot_precision_recall",
    "plot_per_class_f1",
    "plot_misclassified",
    "misclassified_order",
    "plot_sweep",
    "run_title",
    "save_figure",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def run_title(result) -> str:
    """ "<dataset> / <model> / <k> folds / accuracy <pooled>%", the title of every run figure
    (a run without validation rows says so instead of showing an accuracy)."""
    folds = len(result.folds)
    head = (
        f"{result.dataset['name']} / {result.config.model} / {folds} "
        f"fold{'s' if folds != 1 else ''}"
    )
    if not result.n:
        return f"{head} / no validation rows (trained on all {result.folds[-1].n_train:,})"
    return f"{head} / accuracy {100 * result.accuracy:.2f}%"


DPI = 100


def save_figure(figure, path: Path) -> Path:
    """Render ``figure`` to PNG bytes, close it, and write them atomically to ``path``."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=DPI)
    finally:
        _pyplot().close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def _heatmap(axis, values: np.ndarray, text: Sequence[str], vmax: float, colorbar: bool) -> None:
    """A (C, C) heatmap with each cell's value written on it, rows true, columns predicted."""
    image = axis.imshow(
        values, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest", aspect="auto"
    )
    classes = np.arange(values.shape[0])
    dark = values > 0.6 * vmax  # white text where the cell is dark
    for (row, column), label in zip(np.ndindex(values.shape), text):
        axis.text(
            column,
            row,
            label,
            ha="center",
            va="center",
            fontsize=8,
            color="white" if dark[row, column] else "black",
        )
    axis.set(xticks=classes, yticks=classes, xlabel="predicted", ylabel="true")
    if colorbar:
        axis.figure.colorbar(image, ax=axis)


def plot_confusion(confusion, path: str | Path, title: str = "") -> Path:
    """Two heatmaps side by side: (C, C) counts, and rates normalised per true class."""
    plt = _pyplot()
    counts = np.asarray(confusion, dtype=np.int64)
    rates = normalize_confusion(counts)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    _heatmap(left, counts, [f"{v:d}" for v in counts.flat], max(int(counts.max()), 1), False)
    left.set(title=f"counts (n = {counts.sum():,})")
    _heatmap(right, rates, [f"{v:.2f}" for v in rates.flat], 1.0, True)
    right.set(title="normalised by true class")
    figure.suptitle(title)
    return save_figure(figure, Path(path))


def plot_loss_curves(
    train_losses: Sequence[Sequence[float]],
    val_losses: Sequence[Sequence[float]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Train (solid) and validation (dashed) loss per epoch, one colour per fold."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 5), layout="constrained")
    colours = plt.get_cmap("tab10")
    for fold, (train, val) in enumerate(zip(train_losses, val_losses)):
        epochs = np.arange(1, len(train) + 1)
        axis.plot(epochs, train, color=colours(fold % 10), label=f"fold {fold} train")
        axis.plot(
            epochs[: len(val)],
            val,
            color=colours(fold % 10),
            linestyle="--",
            label=f"fold {fold} val",
        )
    axis.set(xlabel="epoch", ylabel="NLL loss", title=title)
    axis.grid(alpha=0.3)
    axis.legend(ncol=2, fontsize=8)
    return save_figure(figure, Path(path))


def _ragged(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """(folds, epochs) with NaN after a fold's last epoch (early stopping ends folds apart)."""
    longest = max((len(c) for c in curves), default=0)
    table = np.full((len(curves), longest), np.nan)
    for row, curve in enumerate(curves):
        table[row, : len(curve)] = curve
    return table


def _mean_band(axis, curves, colour: str, label: str) -> None:
    """Every fold as a thin line, the mean over folds bold, and a +-1 std band around it."""
    table = _ragged(curves)
    if table.size == 0 or np.isnan(table).all():
        return
    epochs = np.arange(1, table.shape[1] + 1)
    for curve in table:
        axis.plot(epochs, curve, color=colour, linewidth=0.8, alpha=0.35)
    counts = (~np.isnan(table)).sum(axis=0)
    mean = np.nanmean(table, axis=0)
    # std over the folds that reached the epoch (ddof=1); one fold alone has no band
    spread = np.array(
        [np.nanstd(column, ddof=1) if n > 1 else 0.0 for column, n in zip(table.T, counts)]
    )
    axis.plot(epochs, mean, color=colour, linewidth=2.2, label=f"{label} (mean of {len(table)})")
    axis.fill_between(
        epochs,
        mean - spread,
        mean + spread,
        color=colour,
        alpha=0.18,
        linewidth=0,
        label=f"{label} +-1 std",
    )


def plot_training_curves(
    train_loss: Sequence[Sequence[float]],
    val_loss: Sequence[Sequence[float]],
    train_accuracy: Sequence[Sequence[float]],
    val_accuracy: Sequence[Sequence[float]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Loss (left) and accuracy (right) per epoch: each fold thin, the fold mean bold with a
    +-1 std band; train blue, validation orange. Lists hold one per-epoch list per fold;
    validation lists may be empty (a run without validation rows)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    for axis, train, val, name in (
        (loss_axis, train_loss, val_loss, "NLL loss"),
        (accuracy_axis, train_accuracy, val_accuracy, "accuracy"),
    ):
        _mean_band(axis, train, "tab:blue", "train")
        _mean_band(axis, val, "tab:orange", "validation")
        axis.set(xlabel="epoch", ylabel=name, title=name)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend(fontsize=8)
    accuracy_axis.yaxis.set_major_formatter(lambda value, _: f"{100 * value:.1f}%")
    figure.suptitle(title)
    return save_figure(figure, Path(path))


def _zoom_limits(curves: Sequence[tuple[np.ndarray, np.ndarray]], x_to: float) -> float:
    """The lowest y any curve has at x = x_to, less a margin: where a zoomed panel starts."""
    lows = [float(np.interp(x_to, x, y)) for x, y in curves if len(x)]
    low = min(lows, default=0.0)
    return max(0.0, low - 0.02)


def _full_and_corner(
    draw,
    full_title: str,
    corner_title: str,
    corner_x: tuple[float, float],
    corner_from: float,
    legend_at: str,
    title: str,
    path: str | Path,
) -> Path:
    """The same curves in two panels: the full range left, a corner enlarged right.

    ``draw(axis, colours)`` plots the curves onto ``axis`` and returns the (x, y) arrays of the
    per-class ones (x rising); the enlarged panel spans ``corner_x`` and starts its y axis just
    below the lowest curve at x = ``corner_from``.
    """
    plt = _pyplot()
    colours = plt.get_cmap("tab10")
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.6), layout="constrained")
    for axis in axes:
        drawn = draw(axis, colours)
        axis.grid(alpha=0.3)
    axes[0].set(title=full_title, xlim=(0, 1), ylim=(0, 1.01))
    axes[1].set(title=corner_title, xlim=corner_x, ylim=(_zoom_limits(drawn, corner_from), 1.002))
    axes[1].legend(fontsize=8, loc=legend_at)
    figure.suptitle(title)
    return save_figure(figure, Path(path))


def plot_roc(curves: dict, auc: dict, path: str | Path, title: str = "") -> Path:
    """One-vs-rest ROC curves: per class (thin, AUC in the legend), micro (black dashed) and
    macro (black dotted), full range left and the top-left corner enlarged right.

    Args:
        curves: ``evaluate_run(..., curves=True)["pooled"]["curves"]["roc"]``.
        auc: ``{"per_class": [C], "micro": float, "macro": float}`` AUCs for the legend.
    """

    def draw(axis, colours) -> list[tuple[np.ndarray, np.ndarray]]:
        drawn = []
        for label, curve in enumerate(curves["per_class"]):
            x, y = np.asarray(curve["fpr"]), np.asarray(curve["tpr"])
            axis.plot(
                x,
                y,
                color=colours(label % 10),
                linewidth=1,
                label=f"{label}: AUC {auc['per_class'][label]:.4f}",
            )
            drawn.append((x, y))
        if "micro" in curves:
            axis.plot(
                curves["micro"]["fpr"],
                curves["micro"]["tpr"],
                "k--",
                linewidth=2,
                label=f"micro: AUC {auc['micro']:.4f}",
            )
            axis.plot(
                curves["macro"]["fpr"],
                curves["macro"]["tpr"],
                "k:",
                linewidth=2,
                label=f"macro: AUC {auc['macro']:.4f} (mean of classes)",
            )
        axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="-.")
        axis.set(xlabel="false positive rate", ylabel="true positive rate")
        return drawn

    return _full_and_corner(
        draw, "ROC, one class vs rest", "top-left corner", (0, 0.1), 0.1, "lower right", title, path
    )


def plot_precision_recall(
    curves: dict, average_precision: dict, path: str | Path, title: str = ""
) -> Path:
    """Precision-recall curves per class (thin, AP in the legend) and micro (black dashed);
    full range left, the top-right corner enlarged right.

    Args:
        curves: ``evaluate_run(..., curves=True)["pooled"]["curves"]["pr"]``.
        average_precision: ``{"per_class": [C], "micro": float, "macro": float}``.
    """

    def draw(axis, colours) -> list[tuple[np.ndarray, np.ndarray]]:
        drawn = []
        for label, curve in enumerate(curves["per_class"]):
            recall, precision = np.asarray(curve["recall"]), np.asarray(curve["precision"])
            axis.step(
                recall,
                precision,
                where="post",
                color=colours(label % 10),
                linewidth=1,
                label=f"{label}: AP {average_precision['per_class'][label]:.4f}",
            )
            drawn.append((recall[::-1], precision[::-1]))
        micro = curves["micro"]
        axis.step(
            micro["recall"],
            micro["precision"],
            "k--",
            where="post",
            linewidth=2,
            label=f"micro: AP {average_precision['micro']:.4f} "
            f"(macro {average_precision['macro']:.4f})",
        )
        axis.set(xlabel="recall", ylabel="precision")
        return drawn

    return _full_and_corner(
        draw,
        "precision-recall, one class vs rest",
        "top-right corner",
        (0.9, 1.0),
        0.9,
        "lower left",
        title,
        path,
    )


def plot_per_class_f1(per_class: dict, macro_f1: float, path: str | Path, title: str = "") -> Path:
    """F1 per class as bars (value written on each), precision and recall as markers, and
    the macro F1 as a line. The y axis starts just below the lowest value so that differences
    of a fraction of a percent stay visible; its lower limit is printed on the axis.

    Args:
        per_class: ``{"f1": [C], "precision": [C], "recall": [C], "support": [C]}``.
    """
    plt = _pyplot()
    f1 = np.asarray(per_class["f1"], dtype=float)
    classes = np.arange(len(f1))
    figure, axis = plt.subplots(figsize=(10, 4.8), layout="constrained")
    axis.bar(classes, f1, color="tab:blue", alpha=0.8, label="F1")
    axis.plot(classes, per_class["precision"], "v", color="tab:red", label="precision")
    axis.plot(classes, per_class["recall"], "^", color="tab:green", label="recall")
    axis.axhline(
        macro_f1, color="black", linestyle="--", linewidth=1, label=f"macro F1 {macro_f1:.4f}"
    )
    values = np.concatenate([f1, per_class["precision"], per_class["recall"]])
    low = max(0.0, np.floor((np.nanmin(values) - 0.01) * 50) / 50) if len(values) else 0.0
    for x, value in zip(classes, f1):
        # inside the bar's top, where the precision/recall markers do not cover it
        axis.annotate(
            f"{value:.3f}",
            (x, value),
            ha="center",
            va="top",
            fontsize=8,
            color="white",
            fontweight="bold",
            xytext=(0, -4),
            textcoords="offset points",
        )
    axis.set(
        xticks=classes,
        xticklabels=[f"{c}\n(n={n})" for c, n in zip(classes, per_class["support"])],
        ylim=(low, 1.005),
        xlabel="class (validation rows)",
        ylabel="score",
        title=f"{title}\nper-class F1 (y axis from {low:.2f})",
    )
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4)
    return save_figure(figure, Path(path))


def misclassified_order(true, predicted, probability, limit: int = 40) -> np.ndarray:
    """Positions of the misclassified rows to show, the most confident mistakes first (at
    most ``limit``)."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    probability = np.asarray(probability, dtype=float)
    wrong = np.flatnonzero(true != predicted)
    return wrong[np.argsort(-probability[wrong], kind="stable")][:limit]


def plot_misclassified(
    images,
    rows,
    true,
    predicted,
    probability,
    path: str | Path,
    title: str = "",
    limit: int = 40,
    columns: int = 8,
) -> Path:
    """A grid of misclassified digits, the most confident mistakes first.

    The digits are tiled into one image drawn on one axes (a grid of 40 axes took most of the
    time of all the run's figures), each labelled underneath.

    Args:
        images: (N, 1, H, W) uint8 images of the whole dataset (ink bright), tensor or array;
            only the rows shown are read.
        rows, true, predicted, probability: (M,) dataset row, true class, predicted class and
            the predicted class's probability of every validation row (misclassified or not).
        limit: at most this many digits are shown.
    """
    plt = _pyplot()
    rows, true, predicted = (np.asarray(a) for a in (rows, true, predicted))
    probability = np.asarray(probability, dtype=float)
    shown = misclassified_order(true, predicted, probability, limit)
    count = max(len(shown), 1)
    columns = min(columns, count)
    lines = -(-count // columns)
    height, width = np.asarray(images[int(rows[shown[0]])]).shape[-2:] if len(shown) else (8, 8)
    # blank pixels between digits; under each digit, room for its two-line label
    gap, label = max(1, width // 4), height // 2 + 1
    mosaic = np.zeros((lines * (height + label), columns * (width + gap)), dtype=np.float32)
    # square pixels: the figure's height follows the mosaic's, plus room for the title
    width_in = 1.6 * columns
    grid_in = width_in * mosaic.shape[0] / mosaic.shape[1]
    figure = plt.figure(figsize=(width_in, grid_in + 0.8))
    axis = figure.add_axes((0, 0, 1, grid_in / (grid_in + 0.8)))
    axis.axis("off")
    for slot, index in enumerate(shown):
        line, column = divmod(slot, columns)
        top, left = line * (height + label), column * (width + gap)
        mosaic[top : top + height, left : left + width] = np.asarray(images[int(rows[index])])[0]
        axis.text(
            left + width / 2 - 0.5,
            top + height,
            f"true {true[index]} \u2192 {predicted[index]}\np={probability[index]:.2f}, "
            f"row {rows[index]}",
            ha="center",
            va="top",
            fontsize=7.5,
        )
    # dark ink on white, as digits are written
    axis.imshow(mosaic, cmap="gray_r", interpolation="nearest", aspect="auto")
    axis.set(xlim=(-0.5, mosaic.shape[1] - 0.5), ylim=(mosaic.shape[0] - 0.5, -0.5))
    total = int((true != predicted).sum())
    if not len(shown):
        axis.text(
            0.5, 0.5, "no misclassified rows", ha="center", va="center", transform=axis.transAxes
        )
    figure.suptitle(
        f"{title}\n{len(shown)} of {total} misclassified validation rows, most confident first",
        fontsize=9,
    )
    return save_figure(figure, Path(path))


def plot_sweep(
    names: Sequence[str],
    fold_accuracies: Sequence[Sequence[float]],
    pooled: Sequence[float],
    best: int,
    path: str | Path,
    title: str = "",
) -> Path:
    """Validation accuracy of every cell of a sweep, one row per cell: each fold's accuracy as
    a dot, the mean over folds with a +-1 std error bar, the pooled accuracy as a cross; the
    best cell (highest mean) in red.

    Args:
        names: cell names; fold_accuracies: per cell, the accuracy of each fold (0..1);
        pooled: per cell, total correct over total rows; best: index of the best cell.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 1.0 + 0.45 * len(names)), layout="constrained")
    jitter = np.random.default_rng(0)  # fixed: the figure is the same on every rerun
    for row, (accuracies, total) in enumerate(zip(fold_accuracies, pooled)):
        values = 100 * np.asarray(accuracies, dtype=float)
        colour = "tab:red" if row == best else "tab:blue"
        axis.scatter(
            values,
            row + jitter.uniform(-0.12, 0.12, len(values)),
            s=14,
            color=colour,
            alpha=0.55,
            label="fold" if row == 0 else None,
        )
        spread = values.std(ddof=1) if len(values) > 1 else 0.0
        axis.errorbar(
            values.mean(),
            row,
            xerr=spread,
            fmt="o",
            color=colour,
            markersize=7,
            capsize=4,
            linewidth=1.6,
            label="mean +-1 std" if row == 0 else None,
        )
        axis.plot(
            100 * total,
            row,
            "x",
            color="black",
            markersize=7,
            zorder=4,
            label="pooled" if row == 0 else None,
        )
    axis.set(
        yticks=np.arange(len(names)),
        xlabel="validation accuracy (%)",
        ylim=(len(names) - 0.5, -0.5),
        title=f"{title}\nbest (red): {names[best]}",
    )
    axis.set_yticklabels(names, fontsize=8)
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    return save_figure(figure, Path(path))

"""The figures of a run folder and of a sweep, drawn as SVG (:mod:`digitcnn.reporting.svg`)
and written atomically.

No plotting library is imported: a run's seven figures cost tens of milliseconds instead of
the seconds matplotlib's import and rasterising took (``python -m benchmarks --cases
report``), so a script that waits for its report, or a sweep of many cells, does not pay
for it. ``report.html`` inlines the same SVG text; every cell, curve, bar and marker has a
tooltip.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digitcnn._io import atomic_write_text
from digitcnn.metrics import normalize_confusion
from digitcnn.reporting.svg import PALETTE, Figure, Panel

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
    "save_chart",
]

TRAIN, VALIDATION = PALETTE[0], PALETTE[1]


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


def save_chart(figure: Figure, path: Path) -> Path:
    """Write ``figure``'s SVG text atomically to ``path``."""
    return atomic_write_text(path, figure.to_svg())


def _padded(low: float, high: float, margin: float = 0.05) -> tuple[float, float]:
    """[low, high] widened by ``margin`` of its span (a flat range by 1% of its value)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return (0.0, 1.0)
    span = high - low or abs(high) * 0.01 or 1.0
    return (low - margin * span, high + margin * span)


def _range_of(curves: Sequence[Sequence[float]]) -> tuple[float, float]:
    values = np.array([v for curve in curves for v in curve], dtype=float)
    values = values[np.isfinite(values)]
    return _padded(float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)


def _epoch_range(*groups: Sequence[Sequence[float]]) -> tuple[float, float]:
    longest = max((len(c) for group in groups for c in group), default=1)
    return (0.5, max(longest, 1) + 0.5)


def _epoch_ticks(epochs: tuple[float, float]) -> list[float]:
    last = int(epochs[1] - 0.5)
    step = max(1, -(-last // 10))
    return [float(e) for e in range(1, last + 1, step)]


def plot_confusion(confusion, path: str | Path, title: str = "") -> Path:
    """Two heatmaps side by side: (C, C) counts, titled with their total ("n = ..."), and
    rates normalised per true class. Rows are true classes, columns predicted ones."""
    counts = np.asarray(confusion, dtype=np.int64)
    rates = normalize_confusion(counts)
    classes = counts.shape[0]
    side = 36 * classes
    figure = Figure(2 * side + 170, side + 110, title, "confusion")
    ticks = list(range(classes))
    span = (-0.5, classes - 0.5)
    row_totals = counts.sum(axis=1)
    for offset, values, texts, vmax, heading in (
        (
            60,
            counts,
            [f"{v:d}" for v in counts.flat],
            max(int(counts.max()), 1),
            f"counts (n = {int(counts.sum()):,})",
        ),
        (side + 130, rates, [f"{v:.2f}" for v in rates.flat], 1.0, "normalised by true class"),
    ):
        panel = figure.panel(
            offset,
            50,
            side,
            side,
            span,
            span,
            heading,
            "predicted",
            "true",
            x_ticks=ticks,
            y_ticks=ticks,
            grid=False,
            y_down=True,
        )
        tips = [
            f"true {row}, predicted {column}: {counts[row, column]:,} of {row_totals[row]:,} "
            f"rows of class {row} ({100 * rates[row, column]:.1f}%)"
            for row, column in np.ndindex(counts.shape)
        ]
        panel.heatmap(values, texts, vmax, tips)
    return save_chart(figure, Path(path))


def plot_loss_curves(
    train_losses: Sequence[Sequence[float]],
    val_losses: Sequence[Sequence[float]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Train (solid) and validation (dashed) loss per epoch, one colour per fold."""
    epochs = _epoch_range(train_losses, val_losses)
    figure = Figure(760, 440, title, "loss_curves")
    panel = figure.panel(
        70,
        45,
        660,
        340,
        epochs,
        _range_of([*train_losses, *val_losses]),
        "",
        "epoch",
        "NLL loss",
        x_ticks=_epoch_ticks(epochs),
    )
    for fold, (train, val) in enumerate(zip(train_losses, val_losses)):
        colour = PALETTE[fold % len(PALETTE)]
        panel.line(np.arange(1, len(train) + 1), train, colour, label=f"fold {fold} train")
        panel.line(np.arange(1, len(val) + 1), val, colour, dash="6 4", label=f"fold {fold} val")
    figure.legend(panel, "upper right", columns=2)
    return save_chart(figure, Path(path))


def _ragged(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """(folds, epochs) with NaN after a fold's last epoch (early stopping ends folds apart)."""
    longest = max((len(c) for c in curves), default=0)
    table = np.full((len(curves), longest), np.nan)
    for row, curve in enumerate(curves):
        table[row, : len(curve)] = curve
    return table


def _mean_band(panel: Panel, curves, colour: str, label: str) -> None:
    """Every fold as a thin line, the mean over folds bold, and a +-1 std band around it
    (the std over the folds that reached the epoch, ddof=1; one fold alone has no band)."""
    table = _ragged(curves)
    if table.size == 0 or np.isnan(table).all():
        return
    epochs = np.arange(1, table.shape[1] + 1)
    counts = (~np.isnan(table)).sum(axis=0)
    mean = np.nanmean(table, axis=0)
    spread = np.array(
        [np.nanstd(column, ddof=1) if n > 1 else 0.0 for column, n in zip(table.T, counts)]
    )
    panel.band(epochs, mean - spread, mean + spread, colour, label=f"{label} +-1 std")
    for fold, curve in enumerate(table):
        panel.line(epochs, curve, colour, 0.9, opacity=0.4, tooltip=f"fold {fold} {label}")
    panel.line(epochs, mean, colour, 2.4, label=f"{label} (mean of {len(table)})")


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
    epochs = _epoch_range(train_loss, val_loss, train_accuracy, val_accuracy)
    figure = Figure(1160, 440, title, "training_curves")
    for left, train, val, name, percent in (
        (75, train_loss, val_loss, "NLL loss", False),
        (660, train_accuracy, val_accuracy, "accuracy", True),
    ):
        panel = figure.panel(
            left,
            55,
            470,
            330,
            epochs,
            _range_of([*train, *val]),
            name,
            "epoch",
            name,
            x_ticks=_epoch_ticks(epochs),
            y_format=(lambda value: f"{100 * value:.1f}%") if percent else None,
        )
        _mean_band(panel, train, TRAIN, "train")
        _mean_band(panel, val, VALIDATION, "validation")
        figure.legend(panel, "lower right" if percent else "upper right")
    return save_chart(figure, Path(path))


def _zoom_low(curves: Sequence[tuple[np.ndarray, np.ndarray]], x_to: float) -> float:
    """The lowest y any curve has at x = x_to, less a margin: where a zoomed panel starts."""
    lows = [float(np.interp(x_to, x, y)) for x, y in curves if len(x) and np.isfinite(y).all()]
    return max(0.0, min(lows, default=0.0) - 0.02)


def _full_and_corner(
    draw,
    name: str,
    full_title: str,
    corner_title: str,
    corner_x: tuple[float, float],
    corner_from: float,
    labels: tuple[str, str],
    legend_at: str,
    title: str,
    path: str | Path,
) -> Path:
    """The same curves in two panels: the full range left, a corner enlarged right.

    ``draw(panel)`` draws the curves onto ``panel`` and returns the (x, y) arrays of the
    per-class ones (x rising); the enlarged panel spans ``corner_x`` and starts its y axis just
    below the lowest curve at x = ``corner_from``.
    """
    figure = Figure(1160, 520, title, name)
    full = figure.panel(75, 55, 470, 400, (0.0, 1.0), (0.0, 1.01), full_title, *labels)
    drawn = draw(full)
    full.legend_entries.clear()  # one legend, in the enlarged panel
    low = _zoom_low(drawn, corner_from)
    corner = figure.panel(660, 55, 470, 400, corner_x, (low, 1.002), corner_title, *labels)
    draw(corner)
    figure.legend(corner, legend_at)
    return save_chart(figure, Path(path))


def plot_roc(curves: dict, auc: dict, path: str | Path, title: str = "") -> Path:
    """One-vs-rest ROC curves: per class (thin, AUC in the legend), micro (black dashed) and
    macro (black dotted), full range left and the top-left corner enlarged right.

    Args:
        curves: ``evaluate_run(..., curves=True)["pooled"]["curves"]["roc"]``.
        auc: ``{"per_class": [C], "micro": float, "macro": float}`` AUCs for the legend.
    """

    def draw(panel: Panel) -> list[tuple[np.ndarray, np.ndarray]]:
        drawn = []
        panel.line([0, 1], [0, 1], "#999999", 0.8, dash="4 3")
        for label, curve in enumerate(curves["per_class"]):
            x, y = np.asarray(curve["fpr"], float), np.asarray(curve["tpr"], float)
            text = f"{label}: AUC {auc['per_class'][label]:.4f}"
            panel.line(x, y, PALETTE[label % len(PALETTE)], 1.2, label=text)
            drawn.append((x, y))
        if "micro" in curves:
            micro, macro = curves["micro"], curves["macro"]
            text = f"micro: AUC {auc['micro']:.4f}"
            panel.line(micro["fpr"], micro["tpr"], "#000000", 2, dash="7 4", label=text)
            text = f"macro: AUC {auc['macro']:.4f} (mean of classes)"
            panel.line(macro["fpr"], macro["tpr"], "#000000", 2, dash="2 3", label=text)
        return drawn

    return _full_and_corner(
        draw,
        "roc",
        "ROC, one class vs rest",
        "top-left corner",
        (0.0, 0.1),
        0.1,
        ("false positive rate", "true positive rate"),
        "lower right",
        title,
        path,
    )


def plot_precision_recall(
    curves: dict, average_precision: dict, path: str | Path, title: str = ""
) -> Path:
    """Precision-recall curves per class (thin steps, AP in the legend) and micro (black
    dashed); full range left, the top-right corner enlarged right.

    Args:
        curves: ``evaluate_run(..., curves=True)["pooled"]["curves"]["pr"]``.
        average_precision: ``{"per_class": [C], "micro": float, "macro": float}``.
    """

    def draw(panel: Panel) -> list[tuple[np.ndarray, np.ndarray]]:
        drawn = []
        for label, curve in enumerate(curves["per_class"]):
            recall = np.asarray(curve["recall"], float)
            precision = np.asarray(curve["precision"], float)
            text = f"{label}: AP {average_precision['per_class'][label]:.4f}"
            panel.line(recall, precision, PALETTE[label % len(PALETTE)], 1.2, label=text, step=True)
            drawn.append((recall[::-1], precision[::-1]))
        micro = curves["micro"]
        text = (
            f"micro: AP {average_precision['micro']:.4f} (macro {average_precision['macro']:.4f})"
        )
        panel.line(micro["recall"], micro["precision"], "#000000", 2, "7 4", label=text, step=True)
        return drawn

    return _full_and_corner(
        draw,
        "precision_recall",
        "precision-recall, one class vs rest",
        "top-right corner",
        (0.9, 1.0),
        0.9,
        ("recall", "precision"),
        "lower left",
        title,
        path,
    )


def plot_per_class_f1(per_class: dict, macro_f1: float, path: str | Path, title: str = "") -> Path:
    """F1 per class as bars (value written on each), precision and recall as markers, and
    the macro F1 as a line. The y axis starts just below the lowest value so that differences
    of a fraction of a percent stay visible; its lower limit is printed in the title.

    Args:
        per_class: ``{"f1": [C], "precision": [C], "recall": [C], "support": [C]}``.
    """
    f1 = np.asarray(per_class["f1"], dtype=float)
    precision = np.asarray(per_class["precision"], dtype=float)
    recall = np.asarray(per_class["recall"], dtype=float)
    classes = np.arange(len(f1))
    values = np.concatenate([f1, precision, recall])
    values = values[np.isfinite(values)]
    low = max(0.0, np.floor((values.min() - 0.01) * 50) / 50) if len(values) else 0.0
    figure = Figure(900, 470, title, "per_class_f1")
    panel = figure.panel(
        70,
        60,
        800,
        320,
        (-0.6, len(f1) - 0.4),
        (low, 1.005),
        f"per-class F1 (y axis from {low:.2f})",
        "class (validation rows)",
        "score",
        x_ticks=list(classes),
        x_labels=[f"{c}\n(n={n})" for c, n in zip(classes, per_class["support"])],
    )
    tips = [
        f"class {c}: F1 {f1[c]:.4f}, precision {precision[c]:.4f}, recall {recall[c]:.4f}, "
        f"{per_class['support'][c]} rows"
        for c in classes
    ]
    panel.bars(classes, f1, TRAIN, label="F1", tooltips=tips, texts=[f"{v:.3f}" for v in f1])
    panel.markers(classes, precision, PALETTE[3], "down", label="precision", tooltips=tips)
    panel.markers(classes, recall, PALETTE[2], "up", label="recall", tooltips=tips)
    panel.hline(macro_f1, "#000000", "6 4", label=f"macro F1 {macro_f1:.4f}")
    figure.legend(panel, "lower right", columns=4)
    return save_chart(figure, Path(path))


def misclassified_order(true, predicted, probability, limit: int = 40) -> np.ndarray:
    """Positions of the misclassified rows to show, the most confident mistakes first (at
    most ``limit``)."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    probability = np.asarray(probability, dtype=float)
    wrong = np.flatnonzero(true != predicted)
    return wrong[np.argsort(-probability[wrong], kind="stable")][:limit]


def _digit_png(image: np.ndarray, ink: float) -> str:
    """One (H, W) digit as a base64 greyscale PNG, dark ink on white as digits are written
    (``ink``: the value drawn black)."""
    from PIL import Image

    grey = 255 - np.clip(np.asarray(image, dtype=np.float64) / ink * 255, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(grey.round().astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


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
    """A grid of misclassified digits, the most confident mistakes first, each labelled
    underneath (true -> predicted, the predicted class's probability, the dataset row).

    Args:
        images: (N, 1, H, W) uint8 images of the whole dataset (ink bright), tensor or array;
            only the rows shown are read.
        rows, true, predicted, probability: (M,) dataset row, true class, predicted class and
            the predicted class's probability of every validation row (misclassified or not).
        limit: at most this many digits are shown.
    """
    rows, true, predicted = (np.asarray(a) for a in (rows, true, predicted))
    probability = np.asarray(probability, dtype=float)
    shown = misclassified_order(true, predicted, probability, limit)
    digits = [np.asarray(images[int(rows[index])])[0] for index in shown]
    # one scale for every digit shown, as the PNG mosaic had: the brightest ink is black
    ink = max((float(d.max()) for d in digits), default=1.0) or 1.0
    columns = max(1, min(columns, len(shown)))
    cell_w, cell_h, size = 120, 112, 72
    lines = max(1, -(-len(shown) // columns))
    total = int((true != predicted).sum())
    heading = (
        f"{title}\n{len(shown)} of {total} misclassified validation rows, most confident first"
    )
    figure = Figure(max(cell_w * columns, 480), cell_h * lines + 60, "", "misclassified")
    figure.text(figure.width / 2, 18, heading, 12)
    panel = figure.panel(
        0,
        50,
        figure.width,
        cell_h * lines,
        (0, figure.width),
        (0, cell_h * lines),
        x_ticks=[],
        y_ticks=[],
        grid=False,
        y_down=True,
        frame=False,
    )
    for slot, (index, digit) in enumerate(zip(shown, digits)):
        line, column = divmod(slot, columns)
        x, y = column * cell_w + (cell_w - size) / 2, line * cell_h + 4
        label = (
            f"true {true[index]} \u2192 {predicted[index]}, p={probability[index]:.2f}, "
            f"row {rows[index]}"
        )
        panel.image(x, y, size, size, _digit_png(digit, ink), label)
        panel.text(x + size / 2, y + size + 14, f"true {true[index]} \u2192 {predicted[index]}", 10)
        panel.text(x + size / 2, y + size + 27, f"p={probability[index]:.2f}, row {rows[index]}", 9)
    if not len(shown):
        panel.text(figure.width / 2, cell_h / 2, "no misclassified rows", 12)
    return save_chart(figure, Path(path))


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
    jitter = np.random.default_rng(0)  # fixed: the figure is the same on every rerun
    every = [100 * float(v) for row in fold_accuracies for v in row]
    every += [100 * float(v) for v in pooled]
    label_px = 7 * max((len(n) for n in names), default=4) + 20
    height = 36 * len(names)
    figure = Figure(label_px + 560, height + 120, "", "sweep")
    figure.text(figure.width / 2, 18, f"{title}\nbest (red): {names[best]}", 12)
    panel = figure.panel(
        label_px,
        60,
        520,
        height,
        _range_of([every]),
        (-0.5, len(names) - 0.5),
        "",
        "validation accuracy (%)",
        y_ticks=list(range(len(names))),
        y_labels=list(names),
        y_down=True,
    )
    for row, (accuracies, total) in enumerate(zip(fold_accuracies, pooled)):
        values = 100 * np.asarray(accuracies, dtype=float)
        colour = PALETTE[3] if row == best else PALETTE[0]
        mean = float(values.mean())
        spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        folds = [f"{names[row]}, fold {k}: {v:.2f}%" for k, v in enumerate(values)]
        panel.markers(
            values,
            row + jitter.uniform(-0.12, 0.12, len(values)),
            colour,
            size=3.5,
            opacity=0.55,
            tooltips=folds,
            label="fold" if row == 0 else None,
        )
        summary = f"{names[row]}: mean {mean:.2f}% +-{spread:.2f} (std over folds)"
        panel.line([mean - spread, mean + spread], [row, row], colour, 1.6, tooltip=summary)
        panel.markers(
            [mean],
            [row],
            colour,
            size=5.5,
            tooltips=[summary],
            label="mean +-1 std" if row == 0 else None,
        )
        panel.markers(
            [100 * float(total)],
            [row],
            "#000000",
            "cross",
            size=5,
            tooltips=[f"{names[row]}: pooled {100 * float(total):.2f}%"],
            label="pooled" if row == 0 else None,
        )
    figure.legend(panel, "lower left")
    return save_chart(figure, Path(path))

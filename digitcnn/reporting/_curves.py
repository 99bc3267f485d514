"""ROC and precision-recall curves of one group of predictions, as JSON-ready lists for the
figures (see :mod:`digitcnn.reporting.evaluation` for the conventions). sklearn.metrics is
imported inside the functions that use it."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from digitcnn.reporting._scores import as_numpy, class_indicator, defined_classes, float_list

__all__ = ["roc_curves", "precision_recall_curves"]


def _roc(binary: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every point of one ROC curve: sklearn's ``roc_curve(drop_intermediate=False)`` as
    (fps, tps, thresholds), counts rather than rates.

    The first point, (0, 0), gets threshold 1.0 where sklearn writes ``inf`` (JSON has no
    inf; it is torchmetrics' convention, and no probability lies above 1).
    """
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import roc_curve

    with warnings.catch_warnings():
        # a class without positives (or negatives) has NaN rates; its counts are what we keep
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thresholds = roc_curve(binary, scores, pos_label=1, drop_intermediate=False)
    positives = int(binary.sum())
    negatives = len(binary) - positives
    fps = np.round(fpr * negatives) if negatives else np.zeros_like(fpr)
    tps = np.round(tpr * positives) if positives else np.zeros_like(tpr)
    thresholds = thresholds.astype(np.float64)
    thresholds[0] = 1.0
    return fps, tps, thresholds


def _rates(fps: np.ndarray, tps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) from counts; a class without negatives (positives) has fpr (tpr) 0."""
    return (fps / fps[-1] if fps[-1] else fps.copy(), tps / tps[-1] if tps[-1] else tps.copy())


def _roc_points(fps: np.ndarray, tps: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """(fpr, tpr, *others) at the points of a ROC curve where it bends, as sklearn's
    ``roc_curve`` keeps them (``drop_intermediate=True``): the curve and its area are
    unchanged, but a 10,000-row curve keeps tens of points instead of thousands. The counts
    decide collinearity exactly. The curve starts at (0, 0) and, like sklearn, keeps the first
    threshold's point.
    """
    keep = np.ones(len(fps), dtype=bool)
    if len(fps) > 3:
        keep[2:-1] = (np.diff(fps[1:], 2) != 0) | (np.diff(tps[1:], 2) != 0)
    return tuple(values[keep] for values in (*_rates(fps, tps), *others))


def _drop_collinear(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of an interpolated curve (no counts behind it) where it bends, within rounding."""
    if len(x) <= 2:
        return x, y
    keep = np.ones(len(x), dtype=bool)
    keep[1:-1] = (np.abs(np.diff(x, 2)) > 1e-9) | (np.abs(np.diff(y, 2)) > 1e-9)
    return x[keep], y[keep]


def roc_curves(probs, targets) -> dict:
    """Per-class, micro and macro ROC curves as lists (``fpr``, ``tpr``; per class also
    ``thresholds``), collinear points dropped.

    Each curve is sklearn's ``roc_curve`` and starts at (0, 0) with threshold 1.0 (sklearn
    writes ``inf``). A class without positives (negatives) has a tpr (fpr) of 0 throughout,
    where sklearn writes NaN. The macro curve averages the per-class TPRs on the union of their
    FPRs (linear interpolation), as in sklearn's ROC example; a class without positives or
    negatives is left out.
    """
    probs, targets = as_numpy(probs, targets)
    num_classes = probs.shape[1]
    one_hot = class_indicator(targets, num_classes)
    defined = defined_classes(targets, num_classes)
    per_class, full = [], []
    for label in range(num_classes):
        fps, tps, thresholds = _roc(one_hot[:, label], probs[:, label])
        full.append(_rates(fps, tps))
        fpr, tpr, thresholds = _roc_points(fps, tps, thresholds)
        per_class.append(
            {"fpr": float_list(fpr), "tpr": float_list(tpr), "thresholds": float_list(thresholds)}
        )
    curves: dict[str, Any] = {"per_class": per_class}
    if len(targets) and defined.any():
        grid = np.unique(np.concatenate([full[c][0] for c in range(num_classes) if defined[c]]))
        mean_tpr = np.mean(
            [np.interp(grid, *full[c]) for c in range(num_classes) if defined[c]], axis=0
        )
        grid, mean_tpr = _drop_collinear(grid, mean_tpr)
        curves["macro"] = {"fpr": float_list(grid), "tpr": float_list(mean_tpr)}
        # micro = every (row, class) pair as one binary decision
        fps, tps, _ = _roc(one_hot.reshape(-1), probs.reshape(-1))
        micro_f, micro_t = _roc_points(fps, tps)
        curves["micro"] = {"fpr": float_list(micro_f), "tpr": float_list(micro_t)}
    return curves


def _recall_steps(precision: np.ndarray, recall: np.ndarray):
    """The points where recall changes (plus the end point): the step plot's corners, and
    exactly the terms of the average precision."""
    if len(recall) <= 2:
        return precision, recall
    keep = np.ones(len(recall), dtype=bool)
    keep[1:-1] = recall[1:-1] != recall[2:]
    return precision[keep], recall[keep]


def _pr_curve(binary: np.ndarray, scores: np.ndarray) -> dict:
    """sklearn's ``precision_recall_curve``, step corners only.

    A class without positive rows has no recall: NaN (but the final 0), so that it draws no
    curve, as its average precision is NaN. sklearn sets it to 1 with a warning, which would
    draw a line along recall 1.
    """
    from sklearn.metrics import precision_recall_curve

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "No positive class found": see above
        precision, recall, _ = precision_recall_curve(binary, scores, pos_label=1)
    if not binary.any():
        recall[:-1] = np.nan
    precision, recall = _recall_steps(precision, recall)
    return {"precision": float_list(precision), "recall": float_list(recall)}


def precision_recall_curves(probs, targets) -> dict:
    """Per-class and micro precision-recall curves (``precision``, ``recall``; recall falls
    from 1 to 0 as the threshold rises, as sklearn's ``precision_recall_curve`` returns it)."""
    probs, targets = as_numpy(probs, targets)
    num_classes = probs.shape[1]
    one_hot = class_indicator(targets, num_classes)
    # micro = every (row, class) pair as one binary decision
    return {
        "per_class": [_pr_curve(one_hot[:, c], probs[:, c]) for c in range(num_classes)],
        "micro": _pr_curve(one_hot.reshape(-1), probs.reshape(-1)),
    }

"""Evaluation of a run from its out-of-fold predictions, computed with scikit-learn.

Every validation row of a K-fold run has one out-of-fold prediction (``oof.npz``: ``row``,
``fold``, ``true``, ``predicted``, ``log_probs`` (N, C)). From them this module computes, per
fold and pooled over all rows:

* per-class precision, recall, F1 and support, with macro and support-weighted averages;
* one-vs-rest ROC curves with per-class AUC, the macro AUC (mean of per-class AUCs) and the
  micro AUC (all C one-vs-rest decisions of all rows as one binary problem);
* precision-recall curves with per-class average precision, macro and micro;
* the confusion matrix: counts (the pooled one summed over folds), then normalised per true
  class.

The numbers are scikit-learn's (``precision_recall_fscore_support``, ``roc_auc_score``,
``average_precision_score``, ``roc_curve``, ``precision_recall_curve``), in float64; where
sklearn raises or warns for an edge case (a class without positive or negative rows) the
choice made here is written next to the code. The conventions are those of torchmetrics,
which computed this report before: ``tests/test_evaluation.py`` checks every number against
sklearn and, where it is installed, against torchmetrics. sklearn.metrics is imported inside
the functions: a run has already imported it (``digitcnn.kfold`` makes its splits with
``sklearn.model_selection``), while ``import digitcnn.reporting.evaluation`` stays cheap. Everything
returned is plain Python (lists, floats, ints), ready for JSON; undefined values are NaN
(``write_json`` stores them as null).

Example::

    from digitcnn.reporting.evaluation import evaluate_run
    report = evaluate_run(np.load("results/run/oof.npz"))   # or a KFoldResult
    report["pooled"]["macro"]["f1"], report["pooled"]["micro"]["roc_auc"]
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from digitcnn.errors import DataError
from digitcnn.metrics import confusion_counts, mean_std, normalize_confusion

__all__ = ["probabilities", "classification_scores", "roc_scores", "precision_recall_scores",
           "confusion_scores", "evaluate_predictions", "oof_arrays", "evaluate_run",
           "roc_curves", "precision_recall_curves", "without_curves"]

# Per-fold spread reported for these (group, metric) pairs: mean and std (ddof=1) over folds.
FOLD_SUMMARY = {"accuracy": (None, "accuracy"), "macro_precision": ("macro", "precision"),
                "macro_recall": ("macro", "recall"), "macro_f1": ("macro", "f1"),
                "weighted_f1": ("weighted", "f1"), "macro_roc_auc": ("macro", "roc_auc"),
                "micro_roc_auc": ("micro", "roc_auc"),
                "macro_average_precision": ("macro", "average_precision"),
                "micro_average_precision": ("micro", "average_precision")}


def _floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else float("nan")


def _numpy(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float64 probabilities and (N,) int64 targets as numpy arrays (tensors on the CPU
    or array-likes)."""
    return (np.asarray(probs, dtype=np.float64),
            np.asarray(targets, dtype=np.int64).reshape(-1))


def probabilities(log_probs) -> torch.Tensor:
    """(N, C) float64 class probabilities from (N, C) log-probabilities.

    Clamped to [0, 1]: ``exp`` of a log-softmax can exceed 1 by a rounding error, and a score
    above 1 is no probability (torchmetrics, for one, would softmax such scores again, which
    changes the per-class ranking that ROC and PR curves are made of).
    """
    values = torch.as_tensor(np.asarray(log_probs), dtype=torch.float64)
    return values.exp().clamp_(0.0, 1.0)


def _one_hot(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) 0/1 indicator of the true class (sklearn's ``label_binarize``, which returns a
    single column for two classes)."""
    return (targets[:, None] == np.arange(num_classes)).astype(np.int64)


def classification_scores(predicted, targets, num_classes: int) -> dict:
    """Precision, recall, F1 (per class, macro, weighted), support and accuracy.

    Args:
        predicted, targets: (N,) int64 predicted and true classes.

    Per class: sklearn's ``precision_recall_fscore_support(labels=range(C),
    zero_division=0)``, so a 0/0 is 0. The macro average leaves out classes that are neither
    in ``targets`` nor in ``predicted``: sklearn's default ``labels=None`` (the classes present
    in either), and torchmetrics' ``average="macro"``. The weighted average weights by
    support, so absent classes drop out of it. With no rows at all every average is 0.
    """
    from sklearn.metrics import precision_recall_fscore_support

    predicted, targets = _numpy(predicted, targets)
    predicted = predicted.astype(np.int64)
    support = np.bincount(targets, minlength=num_classes)
    scores = {"per_class": {}, "macro": {}, "weighted": {}}
    if len(targets):
        per_class = precision_recall_fscore_support(
            targets, predicted, labels=np.arange(num_classes), average=None,
            zero_division=0)[:3]
    else:
        per_class = [np.zeros(num_classes)] * 3
    present = (support > 0) | (np.bincount(predicted, minlength=num_classes) > 0)
    for name, values in zip(("precision", "recall", "f1"), per_class):
        values = np.asarray(values, dtype=np.float64)
        scores["per_class"][name] = _floats(values)
        scores["macro"][name] = float(values[present].mean()) if present.any() else 0.0
        scores["weighted"][name] = (float(np.average(values, weights=support))
                                    if support.sum() else 0.0)
    scores["per_class"]["support"] = [int(v) for v in support]
    scores["accuracy"] = (float((predicted == targets).mean()) if len(targets)
                          else float("nan"))
    return scores


def _defined_for(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) bool: classes with at least one positive and one negative row.

    A one-vs-rest ROC curve needs both; sklearn raises for such a class (torchmetrics
    returned an AUC of 0 and averaged it in). Here its AUC is NaN and left out of the macro
    average.
    """
    counts = np.bincount(targets, minlength=num_classes)
    return (counts > 0) & (counts < len(targets))


def roc_scores(probs, targets) -> dict:
    """AUC per class, macro and micro.

    Args:
        probs: (N, C) probabilities (see :func:`probabilities`); targets: (N,) int64.

    The macro AUC is the unweighted mean of the per-class one-vs-rest AUCs: sklearn's
    ``roc_auc_score(multi_class="ovr", average="macro")``. It is *not* the area under the
    "macro-average ROC curve" of sklearn's ROC example (TPRs interpolated onto a common FPR
    grid and averaged), which is a slightly different number; :func:`roc_curves` draws that
    curve but labels it with this mean. The micro AUC treats every (row, class) pair as one
    binary decision: sklearn's ``roc_auc_score(label_binarize(y), probs, average="micro")``.
    """
    from sklearn.metrics import roc_auc_score

    probs, targets = _numpy(probs, targets)
    num_classes = probs.shape[1]
    one_hot = _one_hot(targets, num_classes)
    per_class = np.array([roc_auc_score(one_hot[:, c], probs[:, c]) if defined else np.nan
                          for c, defined in enumerate(_defined_for(targets, num_classes))],
                         dtype=np.float64)
    micro = (float(roc_auc_score(one_hot.reshape(-1), probs.reshape(-1)))
             if 0 < one_hot.sum() < one_hot.size else float("nan"))
    return {"per_class": _floats(per_class), "macro": _nanmean(per_class), "micro": micro}


def precision_recall_scores(probs, targets) -> dict:
    """Average precision per class, macro (mean over classes) and micro.

    AP = sum over thresholds of (R_n - R_(n-1)) * P_n, without interpolation (sklearn's
    ``average_precision_score``). A class with no positive row has no recall to speak of:
    NaN here (sklearn returns 0 with a warning), left out of the macro average.
    """
    from sklearn.metrics import average_precision_score

    probs, targets = _numpy(probs, targets)
    num_classes = probs.shape[1]
    one_hot = _one_hot(targets, num_classes)
    positives = one_hot.sum(axis=0)
    per_class = np.array([average_precision_score(one_hot[:, c], probs[:, c])
                          if positives[c] else np.nan for c in range(num_classes)],
                         dtype=np.float64)
    micro = (float(average_precision_score(one_hot.reshape(-1), probs.reshape(-1)))
             if one_hot.sum() > 0 else float("nan"))
    return {"per_class": _floats(per_class), "macro": _nanmean(per_class), "micro": micro}


def confusion_scores(counts) -> dict:
    """(C, C) counts (rows true) and the same normalised per true class (a row of 0s stays 0)."""
    counts = np.asarray(counts, dtype=np.int64)
    return {"confusion": counts.tolist(),
            "confusion_normalized": normalize_confusion(counts).tolist()}


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
    probs, targets = _numpy(probs, targets)
    num_classes = probs.shape[1]
    one_hot = _one_hot(targets, num_classes)
    defined = _defined_for(targets, num_classes)
    per_class, full = [], []
    for label in range(num_classes):
        fps, tps, thresholds = _roc(one_hot[:, label], probs[:, label])
        full.append(_rates(fps, tps))
        fpr, tpr, thresholds = _roc_points(fps, tps, thresholds)
        per_class.append({"fpr": _floats(fpr), "tpr": _floats(tpr),
                          "thresholds": _floats(thresholds)})
    curves = {"per_class": per_class}
    if len(targets) and defined.any():
        grid = np.unique(np.concatenate([full[c][0] for c in range(num_classes) if defined[c]]))
        mean_tpr = np.mean([np.interp(grid, *full[c]) for c in range(num_classes)
                            if defined[c]], axis=0)
        grid, mean_tpr = _drop_collinear(grid, mean_tpr)
        curves["macro"] = {"fpr": _floats(grid), "tpr": _floats(mean_tpr)}
        # micro = every (row, class) pair as one binary decision
        fps, tps, _ = _roc(one_hot.reshape(-1), probs.reshape(-1))
        micro_f, micro_t = _roc_points(fps, tps)
        curves["micro"] = {"fpr": _floats(micro_f), "tpr": _floats(micro_t)}
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
    return {"precision": _floats(precision), "recall": _floats(recall)}


def precision_recall_curves(probs, targets) -> dict:
    """Per-class and micro precision-recall curves (``precision``, ``recall``; recall falls
    from 1 to 0 as the threshold rises, as sklearn's ``precision_recall_curve`` returns it)."""
    probs, targets = _numpy(probs, targets)
    num_classes = probs.shape[1]
    one_hot = _one_hot(targets, num_classes)
    # micro = every (row, class) pair as one binary decision
    return {"per_class": [_pr_curve(one_hot[:, c], probs[:, c]) for c in range(num_classes)],
            "micro": _pr_curve(one_hot.reshape(-1), probs.reshape(-1))}


def evaluate_predictions(log_probs, targets, curves: bool = False) -> dict:
    """Every metric of one group of rows (a fold, or all rows pooled).

    Args:
        log_probs: (N, C) log-probabilities; the prediction is their argmax.
        targets: (N,) true classes.
        curves: also return the ROC and PR curves (under ``"curves"``).

    Returns:
        ``{"n", "accuracy", "per_class": {precision, recall, f1, support, roc_auc,
        average_precision: lists of C}, "macro": {precision, recall, f1, roc_auc,
        average_precision}, "weighted": {precision, recall, f1}, "micro": {roc_auc,
        average_precision}, "confusion", "confusion_normalized"}``.
    """
    probs = probabilities(log_probs).numpy()
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    num_classes = probs.shape[1]
    predicted = probs.argmax(axis=1)
    scores = classification_scores(predicted, targets, num_classes)
    roc = roc_scores(probs, targets)
    pr = precision_recall_scores(probs, targets)
    result = {"n": int(len(targets)), "accuracy": scores["accuracy"],
              "per_class": {**scores["per_class"], "roc_auc": roc["per_class"],
                            "average_precision": pr["per_class"]},
              "macro": {**scores["macro"], "roc_auc": roc["macro"],
                        "average_precision": pr["macro"]},
              "weighted": scores["weighted"],
              "micro": {"roc_auc": roc["micro"], "average_precision": pr["micro"]},
              **confusion_scores(confusion_counts(torch.from_numpy(predicted),
                                                  torch.from_numpy(targets), num_classes))}
    if curves:
        result["curves"] = {"roc": roc_curves(probs, targets),
                            "pr": precision_recall_curves(probs, targets)}
    return result


def oof_arrays(source: Any) -> dict[str, np.ndarray]:
    """``row``, ``fold``, ``true``, ``log_probs`` from a KFoldResult, an ``oof.npz`` mapping
    (``np.load`` or :func:`digitcnn.results.out_of_fold`) or the path of an ``oof.npz``."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: no such file; pass the oof.npz of a finished run")
        with np.load(path) as stored:
            return oof_arrays({key: stored[key] for key in stored.files})
    if hasattr(source, "out_of_fold"):
        source = source.out_of_fold()
    if not isinstance(source, Mapping) and not hasattr(source, "files"):
        raise DataError(f"cannot evaluate a {type(source).__name__}; pass a KFoldResult, the "
                        "dict of out_of_fold() or the oof.npz file")
    keys = set(source.files if hasattr(source, "files") else source.keys())
    missing = sorted({"log_probs", "true"} - keys)
    if missing:
        raise DataError(f"out-of-fold predictions without {', '.join(missing)}; evaluation needs "
                        "the true labels and the (N, C) log-probabilities (a KFoldResult with "
                        "labels, or the oof.npz of a run)")
    arrays = {key: np.asarray(source[key]) for key in keys}
    log_probs, true = arrays["log_probs"], arrays["true"]
    if log_probs.ndim != 2 or len(true) != len(log_probs):
        raise DataError(f"log_probs of shape {log_probs.shape} do not match {len(true)} true "
                        "labels; expected (N, C) and (N,)")
    if len(true) and (true.min() < 0 or true.max() >= log_probs.shape[1]):
        raise DataError(f"true labels range {true.min()}..{true.max()} but log_probs have "
                        f"{log_probs.shape[1]} classes")
    arrays.setdefault("fold", np.zeros(len(true), dtype=np.int64))
    arrays.setdefault("row", np.arange(len(true)))
    return arrays


def evaluate_run(source: Any, curves: bool = False) -> dict:
    """Per-fold and pooled metrics of a run's out-of-fold predictions (JSON-ready).

    Args:
        source: a :class:`~digitcnn.results.KFoldResult`, the dict of ``out_of_fold()``, an
            ``np.load("oof.npz")`` or its path.
        curves: add the pooled ROC and PR curves (``pooled["curves"]``) for plotting.

    Returns:
        ``{"n", "num_classes", "pooled": {...}, "folds": [{"fold", ...}], "fold_summary":
        {metric: {"mean", "std"}}}`` where ``pooled`` and each fold hold the keys of
        :func:`evaluate_predictions`. The pooled confusion matrix is the sum of the folds'
        counts, normalised afterwards.
    """
    arrays = oof_arrays(source)
    log_probs, true, folds = arrays["log_probs"], arrays["true"], arrays["fold"]
    per_fold = []
    for fold in np.unique(folds):
        rows = folds == fold
        per_fold.append({"fold": int(fold), **evaluate_predictions(log_probs[rows], true[rows])})
    pooled = evaluate_predictions(log_probs, true, curves=curves)
    if per_fold:
        summed = np.sum([np.asarray(f["confusion"]) for f in per_fold], axis=0)
        pooled.update(confusion_scores(summed))
    return {"n": int(len(true)), "num_classes": int(log_probs.shape[1]), "pooled": pooled,
            "folds": per_fold, "fold_summary": _fold_summary(per_fold)}


def _fold_summary(per_fold: list[dict]) -> dict:
    summary = {}
    for name, (group, metric) in FOLD_SUMMARY.items():
        values = [fold[metric] if group is None else fold[group][metric] for fold in per_fold]
        values = [v for v in values if not math.isnan(v)]
        mean, std = mean_std(values) if values else (float("nan"), float("nan"))
        summary[name] = {"mean": mean, "std": std}
    return summary


def without_curves(evaluation: dict) -> dict:
    """The evaluation without its curves: what ``evaluation.json`` stores (the curves are
    redrawn exactly from ``oof.npz`` with ``evaluate_run(..., curves=True)``)."""
    pooled = {k: v for k, v in evaluation["pooled"].items() if k != "curves"}
    return {**evaluation, "pooled": pooled}

"""Evaluation of a run from its out-of-fold predictions, computed with torchmetrics.

Every validation row of a K-fold run has one out-of-fold prediction (``oof.npz``: ``row``,
``fold``, ``true``, ``predicted``, ``log_probs`` (N, C)). From them this module computes, per
fold and pooled over all rows:

* per-class precision, recall, F1 and support, with macro and support-weighted averages;
* one-vs-rest ROC curves with per-class AUC, the macro AUC (mean of per-class AUCs) and the
  micro AUC (all C one-vs-rest decisions of all rows as one binary problem);
* precision-recall curves with per-class average precision, macro and micro;
* the confusion matrix: counts (the pooled one summed over folds), then normalised per true
  class.

The numbers agree with scikit-learn (``precision_recall_fscore_support``, ``roc_auc_score``
with ``multi_class="ovr"``, ``average_precision_score``, ``roc_curve``,
``confusion_matrix(normalize="true")``); ``tests/test_evaluation.py`` checks each of them.
Where sklearn and torchmetrics define an edge case differently the choice is written next
to the code. Everything returned is plain Python (lists, floats, ints), ready for JSON;
undefined values are NaN (``write_json`` stores them as null).

Example::

    from digitcnn.evaluation import evaluate_run
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
from torchmetrics.functional.classification import (
    binary_precision_recall_curve, binary_roc, multiclass_auroc, multiclass_average_precision,
    multiclass_f1_score, multiclass_precision, multiclass_precision_recall_curve,
    multiclass_recall, multiclass_roc, multilabel_auroc, multilabel_average_precision)

from .errors import DataError
from .metrics import confusion_counts, mean_std, normalize_confusion

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


def _floats(values: torch.Tensor) -> list[float]:
    return [float(v) for v in values.detach().cpu().to(torch.float64).reshape(-1)]


def _nanmean(values: torch.Tensor) -> float:
    defined = values[~torch.isnan(values)]
    return float(defined.mean()) if len(defined) else float("nan")


def probabilities(log_probs) -> torch.Tensor:
    """(N, C) float64 class probabilities from (N, C) log-probabilities.

    Clamped to [0, 1]: ``exp`` of a log-softmax can exceed 1 by a rounding error, and
    torchmetrics silently applies softmax to any score outside [0, 1], which would change the
    per-class ranking that ROC and PR curves are made of.
    """
    values = torch.as_tensor(np.asarray(log_probs), dtype=torch.float64)
    return values.exp().clamp_(0.0, 1.0)


def _one_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(targets, num_classes)


def classification_scores(predicted, targets, num_classes: int) -> dict:
    """Precision, recall, F1 (per class, macro, weighted), support and accuracy.

    Args:
        predicted, targets: (N,) int64 predicted and true classes.

    Per class, a 0/0 is 0 (torchmetrics' and sklearn's ``zero_division=0``). The macro
    average is torchmetrics': it leaves out classes that are neither in ``targets`` nor in
    ``predicted``, which is what sklearn does with its default ``labels=None`` (the classes
    present in either). The weighted average weights by support, so absent classes drop out
    of it in both libraries.
    """
    predicted, targets = torch.as_tensor(predicted), torch.as_tensor(targets)
    options = {"num_classes": num_classes, "validate_args": False}
    scores = {"per_class": {}, "macro": {}, "weighted": {}}
    for name, metric in (("precision", multiclass_precision), ("recall", multiclass_recall),
                         ("f1", multiclass_f1_score)):
        scores["per_class"][name] = _floats(metric(predicted, targets, average="none", **options))
        for average in ("macro", "weighted"):
            scores[average][name] = float(metric(predicted, targets, average=average, **options))
    support = torch.bincount(targets, minlength=num_classes)
    scores["per_class"]["support"] = [int(v) for v in support]
    scores["accuracy"] = (float((predicted == targets).double().mean()) if len(targets)
                          else float("nan"))
    return scores


def _defined_for(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,) bool: classes with at least one positive and one negative row.

    A one-vs-rest ROC curve needs both; sklearn raises for such a class and torchmetrics
    returns an AUC of 0 (and averages it in). Here its AUC is NaN and left out of the macro
    average.
    """
    counts = torch.bincount(targets, minlength=num_classes)
    return (counts > 0) & (counts < len(targets))


def roc_scores(probs: torch.Tensor, targets: torch.Tensor) -> dict:
    """AUC per class, macro and micro.

    Args:
        probs: (N, C) probabilities (see :func:`probabilities`); targets: (N,) int64.

    The macro AUC is the unweighted mean of the per-class one-vs-rest AUCs: sklearn's
    ``roc_auc_score(multi_class="ovr", average="macro")`` and torchmetrics'
    ``multiclass_auroc(average="macro")``. It is *not* the area under the "macro-average ROC
    curve" of sklearn's ROC example (TPRs interpolated onto a common FPR grid and averaged),
    which is a slightly different number; :func:`roc_curves` draws that curve but labels it
    with this mean. The micro AUC treats every (row, class) pair as one binary decision:
    sklearn's ``roc_auc_score(label_binarize(y), probs, average="micro")``, torchmetrics'
    ``multilabel_auroc(average="micro")``.
    """
    num_classes = probs.shape[1]
    per_class = multiclass_auroc(probs, targets, num_classes, average="none",
                                 validate_args=False).to(torch.float64)
    per_class[~_defined_for(targets, num_classes)] = float("nan")
    one_hot = _one_hot(targets, num_classes)
    micro = (float(multilabel_auroc(probs, one_hot, num_classes, average="micro",
                                    validate_args=False))
             if 0 < one_hot.sum() < one_hot.numel() else float("nan"))
    return {"per_class": _floats(per_class), "macro": _nanmean(per_class), "micro": micro}


def precision_recall_scores(probs: torch.Tensor, targets: torch.Tensor) -> dict:
    """Average precision per class, macro (mean over classes) and micro.

    AP = sum over thresholds of (R_n - R_(n-1)) * P_n, without interpolation, in both
    libraries. A class with no positive row has no recall to speak of: NaN here (sklearn
    returns 0 with a warning), left out of the macro average as torchmetrics does.
    """
    num_classes = probs.shape[1]
    per_class = multiclass_average_precision(probs, targets, num_classes, average="none",
                                             validate_args=False).to(torch.float64)
    per_class[torch.bincount(targets, minlength=num_classes) == 0] = float("nan")
    one_hot = _one_hot(targets, num_classes)
    micro = (float(multilabel_average_precision(probs, one_hot, num_classes, average="micro",
                                                validate_args=False))
             if one_hot.sum() > 0 else float("nan"))
    return {"per_class": _floats(per_class), "macro": _nanmean(per_class), "micro": micro}


def confusion_scores(counts) -> dict:
    """(C, C) counts (rows true) and the same normalised per true class (a row of 0s stays 0)."""
    counts = np.asarray(counts, dtype=np.int64)
    return {"confusion": counts.tolist(),
            "confusion_normalized": normalize_confusion(counts).tolist()}


def _roc_points(fpr: torch.Tensor, tpr: torch.Tensor, negatives: int, positives: int,
                *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The points of a ROC curve where it bends, as sklearn's ``roc_curve`` keeps them
    (``drop_intermediate=True``), with the rates in float64: the curve and its area are
    unchanged, but a 10,000-row curve keeps tens of points instead of thousands.

    torchmetrics returns float32 rates, whose rounding hides whether three points are on one
    line; the counts behind them (rate x total, exact below 2**24 rows) decide it exactly, as
    in sklearn. The curve starts at (0, 0) and, like sklearn, keeps the first threshold's point.
    """
    fps = torch.round(fpr.to(torch.float64) * negatives) if negatives else fpr.to(torch.float64)
    tps = torch.round(tpr.to(torch.float64) * positives) if positives else tpr.to(torch.float64)
    keep = torch.ones(len(fps), dtype=torch.bool)
    if len(fps) > 3:
        keep[2:-1] = (torch.diff(fps[1:], 2) != 0) | (torch.diff(tps[1:], 2) != 0)
    fpr = fps / negatives if negatives else fps
    tpr = tps / positives if positives else tps
    return tuple(values[keep] for values in (fpr, tpr, *others))


def _drop_collinear(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of an interpolated curve (no counts behind it) where it bends, within rounding."""
    if len(x) <= 2:
        return x, y
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[1:-1] = (torch.diff(x, 2).abs() > 1e-9) | (torch.diff(y, 2).abs() > 1e-9)
    return x[keep], y[keep]


def roc_curves(probs: torch.Tensor, targets: torch.Tensor) -> dict:
    """Per-class, micro and macro ROC curves as lists (``fpr``, ``tpr``; per class also
    ``thresholds``), collinear points dropped.

    torchmetrics starts each curve at (0, 0) with threshold 1.0 where sklearn writes ``inf``;
    the rest of the points are sklearn's ``roc_curve(drop_intermediate=False)``. The macro
    curve averages the per-class TPRs on the union of their FPRs (linear interpolation), as in
    sklearn's ROC example; a class without positives or negatives is left out.
    """
    num_classes = probs.shape[1]
    fpr, tpr, thresholds = multiclass_roc(probs, targets, num_classes, validate_args=False)
    defined = _defined_for(targets, num_classes)
    positives = torch.bincount(targets, minlength=num_classes).tolist()
    per_class = []
    for label, (f, t, h) in enumerate(zip(fpr, tpr, thresholds)):
        f, t, h = _roc_points(f, t, len(targets) - positives[label], positives[label], h)
        per_class.append({"fpr": _floats(f), "tpr": _floats(t), "thresholds": _floats(h)})
    curves = {"per_class": per_class}
    if 0 < targets.numel() and defined.any():
        grid = torch.unique(torch.cat([fpr[c] for c in range(num_classes) if defined[c]]))
        mean_tpr = torch.stack([torch.from_numpy(np.interp(grid.numpy(), fpr[c].numpy(),
                                                           tpr[c].numpy()))
                                for c in range(num_classes) if defined[c]]).mean(0)
        grid, mean_tpr = _drop_collinear(grid, mean_tpr)
        curves["macro"] = {"fpr": _floats(grid), "tpr": _floats(mean_tpr)}
        # micro = every (row, class) pair as one binary decision
        micro_f, micro_t, _ = binary_roc(probs.reshape(-1),
                                         _one_hot(targets, num_classes).reshape(-1),
                                         validate_args=False)
        micro_f, micro_t = _roc_points(micro_f, micro_t, len(targets) * (num_classes - 1),
                                       len(targets))
        curves["micro"] = {"fpr": _floats(micro_f), "tpr": _floats(micro_t)}
    return curves


def _recall_steps(precision: torch.Tensor, recall: torch.Tensor):
    """The points where recall changes (plus the end point): the step plot's corners, and
    exactly the terms of the average precision."""
    if len(recall) <= 2:
        return precision, recall
    keep = torch.ones(len(recall), dtype=torch.bool)
    keep[1:-1] = recall[1:-1] != recall[2:]
    return precision[keep], recall[keep]


def precision_recall_curves(probs: torch.Tensor, targets: torch.Tensor) -> dict:
    """Per-class and micro precision-recall curves (``precision``, ``recall``; recall falls
    from 1 to 0 as the threshold rises, as sklearn's ``precision_recall_curve`` returns it)."""
    num_classes = probs.shape[1]
    precision, recall, _ = multiclass_precision_recall_curve(probs, targets, num_classes,
                                                             validate_args=False)
    per_class = []
    for p, r in zip(precision, recall):
        p, r = _recall_steps(p, r)
        per_class.append({"precision": _floats(p), "recall": _floats(r)})
    # micro = every (row, class) pair as one binary decision
    micro_p, micro_r, _ = binary_precision_recall_curve(
        probs.reshape(-1), _one_hot(targets, num_classes).reshape(-1), validate_args=False)
    micro_p, micro_r = _recall_steps(micro_p, micro_r)
    return {"per_class": per_class,
            "micro": {"precision": _floats(micro_p), "recall": _floats(micro_r)}}


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
    probs = probabilities(log_probs)
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    num_classes = probs.shape[1]
    predicted = probs.argmax(dim=1)
    with warnings.catch_warnings():
        # torchmetrics warns about classes without positives; they are handled above (NaN)
        warnings.simplefilter("ignore", UserWarning)
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
                  **confusion_scores(confusion_counts(predicted, targets, num_classes))}
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

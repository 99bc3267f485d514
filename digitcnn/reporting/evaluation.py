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

The scores of one group of rows are in :mod:`digitcnn.reporting._scores`, its curves in
:mod:`digitcnn.reporting._curves`; this module reads the predictions and puts them together
per fold and pooled.

The numbers are scikit-learn's (``precision_recall_fscore_support``, ``roc_auc_score``,
``average_precision_score``, ``roc_curve``, ``precision_recall_curve``), in float64; where
sklearn raises or warns for an edge case (a class without positive or negative rows) the
choice made here is written next to the code. The conventions are those of torchmetrics,
which computed this report before: ``tests/reporting/test_evaluation.py`` checks every number
against sklearn and, where it is installed, against torchmetrics. sklearn.metrics (and torch)
are imported inside the functions: a run has already imported them (``digitcnn.kfold`` makes
its splits with ``sklearn.model_selection``), while ``import digitcnn.reporting.evaluation``
stays cheap. Everything returned is plain Python (lists, floats, ints), ready for JSON;
undefined values are NaN (``write_json`` stores them as null).

Example::

    from digitcnn.reporting.evaluation import evaluate_run
    report = evaluate_run(np.load("results/run/oof.npz"))   # or a KFoldResult
    report["pooled"]["macro"]["f1"], report["pooled"]["micro"]["roc_auc"]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from digitcnn.errors import DataError
from digitcnn.metrics import confusion_counts, mean_std
from digitcnn.reporting._curves import precision_recall_curves, roc_curves
from digitcnn.reporting._scores import (
    classification_scores,
    confusion_scores,
    precision_recall_scores,
    probabilities,
    roc_scores,
)

__all__ = ["evaluate_predictions", "oof_arrays", "evaluate_run", "without_curves", "FOLD_SUMMARY"]

# Per-fold spread reported for these (group, metric) pairs: mean and std (ddof=1) over folds.
FOLD_SUMMARY = {
    "accuracy": (None, "accuracy"),
    "macro_precision": ("macro", "precision"),
    "macro_recall": ("macro", "recall"),
    "macro_f1": ("macro", "f1"),
    "weighted_f1": ("weighted", "f1"),
    "macro_roc_auc": ("macro", "roc_auc"),
    "micro_roc_auc": ("micro", "roc_auc"),
    "macro_average_precision": ("macro", "average_precision"),
    "micro_average_precision": ("micro", "average_precision"),
}


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
    import torch

    probs = probabilities(log_probs).numpy()
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    num_classes = probs.shape[1]
    predicted = probs.argmax(axis=1)
    scores = classification_scores(predicted, targets, num_classes)
    roc = roc_scores(probs, targets)
    pr = precision_recall_scores(probs, targets)
    result = {
        "n": int(len(targets)),
        "accuracy": scores["accuracy"],
        "per_class": {
            **scores["per_class"],
            "roc_auc": roc["per_class"],
            "average_precision": pr["per_class"],
        },
        "macro": {**scores["macro"], "roc_auc": roc["macro"], "average_precision": pr["macro"]},
        "weighted": scores["weighted"],
        "micro": {"roc_auc": roc["micro"], "average_precision": pr["micro"]},
        **confusion_scores(
            confusion_counts(torch.from_numpy(predicted), torch.from_numpy(targets), num_classes)
        ),
    }
    if curves:
        result["curves"] = {
            "roc": roc_curves(probs, targets),
            "pr": precision_recall_curves(probs, targets),
        }
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
        raise DataError(
            f"cannot evaluate a {type(source).__name__}; pass a KFoldResult, the "
            "dict of out_of_fold() or the oof.npz file"
        )
    keys = set(source.files if hasattr(source, "files") else source.keys())
    missing = sorted({"log_probs", "true"} - keys)
    if missing:
        raise DataError(
            f"out-of-fold predictions without {', '.join(missing)}; evaluation needs "
            "the true labels and the (N, C) log-probabilities (a KFoldResult with "
            "labels, or the oof.npz of a run)"
        )
    arrays = {key: np.asarray(source[key]) for key in keys}
    log_probs, true = arrays["log_probs"], arrays["true"]
    if log_probs.ndim != 2 or len(true) != len(log_probs):
        raise DataError(
            f"log_probs of shape {log_probs.shape} do not match {len(true)} true "
            "labels; expected (N, C) and (N,)"
        )
    if len(true) and (true.min() < 0 or true.max() >= log_probs.shape[1]):
        raise DataError(
            f"true labels range {true.min()}..{true.max()} but log_probs have "
            f"{log_probs.shape[1]} classes"
        )
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
    return {
        "n": int(len(true)),
        "num_classes": int(log_probs.shape[1]),
        "pooled": pooled,
        "folds": per_fold,
        "fold_summary": _fold_summary(per_fold),
    }


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
